"""Soak: ``egw run`` for a long time with recorders coming and going; does anything drift or leak?

    python bench/soak.py [--minutes 30] [--recorders 3] [--replug-every 60] [--record 2]
                         [--recordings 2] [--analyzer-every 2] [--poll-every 10] [--sample-every 2]
                         [--settle 180] [--fd-noise 3] [--thread-noise 2] [--rss-mb-per-h 10]
                         [--workdir DIR] [--keep] [--gateway-env KEY=VALUE ...]

Starts the reference platform, an enrolled gateway (``egw run``, station screen on, no MQTT),
``--recorders`` simulated body-worn cameras on one USB/IP server (``--recordings`` each to begin
with) and a rapid-test analyzer sending a result every ``--analyzer-every`` seconds. For
``--minutes``, every recorder in turn (staggered) is unplugged every ``--replug-every`` seconds,
records ``--record`` new files while away (a photo and a clip of audio: the next dock has something
to copy) and is plugged back in; read-only commands (``egw status --json``, ``egw ls --json``) run
every ``--poll-every`` seconds beside the service. Then the churn stops and the gateway gets
``--settle`` seconds to deliver what is left.

Sampled every ``--sample-every`` seconds from /proc: the gateway's open file descriptors, threads
and RSS. Reported:

* replugs docked / replugs: a replug counts when the recorder mounted again before its next unplug;
* cards per recorder on the station screen (``/api/state``), the most seen at once, cards not
  saying "undocked" once every recorder is gone, and byte counters above the recorder's total;
* items delivered with receipts / items made (every recording the recorders made and every
  analyzer result the gateway stored), and the platform's count;
* fd and thread drift: the median of the last quarter of samples minus the first quarter's;
* RSS growth in MB/h (least squares over the second half, after the warm-up);
* read-only command failures, and any Python traceback in the logs (gateway, simulators, commands).

Exit status 1 when a check fails: a replug that did not dock, more than one card per recorder,
an item made but not receipted, fd or thread drift above ``--fd-noise`` / ``--thread-noise``, RSS
growth above ``--rss-mb-per-h`` (only judged for runs of 10 minutes or more), a failed command,
a traceback. The last line is the one-line summary with the load average beside it.

The lead's run: ``python bench/soak.py --minutes 30`` (about 31 minutes with start-up and settle).
``--record 0`` docks recorders that the gateway emptied (every file released): they must still mount.
``--gateway-env`` sets variables for ``egw run`` only, to look into a drift: ``EGW_DEBUG_TRACEMALLOC=path``
(with ``EGW_DEBUG_TRACEMALLOC_EVERY=seconds``) appends the growing allocation sites, object types,
threads and malloc arenas to ``path``; ``MALLOC_ARENA_MAX=N`` or ``GLIBC_TUNABLES=...`` try the
allocator's settings (``egw run`` caps the arenas at 2 itself; ``MALLOC_ARENA_MAX=16`` is glibc's
default on 2 CPUs, for a comparison).
``tests/test_soak.py`` runs a short one (2 recorders, a replug every ~15 s) through ``run()``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import write_bodycam_station_config  # noqa: E402
from bench._soak_result import FLAG_HELP, Sample, SoakOptions, SoakResult  # noqa: E402

GATEWAY_ENV: dict[str, str] = {}  # --gateway-env KEY=VALUE: for egw run only (e.g. EGW_DEBUG_TRACEMALLOC, MALLOC_ARENA_MAX)

TRACEBACK = "Traceback (most recent call last)"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("EGW_LANG", "en")
    return env


class Child:
    """A child process: stdout lines collected by a thread (each with its arrival time), stderr to a log."""

    def __init__(self, name: str, args: list[str], logs: Path, stdin: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.lines: list[tuple[float, str]] = []
        self._cv = threading.Condition()
        self.log_path = logs / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=_env(env), text=True,
                                     stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        threading.Thread(target=self._drain, daemon=True, name=f"drain-{name}").start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cv.notify_all()

    def line(self, index: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.lines) <= index:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} printed no line {index + 1}; see {self.log_path}")
                self._cv.wait(min(left, 0.2))
            return self.lines[index][1]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self._log.closed:
            self._log.write("".join(f"stdout: {line}\n" for _, line in self.lines))
            self._log.close()
        return self.proc.returncode


def egw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=_env(), text=True,
                          capture_output=True, timeout=timeout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- /proc sampling -----------------------------------------------------------------------------


def proc_sample(pid: int, at: float) -> Sample | None:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    if "VmRSS:" not in status:
        return None
    return Sample(at, fds, threads, int(status.split("VmRSS:")[1].split()[0]))


def describe_fds(pid: int) -> dict[str, int]:
    """What the process holds open, by kind of target (for the log when fds drift)."""
    kinds: dict[str, int] = {}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        key = target.split(":")[0] if ":[" in target else ("deleted " if target.endswith("(deleted)") else "") + \
            (Path(target).name if "/" in target else target)
        kinds[key] = kinds.get(key, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


# ---- the soak -------------------------------------------------------------------------------------


class Soak:
    def __init__(self, workdir: Path, options: SoakOptions, say: Callable[[str], None]) -> None:
        self.workdir, self.o, self.say = workdir, options, say
        self.logs = workdir / "logs"
        self.data, self.platform_data, self.volumes = workdir / "gw", workdir / "platform", workdir / "volumes"
        self.result = SoakResult(options=options, workdir=workdir)
        self.children: list[Child] = []
        self.stop_churn = threading.Event()
        self.lock = threading.Lock()
        self.replug_times: dict[str, list[float]] = {}
        self.unplug_times: dict[str, list[float]] = {}
        self.screen = ""
        self.started = 0.0
        self.doubled: set[str] = set()  # serials showing as more than one card right now

    def spawn(self, name: str, *args: str, stdin: bool = False, env: dict[str, str] | None = None) -> Child:
        child = Child(name, list(args), self.logs, stdin=stdin, env=env)
        self.children.append(child)
        return child

    # ---- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        for sub in ("platform", "gw", "volumes", "logs"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.platform = self.spawn("platform", "simulate", "platform", "--data", str(self.platform_data),
                                   "--listen", "127.0.0.1:0")
        address = self.platform.line(0, 60).strip()
        self.platform.line(1, 60)
        for step in (("keys", "init", "--data-dir", str(self.data), "--gateway-id", "gw-soak"),):
            _check(egw(*step))
        token = json.loads(_check(egw("platform", "token", "--data", str(self.platform_data), "--gateway-id", "gw-soak", "--json")).stdout)["token"]
        _check(egw("enroll", "--platform", address, "--token", token, "--data-dir", str(self.data)))
        self.recorders = self.spawn("recorders", "simulate", "bodycam", "--count", str(self.o.recorders),
                                    "--recordings", str(self.o.recordings), "--small", "--minutes", "0.02",
                                    "--volumes", str(self.volumes), "--listen", "127.0.0.1:0", stdin=True)
        usbip = self.recorders.line(0, 300).strip()
        self.serials = {}
        for i in range(self.o.recorders):
            words = self.recorders.line(1 + i, 30).split()
            self.serials[words[0]] = words[1].removeprefix("serial=")
        port = _free_port()
        self.analyzer = self.spawn("analyzer", "simulate", "rapidtest", "--tcp", str(port), "--interval",
                                   str(self.o.analyzer_every), "--reply-timeout", "5", "--retry-delay", "0.5")
        self.analyzer.line(0, 60)
        config = write_bodycam_station_config(self.workdir / "gateway.toml", self.data, usbip, self.volumes)
        with open(config, "a") as fh:
            fh.write(f'[[devices]]\nkind = "rapidtest"\nname = "analyzer"\nport = "socket://127.0.0.1:{port}"\n')
        self.gateway = self.spawn("egw-run", "run", "-c", str(config), env=GATEWAY_ENV)
        self.screen = json.loads(self.gateway.line(0, 60))["screen"]
        self.result.recordings_made = self.o.recorders * self.o.recordings

    # ---- the churn -----------------------------------------------------------------------------
    def churn(self, busid: str, offset: float) -> None:
        """Unplug, record, replug this recorder every ``replug_every`` seconds, first after ``offset``."""
        next_at = self.started + offset
        while not self.stop_churn.is_set():
            if self.stop_churn.wait(max(0.0, next_at - time.monotonic())):
                return
            with self.lock:
                self.unplug_times.setdefault(busid, []).append(time.monotonic())
                self.recorders.send(f"unplug {busid}")
                if self.o.record:
                    self.recorders.send(f"record {busid} {self.o.record}")
                    self.result.recordings_made += self.o.record
                self.recorders.send(f"replug {busid}")
                self.replug_times.setdefault(busid, []).append(time.monotonic())
            next_at += self.o.replug_every

    def sampler(self) -> None:
        while not self.stop_churn.is_set():
            sample = proc_sample(self.gateway.proc.pid, time.monotonic() - self.started)
            if sample is not None:
                self.result.samples.append(sample)
            recorders = proc_sample(self.recorders.proc.pid, 0.0)
            if recorders is not None:
                self.result.simulator_fds.append(recorders.fds)
            self.stop_churn.wait(self.o.sample_every)

    def poller(self) -> None:
        """Read-only commands beside the service."""
        while not self.stop_churn.is_set():
            self.poll_commands()
            self.stop_churn.wait(self.o.poll_every)

    def follow_screen(self) -> None:
        """Every change of the station screen (its server-sent events), so a card that shows for a
        fraction of a second is counted too; a poll of ``/api/state`` would see it only by luck."""
        cards: dict[str, dict[str, Any]] = {}
        try:
            with urllib.request.urlopen(self.screen + "events", timeout=60) as stream:
                kind = ""
                for raw in stream:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        self.on_screen_event(kind, json.loads(line.removeprefix("data: ")), cards)
        except (OSError, ValueError):
            return  # the service stopped

    def on_screen_event(self, kind: str, event: dict[str, Any], cards: dict[str, dict[str, Any]]) -> None:
        if kind == "snapshot":
            cards.clear()
            cards.update({c["device_id"]: c for c in event.get("devices", []) if c.get("kind") == "bodycam"})
        elif event.get("type") == "device" and event["device"].get("kind") == "bodycam":
            cards[event["device"]["device_id"]] = event["device"]
        elif event.get("type") == "device-removed":
            cards.pop(event.get("device_id"), None)
        else:
            return
        self.check_cards(list(cards.values()))

    def poll_commands(self) -> None:
        for args in (("status", "--json"), ("ls", "--json")):
            done = egw(*args, "--data-dir", str(self.data))
            self.result.polls += 1
            problem = None
            if done.returncode != 0:
                problem = f"egw {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-300:]}"
            else:
                try:
                    json.loads(done.stdout)
                except ValueError as exc:
                    problem = f"egw {' '.join(args)} printed no JSON ({exc})"
            if TRACEBACK in done.stderr:
                problem = f"egw {' '.join(args)} printed a traceback: {done.stderr.strip()[-300:]}"
            if problem:
                self.result.poll_failures.append(problem)

    def cards(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.screen + "api/state", timeout=10) as response:
            return [d for d in json.loads(response.read())["devices"] if d.get("kind") == "bodycam"]

    def check_cards(self, cards: list[dict[str, Any]]) -> None:
        for busid, serial in self.serials.items():
            mine = [c for c in cards if _card_of(c, busid, serial)]
            if len(mine) > 1 and serial not in self.doubled:
                self.doubled.add(serial)
                self.result.times_doubled += 1
            elif len(mine) <= 1:
                self.doubled.discard(serial)
            if len(mine) > self.result.max_cards_per_recorder:
                self.result.max_cards_per_recorder = len(mine)
                if len(mine) > 1:
                    self.result.card_examples.append(" + ".join(f"{c['device_id']} ({c.get('state')}: {c.get('detail')})"
                                                                for c in mine))
            for card in mine:
                done, total = card.get("bytes_ingested") or 0, card.get("bytes_total") or 0
                if done > total:  # one entry per dock (a dock's total is what that plug-in held)
                    self.result.card_bytes_over.setdefault((serial, total), f"{serial}: {done} of {total} B")

    # ---- the end -------------------------------------------------------------------------------
    def count(self) -> None:
        r = self.result
        listing = json.loads(_check(egw("ls", "--json", "--data-dir", str(self.data))).stdout)
        r.items = len(listing)
        r.items_receipted = sum(1 for i in listing if i["state"] in ("receipted", "released") and i["receipt_id"])
        r.recordings_stored = len({(i["device_id"], i["source_path"]) for i in listing
                                   if (i["device_id"] or "").startswith("bodycam-")})
        r.analyzer_results = sum(1 for i in listing if i["kind"] == "result")
        r.platform_items = len(json.loads(_check(egw("platform", "ls", "--data", str(self.platform_data),
                                                     "--json")).stdout))

    def settled(self) -> bool:
        self.count()
        r = self.result
        return r.recordings_stored >= r.recordings_made and r.items_receipted == r.items == r.platform_items

    def docked_replugs(self) -> None:
        """A replug docked when the recorder mounted after it and before its next unplug."""
        mounts: dict[str, list[float]] = {}
        for at, line in list(self.recorders.lines):
            words = line.split()
            if len(words) >= 2 and words[0] == "mounted":
                mounts.setdefault(words[1], []).append(at)
        for busid, replugs in self.replug_times.items():
            unplugs = self.unplug_times.get(busid, [])
            for index, at in enumerate(replugs):
                until = unplugs[index + 1] if index + 1 < len(unplugs) else float("inf")
                self.result.replugs += 1
                if any(at < m < until for m in mounts.get(busid, [])):
                    self.result.replugs_docked += 1
                else:
                    self.result.undocked.append(f"{busid} at {at - self.started:.0f} s")

    def unplug_all_and_count_cards(self) -> None:
        for busid in self.serials:
            self.recorders.send(f"unplug {busid}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                left = self.cards()
            except (OSError, ValueError):
                left = []
            left = [c for c in left if c.get("state") != "undocked"]  # an undocked card is history, by design
            if not left:
                break
            time.sleep(1)
        self.result.cards_left = len(left)
        self.result.card_examples += [f"left at the end: {c['device_id']} ({c.get('state')}: {c.get('detail')})" for c in left]

    def run(self) -> SoakResult:
        started_all = time.monotonic()
        try:
            self.setup()
            self.say(f"egw run pid {self.gateway.proc.pid}, screen {self.screen}; churning for {self.o.minutes:g} min")
            self.started = time.monotonic()
            workers = [threading.Thread(target=self.sampler, daemon=True), threading.Thread(target=self.poller, daemon=True)]
            threading.Thread(target=self.follow_screen, daemon=True, name="soak-screen").start()  # ends with egw run
            for i, busid in enumerate(self.serials):
                offset = self.o.replug_every * (i + 1) / len(self.serials)
                workers.append(threading.Thread(target=self.churn, args=(busid, offset), daemon=True))
            for worker in workers:
                worker.start()
            end = self.started + self.o.minutes * 60
            while time.monotonic() < end and self.gateway.proc.poll() is None:
                time.sleep(min(30.0, max(0.1, end - time.monotonic())))
                last = self.result.samples[-1] if self.result.samples else None
                if last is not None:
                    self.say(f"  {last.at:6.0f} s: fds {last.fds}, threads {last.threads}, RSS {last.rss_kib / 1024:.0f} MB, "
                             f"cards/recorder max {self.result.max_cards_per_recorder}")
            self.stop_churn.set()
            for worker in workers:
                worker.join(60)
            self.say(f"churn over; fds held: {describe_fds(self.gateway.proc.pid)}")
            self.analyzer.stop()
            deadline = time.monotonic() + self.o.settle
            while time.monotonic() < deadline and not self.settled():
                time.sleep(2)
            self.docked_replugs()
            self.unplug_all_and_count_cards()
            self.count()
        finally:
            for child in reversed(self.children):
                child.stop()
            self.result.seconds = time.monotonic() - started_all
        self.result.tracebacks = _tracebacks(self.logs)
        with open(self.logs / "samples.csv", "w") as fh:  # for a plot, or a second look at a drift
            fh.write("seconds,fds,threads,rss_kib\n")
            fh.writelines(f"{s.at:.1f},{s.fds},{s.threads},{s.rss_kib}\n" for s in self.result.samples)
        return self.result


def _card_of(card: dict[str, Any], busid: str, serial: str) -> bool:
    """A recorder's card: by its identity (``bodycam-<serial>``) or, before it identified, by its URL."""
    device_id = str(card.get("device_id", ""))
    return device_id == f"bodycam-{serial}" or device_id.endswith("/" + busid)


