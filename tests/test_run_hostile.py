"""``egw run`` against a hostile, a failing and an unplugged rapid-test analyzer, each next to a
well-behaved one: the service stays up in bounded memory, resets or re-opens the bad link, tells
the station, and loses nothing that was acknowledged.

Everything is a real process: ``egw run``, ``egw simulate rapidtest`` (its endless / giant /
unplug faults), the reference platform; ptys and TCP on loopback.
"""

from __future__ import annotations

import asyncio
import json
import re
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.conftest import REPO, egw_env, run_egw
from tests.test_station import state, wait_for
from tests.uplink_support import spawn_platform, stop_process

GOOD = "rapidtest-RT-AU-0001"     # --kind gold
HOSTILE = "rapidtest-RT-PR-0001"  # --kind pesticide


def spawn_logged(log: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m gateway ARGS`` with stderr to a file: a chatty child must never block on a full pipe."""
    return subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=REPO, env=egw_env(), text=True,
                            stdout=subprocess.PIPE, stderr=log.open("w"))


def analyzer(log: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = spawn_logged(log, "simulate", "rapidtest", "--reply-timeout", "2", "--retry-delay", "0.5", *args)
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().strip()
    assert endpoint, log.read_text()
    return proc, endpoint


def start_gateway(tmp_path: Path, data: Path, devices: dict[str, str]) -> tuple[subprocess.Popen[str], dict]:
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n[screen]\nlisten = "127.0.0.1:0"\n[metrics]\nlisten = "127.0.0.1:0"\n'
                      + "".join(f'[[devices]]\nkind = "rapidtest"\nname = "{name}"\nport = "{port}"\n'
                                for name, port in devices.items()))
    gateway = spawn_logged(tmp_path / "gateway.log", "run", "-c", str(config))
    assert gateway.stdout is not None
    line = gateway.stdout.readline()
    assert line, (tmp_path / "gateway.log").read_text()
    return gateway, json.loads(line)


class StationEvents:
    """Every update the station screen's event stream (SSE) sends, collected by a reader thread."""

    def __init__(self, screen: str) -> None:
        self.events: list[dict] = []
        self._response = urllib.request.urlopen(screen + "events", timeout=60)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self._response:
                if raw.startswith(b"data: "):
                    self.events.append(json.loads(raw[6:]))
        except Exception:  # noqa: BLE001 - closed under the reader by the test or the gateway
            pass

    def alarms(self) -> list[str]:
        return [text for e in self.events if e.get("type") == "alarms" for text in e["alarms"].values()]

    def states(self, device_id: str) -> list[str]:
        return [e["device"]["state"] for e in self.events if e.get("type") == "device" and e["device"]["device_id"] == device_id]

    def close(self) -> None:
        self._response.close()


def cards(screen: str) -> dict[str, dict]:
    return {card["name"]: card for card in state(screen)["devices"]}


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def results(data: Path) -> dict[str, list[tuple[str, str, str]]]:
    """{device_id: [(message id, result index, state)]} of every stored rapid-test result."""
    with sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT device_id, source_path, state FROM evidence WHERE kind = 'result' ORDER BY source_path").fetchall()
    out: dict[str, list[tuple[str, str, str]]] = {}
    for device_id, source_path, row_state in rows:
        _, _, message_id, _, index = source_path.split("/")
        out.setdefault(device_id, []).append((message_id, index, row_state))
    return out


def custody_events(data: Path, event: str) -> list[dict]:
    with sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True) as db:
        return [json.loads(entry) for (entry,) in db.execute("SELECT entry FROM custody WHERE event = ?", (event,))]


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


async def station_page(screen: str, predicate, screenshot: str) -> str:
    """The station page's text in Chromium once ``predicate`` holds; a screenshot goes to test-artifacts/."""
    from tests.chromium import Chromium

    browser = Chromium()
    try:
        await browser.open(screen)
        text = await browser.wait_for_text(predicate, 30, "the station page")
        # A card's detail sits behind a click (closed <details>): its text is part of the page, not of what is shown.
        text += "\n" + await browser.evaluate(
            "Array.from(document.querySelectorAll('#cards details')).map(d => d.textContent).join('\\n')")
        (REPO / "test-artifacts").mkdir(exist_ok=True)
        await browser.screenshot(REPO / "test-artifacts" / screenshot)
        return text
    finally:
        await browser.close()


