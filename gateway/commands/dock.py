"""``egw dock --usbip URL``: run the dock workflow once in the foreground.

Ingest every recorder on the server (or one busid), upload to the enrolled
platform and wait for receipts, release per policy, then say plainly whether
the officer can walk away: exit 0 only when every recording is safe.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from typing import Any

from gateway.commands.common import add_data_dir, add_json, data_dir_of, print_json, open_evidence
from gateway.errors import ConfigError, GatewayError
from gateway.workflows.dock import RELEASE_POLICIES, DockSession, DockWorkflow


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("dock", help="ingest, upload and release docked body-worn cameras")
    p.add_argument("--usbip", required=True, metavar="URL", help="usbip://HOST:PORT (every recorder) or usbip://HOST:PORT/BUSID")
    p.add_argument("--volumes", default="/run/egw/volumes/{serial}", help="where a recorder's volume is mounted ({serial} is replaced)")
    p.add_argument("--password", default="000000", help="recorder password")
    p.add_argument("--release", choices=RELEASE_POLICIES, default="receipt", help="when recordings are deleted from the recorder")
    p.add_argument("--parallel", type=int, default=2, help="recorders copied at once")
    p.add_argument("--volume-timeout", type=float, default=30.0)
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def _recorders(url: str) -> list[str]:
    """One URL per body-worn camera: the busid given, or every recorder the server exports."""
    from drivers.bodycam import lookup_model
    from firmware_bridge.errors import BridgeError
    from firmware_bridge.usb_transport import list_usbip_devices

    hostport, _, busid = url.removeprefix("usbip://").partition("/")
    host, _, port = hostport.rpartition(":")
    if not url.startswith("usbip://") or not host or not port.isdigit():
        raise ConfigError(f"{url!r} is not a usbip:// URL", "use usbip://HOST:PORT or usbip://HOST:PORT/BUSID")
    if busid:
        return [url]
    try:
        devices = list_usbip_devices(host, int(port))
    except BridgeError as exc:
        raise ConfigError(f"cannot list devices on {hostport}: {exc}", "check that the USB/IP server is running") from exc
    return [f"usbip://{hostport}/{d.busid}" for d in devices if lookup_model(d.vid, d.pid) is not None]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    urls = _recorders(args.usbip)
    if not urls:
        raise ConfigError(f"no body-worn camera found on {args.usbip}", "dock a recorder, or check the server and busid")
    console = Console(stderr=True)
    data_dir = data_dir_of(args)
    with open_evidence(args) as service:
        enrolled = (service.identity.directory / "platform.pem").exists()
        tasks: dict[str, Any] = {}
        lock = threading.Lock()
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=console, disable=args.json) as progress:

            def report(session: DockSession, event: str, n: int) -> None:
                with lock:
                    task = tasks.get(session.url)
                    if task is None:
                        task = tasks[session.url] = progress.add_task(session.url, total=None)
                    if event == "identified":
                        progress.update(task, description=escape(f"{session.serial} · {session.officer_name} ({session.officer_no})"))
                    elif event == "scanned":
                        progress.update(task, total=session.bytes_total)
                    elif event == "bytes":
                        progress.advance(task, n)

            slots = threading.Semaphore(max(1, args.parallel))
            workflow = DockWorkflow(service, locator=args.volumes, password=args.password, release_policy=args.release,
                                    volume_timeout=args.volume_timeout, progress=report, copy_slots=slots,
                                    platform_enrolled=enrolled)
            sessions: list[DockSession] = []
            failures: list[str] = []

            def attach(url: str) -> None:
                try:
                    sessions.append(workflow.attach(url))
                except GatewayError as exc:
                    failures.append(f"{url}: {exc}")

            # Upload overlaps ingest: each recording is queued (durable, signed) as soon as it is copied, and the
            # uploader takes it while the other recordings are still being copied; it stops only once every
            # recorder has been ingested and the queue is drained. Release still waits for the whole drain.
            ingesting = threading.Event()
            ingesting.set()
            delivery: _Delivery | None = _Delivery(data_dir, console, args.json, ingesting.is_set) if enrolled else None
            try:
                with ThreadPoolExecutor(max_workers=len(urls)) as pool:
                    list(pool.map(attach, urls))
            finally:
                ingesting.clear()
        upload_note = delivery.result() if delivery is not None else "no platform enrolled: recordings kept on the recorders"
        for session in sessions:
            workflow.release(session)
        summaries = [workflow.summary(s) for s in sessions]
    safe = not failures and all(s["safe_to_undock"] for s in summaries)
    if args.json:
        print_json({"safe": safe, "recorders": summaries, "failures": failures, "uploads": upload_note})
    else:
        _table(console, summaries, failures, upload_note, safe)
    return 0 if safe else 1


class _Delivery:
    """The uploader on its own thread and event loop, started before the first copy, draining the
    queue while ``producing()`` says recorders are still being ingested, then to empty."""

    def __init__(self, data_dir: Any, console: Any, quiet: bool, producing: Callable[[], bool]) -> None:
        self._outcomes: list[Any] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(data_dir, producing), name="dock-upload", daemon=True)
        if not quiet:
            console.print("uploading to the platform as recordings are ingested, then waiting for receipts…")
        self._thread.start()

    def _run(self, data_dir: Any, producing: Callable[[], bool]) -> None:
        from gateway.uplink.uploader import UploadSettings, Uploader

        try:
            uploader = Uploader(data_dir, UploadSettings.from_env())
            self._outcomes = asyncio.run(uploader.run_once(producing=producing))
        except BaseException as exc:  # reported by result(): the recordings stay queued, nothing is released
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            return f"uploads stopped: {self._error}"
        outcomes = self._outcomes
        failed = [o for o in outcomes if o.status != "receipted"]
        return f"{len(outcomes) - len(failed)} receipted, {len(failed)} not delivered" + (
            f" (first error: {failed[0].error})" if failed else "")


def _table(console: Any, summaries: list[dict[str, Any]], failures: list[str], upload_note: str, safe: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    for summary in summaries:
        # Everything the recorder chose (file names, the officer's name) is data, never rich markup.
        table = Table(title=f"recorder {summary['serial']} · {escape(summary['officer_name'])} ({summary['officer_no']}) · "
                            f"clock offset {summary['clock_offset_s']:+.1f} s")
        for column in ("recording", "MB", "state", "released", "safe", "notes"):
            table.add_column(column)
        for r in summary["recordings"]:
            notes = "; ".join(r["problems"] + ([r["error"]] if r["error"] else []))
            table.add_row(escape(r["device_path"]), f"{r['size'] / 1e6:.1f}", r["state"], "yes" if r["released"] else "no",
                          "[green]yes[/]" if r["safe"] else "[red]NO[/]", escape(notes))
        console.print(table)
        for hostile in summary["hostile_entries"]:
            console.print(f"[yellow]not copied, left on the recorder: {escape(hostile['name'])} ({escape(hostile['reason'])})[/]")
        more = summary["hostile_total"] - len(summary["hostile_entries"])
        if more > 0:
            console.print(f"[yellow]… and {more} more entries not copied (counted in the custody log)[/]")
        if summary["zfy_lossy_fields"]:
            fields = " and ".join({"user_name": "officer name", "unit_name": "unit name"}.get(f, f)
                                  for f in summary["zfy_lossy_fields"])
            console.print(f"[yellow]the {fields} the recorder sent {'are' if ' and ' in fields else 'is'} not valid GBK: "
                          "shown with \ufffd where bytes were unreadable; the bytes it sent are in the custody log and "
                          "every manifest (serial and police number were read intact)[/]")
        for message in summary["attention"]:
            console.print(f"[bold red]{escape(message)}[/]")
    console.print(upload_note)
    for failure in failures:
        console.print(f"[red]{escape(failure)}[/]")
    attention = any(summary["attention"] for summary in summaries)
    console.print("[bold green]SAFE TO UNDOCK[/]" if safe else
                  "[bold red]NOT SAFE TO UNDOCK: see the messages in red above[/]" if attention else
                  "[bold red]NOT SAFE TO UNDOCK: see the rows marked NO above[/]")
