"""Options and output helpers every command shares."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from gateway.evidence.service import EvidenceService

__all__ = ["add_data_dir", "add_json", "data_dir_of", "print_json", "default_data_dir", "open_evidence", "out", "err", "in_service"]


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


def in_service() -> bool:
    """True when this command runs inside ``egw run`` on behalf of a client (the control socket):
    the service's own uploader delivers and its device watchers own the devices, so the command
    must not start its own."""
    return False


def out() -> TextIO:
    """Where a command prints its results. Every command prints through this (never ``sys.stdout``
    directly) so that the same command can run inside the station service on behalf of a client."""
    return sys.stdout


def err() -> TextIO:
    """Where a command prints progress, prompts and warnings (see ``out``)."""
    return sys.stderr


@contextmanager
def open_evidence(args: argparse.Namespace, *, write: bool = True, **options: Any) -> Iterator["EvidenceService"]:
    """The evidence service for this command's data directory. Every command opens it through here
    (never ``EvidenceService(...)`` directly): ``write=False`` for commands that only read."""
    from gateway.evidence.service import EvidenceService

    with EvidenceService(data_dir_of(args), **options) as service:
        yield service


def print_json(value: Any) -> None:
    stream = out()
    json.dump(value, stream, indent=2, sort_keys=True, default=str)
    stream.write("\n")
    stream.flush()