def stop_gateway(gateway: subprocess.Popen[str]) -> None:
    assert gateway.poll() is None, "egw run died"
    gateway.send_signal(signal.SIGTERM)
    assert gateway.wait(timeout=15) == 0


def delivered(log: Path) -> list[str]:
    """Message ids the simulator saw acknowledged, from its log ("sent S000003: …" is message M000003)."""
    return ["M" + line.split("sent S", 1)[1][:6] for line in log.read_text().splitlines() if "rapidtest: sent S" in line]


def test_an_endless_and_a_giant_message_are_refused_and_the_other_analyzer_keeps_delivering(tmp_path):
    platform, address, _ = spawn_platform(tmp_path / "platform")
    good = hostile = gateway = events = None
    try:
        from tests.test_dock import enrolled_gateway

        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        good, good_url = analyzer(tmp_path / "good.log", "--kind", "gold", "--interval", "0.7", "--tcp", "0", "--seed", "1")
        # Two clean results, then message 3 floods (endless), is re-sent as a 5 MiB record (giant), then cleanly.
        hostile, hostile_url = analyzer(tmp_path / "hostile.log", "--kind", "pesticide", "--tests", "4", "--interval", "1",
                                        "--tcp", "0", "--fault", "endless,giant", "--fault-from", "3",
                                        "--fault-every", "100", "--seed", "2")
        gateway, ready = start_gateway(tmp_path, data, {"good": good_url, "hostile": hostile_url})
        screen = ready["screen"]
        events = StationEvents(screen)
        wait_for(lambda: len(results(data).get(HOSTILE, [])) == 2, 30, "the hostile analyzer's two clean results")
        before = peak_rss_mib(gateway.pid)
        wait_for(lambda: len(custody_events(data, "device-message-refused")) >= 2, 60, "both hostile messages refused")
        good_at_second_refusal = len({m for m, _, _ in results(data).get(GOOD, [])})
        wait_for(lambda: len(results(data).get(HOSTILE, [])) == 4, 60, "the hostile analyzer's results after it behaves")
        assert hostile.wait(timeout=30) == 0  # the simulator saw all four acknowledged
        after = peak_rss_mib(gateway.pid)
        wait_for(lambda: len({m for m, _, _ in results(data).get(GOOD, [])}) >= good_at_second_refusal + 2, 30,
                 "the good analyzer delivering after the burst")
        good_states = events.states("rapidtest:good") + [cards(screen)["good"]["state"]]
        stop_process(good)  # SIGTERM: it ends its session cleanly
        wait_for(lambda: all(s == "receipted" for rows in results(data).values() for _, _, s in rows), 60,
                 "every result receipted by the platform")

        stored = results(data)
        # Nothing acknowledged was lost, nothing refused was stored, nothing doubled.
        assert [(m, i) for m, i, _ in stored[HOSTILE]] == [(f"M00000{n}", "1") for n in range(1, 5)]
        assert delivered(tmp_path / "hostile.log") == [f"M00000{n}" for n in range(1, 5)]
        assert sorted({m for m, _, _ in stored[GOOD]}) == delivered(tmp_path / "good.log")
        assert len(stored[GOOD]) == len(set(stored[GOOD]))
        # Memory: the burst sent more than 4 MiB twice (endless, then giant); the receiver holds at most one message.
        print(f"\ngateway peak RSS before the burst {before:.1f} MiB, after {after:.1f} MiB (+{after - before:.1f})")
        assert after - before < 40, f"peak RSS grew {after - before:.1f} MiB"
        # The operator was told, by name, what happened and what to do; the log says it too.
        alarms = [a for a in events.alarms() if "'hostile'" in a]
        assert alarms and "too large" in alarms[0] and "re-run or delete that test" in alarms[0]
        assert "rapidtest:hostile" not in state(screen)["alarms"]  # cleared once it delivered again
        assert "error" in events.states("rapidtest:hostile") and set(good_states) == {"docked"}  # never disturbed
        refusals = [e for e in log_lines(tmp_path / "gateway.log") if "message refused, link reset" in e["msg"]]
        assert len(refusals) == 2 and all(e["level"] == "error" and e.get("device") == "hostile" for e in refusals)
        assert all("sent more than 4194304 bytes" in e["msg"] for e in refusals)
        assert 'egw_errors_total{kind="device-protocol"} 2.0' in metrics(ready["metrics"])
        stop_gateway(gateway)
        assert run_egw("custody", "verify", "--data-dir", str(data)).returncode == 0
    finally:
        if events is not None:
            events.close()
        for proc in (gateway, good, hostile, platform):
            if proc is not None:
                stop_process(proc)


