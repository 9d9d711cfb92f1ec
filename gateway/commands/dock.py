"""``egw dock --usbip URL``: dock every recorder once, in the foreground.

A thin adapter over :class:`gateway.workflows.dock_session.DockSession` (the same session
``egw run`` uses): ingest every recorder on the server (or one busid) and every recorder whose
volume is already mounted (a dock interrupted by Ctrl-C, a failure or a killed gateway), upload to
the enrolled platform — with our own uploader, or, inside the service, the service's — release
each recording as its receipt commits, then say plainly whether the officer can walk away: exit 0
only when every recording is safe, 130 after Ctrl-C (with what is stored, receipted and still on
each recorder).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.commands import common
from gateway.commands.common import add_data_dir, add_json, data_dir_of, open_evidence, print_json
from gateway.errors import ConfigError
from gateway.i18n import _, ngettext
from gateway.workflows.dock import RELEASE_POLICIES, DockWorkflow, mounted_serials
from gateway.workflows.dock_session import Delivery, DockSession, NoPlatform, OwnUploader, RecorderReport, ServiceDelivery, Verdict

INTERRUPTED = 130

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _recorders(url: str) -> list[tuple[str, str]]:
    """(serial or busid, URL) per body-worn camera: the busid given, or every recorder the server exports.
    The serial is the session key ``egw run`` uses too, so both never dock one recorder twice."""
    from drivers.bodycam import lookup_model
    from firmware_bridge.errors import BridgeError
    from firmware_bridge.usb_transport import list_usbip_devices

    hostport, _sep, busid = url.removeprefix("usbip://").partition("/")
    host, _sep, port = hostport.rpartition(":")
    if not url.startswith("usbip://") or not host or not port.isdigit():
        raise ConfigError(f"{url!r} is not a usbip:// URL", "use usbip://HOST:PORT or usbip://HOST:PORT/BUSID")
    try:
        devices = list_usbip_devices(host, int(port))
    except BridgeError as exc:
        if busid:
            return [(busid, url)]
        raise ConfigError(f"cannot list devices on {hostport}: {exc}", "check that the USB/IP server is running") from exc
    return [(d.serial or d.busid, f"usbip://{hostport}/{d.busid}") for d in devices
            if lookup_model(d.vid, d.pid) is not None and (not busid or d.busid == busid)]


def volumes_root(template: str) -> Path:
    """The directory the recorders' volumes appear in: the template up to ``{serial}``."""
    return Path(template.split("{serial}", 1)[0] or ".")


def _check_volumes(template: str) -> None:
    """Before any recorder is switched to mass storage: will its volume be found at all? A template
    without ``{serial}`` or under a directory that does not exist would only fail after the wait
    (30 s), for every recorder, with nothing copied."""
    root = volumes_root(template)
    if "{serial}" not in template:
        raise ConfigError(_("--volumes {template} does not contain {{serial}}: each recorder's volume would be looked for "
                            "in the same place").format(template=template),
                          _("write the template with {serial} where the recorder's serial number goes, "
                            "e.g. --volumes '/run/egw/volumes/{serial}'"))
    if not root.is_dir():
        raise ConfigError(
            _("A recorder's files are read from its storage volume, which must appear as {example} once it is docked "
              "(the --volumes template; <serial> is the recorder's serial number). The directory {root} does not "
              "exist, so no volume could be found; nothing was done to the recorders.").format(
                example=template.replace("{serial}", "<serial>"), root=root),
            _("point --volumes at the directory where the recorders' volumes are mounted: for `egw simulate bodycam` it is "
              "the directory in the volume=… lines it prints (e.g. --volumes '/tmp/…/{serial}'); on a station, where the "
              "udev rule mounts them (default /run/egw/volumes/{serial})"))


