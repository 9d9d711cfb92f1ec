"""``egw platform tokens|ls``: operate the reference platform's data directory.

The platform is a simulator; this command only exists so integrators can
drive it from the one ``egw`` entry point (the gateway proper never imports it).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from gateway.commands.common import add_json, print_json
from gateway.errors import ConfigError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("platform", help="reference platform: enrolment tokens, what arrived")
    psub = parser.add_subparsers(dest="platform_command", metavar="ACTION")
    psub.required = True
    tokens = psub.add_parser("tokens", help="issue a single-use enrolment token")
    tokens.add_argument("--data", type=Path, required=True, help="the platform's data directory")
    tokens.add_argument("--ttl", type=float, default=3600.0, help="seconds until the token expires (default 3600)")
    add_json(tokens)
    tokens.set_defaults(func=run_tokens)
    ls = psub.add_parser("ls", help="list what arrived, with receipt ids")
    ls.add_argument("--data", type=Path, required=True, help="the platform's data directory")
    add_json(ls)
    ls.set_defaults(func=run_ls)
    cmd = psub.add_parser("cmd", help="send a signed command to a gateway over MQTT and print its reply")
    cmd.add_argument("--data", type=Path, required=True, help="the platform's data directory (its key signs the command)")
    cmd.add_argument("--mqtt", required=True, metavar="URL", help="the broker both sides use")
    cmd.add_argument("gateway", help="gateway id")
    cmd.add_argument("name", help="ping | status | sync-time | reupload")
    cmd.add_argument("args", nargs="*", metavar="KEY=VALUE", help="command arguments, e.g. evidence_id=…")
    cmd.add_argument("--timeout", type=float, default=10.0)
    add_json(cmd)
    cmd.set_defaults(func=run_cmd)


def _check(data: Path) -> None:
    if not (data / "index.db").exists():
        raise ConfigError(f"{data} is not a platform data directory", f"start one with `egw simulate platform --data {data}`")


def run_tokens(args: argparse.Namespace) -> int:
    from simulators.platform.cli import issue_token
    _check(args.data)
    try:
        info = issue_token(args.data, args.ttl)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from exc
    if args.json:
        print_json(info)
    else:
        print(info["token"])
        expires = dt.datetime.fromtimestamp(info["expires_at"], dt.UTC).isoformat(timespec="seconds")
        print(f"single use, expires {expires}; on the gateway: egw enroll --platform {info['address']} --token <token>",
              file=__import__("sys").stderr)
    return 0


def run_ls(args: argparse.Namespace) -> int:
    from simulators.platform.cli import list_received
    _check(args.data)
    rows = list_received(args.data)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(f"{r['received_at']}  {r['receipt_id']}  {r['gateway_id']}  {r['evidence_id']}  {r['sha256'][:16]}…  {r['size']} B")
    print(f"{len(rows)} receipt(s), {len({r['sha256'] for r in rows})} distinct blob(s)")
    return 0


def run_cmd(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from simulators.platform_mqtt import send_command

    _check(args.data)
    pairs = {}
    for item in args.args:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"command argument {item!r} is not KEY=VALUE", "e.g. evidence_id=01a2…")
        pairs[key] = value
    reply = send_command(args.data, args.mqtt, args.gateway, args.name, pairs,
                         signing_key=args.data / "pki" / "signer.key", timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(reply))
    else:
        print(("ok" if reply.ok else f"REJECTED: {reply.error}") + "".join(f"\n  {k}: {v}" for k, v in reply.result.items()))
    return 0 if reply.ok else 1