class DiesOnConnect:
    """A TCP 'analyzer' that accepts and hangs up at once, every time; remembers when each connect came."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.accepted: list[float] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            conn.close()

    def close(self) -> None:
        self.server.close()


def test_devices_that_keep_failing_are_retried_with_backoff_shown_failing_and_disturb_nobody(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        refused = f"socket://127.0.0.1:{probe.getsockname()[1]}"
    dies = DiesOnConnect()
    link = tmp_path / "ttyVANISHING"
    vanishing, _ = analyzer(tmp_path / "vanishing.log", "--kind", "pesticide", "--tests", "1", "--link", str(link))
    good, good_url = analyzer(tmp_path / "good.log", "--kind", "gold", "--interval", "0.5", "--tcp", "0")
    gateway = events = None
    try:
        gateway, ready = start_gateway(tmp_path, data, {"refused": refused, "dies": dies.url, "vanishing": str(link),
                                                        "good": good_url})
        screen = ready["screen"]
        events = StationEvents(screen)
        assert vanishing.wait(timeout=30) == 0  # delivered its one result, then its port vanished (symlink removed)
        wait_for(lambda: len(dies.accepted) >= 5, 30, "five attempts on the analyzer that hangs up")
        failing = wait_for(lambda: (c := cards(screen)) and all(c[n]["failures"] >= 2 and c[n]["state"] in ("error", "undocked")
                                                                for n in ("refused", "dies", "vanishing")) and c,
                           30, "the failing devices' cards to show them failing")
        assert failing["good"]["state"] == "docked" and failing["good"]["failures"] == 0
        page = asyncio.run(station_page(screen + "?lang=en",
                                        lambda t: t.count("Check the device and its cable") == 3 and t.count("Failed attempts") == 3,
                                        "station-failing-devices.png"))
        assert "cannot open" in page and "Connection refused" in page and "not present" in page
        text = metrics(ready["metrics"])
        assert 'egw_device_failures_total{device="rapidtest:good"}' not in text
        stop_process(good)
        stored = results(data)
        assert len(stored["rapidtest-RT-PR-0001"]) == 1  # the vanished analyzer's result, acknowledged before it went
        assert sorted({m for m, _, _ in stored[GOOD]}) == delivered(tmp_path / "good.log")  # undisturbed, none lost
        assert len(delivered(tmp_path / "good.log")) >= 6

        # Backoff after failure k is at least 0.25, 0.5, 1, 2, then 2.5 s (the 0.5-5 s schedule at its lowest
        # jitter): that bounds how many attempts fit between the first and the last one seen. Retrying at once
        # would be hundreds; a slow machine only makes fewer.
        attempts = list(dies.accepted)
        window, least, fit = attempts[-1] - attempts[0], 0.0, 1
        for bound in (0.25, 0.5, 1.0, 2.0) + (2.5,) * 100:
            least += bound
            if least > window + 0.2:
                break
            fit += 1
        gaps = [round(b - a, 2) for a, b in zip(attempts, attempts[1:])]
        assert len(attempts) <= fit, f"{len(attempts)} attempts in {window:.1f} s, gaps {gaps}: not backing off"
        assert gaps[-1] > gaps[0], f"the delay did not grow: {gaps}"
        # Shown as failing, with why and when the next attempt comes.
        assert failing["refused"]["state"] == "error" and "Connection refused" in failing["refused"]["detail"]
        assert failing["dies"]["state"] == "error" and "disconnected" in failing["dies"]["detail"]
        assert failing["vanishing"]["state"] == "undocked" and "not present" in failing["vanishing"]["detail"]
        for name in ("refused", "dies", "vanishing"):
            assert failing[name]["retry_in_s"] > 0
            details = [e["device"]["detail"] for e in events.events
                       if e.get("type") == "device" and e["device"]["device_id"] == f"rapidtest:{name}"]
            assert any(re.search(r"attempt \d+ failed; next in \d", d) for d in details), details
        for name in ("refused", "dies", "vanishing"):
            line = next(l for l in text.splitlines() if l.startswith(f'egw_device_failures_total{{device="rapidtest:{name}"}}'))
            assert float(line.split()[-1]) >= 2
        stop_gateway(gateway)
    finally:
        dies.close()
        if events is not None:
            events.close()
        for proc in (gateway, vanishing, good):
            if proc is not None:
                stop_process(proc)


def test_more_analyzers_than_the_shared_thread_pool_are_all_served(tmp_path):
    """Regression: each analyzer's receive loop held a thread of the event loop's default executor
    (cpu_count + 4 threads) for as long as it was connected, so on a 2-CPU station the seventh
    analyzer was never opened and the station's counters (and disk-full alarm) stopped updating."""
    from simulators.rapidtest import RapidTestSimulator

    count = min(12, (os.cpu_count() or 1) + 4 + 2)  # more than the default pool on this machine (up to 8 CPUs)
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    sims = [RapidTestSimulator("gold", tests=2, interval=0.2, reply_timeout=2, retry_delay=0.2, seed=n,
                               instrument_id=f"RT-{n:02d}") for n in range(count)]
    gateway = None
    try:
        urls = [sim.serve_tcp() for sim in sims]
        gateway, ready = start_gateway(tmp_path, data, {f"a{n}": url for n, url in enumerate(urls)})
        wait_for(lambda: len(results(data)) == count, 60, f"results from all {count} analyzers")
        assert all(sim.wait_delivered(30) for sim in sims)
        wait_for(lambda: state(ready["screen"])["counts"].get("queued", 0) > 0, 10, "the station's counters")
        stored = results(data)
        assert {device: {m for m, _, _ in rows} for device, rows in stored.items()} == {
            f"rapidtest-RT-{n:02d}": {"M000001", "M000002"} for n in range(count)}
        stop_gateway(gateway)
    finally:
        for sim in sims:
            sim.stop()
        if gateway is not None:
            stop_process(gateway)


