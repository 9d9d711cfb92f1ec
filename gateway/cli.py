"""``egw``: the one command-line entry point.

Each sub-command lives in ``gateway.commands.<name>`` and exposes
``register(subparsers)``; the module list below is the whole registry, so a
new command is one line here and one module there.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import ConfigError, GatewayError

__all__ = ["main", "build_parser"]

COMMAND_MODULES = [
    "gateway.commands.keys",
    "gateway.commands.ingest",
    "gateway.commands.export",
    "gateway.commands.verify",
    "gateway.commands.status",
    "gateway.commands.ls",
    "gateway.commands.custody",
    "gateway.commands.run",
    "gateway.commands.sign",
    "gateway.commands.dock",
    "gateway.commands.rapidtest",
    "gateway.commands.strip",
    "gateway.commands.mqtt",
    "gateway.commands.simulate",
    "gateway.commands.demo",
    "gateway.commands.enroll",
    "gateway.commands.sync",
    "gateway.commands.platform",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egw",
        description="Enforcement device gateway: capture, sign, keep custody of and deliver evidence.",
    )
    parser.add_argument("--version", action="version", version=f"egw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
