"""Options and output helpers every command shares."""

from __future__ import annotations

import argparse
import contextvars
import copy
import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.evidence.evidence_service import EvidenceService

__all__ = ["add_data_dir", "add_json", "data_dir_of", "print_json", "default_data_dir", "open_evidence", "out", "err", "in_service",
           "cancelled", "check_cancelled", "CommandCancelled", "Delegation", "delegated", "getenv", "say_waiting"]


def default_data_dir() -> Path:
    """EGW_DATA_DIR, else the XDG per-user data directory."""
    explicit = os.environ.get("EGW_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "egw"


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help="gateway data directory (default: $EGW_DATA_DIR or ~/.local/share/egw)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def data_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if getattr(args, "data_dir", None) else default_data_dir()


@dataclass
class Delegation:
    """A command running inside ``egw run`` for a client of its control socket (see
    ``gateway.station.control``): where its output goes, the service's own evidence service, the
    client's EGW_* environment, and whether the client has gone (Ctrl-C)."""

    service: EvidenceService
    out: TextIO
    err: TextIO
    env: dict[str, str] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "the client went away (Ctrl-C)"


_delegation: contextvars.ContextVar[Delegation | None] = contextvars.ContextVar("egw_delegation", default=None)


class CommandCancelled(GatewayError):
    """The client that asked for this command has gone (Ctrl-C); the command stops where it safely can."""

    default_hint = "nothing half-done was kept; run the command again (items already stored are recognised)"


@contextmanager
def delegated(delegation: Delegation) -> Iterator[Delegation]:
    """Run the enclosed command on behalf of a control-socket client (the service's worker thread)."""
    token = _delegation.set(delegation)
    try:
        yield delegation
    finally:
        _delegation.reset(token)


def in_service() -> bool:
    """True when this command runs inside ``egw run`` on behalf of a client (the control socket):
    the service's own uploader delivers and its device watchers own the devices, so the command
    must not start its own."""
    return _delegation.get() is not None


def cancelled() -> bool:
    """True once the client of a delegated command has gone (Ctrl-C or a dropped connection). A long
    command polls this between units of work; locally Ctrl-C raises KeyboardInterrupt instead."""
    delegation = _delegation.get()
    return delegation is not None and delegation.cancel.is_set()


def check_cancelled() -> None:
    """Raise :class:`CommandCancelled` if the client has gone (see ``cancelled``)."""
    delegation = _delegation.get()
    if delegation is not None and delegation.cancel.is_set():
        raise CommandCancelled(f"cancelled: {delegation.cancel_reason}")


def getenv(name: str, default: str | None = None) -> str | None:
    """An EGW_* setting as the person who typed the command has it: the client's environment when the
    command runs inside the service (whose own environment is the service's), else this process's."""
    delegation = _delegation.get()
    if delegation is not None:
        return delegation.env.get(name, default)
    return os.environ.get(name, default)


def out() -> TextIO:
    """Where a command prints its results. Every command prints through this (never ``sys.stdout``
    directly) so that the same command can run inside the station service on behalf of a client."""
    delegation = _delegation.get()
    return delegation.out if delegation is not None else sys.stdout


def err() -> TextIO:
    """Where a command prints progress, prompts and warnings (see ``out``)."""
    delegation = _delegation.get()
    return delegation.err if delegation is not None else sys.stderr


@contextmanager
def open_evidence(args: argparse.Namespace, *, write: bool = True, **options: Any) -> Iterator[EvidenceService]:
    """The evidence service for this command's data directory. Every command opens it through here
    (never ``EvidenceService(...)`` directly): ``write=False`` for commands that only read.

    Inside ``egw run`` (a delegated command) a writer gets the service's own EvidenceService: one
    writer per data directory. Outside, a writer holds the data directory's writer lock while the
    service is open (``egw`` normally took it already, before deciding to run the command here); a
    reader gets a read-only handle that never changes or removes anything."""
    from gateway.evidence.evidence_service import EvidenceService

    delegation = _delegation.get()
    if write and delegation is not None:
        yield _with_options(delegation.service, options)
        return
    if not write:
        with EvidenceService(data_dir_of(args), read_only=True, **options) as service:
            yield service
        return
    from gateway.evidence import writer_lock

    data_dir = data_dir_of(args)
    lock = writer_lock.acquire(data_dir, on_wait=lambda holder: say_waiting(holder, data_dir))
    assert lock is not None
    try:
        with EvidenceService(data_dir, **options) as service:
            yield service
    finally:
        writer_lock.release(lock)


def _with_options(service: EvidenceService, options: dict[str, Any]) -> EvidenceService:
    """The service's EvidenceService as this command asked for it: ``with_sm3`` is per command (a view
    sharing the same database, store and hooks); anything else is the service's configuration."""
    if options.get("with_sm3") and not service.with_sm3:
        view = copy.copy(service)
        view.with_sm3 = True
        return view
    return service


def say_waiting(holder: Any, data_dir: Path) -> None:
    """The one line a writer prints while another process has the data directory."""
    stream = err()
    if holder.service:  # it holds the directory but is not answering on its socket yet (starting or stopping)
        stream.write(f"waiting for {holder.describe()} to take commands for {data_dir}…\n")
    else:
        stream.write(f"waiting for {holder.describe()} to finish with {data_dir}…\n")
    stream.flush()


def print_json(value: Any) -> None:
    stream = out()
    json.dump(value, stream, indent=2, sort_keys=True, default=str)
    stream.write("\n")
    stream.flush()
