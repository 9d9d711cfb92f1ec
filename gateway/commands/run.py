"""``egw run -c gateway.toml``: the station service."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path

from gateway.config import load_config
from gateway.station.logs import setup_logging
from gateway.uplink.mqtt_config import PLAINTEXT_FLAG, parse_broker_url


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the station service from a config file")
    p.add_argument("-c", "--config", type=Path, required=True, help="gateway.toml (see gateway.example.toml)")
    p.add_argument("--data-dir", type=Path, help="override data_dir from the config")
    p.add_argument(PLAINTEXT_FLAG, dest="allow_plaintext_password", action="store_true",
                   help="accept mqtt://user:pass@ to a host that is not loopback (the password crosses the network in "
                        "clear; same as allow_plaintext_password = true under [mqtt])")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.station.allocator import ARENA_MAX, limit_malloc_arenas

    arenas = limit_malloc_arenas()  # first, before any thread allocates: see gateway/station/allocator.py
    config = load_config(args.config, data_dir_override=args.data_dir)
    if args.allow_plaintext_password:
        config = dataclasses.replace(config, mqtt_allow_plaintext_password=True)
    if config.mqtt_url:  # refused here, before anything starts, rather than by the link later
        parse_broker_url(config.mqtt_url, allow_plaintext_password=config.mqtt_allow_plaintext_password)
    setup_logging(config.log_format, getattr(logging, config.log_level.upper()))
    logging.getLogger("egw.run").debug("malloc arenas: %s", f"at most {ARENA_MAX}" if arenas == "set" else arenas,
                                      extra={"fields": {"malloc_arenas": arenas}})
    from gateway.station.runtime import Runtime

    async def main() -> int:
        runtime = Runtime(config, args.config)

        def ready(info: dict[str, object]) -> None:
            # First line of stdout: where to look. Tests and scripts read it.
            print(json.dumps({"event": "ready", **info}), flush=True)

        return await runtime.run(ready)

    code = asyncio.run(main())
    sys.stdout.flush()
    return code
