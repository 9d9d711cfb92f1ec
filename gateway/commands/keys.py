"""``egw keys init``: create the gateway's signing key and self-signed certificate."""

from __future__ import annotations

import argparse

from gateway.commands.common import add_data_dir, add_json, data_dir_of, print_json
from gateway.evidence.identity import PASSPHRASE_ENV, init_identity


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="the gateway's signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys_sub.required = True
    init = keys_sub.add_parser("init", help="create an ECDSA P-256 key (0600) and a self-signed certificate")
    add_data_dir(init)
    add_json(init)
    init.add_argument("--gateway-id", help="name of this gateway (default: gw- + key fingerprint)")
    init.add_argument("--force", action="store_true", help="replace an existing key (evidence signed with it stays verifiable by its bundle certificates)")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    import os

    identity = init_identity(data_dir_of(args), gateway_id=args.gateway_id, force=args.force)
    info = {
        "gateway_id": identity.gateway_id,
        "key": str(identity.directory / "gateway.key"),
        "certificate": str(identity.directory / "gateway.crt"),
        "encrypted": bool(os.environ.get(PASSPHRASE_ENV)),
    }
    if args.json:
        print_json(info)
    else:
        print(f"gateway {info['gateway_id']}: key {info['key']} ({'encrypted' if info['encrypted'] else 'not encrypted; set ' + PASSPHRASE_ENV + ' to encrypt'})")
    return 0
