"""``egw sign --document FILE --signer NAME``: a signing session bound to a document."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.commands.common import add_data_dir, add_json, data_dir_of, print_json, open_evidence
from gateway.workflows.signing import ROLES, SigningSession


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sign", help="capture a signature and a fingerprint bound to a document, as signed evidence")
    p.add_argument("--document", type=Path, required=True, help="the document being signed (hashed, never changed)")
    p.add_argument("--signer", required=True, help="the signer's name")
    p.add_argument("--role", choices=ROLES, default="party")
    p.add_argument("--signpad", help="signature pad URL (usbip://HOST:PORT/BUSID or usb://VID:PID)")
    p.add_argument("--fingerprint", help="fingerprint reader URL (device path, pty or socket://HOST:PORT)")
    p.add_argument("--place", help="where the signing happens")
    p.add_argument("--officer-id", help="the officer conducting the session")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds the signer has on the pad")
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_evidence(args) as service:
        session = SigningSession(service, place=args.place, officer_id=args.officer_id,
                                 prompt=lambda text: print(text, file=sys.stderr, flush=True))
        signed = session.run(args.document, args.signer, args.role, signpad_url=args.signpad,
                             fingerprint_url=args.fingerprint, pad_timeout=args.timeout)
    if args.json:
        print_json({"evidence_id": signed.evidence_id, "items": signed.items, "record": signed.record})
    else:
        print(signed.evidence_id)
        print(f"signed record binds {signed.record['document']['name']} (sha256 {signed.record['document']['sha256']})", file=sys.stderr)
    return 0
