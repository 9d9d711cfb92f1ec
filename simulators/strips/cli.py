"""``egw simulate strips --out DIR --count N [--seed S]``: write synthetic strip photos.

The first line of output is the directory written (the simulator's
"endpoint"); then one line per photo with its true reading and judgement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simulators.controls import EPILOGS
from simulators.strips.dataset import generate

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egw simulate strips",
        description="Render synthetic colloidal-gold cassette photos with known C/T line intensities.",
        epilog=EPILOGS["strips"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write strip_NNNN.jpg/.json into")
    parser.add_argument("--count", type=int, default=10, help="number of photos (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same photos")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.count < 1:
        print("error: --count must be at least 1\nhint: ask for one or more photos", file=sys.stderr)
        return 2
    if args.seed < 0:
        print("error: --seed must not be negative\nhint: use 0 or a positive integer", file=sys.stderr)
        return 2
    try:
        paths = generate(args.out, args.count, args.seed)
    except OSError as exc:
        print(f"error: cannot write photos to {args.out}: {exc}\nhint: check the directory's permissions and free space",
              file=sys.stderr)
        return 1
    print(args.out.resolve(), flush=True)
    for jpg in paths:
        record = json.loads(jpg.with_suffix(".json").read_text())
        print(f"{jpg.name}  {record['format']}  {record['judgement']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
