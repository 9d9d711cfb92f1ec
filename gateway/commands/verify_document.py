"""``egw verify FILE.pdf``: the PDF half of ``egw verify`` (the bundle half is ``verify.py``).

Prints one line per signature and time-stamp (who signed or sealed, in which
role, what a party's or officer's signature binds, when and by which
time-stamp), then what is wrong with the embedded files, then the verdict; exit codes as in
docs/trust.md. The trust anchors are ``--trust`` only: a PDF carries its CA,
which is never believed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from gateway.commands.common import out, print_json
from gateway.documents.verify_pdf import verify_pdf
from gateway.errors import ConfigError
from gateway.evidence.identity import load_pem_certificates

__all__ = ["run_pdf"]


def _pem_files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".pem", ".crt"))
        else:
            found.append(path)
    return found


def _as_list(value: object) -> list[Path]:
    if value is None:
        return []
    return [Path(v) for v in value] if isinstance(value, list) else [Path(str(value))]


def _anchors(args: argparse.Namespace) -> list[x509.Certificate]:
    anchors: list[x509.Certificate] = []
    for path in _pem_files(_as_list(getattr(args, "trust", None))):
        try:
            anchors += load_pem_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--trust {path}: not a readable PEM certificate file ({exc})") from exc
    return anchors


def _crls(args: argparse.Namespace) -> list[x509.CertificateRevocationList]:
    crls: list[x509.CertificateRevocationList] = []
    for path in _as_list(getattr(args, "crl", None)):
        try:
            data = path.read_bytes()
            crls.append(x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--crl {path}: not a readable CRL ({exc})") from exc
    return crls


def run_pdf(args: argparse.Namespace) -> int:
    path: Path = args.directory
    if not path.is_file():
        raise ConfigError(f"{path} is not a readable file", hint="give the sealed PDF's path")
    report = verify_pdf(path, _anchors(args), _crls(args))
    if args.json:
        print_json(report.as_json())
        return report.exit_code
    for finding in report.findings:
        print(finding.line(), file=out())
    for problem in report.problems:
        print(f"FAILED: {problem}", file=out())
    if not report.anchored:
        print("no trust anchor given (--trust): the signatures are consistent, but nothing says who made them", file=out())
    print(report.verdict, file=out())
    return report.exit_code
