"""``egw verify DIR``: check a bundle offline. Exit 0 when everything holds, 1 otherwise."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.commands.common import add_json, out, print_json
from gateway.evidence.bundle import verify_bundle
from gateway.evidence.identity import load_pem_certificates


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="verify an exported bundle (DIR) or a sealed document (FILE.pdf) offline")
    p.add_argument("directory", type=Path)
    p.add_argument("--trust", type=Path, help="PEM file of CA certificates the signer must chain to")
    p.add_argument("--document", type=Path, help="the document a signing record must bind to")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.directory.suffix.lower() == ".pdf":  # a sealed document, not a bundle: gateway/documents/verify_pdf.py
        from gateway.commands.verify_document import run_pdf

        return run_pdf(args)
    trust = load_pem_certificates(args.trust.read_bytes()) if args.trust else None
    checks = verify_bundle(args.directory, trust=trust, document=args.document)
    ok = all(c.ok for c in checks)
    if args.json:
        print_json({"ok": ok, "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]})
    else:
        for check in checks:
            print(check.line(), file=out())
        print("VERIFIED" if ok else f"NOT VERIFIED: {sum(not c.ok for c in checks)} check(s) failed", file=out())
    return 0 if ok else 1
