"""``egw demo``: the whole station on loopback, for a newcomer's first run.

Starts the reference platform (gRPC, mutual TLS) and its MQTT recorder, an
MQTT broker (a private Mosquitto when one is installed, otherwise an embedded
pure-Python broker), three body-worn cameras with short real videos on
USB/IP, a rapid-test analyzer on TCP, a fingerprint reader and a signature
pad; enrols the gateway and runs the station service in this process. Then
it docks the recorders, takes five rapid tests, renders the on-site record
(现场检查笔录) citing them, has the party sign it on the pad and the reader,
stores it sealed with the agency seal by the platform's trust services,
delivers it (the party signs a sealed delivery receipt 送达回证 and downloads
the record once through a one-time link), waits until every item carries a
verified platform receipt, exports one bundle and verifies it and the sealed
record offline. Exit 0 only if all of that holds.
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


UNIT_CODE = "110105000000"
UNIT_NAME = "北京市朝阳区市场监督管理局"
PARTY = "李伟"
RECORD_FORM = f"""\
agency = "{UNIT_NAME}"
case_number = "朝市监检〔2026〕017号"
time = "2026年12月6日 09:30至10:15"
place = "朝阳区农贸市场3号厅17号摊位"
findings = \"\"\"经现场检查，当事人经营的散装芹菜经快速检测，有机磷农药残留一份样品超出限量。
执法人员当场抽取样品，快速检测结果附后，执法记录仪全程记录。\"\"\"

[[officers]]
name = "张伟"
id = "000042"

[[officers]]
name = "刘洋"
id = "000043"

[party]
name = "{PARTY}"
id_number = "110105199001011234"
address = "朝阳区农贸市场3号厅17号摊位"
"""
RECEIPT_FORM = f"""\
agency = "{UNIT_NAME}"
case_number = "朝市监检〔2026〕017号"
served_document = "现场检查笔录 朝市监检〔2026〕017号"
time = "2026年12月6日 10:20"
place = "朝阳区农贸市场3号厅17号摊位"
method = "电子送达：站点屏幕阅读，一次性链接下载"

[[officers]]
name = "张伟"
id = "000042"

[party]
name = "{PARTY}"
"""


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
            address, enroll_line, trust_line = processes.start(
                "platform", _egw("simulate", "platform", "--data", str(platform_data), "--listen", "127.0.0.1:0", "--mqtt", broker_url,
                                 "--agency-unit", UNIT_CODE, "--agency-name", UNIT_NAME), lines=3)
            trust_url = trust_line.split()[1]
            volumes = workdir / "volumes"
            (usbip_url, *_) = processes.start("bodycams", _egw("simulate", "bodycam", "--count", "3", "--listen", "127.0.0.1:0",
                                                                "--volumes", str(volumes), "--recordings", "3", "--minutes", "0.1",
                                                                "--small", "--drift", "47"), stdin=True)
            (analyzer_url,) = processes.start("rapidtest", _egw("simulate", "rapidtest", "--kind", "pesticide", "--tests", "5",
                                                                "--tcp", "0", "--interval", "0.5", "--reply-timeout", "2",
                                                                "--retry-delay", "0.2"), finite=True)
            (fingerprint_url,) = processes.start("fingerprint", _egw("simulate", "fingerprint", "--tcp", "0", "--baud", "0",
                                                                     "--finger", "present", "--quality", "0.9"))
            (signpad_url,) = processes.start("signpad", _egw("simulate", "signpad", "--listen", "127.0.0.1:0", "--signer", PARTY))
        console.print(f"platform {address} · broker {broker_url} ({broker_kind}) · recorders {usbip_url} · analyzer {analyzer_url}")

        data_dir = workdir / "gateway"
        from gateway.evidence.identity import init_identity
        from gateway.uplink.enroll import enroll
        from simulators.platform.cli import issue_token

        init_identity(data_dir, gateway_id="gw-demo")
        token = issue_token(platform_data, gateway_id="gw-demo")["token"]
        enroll(data_dir, address, token)
        console.print("gateway gw-demo enrolled with the platform CA (mutual TLS from here on)")
        devices = Devices(usbip_url, analyzer_url, fingerprint_url, signpad_url, volumes)
        return asyncio.run(_run_station(console, workdir, data_dir, platform_data, broker_url, trust_url, devices, started,
                                        as_json, processes.check_alive))
    finally:
        processes.stop()
        if broker_stop is not None:
            loop, broker = broker_stop
            try:
                asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(10)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            loop.call_soon_threadsafe(loop.stop)


@dataclass(frozen=True)
class Devices:
    usbip_url: str
    analyzer_url: str
    fingerprint_url: str
    signpad_url: str
    volumes: Path


def _cli(*args: str | Path) -> dict[str, Any]:
    """``egw ARGS --json`` as an officer would type it (beside the running service: delegated to it when it writes)."""
    proc = subprocess.run(_egw(*map(str, args), "--json"), capture_output=True, text=True, env=_env(), timeout=STEP_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"egw {' '.join(map(str, args[:2]))} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


async def _sign(runtime: Any, document: Path, devices: Devices) -> str:
    """The party signs ``document`` on the pad, then puts a finger on the reader; the signing record's evidence id."""
    from gateway.workflows.signing import SigningSession

    session = SigningSession(runtime.service, place="朝阳区农贸市场3号厅", officer_id="000042")
    signed = await asyncio.to_thread(session.run, document, PARTY, "party", signpad_url=devices.signpad_url,
                                     fingerprint_url=devices.fingerprint_url, pad_timeout=60)
    runtime.station.add_signing({"at": time.time(), "document": document.name, "signer": PARTY, "role": "party",
                                 "fingerprint_quality": signed.record.get("fingerprint", {}).get("quality"),
                                 "delivery": "signed, queued"})
    return signed.evidence_id


