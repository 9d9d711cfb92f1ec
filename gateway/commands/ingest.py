"""``egw ingest PATH…``: import files (e.g. from a card reader) as evidence."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

from gateway.commands.common import CommandCancelled, add_data_dir, add_json, check_cancelled, err, open_evidence, out, print_json
from gateway.errors import ConfigError, GatewayError
from gateway.evidence.evidence_service import EvidenceService, IngestResult, path_as_data
from gateway.evidence.manifest import KINDS, ManifestInput


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ingest", help="store, sign and queue files as evidence")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories (walked; symlinks are not followed)")
    p.add_argument("--device-id", help="the device the files came from")
    p.add_argument("--officer-id", help="the officer they belong to")
    p.add_argument("--unit", help="the officer's unit")
    p.add_argument("--kind", choices=KINDS, help="evidence kind (default: from the media type)")
    p.add_argument("--important", action="store_true", help="officer-flagged: uploaded first")
    p.add_argument("--sm3", action="store_true", help="also compute the SM3 digest")
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def _walk(path: Path) -> Iterator[Path]:
    if path.is_symlink():
        yield path  # reported as "not a regular file" by the store, never followed
    elif path.is_dir():
        for root, dirs, files in os.walk(path, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                yield Path(root) / name
    else:
        yield path


def _stop_if_cancelled(_copied: int) -> None:
    """Inside `egw run`, a client's Ctrl-C stops the copy in progress (its temporary file is removed)."""
    check_cancelled()


def _kind_conflict(service: EvidenceService, result: IngestResult, asked: str | None) -> ConfigError | None:
    """When a file already stored is ingested again with another ``--kind``: what to tell the operator.
    The stored item keeps its kind (its manifest is signed); silently returning the old id hid that."""
    if not result.duplicate or asked is None:
        return None
    stored = service.state.get(result.evidence_id).kind
    if stored == asked:
        return None
    return ConfigError(f"already evidence as {stored} with id {result.evidence_id}; it was not stored again as {asked}",
                       f"a signed manifest cannot change: keep {result.evidence_id} (`egw ls` shows it) and record the "
                       "right kind in the case file; run without --kind to get its id")


def run(args: argparse.Namespace) -> int:
    results: list[dict[str, object]] = []
    failures = 0
    seen = 0
    with open_evidence(args, with_sm3=args.sm3) as service:
        for given in args.paths:
            for path in _walk(given):
                seen += 1
                check_cancelled()
                item = ManifestInput(
                    source_path=path_as_data(path.absolute()), kind=args.kind, device_id=args.device_id,
                    officer_id=args.officer_id, unit=args.unit, important=args.important,
                )
                try:
                    result = service.ingest_file(path, item, priority=1 if args.important else 0,
                                                 progress=_stop_if_cancelled)
                    conflict = _kind_conflict(service, result, args.kind)
                    if conflict is not None:
                        raise conflict
                except CommandCancelled:
                    raise
                except GatewayError as exc:
                    failures += 1
                    results.append({"path": path_as_data(path), "error": str(exc), "hint": exc.hint})
                    if not args.json:
                        print(f"error: {path_as_data(path)}: {exc}\nhint: {exc.hint}", file=err())
                    continue
                results.append({"path": path_as_data(path), "evidence_id": result.evidence_id, "sha256": result.sha256,
                                "size": result.size, "duplicate": result.duplicate, "state": result.state})
                if not args.json:
                    print(result.evidence_id, file=out(), flush=True)
        if seen:
            service.sign_tree_head()
    if not seen:
        raise ConfigError("no files to ingest in " + ", ".join(path_as_data(p) for p in args.paths) + " (empty directories)",
                          "check the path: the recorder's files may be in a subdirectory not yet copied or mounted")
    if args.json:
        print_json({"items": results, "failed": failures})
    return 1 if failures else 0
