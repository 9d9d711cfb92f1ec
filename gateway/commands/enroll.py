"""``egw enroll --platform HOST:PORT --token-file FILE``: get this gateway's certificate from the platform CA.

The token is a secret (whoever holds it may enrol a gateway under this id), so it is read from a file
(``--token-file``), from stdin (``--token -``) or from ``EGW_ENROLL_TOKEN``; ``--token T`` on the command
line still works but says that it lands in ``ps`` and the shell history."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gateway.commands.common import add_data_dir, add_json, data_dir_of, err, print_json
from gateway.errors import ConfigError
from gateway.uplink.enroll import enroll

__all__ = ["register", "run", "TOKEN_ENV"]

TOKEN_ENV = "EGW_ENROLL_TOKEN"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("enroll", help="enrol this gateway with a platform (CSR + one-time token → certificate)")
    parser.add_argument("--platform", required=True, help="the platform's ingest address HOST:PORT")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--token-file", type=Path, metavar="FILE",
                        help="read the one-time token from FILE (from `egw platform token --gateway-id ID`: it pins the platform CA and enrols only that id)")
    source.add_argument("--token", metavar="TOKEN",
                        help="`-` reads the token from stdin; a token given here is visible in `ps` and the shell "
                             f"history (prefer --token-file or {TOKEN_ENV})")
    parser.add_argument("--insecure", action="store_true",
                        help="plaintext gRPC, no TLS at all — only for local experiments with `egw simulate platform --insecure`")
    add_data_dir(parser)
    add_json(parser)
    parser.set_defaults(func=run)


def _read_token(args: argparse.Namespace) -> str:
    """The token from --token-file, stdin, EGW_ENROLL_TOKEN or (with a warning) the command line."""
    if args.token_file is not None:
        try:
            token: str = args.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the enrolment token from {args.token_file}: {exc}",
                              "pass the file `egw platform token` wrote, or --token - to paste it on stdin") from exc
        where = str(args.token_file)
    elif args.token == "-":
        token, where = sys.stdin.readline().strip(), "stdin"
    elif args.token is not None:
        print(f"warning: a token on the command line is visible to other users in `ps` and stays in the shell history; "
              f"use --token-file FILE, --token - (stdin) or {TOKEN_ENV}", file=err())
        token, where = str(args.token).strip(), "--token"
    else:
        token, where = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
        if not token:
            raise ConfigError("no enrolment token given",
                              f"pass --token-file FILE, --token - (read from stdin) or set {TOKEN_ENV}")
    if not token:
        raise ConfigError(f"the enrolment token from {where} is empty", "issue one with `egw platform token --gateway-id ID`")
    return token


def run(args: argparse.Namespace) -> int:
    result = enroll(data_dir_of(args), args.platform, _read_token(args), insecure=args.insecure)
    if args.json:
        print_json(result.__dict__)
    else:
        print(f"enrolled gateway {result.gateway_id} with {result.platform_id} at {result.platform}")
        print(f"certificate sha256 {result.certificate_sha256}, valid until {result.not_after}")
        if args.insecure:
            print("warning: plaintext link (--insecure); never use this outside local experiments")
    return 0
