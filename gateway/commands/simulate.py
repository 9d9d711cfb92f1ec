"""``egw simulate KIND …``: run one simulator standalone.

Each simulator module exposes ``main(argv) -> int`` and prints the endpoint
to connect to (pty path, ``socket://`` URL, ``usbip://`` URL, gRPC address)
as the first line of stdout.
"""

from __future__ import annotations

import argparse
import importlib

from gateway.errors import ConfigError

SIMULATORS: dict[str, str] = {
    # kind: module with main(argv) -> int
    "bodycam": "simulators.bodycam.cli",
    "signpad": "simulators.signpad.cli",
    "fingerprint": "simulators.fingerprint.cli",
    "platform": "simulators.platform.cli",
    "rapidtest": "simulators.rapidtest.cli",
    "strips": "simulators.strips.cli",
    "platform-mqtt": "simulators.platform_mqtt.cli",
    "terminal": "simulators.terminal.cli",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("simulate", help="run a device or platform simulator", add_help=False)
    parser.add_argument("kind", nargs="?", help="one of: " + ", ".join(sorted(SIMULATORS)) if SIMULATORS else "simulator kind")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.kind not in SIMULATORS:
        raise ConfigError(
            f"unknown simulator {args.kind!r}",
            "choose one of: " + ", ".join(sorted(SIMULATORS)),
        )
    module = importlib.import_module(SIMULATORS[args.kind])
    return int(module.main(list(args.rest)) or 0)
