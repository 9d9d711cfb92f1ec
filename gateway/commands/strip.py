"""``egw strip read PHOTO… [--json]``: read colloidal-gold test cassettes from photos.

One line per photo: ``PHOTO  C:x.xxx  T:x.xxx  T/C:x.xxx  judgement``; with
``--json`` a list of objects instead. A photo that cannot be read is named on
stderr with the reason and what to do, the others are still read, and the
exit status is 1. The photos are only read, never modified: they are the
evidence.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from drivers.strip_reader import StripReader, StripReadError, StripThresholds
from gateway.commands.common import add_json, print_json
from gateway.errors import ConfigError

__all__ = ["register", "run_read", "read_photos"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def run_read(args: argparse.Namespace) -> int:
    results = read_photos(list(args.photos), _thresholds(args))
    if args.json:
        print_json(results)
    else:
        for item in results:
            if item["ok"]:
                print(f"{item['photo']}  {item['format']}  {item['judgement']}", flush=True)
    failed = [item for item in results if not item["ok"]]
    for item in failed:
        print(f"error: {item['photo']}: {item['error']}", file=sys.stderr)
    if failed:
        print(f"hint: {len(failed)} of {len(results)} photo(s) could not be read; re-take those photos as the "
              "messages say", file=sys.stderr)
        return 1
    return 0
