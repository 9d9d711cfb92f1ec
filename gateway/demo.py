"""``egw demo``: the whole station on loopback, for a newcomer's first run.

Starts the reference platform (gRPC, mutual TLS) and its MQTT recorder, an
MQTT broker (a private Mosquitto when one is installed, otherwise an embedded
pure-Python broker), three body-worn cameras with short real videos on
USB/IP, a rapid-test analyzer on TCP, a fingerprint reader and a signature
pad; enrols the gateway and runs the station service in this process. Then
it docks the recorders, takes five rapid tests and one signing session,
waits until every item carries a verified platform receipt, exports one
bundle and verifies it offline. Exit 0 only if all of that holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]

STEP_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _egw(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EGW_KEY_PASSPHRASE", None)
    return env


@dataclass
class Processes:
    """Children the demo started; stopped in reverse order, whatever happens."""

    procs: list[tuple[str, subprocess.Popen[Any]]] = field(default_factory=list)  # text and binary pipes alike
    log_dir: Path = Path(".")
    finite: set[str] = field(default_factory=set)  # children that end on their own (the analyzer after N tests)

    def start(self, name: str, argv: list[str], lines: int = 1, stdin: bool = False, finite: bool = False) -> list[str]:
        if finite:
            self.finite.add(name)
        log = open(self.log_dir / f"{name}.log", "w")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=_env(),
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.procs.append((name, proc))
        out = []
        assert proc.stdout is not None
        for _ in range(lines):
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{name} did not start; see {self.log_dir / (name + '.log')}")
            out.append(line.strip())
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its stdout
        return out

    def check_alive(self) -> None:
        """Fail at once, naming the child and its last words, when a part the demo needs has died:
        otherwise the demo would wait out its step timeout and report items stuck in 'queued'."""
        for name, proc in self.procs:
            code = proc.poll()
            if code is not None and name not in self.finite:
                log = self.log_dir / f"{name}.log"
                try:
                    last = " | ".join(log.read_text(errors="replace").strip().splitlines()[-2:])
                except OSError:
                    last = ""
                raise RuntimeError(f"the {name} process exited (status {code}): {last or 'no output'}; see {log}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _start_broker(processes: Processes, workdir: Path) -> tuple[str, str, Any]:
    """(URL, kind, stopper). Our own Mosquitto on a free port (never the machine's shared one),
    or an embedded broker so the demo needs nothing but Python."""
    port = _free_port()
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if os.environ.get("EGW_DEMO_BROKER") == "embedded":
        mosquitto = None
    if mosquitto:
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        log = open(workdir / "logs" / "mosquitto.log", "w")
        proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=log, stderr=log)
        processes.procs.append(("mosquitto", proc))
        _wait_port(port)
        return f"mqtt://127.0.0.1:{port}", "mosquitto", None
    from amqtt.broker import Broker

    loop = asyncio.new_event_loop()
    config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    broker = Broker(config, loop=loop)
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="embedded-broker")
    thread.start()
    asyncio.run_coroutine_threadsafe(broker.start(), loop).result(15)
    return f"mqtt://127.0.0.1:{port}", "embedded (amqtt, MQTT 3.1.1)", (loop, broker)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _make_document(path: Path) -> Path:
    path.write_text("ON-SITE INSPECTION RECORD\nMarket hall 3, stall 17\nFinding: pesticide residue above the limit in one sample\n"
                    "The party present confirms the record by signature and fingerprint.\n", encoding="utf-8")
    return path


def run_demo(workdir: Path | None, as_json: bool) -> int:
    from rich.console import Console

    console = Console(stderr=True, quiet=as_json)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="egw-demo-"))
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    processes = Processes(log_dir=workdir / "logs")
    started = time.monotonic()
    broker_stop = None
    try:
        with console.status("starting the platform, the broker and the simulated devices…"):
            platform_data = workdir / "platform"
            broker_url, broker_kind, broker_stop = _start_broker(processes, workdir)
            address, enroll_line = processes.start("platform", _egw("simulate", "platform", "--data", str(platform_data),
                                                                      "--listen", "127.0.0.1:0", "--mqtt", broker_url), lines=2)
            volumes = workdir / "volumes"
            (usbip_url, *_) = processes.start("bodycams", _egw("simulate", "bodycam", "--count", "3", "--listen", "127.0.0.1:0",
                                                                "--volumes", str(volumes), "--recordings", "3", "--minutes", "0.1",
                                                                "--small", "--drift", "47"), stdin=True)
            (analyzer_url,) = processes.start("rapidtest", _egw("simulate", "rapidtest", "--kind", "pesticide", "--tests", "5",
                                                                "--tcp", "0", "--interval", "0.5", "--reply-timeout", "2",
                                                                "--retry-delay", "0.2"), finite=True)
            (fingerprint_url,) = processes.start("fingerprint", _egw("simulate", "fingerprint", "--tcp", "0", "--baud", "0",
                                                                     "--finger", "present", "--quality", "0.9"))
            (signpad_url,) = processes.start("signpad", _egw("simulate", "signpad", "--listen", "127.0.0.1:0", "--signer", "Li Wei"))
        console.print(f"platform {address} · broker {broker_url} ({broker_kind}) · recorders {usbip_url} · analyzer {analyzer_url}")

        data_dir = workdir / "gateway"
        from gateway.evidence.identity import init_identity
        from gateway.uplink.enroll import enroll
        from simulators.platform.cli import issue_token

        init_identity(data_dir, gateway_id="gw-demo")
        token = issue_token(platform_data, gateway_id="gw-demo")["token"]
        enroll(data_dir, address, token)
        console.print("gateway gw-demo enrolled with the platform CA (mutual TLS from here on)")
        return asyncio.run(_run_station(console, workdir, data_dir, platform_data, broker_url, usbip_url, analyzer_url,
                                        fingerprint_url, signpad_url, volumes, started, as_json, processes.check_alive))
    finally:
        processes.stop()
        if broker_stop is not None:
            loop, broker = broker_stop
            try:
                asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(10)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            loop.call_soon_threadsafe(loop.stop)


async def _run_station(console: Any, workdir: Path, data_dir: Path, platform_data: Path, broker_url: str, usbip_url: str,
                       analyzer_url: str, fingerprint_url: str, signpad_url: str, volumes: Path, started: float,
                       as_json: bool, check_alive: Any) -> int:
    from gateway.config import parse_config
    from gateway.station.runtime import Runtime

    config = parse_config({
        "data_dir": str(data_dir), "log_format": "json",
        "mqtt": {"url": broker_url},
        "screen": {"listen": "127.0.0.1:0"}, "metrics": {"listen": "127.0.0.1:0"},
        "defaults": {"inspector_id": "inspector-7", "site": "Market hall 3"},
        "devices": [
            {"kind": "bodycam", "name": "dock", "usbip": usbip_url.removeprefix("usbip://"), "volumes": f"{volumes}/{{serial}}"},
            {"kind": "rapidtest", "name": "pesticide analyzer", "port": analyzer_url},
            {"kind": "fingerprint", "name": "fingerprint reader", "port": fingerprint_url},
            {"kind": "signpad", "name": "signature pad", "usbip": signpad_url.removeprefix("usbip://").rsplit("/", 1)[0]},
        ],
    })
    import logging

    logging.basicConfig(filename=workdir / "logs" / "gateway.log", level=logging.INFO)
    runtime = Runtime(config)
    ready: dict[str, Any] = {}
    service_task = asyncio.create_task(runtime.run(ready.update))
    failures: list[str] = []
    try:
        await _until(lambda: bool(ready), 20, "the station service to start", check_alive)
        console.print(f"station screen: {ready['screen']}")
        snapshot = runtime.station.snapshot
        with console.status("docking three recorders and taking five rapid tests…"):
            await _until(lambda: len([d for d in snapshot()["devices"] if d["kind"] == "bodycam" and d["files_total"]]) == 3
                         and len(snapshot()["results"]) >= 5, STEP_TIMEOUT_S, "3 docked recorders and 5 results", check_alive)
        console.print(f"3 recorders docked · {len(snapshot()['results'])} rapid-test results signed")
        with console.status("signing session: signature pad, then fingerprint…"):
            from gateway.workflows.signing import SigningSession

            document = _make_document(workdir / "inspection-record.txt")
            session = SigningSession(runtime.service, place="Market hall 3", officer_id="000042")
            signed = await asyncio.to_thread(session.run, document, "Li Wei", "party", signpad_url=signpad_url,
                                             fingerprint_url=fingerprint_url, pad_timeout=60)
            runtime.station.add_signing({"at": time.time(), "document": document.name, "signer": "Li Wei", "role": "party",
                                         "fingerprint_quality": signed.record.get("fingerprint", {}).get("quality"),
                                         "delivery": "signed, queued"})
        console.print(f"signing record {signed.evidence_id} binds {document.name}")
        with console.status("waiting for the platform's receipts and for every recorder to be safe to undock…"):
            def all_receipted() -> bool:
                counts = runtime.service.state.counts_by_state()
                cams = [d for d in snapshot()["devices"] if d["kind"] == "bodycam" and d["files_total"]]
                return counts["ingested"] + counts["queued"] + counts["uploading"] == 0 and all(d["safe_to_undock"] for d in cams)

            await _until(all_receipted, STEP_TIMEOUT_S, "every item receipted", check_alive)
        with console.status("waiting for the MQTT outbox to drain…"):
            from gateway.uplink.outbox import mqtt_status

            await _until(lambda: mqtt_status(data_dir)["outbox"]["count"] == 0, 30, "the MQTT outbox to drain", check_alive)
        rows = _items(runtime)
        video = next(r for r in rows if r["kind"] == "video")
        bundle = workdir / "bundle"
        from gateway.evidence.bundle import export_bundle, verify_bundle
        from gateway.evidence.trust import pinned_anchors

        shutil.rmtree(bundle, ignore_errors=True)
        export_bundle(runtime.service, video["evidence_id"], bundle)
        checks = verify_bundle(bundle, anchors=pinned_anchors(data_dir))  # the platform CA pinned at enrolment
        failures += [c.line() for c in checks if not c.ok]
        _, problems = runtime.service.custody.verify()
        failures += [f"custody: {p.message}" for p in problems]
        failures += [f"{r['evidence_id']} ({r['name']}) is {r['state']}" for r in rows if r["state"] not in ("receipted", "released")]
        summary = {
            "ok": not failures,
            "seconds": round(time.monotonic() - started, 1),
            "counts": _counts(rows),
            "items": rows,
            "verified_bundle": str(bundle),
            "bundle_checks": [c.line() for c in checks],
            "failures": failures,
            "screen": ready["screen"],
            "platform_data": str(platform_data),
            "gateway_data": str(data_dir),
            "broker": broker_url,
        }
    except Exception as exc:  # noqa: BLE001 - reported, then the demo fails
        summary = {"ok": False, "seconds": round(time.monotonic() - started, 1), "failures": [f"{type(exc).__name__}: {exc}"],
                   "items": _items(runtime), "counts": {}, "logs": str(workdir / "logs")}
    finally:
        runtime.stopping.set()
        await asyncio.wait_for(service_task, 20)
    if as_json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print_summary(summary)
    return 0 if summary["ok"] else 1


async def _until(predicate: Any, timeout: float, what: str, check_alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check_alive is not None:
            check_alive()
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.3)
    raise TimeoutError(f"gave up waiting {timeout:.0f} s for {what}")


def _items(runtime: Any) -> list[dict[str, Any]]:
    from gateway.evidence import dsse
    from gateway.evidence.receipt import parse_receipt

    rows = []
    for row in runtime.service.state.all_evidence():
        receipt_id = ""
        if row.receipt:
            receipt_id = parse_receipt(dsse.Envelope.from_bytes(row.receipt)).receipt_id
        rows.append({"evidence_id": row.id, "kind": row.kind, "name": _display_name(row.source_path), "size": row.size,
                     "state": row.state, "receipt_id": receipt_id, "device_id": row.device_id})
    return rows


def _display_name(source_path: str) -> str:
    """A readable name for the summary table: rapid-test items are named by their ASTM message."""
    parts = source_path.split("/")
    if parts[0] == "astm" and len(parts) >= 4:
        return f"message {parts[2]} result {parts[4]}" if len(parts) >= 5 else f"message {parts[2]} transcript"
    return parts[-1]


def _counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["kind"], {}).setdefault(r["state"], 0)
        counts[r["kind"]][r["state"]] += 1
    return counts


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table("kind", "item", "device", "state", "platform receipt", title="egw demo: every item and its receipt")
    for r in sorted(summary.get("items", []), key=lambda r: (r["kind"], r["name"])):
        table.add_row(r["kind"], r["name"][:48], r["device_id"] or "", r["state"], r["receipt_id"] or "[red]none[/]")
    console.print(table)
    for line in summary.get("bundle_checks", []):
        console.print(f"  {line}")
    for failure in summary["failures"]:
        console.print(f"[red]FAIL {failure}[/]")
    if summary.get("screen"):
        console.print(f"station screen was at {summary['screen']} · platform data in {summary['platform_data']} · "
                      f"gateway data in {summary['gateway_data']}")
        console.print("verify the exported bundle yourself, believing the demo platform's CA: "
                      f"egw verify {summary['verified_bundle']} --trust {summary['platform_data']}/pki/ca.pem")
    console.print(f"[bold green]demo OK[/] in {summary['seconds']} s" if summary["ok"] else f"[bold red]demo FAILED[/] after {summary['seconds']} s")
