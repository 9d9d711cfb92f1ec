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


SUMMARIES: dict[str, str] = {
    "bodycam": "body-worn cameras on a USB/IP server (stdin: unplug, replug, eject, record, halt, quit)",
    "signpad": "a signature pad (USB HID) on a USB/IP server",
    "fingerprint": "an R30x fingerprint module on a pty or TCP",
    "platform": "the reference platform: enrolment CA and EvidenceIngest over gRPC",
    "rapidtest": "a food-safety rapid-test analyzer speaking ASTM E1381/E1394 on a pty or TCP",
    "strips": "photos of colloidal-gold test strips, written to a directory",
    "platform-mqtt": "the platform's MQTT side: receives gateway messages, sends signed commands",
}
_CHOICES = ", ".join(sorted(SIMULATORS))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # The simulator parses its own options, so `egw simulate KIND --help` is the simulator's help;
    # `egw simulate --help` (no kind) is this one.
    parser = sub.add_parser(
        "simulate", help="run a device or platform simulator", add_help=False,
        usage="egw simulate KIND [OPTIONS]   (egw simulate KIND --help for its options)",
        description="Run one simulator standalone. Its first line of stdout is the endpoint to connect to "
                    "(pty path, socket://, usbip:// URL, gRPC address); see docs/simulators.md.",
        epilog="kinds:\n" + "\n".join(f"  {kind:<14} {text}" for kind, text in SUMMARIES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-h", "--help", action="store_true", help="show this help (or, after KIND, the simulator's)")
    parser.add_argument("kind", nargs="?", metavar="KIND", help="one of: " + _CHOICES)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run, simulate_parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.help:
        args.simulate_parser.print_help()
        return 0
    if args.kind is None:
        raise ConfigError("which simulator? name one: egw simulate KIND", "KIND is one of: " + _CHOICES)
    if args.kind not in SIMULATORS:
        raise ConfigError(f"unknown simulator {args.kind!r}", "choose one of: " + _CHOICES)
    module = importlib.import_module(SIMULATORS[args.kind])
    try:
        return int(module.main(list(args.rest)) or 0)
    except OverflowError as exc:  # socket.bind's word for a port outside 0-65535
        raise ConfigError(f"egw simulate {args.kind}: {exc}", "give a port from 0 to 65535 (0 = any free port)") from exc
