"""``egw enroll --platform HOST:PORT --token T``: get this gateway's certificate from the platform CA."""

from __future__ import annotations

import argparse

from gateway.commands.common import add_data_dir, add_json, data_dir_of, print_json
from gateway.uplink.enroll import enroll

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("enroll", help="enrol this gateway with a platform (CSR + one-time token → certificate)")
    parser.add_argument("--platform", required=True, help="the platform's ingest address HOST:PORT")
    parser.add_argument("--token", required=True, help="one-time token from `egw platform token --gateway-id ID` (pins the platform CA, enrols only that id)")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext gRPC, no TLS at all — only for local experiments with `egw simulate platform --insecure`")
    add_data_dir(parser)
    add_json(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = enroll(data_dir_of(args), args.platform, args.token, insecure=args.insecure)
    if args.json:
        print_json(result.__dict__)
    else:
        print(f"enrolled gateway {result.gateway_id} with {result.platform_id} at {result.platform}")
        print(f"certificate sha256 {result.certificate_sha256}, valid until {result.not_after}")
        if args.insecure:
            print("warning: plaintext link (--insecure); never use this outside local experiments")
    return 0