def test_a_serial_analyzer_unplugged_mid_message_and_replugged_is_picked_up_again(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    link = tmp_path / "serial-by-id-analyzer"  # what udev's /dev/serial/by-id/… is to a USB serial adapter
    # Two results, then the cable is pulled in the middle of message 3 for 2 s; the pty comes back (new name).
    serial, endpoint = analyzer(tmp_path / "serial.log", "--kind", "pesticide", "--tests", "5", "--interval", "0.3",
                                "--link", str(link), "--fault", "unplug", "--fault-from", "3", "--fault-every", "100",
                                "--unplug-seconds", "2")
    assert endpoint == str(link)
    good, good_url = analyzer(tmp_path / "good.log", "--kind", "gold", "--interval", "0.5", "--tcp", "0")
    gateway = events = None
    try:
        gateway, ready = start_gateway(tmp_path, data, {"serial": str(link), "good": good_url})
        screen = ready["screen"]
        events = StationEvents(screen)
        assert serial.wait(timeout=60) == 0  # all five acknowledged, without restarting or signalling egw run
        good_states = events.states("rapidtest:good") + [cards(screen)["good"]["state"]]
        stop_process(good)

        assert "plugged back in" in (tmp_path / "serial.log").read_text()
        stored = results(data)
        assert [m for m, _, _ in stored[HOSTILE]] == [f"M00000{n}" for n in range(1, 6)]  # none lost, none twice
        assert delivered(tmp_path / "serial.log") == [f"M00000{n}" for n in range(1, 6)]
        assert sorted({m for m, _, _ in stored[GOOD]}) == delivered(tmp_path / "good.log")
        # The station showed the unplug, then the analyzer back; the other analyzer never noticed.
        seen = events.states("rapidtest:serial")
        gone = next(i for i, s in enumerate(seen) if s in ("error", "undocked"))
        assert "docked" in seen[gone:], seen
        assert set(good_states) == {"docked"}
        warnings = [e["msg"] for e in log_lines(tmp_path / "gateway.log") if e["logger"] == "egw.supervisor"]
        assert any("rapidtest:serial" in w and "not present" in w for w in warnings)
        stop_gateway(gateway)
    finally:
        if events is not None:
            events.close()
        for proc in (gateway, serial, good):
            if proc is not None:
                stop_process(proc)