async def _paperless(console: Any, runtime: Any, workdir: Path, data_dir: Path, platform_data: Path, devices: Devices) -> dict[str, Any]:
    """Issue #16 end to end: the on-site record rendered, signed, sealed by the platform, delivered to the party."""
    from urllib.error import HTTPError
    from urllib.request import urlopen

    work = workdir / "record"
    work.mkdir(exist_ok=True)
    (work / "record.toml").write_text(RECORD_FORM, encoding="utf-8")
    (work / "receipt.toml").write_text(RECEIPT_FORM, encoding="utf-8")
    rows = runtime.service.state.all_evidence()
    cited = [r.id for r in rows if r.kind == "result"][:1] + [r.id for r in rows if r.kind == "video"][:1]  # one page
    cites = [a for evidence_id in cited for a in ("--cite", evidence_id)]
    common = ("--data-dir", data_dir)
    await asyncio.to_thread(_cli, "record", "draft", "--template", "onsite", "--form", work / "record.toml", *cites,
                            "-o", work / "record-draft.pdf", *common)
    signing = await _sign(runtime, work / "record-draft.pdf", devices)
    record = await asyncio.to_thread(_cli, "record", "new", "--template", "onsite", "--form", work / "record.toml", *cites,
                                     "--signing", signing, "--signed-draft", work / "record-draft.pdf", "-o", work / "record.pdf", *common)
    console.print(f"on-site record {record['evidence_id']} stored, seal: {record['seal']}")
    await asyncio.to_thread(_cli, "record", "draft", "--template", "delivery", "--form", work / "receipt.toml",
                            "--cite", record["evidence_id"], "-o", work / "receipt-draft.pdf", *common)
    receipt_signing = await _sign(runtime, work / "receipt-draft.pdf", devices)
    receipt = await asyncio.to_thread(_cli, "record", "new", "--template", "delivery", "--form", work / "receipt.toml",
                                      "--cite", record["evidence_id"], "--signing", receipt_signing, "--signed-draft",
                                      work / "receipt-draft.pdf", "-o", work / "receipt.pdf", *common)
    delivery = await asyncio.to_thread(_cli, "record", "deliver", record["evidence_id"], "--party", PARTY, "--how", "station",
                                       "--how", "link", "--receipt", receipt["evidence_id"], "--qr", work / "link-qr.png", *common)
    def fetch(url: str) -> tuple[int, bytes]:
        """The party's phone opening the link (in a thread: the station screen answers on this event loop)."""
        try:
            with urlopen(url, timeout=10) as response:  # noqa: S310 - our own station screen on loopback
                return int(response.status), bytes(response.read())
        except HTTPError as exc:
            return exc.code, b""

    _, downloaded = await asyncio.to_thread(fetch, delivery["link"])
    second, _ = await asyncio.to_thread(fetch, delivery["link"])
    console.print(f"delivered to {PARTY}: receipt {receipt['evidence_id']} signed and sealed; one-time link served "
                  f"{len(downloaded)} B, then {second}")
    from cryptography import x509

    from gateway.documents.verify_pdf import verify_pdf

    ca = x509.load_pem_x509_certificate((platform_data / "pki" / "ca.pem").read_bytes())
    verdict = (await asyncio.to_thread(verify_pdf, Path(record["path"]), [ca])).verdict
    return {"record": record, "receipt": receipt, "delivery": delivery, "link_first_bytes": len(downloaded),
            "link_second_status": second, "record_verdict": verdict}


async def _run_station(console: Any, workdir: Path, data_dir: Path, platform_data: Path, broker_url: str, trust_url: str,
                       devices: Devices, started: float, as_json: bool, check_alive: Any) -> int:
    from gateway.config import parse_config
    from gateway.station.runtime import Runtime

    usbip_url, analyzer_url, fingerprint_url, signpad_url, volumes = (devices.usbip_url, devices.analyzer_url, devices.fingerprint_url,
                                                                      devices.signpad_url, devices.volumes)
    config = parse_config({
        "data_dir": str(data_dir), "log_format": "json",
        "platform": {"trust_services": trust_url},
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
        with console.status("the on-site record: signed on the pad, sealed by the platform, delivered to the party…"):
            paperless = await _paperless(console, runtime, workdir, data_dir, platform_data, devices)
        if paperless["record_verdict"] != "VERIFIED" or paperless["record"]["seal"] != "agency":
            failures.append(f"the on-site record is {paperless['record']['seal']}-sealed and {paperless['record_verdict']}")
        if paperless["link_second_status"] != 410:
            failures.append(f"the one-time link opened twice (second answer {paperless['link_second_status']})")
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
            "record": paperless,
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
        record = summary.get("record") or {}
        if record:
            console.print(f"the sealed on-site record: {record['record']['path']} ({record['record_verdict']}); check it yourself: "
                          f"egw verify {record['record']['path']} --trust {summary['platform_data']}/pki/ca.pem")
    console.print(f"[bold green]demo OK[/] in {summary['seconds']} s" if summary["ok"] else f"[bold red]demo FAILED[/] after {summary['seconds']} s")