def _check(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, done.args[2:]))} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done


def _tracebacks(logs: Path) -> list[str]:
    """``file: exception line`` for every traceback in the logs."""
    found = []
    for log in sorted(logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if TRACEBACK in line:
                tail = next((l for l in lines[index + 1:] if l and not l.startswith((" ", "\t"))), "?")
                found.append(f"{log.name}: {tail.strip()[:200]}")
    return found


def run(workdir: Path, options: SoakOptions, say: Callable[[str], None] = print) -> SoakResult:
    return Soak(workdir, options, say).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SoakOptions()
    for name, value in vars(defaults).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=value, help=f"{FLAG_HELP[name]} (default {value})")
    parser.add_argument("--workdir", type=Path, help="where data and logs go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (always kept when a check fails)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for egw run only, e.g. EGW_DEBUG_TRACEMALLOC=/tmp/mem.txt or MALLOC_ARENA_MAX=2")
    args = parser.parse_args(argv)
    GATEWAY_ENV.update(item.split("=", 1) for item in args.gateway_env)
    options = SoakOptions(**{name: getattr(args, name) for name in vars(defaults)})
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="egw-soak-"))
    result = run(workdir, options)
    for line in result.report_lines():
        print(line)
    problems = result.problems()
    for problem in problems:
        print(f"FAIL {problem}")
    print(result.summary_line())
    if not problems and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
