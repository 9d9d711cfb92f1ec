"""``egw sign --document FILE --signer NAME``: a signing session bound to a document."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.commands.common import add_data_dir, add_json, err, open_evidence, out, print_json
from gateway.workflows.signing import ROLES, SigningRecord, SigningSession


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
                                 prompt=_prompt)
        signed = session.run(args.document, args.signer, args.role, signpad_url=args.signpad,
                             fingerprint_url=args.fingerprint, pad_timeout=args.timeout)
    if args.json:
        print_json({"evidence_id": signed.evidence_id, "items": signed.items, "record": signed.record})
    else:
        out().write(_human(signed) + "\n")
        out().flush()
    return 0


def _prompt(text: str) -> None:
    err().write(text + "\n")
    err().flush()


def _human(signed: SigningRecord) -> str:
    """The record's evidence id first (what `egw export` takes), who signed what, then each captured
    item with its own evidence id. Signer and document names are escaped: two different ones never
    print the same, and control characters in them are shown, not obeyed."""
    from gateway.commands.ls import printable

    record = signed.record
    signer, document = record.get("signer") or {}, record["document"]
    lines = [f"{signed.evidence_id}  signing record: {printable(str(signer.get('name', '')))} "
             f"({signer.get('role', '?')}) signed {printable(str(document['name']))} (sha256 {document['sha256']})"]
    lines += [f"{evidence_id}  {printable(name)}" for name, evidence_id in sorted(signed.items.items())]
    return "\n".join(lines)