def _sources(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Recorders on the bus, then recorders already mounted (adopted exactly as ``egw run`` does)."""
    _check_volumes(args.volumes)
    found = _recorders(args.usbip)
    present = {key for key, _url in found}
    found += [(serial, f"volume://{serial}") for serial in mounted_serials(args.volumes) if serial not in present]
    if not found:
        root = args.volumes.removesuffix("/{serial}")
        raise ConfigError(f"no body-worn camera found on {args.usbip} and no recorder volume mounted under {root}",
                          "dock a recorder, or check the server and busid")
    return found


def run(args: argparse.Namespace, cancelled: Callable[[], bool] | None = None) -> int:
    """``cancelled`` lets the service stop a dock it runs for a client; here Ctrl-C does the same."""
    from rich.console import Console

    sources = _sources(args)
    console = Console(file=common.err())
    interrupted = threading.Event()
    stop: Callable[[], bool] = lambda: interrupted.is_set() or bool(cancelled and cancelled())  # noqa: E731
    with open_evidence(args) as service:
        enrolled = (service.identity.directory / "platform.pem").exists()
        workflow = DockWorkflow(service, locator=args.volumes, password=args.password, release_policy=args.release,
                                volume_timeout=args.volume_timeout, copy_slots=threading.Semaphore(max(1, args.parallel)),
                                platform_enrolled=enrolled)
        with _Bars(console, quiet=args.json) as bars:
            sessions, delivery = _start(args, workflow, sources, enrolled, stop, bars)
            try:
                _wait(sessions, stop)
            except KeyboardInterrupt:
                interrupted.set()
                for session, _joined in sessions:
                    session.cancel()
                if isinstance(delivery, OwnUploader):
                    delivery.cancel()
                _wait(sessions, lambda: False)
        reports = [session.wait() for session, _joined in sessions]
        if stop():
            _interrupted(console, reports, args.json)
            return INTERRUPTED
        note = delivery.note()
    failures = [f"{r.url}: {r.error}" for r in reports if r.verdict is Verdict.FAILED]
    docked = [r for r in reports if r.verdict is not Verdict.FAILED]
    safe = not failures and all(r.safe_to_undock for r in docked)
    if args.json:
        print_json({"safe": safe, "recorders": [r.to_json() for r in docked], "failures": failures, "uploads": note})
    else:
        _table(console, [r.to_json() for r in docked], failures, note, safe)
    return 0 if safe else 1


def _start(args: argparse.Namespace, workflow: DockWorkflow, sources: list[tuple[str, str]], enrolled: bool,
           stop: Callable[[], bool], bars: _Bars) -> tuple[list[tuple[DockSession, bool]], Delivery]:
    """One session per recorder (joining one the service already runs), each on its own thread, and
    the delivery that feeds them receipts. Upload overlaps ingest: each recording is queued as soon as
    it is copied; our uploader ends once every recorder has been ingested and the queue is drained."""
    sessions: list[tuple[DockSession, bool]] = []
    ready = threading.Event()
    delivery: Delivery
    if common.in_service():
        delivery = ServiceDelivery()
    elif enrolled:
        delivery = OwnUploader(data_dir_of(args),
                               lambda: not ready.is_set() or any(not s.attached.is_set() for s, _j in sessions))
        if not args.json:
            bars.console.print(_("uploading to the platform as recordings are copied, then waiting for receipts…"))
    else:
        delivery = NoPlatform()
    for key, source in sources:
        session, joined = DockSession.start_or_join(workflow, source, key=key, delivery=delivery, cancelled=stop)
        session.listeners.append(bars.listener)
        sessions.append((session, joined))
    ready.set()
    for session, joined in sessions:
        if not joined:
            threading.Thread(target=session.run, name=f"dock:{session.key}", daemon=True).start()
    return sessions, delivery


def _wait(sessions: list[tuple[DockSession, bool]], stop: Callable[[], bool]) -> None:
    """Wait for every session in short slices: the main thread stays free for Ctrl-C."""
    for session, _joined in sessions:
        while not session.finished(0.2):
            if stop():
                session.cancel()


class _Bars:
    """One progress bar per recorder (bytes copied in this session, never above its total)."""

    def __init__(self, console: Any, quiet: bool) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 console=console, disable=quiet)
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> _Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(exc_type, exc, tb)

    def listener(self, session: DockSession, event: str, n: int) -> None:
        from rich.markup import escape

        with self.lock:
            task = self.tasks.get(session.key)
            if task is None:
                task = self.tasks[session.key] = self.progress.add_task(escape(session.source), total=None)
            state = session.state
            if event == "identified":
                self.progress.update(task, description=escape(f"{state.serial} · {state.officer_name} ({state.officer_no})"))
            elif event == "scanned":
                self.progress.update(task, total=state.bytes_total, completed=0)
            elif event == "bytes":
                self.progress.update(task, completed=min(session.bytes_done, state.bytes_total))


def _interrupted(console: Any, reports: list[RecorderReport], as_json: bool) -> None:
    """After Ctrl-C: per recorder, what is stored, receipted, still on it, and whether it may be undocked."""
    if as_json:
        print_json({"interrupted": True, "safe": False, "recorders": [r.to_json() for r in reports]})
        return
    from rich.markup import escape

    interrupted = _("Interrupted.")
    console.print(f"[bold yellow]{escape(interrupted)}[/]")
    for r in reports:
        console.print(escape(interrupted_line(r)))
        if r.verdict is Verdict.SAFE:
            may_undock = _("It may be undocked: every recording is safe.")
            console.print(f"[green]{escape(may_undock)}[/]")
        else:
            left = r.files_total - sum(1 for row in r.recordings if row.safe)
            console.print("[yellow]" + escape(ngettext(
                "It may be undocked now, but it keeps {n} recording that is not safe yet: dock it again to finish.",
                "It may be undocked now, but it keeps {n} recordings that are not safe yet: dock it again to finish.",
                left).format(n=left)) + "[/]")


def interrupted_line(r: RecorderReport) -> str:
    return _("Recorder {serial}: {stored} of {total} recordings stored, {receipted} receipted, "
             "{left} still on the recorder.").format(serial=r.serial or r.url, stored=r.files_stored, total=r.files_total,
                                                    receipted=r.files_receipted, left=r.files_on_recorder)


def _table(console: Any, summaries: list[dict[str, Any]], failures: list[str], upload_note: str, safe: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    yes, no, not_safe = _("yes"), _("no"), _("NO")
    no_red = f"[red]{escape(not_safe)}[/]"
    for summary in summaries:
        # Everything the recorder chose (file names, the officer's name) is data, never rich markup.
        offset = summary["clock_offset_s"]
        table = Table(title=escape(_("recorder {serial} · {name} ({number}) · clock offset {offset} s").format(
            serial=summary["serial"], name=summary["officer_name"], number=summary["officer_no"],
            offset=f"{offset:+.1f}" if offset is not None else "?")))
        for column in (_("recording"), _("evidence id"), _("MB"), _("state"), _("released"), _("safe"), _("notes")):
            table.add_column(escape(column))
        for r in summary["recordings"]:
            notes = "; ".join(list(r["problems"]) + ([r["error"]] if r["error"] else []))
            table.add_row(escape(r["device_path"]), r.get("evidence_id") or "—", f"{r['size'] / 1e6:.1f}", r["state"],
                          yes if r["released"] else no,
                          f"[green]{escape(yes)}[/]" if r["safe"] else no_red, escape(notes))
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
        if summary.get("todo"):
            colour = "green" if summary.get("verdict") == Verdict.SAFE.value else "bold yellow"
            console.print(f"[{colour}]{escape(summary['serial'])}: {escape(summary['todo'])}[/]")
    console.print(escape(upload_note))
    for failure in failures:
        console.print(f"[red]{escape(failure)}[/]")
    attention = failures or any(summary["attention"] for summary in summaries)
    verdict = _("SAFE TO UNDOCK") if safe else _("NOT SAFE TO UNDOCK: see the messages in red above") if attention \
        else _("NOT SAFE TO UNDOCK: see the rows marked NO above")
    console.print(f"[bold {'green' if safe else 'red'}]{escape(verdict)}[/]")
