"""``egw demo``: the whole station on loopback — see ``gateway.demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.commands.common import add_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the platform, simulated devices and the station on loopback, end to end")
    p.add_argument("--workdir", type=Path, help="keep the demo's data here (default: a new temporary directory)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args.workdir, args.json)
