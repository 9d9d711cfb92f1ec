"""``egw strip read PHOTO… [--json]``: read colloidal-gold test cassettes from photos.

One line per photo: ``PHOTO  C:x.xxx  T:x.xxx  T/C:x.xxx  judgement``; with
``--json`` a list of objects instead. A photo that cannot be read is named on
stderr with the reason and what to do, the others are still read, and the
exit status is 1. The photos are only read, never modified: they are the
evidence.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drivers.strip_reader import StripReader, StripReadError, StripThresholds
from gateway.commands.common import add_data_dir, add_json, err, open_evidence, out, print_json
from gateway.errors import ConfigError

__all__ = ["register", "run_read", "read_photos"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("strip", help="read colloidal-gold test strips from photos")
    strip_sub = parser.add_subparsers(dest="strip_command", metavar="ACTION")
    strip_sub.required = True
    read = strip_sub.add_parser(
        "read", help="read C, T, T/C and the judgement from cassette photos",
        description="Read C and T line intensities, T/C and the judgement (positive / suspicious / negative / "
                    "invalid) from photos of a colloidal-gold test cassette.",
    )
    read.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photo file(s), JPEG or PNG")
    defaults = StripThresholds()
    read.add_argument("--c-min", type=float, default=defaults.c_min,
                      help=f"C at or below this is an invalid card (default {defaults.c_min})")
    read.add_argument("--positive-max", type=float, default=defaults.positive_max,
                      help=f"T/C at or below this is positive (A, default {defaults.positive_max})")
    read.add_argument("--negative-min", type=float, default=defaults.negative_min,
                      help=f"T/C at or above this is negative (B, default {defaults.negative_min})")
    read.add_argument("--record", action="store_true",
                      help="also keep each photo and its reading as signed evidence (photo + result document, queued for upload)")
    read.add_argument("--sample", help="sample id recorded with --record")
    read.add_argument("--inspector", help="inspector id recorded with --record")
    add_data_dir(read)
    add_json(read)
    read.set_defaults(func=run_read)


def _thresholds(args: argparse.Namespace) -> StripThresholds:
    try:
        return StripThresholds(c_min=args.c_min, positive_max=args.positive_max, negative_min=args.negative_min)
    except ValueError as exc:
        raise ConfigError(f"bad strip thresholds: {exc}",
                          "give --c-min >= 0 and --positive-max <= --negative-min") from exc


def read_photos(photos: list[Path], thresholds: StripThresholds) -> list[dict[str, Any]]:
    """Read each photo; a failure becomes an entry with ``ok: false`` and the reason."""
    reader = StripReader(thresholds=thresholds)
    results: list[dict[str, Any]] = []
    for photo in photos:
        try:
            reading = reader.read_file(photo)
        except StripReadError as exc:
            results.append({"photo": str(photo), "ok": False, "error": str(exc), "error_type": type(exc).__name__})
            continue
        results.append({"photo": str(photo), "ok": True, **reading.to_json()})
    return results


def record_readings(args: argparse.Namespace, results: list[dict[str, Any]], sample: str | None, inspector: str | None) -> None:
    """The photo is evidence first; the reading is a result document that names the photo by digest."""
    import json as _json

    from gateway.evidence.evidence_service import path_as_data
    from gateway.evidence.manifest import ManifestInput

    with open_evidence(args) as service:
        for item in results:
            if not item["ok"]:
                continue
            photo = Path(item["photo"])
            stored = service.ingest_file(photo, ManifestInput(source_path=path_as_data(photo.absolute()), kind="photo",
                                                              device_id="strip-reader", officer_id=inspector), priority=2)
            document = {"v": "egw.strip-reading/1", "sample_id": sample, "inspector_id": inspector,
                        "photo": {"evidence_id": stored.evidence_id, "sha256": stored.sha256},
                        "reading": {k: v for k, v in item.items() if k not in ("photo", "ok")}}
            result = service.ingest_bytes(_json.dumps(document, indent=2, sort_keys=True).encode(), ManifestInput(
                source_path=f"strip/{stored.sha256}/reading.json", kind="result", media_type="application/vnd.egw.strip-reading+json",
                device_id="strip-reader", officer_id=inspector, extra={"strip": document["reading"], "photo": document["photo"]}), priority=2)
            item["evidence_id"], item["photo_evidence_id"] = result.evidence_id, stored.evidence_id
        service.sign_tree_head()


def run_read(args: argparse.Namespace) -> int:
    results = read_photos(list(args.photos), _thresholds(args))
    if args.record:
        record_readings(args, results, args.sample, args.inspector)
    if args.json:
        print_json(results)
    else:
        for item in results:
            if item["ok"]:
                recorded = f"  evidence {item['evidence_id']}" if "evidence_id" in item else ""
                print(f"{item['photo']}  {item['format']}  {item['judgement']}{recorded}", file=out(), flush=True)
    failed = [item for item in results if not item["ok"]]
    for item in failed:
        print(f"error: {item['photo']}: {item['error']}", file=err())
    if failed:
        print(f"hint: {len(failed)} of {len(results)} photo(s) could not be read; re-take those photos as the "
              "messages say", file=err())
        return 1
    return 0
