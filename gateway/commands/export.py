"""``egw export EVIDENCE_ID DIR``: write a self-contained, offline-verifiable bundle."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.commands.common import add_data_dir, add_json, open_evidence, out, print_json
from gateway.evidence.bundle import export_bundle
from gateway.evidence.private_files import tighten


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export", help="write an evidence bundle for offline verification")
    p.add_argument("evidence_id")
    p.add_argument("directory", type=Path)
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def _owner_only(directory: Path) -> None:
    """A bundle holds the evidence itself: 0700 directories and 0600 files whatever the umask, for its
    owner to hand on deliberately (copy it, or chmod it, to share it)."""
    tighten(directory)
    for parent, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            tighten(Path(parent) / name)


def run(args: argparse.Namespace) -> int:
    # A writer, not a reader: the export is itself a custody event and the bundle's proof covers the tree
    # head signed after it. Inside `egw run` it runs in the service; beside `egw ingest` it waits its turn.
    with open_evidence(args) as service:
        index = export_bundle(service, args.evidence_id, args.directory)
    _owner_only(args.directory)
    if args.json:
        print_json({"directory": str(args.directory), **index})
    else:
        print(f"exported {args.evidence_id} to {args.directory}", file=out())
    return 0
