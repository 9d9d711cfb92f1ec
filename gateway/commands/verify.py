"""``egw verify DIR``: judge an exported bundle offline (docs/trust.md, docs/formats/bundle.md).

Exit 0 VERIFIED (every check against a trust anchor the caller chose), 1 FAILED, 2 usage error,
3 CONSISTENT, UNTRUSTED (every check holds but no trust anchor says who made the bundle).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.commands.common import add_data_dir, add_json, data_dir_of, out, print_json
from gateway.errors import ConfigError
from gateway.evidence.bundle import judge_bundle
from gateway.evidence.trust import Anchors, load_anchor_paths, pinned_anchors, read_crl_file


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="verify an exported bundle (DIR) or a sealed document (FILE.pdf) offline")
    p.add_argument("directory", type=Path)
    p.add_argument("--trust", type=Path, action="append", default=[], metavar="FILE|DIR",
                   help="the platform CA certificate(s) to believe (PEM file, or a directory of *.pem/*.crt); "
                        "repeatable. Default: the CA pinned at enrolment in the data directory, if any")
    p.add_argument("--crl", type=Path, action="append", default=[], metavar="FILE",
                   help="a fresher CRL of the trust anchor (PEM or DER); repeatable, the highest CRL number wins")
    p.add_argument("--document", type=Path, help="the document a signing record must bind to")
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def _anchors(args: argparse.Namespace) -> Anchors:
    if args.trust:
        return load_anchor_paths(args.trust)
    return pinned_anchors(data_dir_of(args))


def run(args: argparse.Namespace) -> int:
    if args.directory.suffix.lower() == ".pdf":  # a sealed document, not a bundle: gateway/documents/verify_pdf.py
        from gateway.commands.verify_document import run_pdf

        return run_pdf(args)
    if not args.directory.is_dir():
        raise ConfigError(f"{args.directory} is not a directory", "pass the directory `egw export` wrote")
    if args.document is not None and not args.document.is_file():
        raise ConfigError(f"cannot read document {args.document}", "pass the document file the record was signed over")
    anchors = _anchors(args)
    crls = [(str(path), read_crl_file(path)) for path in args.crl]
    report = judge_bundle(args.directory, anchors=anchors, crls=crls, document=args.document)
    relied = report.relied_on()
    if args.json:
        print_json({"ok": report.exit_code == 0, "verdict": report.verdict,
                    "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks],
                    "relied_on": {key.replace(" ", "_"): value for key, value in relied.items()}})
        return report.exit_code
    for check in report.checks:
        print(check.line(), file=out())
    for key, value in relied.items():
        print(f"{key}: {value}", file=out())
    failed = sum(not c.ok for c in report.checks)
    print(report.verdict + (f": {failed} check(s) failed" if failed else ""), file=out())
    return report.exit_code
