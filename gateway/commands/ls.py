"""``egw ls``: which evidence this gateway holds, filtered, for an operator or a script.

One line per item: id, kind, device, officer, source name, size, state and the platform's receipt
id. Why a listing separate from ``egw status``: status counts, ls names, so an operator can answer
"did the recorder of officer 100001 come in this morning, and is it receipted?" without SQL.
Names come from devices (file names on a recorder, ASTM sample ids) and are hostile data: the
table escapes them (rich markup, control characters); ``--json`` hands them over verbatim.

The data directory is opened read-only, so ``egw ls`` runs beside ``egw run``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from gateway.commands.common import add_data_dir, add_json, err, open_evidence, out
from gateway.errors import ConfigError
from gateway.evidence.state import STATES

__all__ = ["register", "run", "parse_since", "printable", "source_name", "TABLE_ROWS"]

TABLE_ROWS = 500  # a human table longer than this helps nobody; --limit or --json for more
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ls", help="list evidence: id, kind, device, officer, source, size, state, receipt")
    p.add_argument("--device", help="only items from this device id (e.g. bodycam-1000001)")
    p.add_argument("--officer", help="only items of this officer (police number)")
    p.add_argument("--since", help="only items ingested since then: an ISO date/time (local time unless it "
                                   "names a zone) or a duration back from now (30m, 2h, 7d)")
    p.add_argument("--state", action="append", choices=STATES,
                   help="only items in this state (repeat for several)")
    p.add_argument("--kind", action="append", help="only items of this kind, e.g. video, photo, audio (repeatable)")
    p.add_argument("--limit", type=int, help="at most this many items, newest first")
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` as a Unix time: ``2h`` (a duration back from now) or an ISO date/time."""
    now = time.time() if now is None else now
    duration = _DURATION.fullmatch(text.strip())
    if duration:
        return now - float(duration.group(1)) * _UNIT_SECONDS[duration.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--since {text!r} is neither a date/time nor a duration",
                          "give an ISO date/time (2026-12-06, 2026-12-06T08:30, 2026-12-06T08:30+08:00) "
                          "or a duration such as 30m, 2h, 7d") from None
    return when.astimezone().timestamp()  # a naive time is local time


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit {args.limit} is negative", "give a number of items, 0 or more")
    since = parse_since(args.since) if args.since else None
    with open_evidence(args, write=False) as service:
        listing = service.state.list_evidence(
            device_id=args.device, officer_id=args.officer, since=since, states=tuple(args.state or ()),
            kinds=tuple(args.kind or ()), limit=args.limit)
        items = (_as_dict(row) for row in listing)
        if args.json:
            _print_json_array(items)
        else:
            _print_table(items)
    return 0


def _as_dict(row: Any) -> dict[str, Any]:
    return {"evidence_id": row.id, "kind": row.kind, "device_id": row.device_id, "officer_id": row.officer_id,
            "source_path": row.source_path, "source_name": source_name(row.source_path), "size": row.size,
            "state": row.state, "receipt_id": _receipt_id(row.receipt),
            "ingested_at": datetime.fromtimestamp(row.created_at).astimezone().isoformat(timespec="seconds")}


def source_name(source_path: str) -> str:
    """What a person recognises: a recorder's file name, an ASTM message and result, a signing item."""
    parts = source_path.split("/")
    if parts[0] == "astm" and len(parts) >= 4:
        return f"message {parts[2]} result {parts[4]}" if len(parts) >= 5 else f"message {parts[2]} transcript"
    if parts[0] == "signing" and len(parts) >= 3:
        return f"signing {parts[1][:8]} {parts[-1]}"
    return parts[-1]


def _receipt_id(raw: bytes | None) -> str | None:
    if not raw:
        return None
    from gateway.evidence import dsse
    from gateway.evidence.receipt import parse_receipt

    try:
        return str(parse_receipt(dsse.Envelope.from_bytes(raw)).receipt_id) or None
    except Exception:  # noqa: BLE001 - a listing shows what it can; `egw verify` judges receipts
        return None


def _print_json_array(items: Iterable[dict[str, Any]]) -> None:
    """One JSON array, written item by item: a million items never sit in memory at once. ASCII only:
    a name with bytes that were not UTF-8 (a lone surrogate) would not encode otherwise."""
    stream = out()
    stream.write("[")
    for index, item in enumerate(items):
        stream.write(("," if index else "") + "\n  " + json.dumps(item, sort_keys=True))
    stream.write("\n]\n")
    stream.flush()


def _print_table(items: Iterator[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table()
    table.add_column("id", no_wrap=True)  # whole: an id cut short identifies nothing
    for name in ("kind", "device", "officer", "source", "size", "state", "receipt"):
        short = name in ("kind", "size", "state")
        table.add_column(name, no_wrap=short, overflow="fold", justify="right" if name == "size" else "left")
    shown = 0
    more = False
    for item in items:
        if shown == TABLE_ROWS:
            more = True
            break
        # Text(), never markup: a device-supplied "[red]" or escape sequence is shown, not obeyed.
        table.add_row(item["evidence_id"], _plain(item["kind"]), _plain(item["device_id"]),
                      _plain(item["officer_id"]), _plain(item["source_name"]), _size(item["size"]),
                      item["state"], Text(item["receipt_id"] or "-"))
        shown += 1
    stream = out()
    console = Console(file=stream, width=None if stream.isatty() else 200)  # a pipe gets whole lines, not 80 columns
    if not shown:
        console.print("no evidence matches", markup=False)
        return
    console.print(table)
    if more:
        Console(file=err()).print(f"showing the newest {TABLE_ROWS}; narrow with --since/--device/--limit or use --json",
                                  markup=False)


def printable(name: str) -> str:
    """A device-supplied name as one line of plain text that tells different names apart: every
    character Python does not call printable (controls, direction overrides, unassigned code
    points, the surrogates undecodable bytes became) as ``\\xNN``/``\\uNNNN``, a backslash doubled so
    an escape cannot be forged, and quotes when empty, when spaces at either end would otherwise be
    invisible, or when it starts with a quote."""
    text = "".join(_escape(ch) for ch in name)
    return f'"{text}"' if not text or text != text.strip() or text.startswith('"') else text


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch.isprintable():
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _plain(value: str | None) -> Any:
    from rich.text import Text

    return Text(printable(value) if value else "-")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
