"""Whom a verifier believes, and when: trust anchors, role certificates, signing time and revocation.

The rules are those of ``docs/trust.md``: a signature counts only from a certificate that chains to a
trust anchor the person verifying chose, holds the role for what it signed, names the identity the
payload claims, and was valid and not revoked at the signing time. A signer's own clock proves
nothing, so the signing time is the earliest independent proof (a platform receipt's ``receivedAt``, or
the ``genTime`` of an RFC 3161 token over a tree head covering the item: ``SigningTime.from_proofs``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import ConfigError, VerificationError
from gateway.evidence.identity import load_pem_certificates, verify_certificate_chain
from protos.pki_roles import EGW_ARC, Role, RoleError, require_role

__all__ = [
    "Anchors", "SigningTime", "Revocations", "load_anchor_paths", "pinned_anchors", "select_crl",
    "check_signer", "read_crl_file",
]

ANCHOR_SUFFIXES = (".pem", ".crt")


@dataclass(frozen=True)
class Anchors:
    """The CA certificates a verifier chose to believe, and where they came from (for the report)."""

    certificates: list[x509.Certificate] = field(default_factory=list)
    source: str = ""

    @property
    def chosen(self) -> bool:
        return bool(self.certificates)

    def describe(self) -> str:
        if not self.certificates:
            return "none: nothing says who made this bundle (pass --trust with the platform CA certificate)"
        names = ", ".join(c.subject.rfc4514_string() for c in self.certificates)
        return f"{names} ({self.source})"


def _read_anchor_file(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read trust anchor {path}: {exc.strerror or exc}",
                          "pass --trust with a readable PEM file or directory of the platform CA certificate") from exc
    try:
        certs = load_pem_certificates(data)
    except VerificationError as exc:
        raise ConfigError(f"trust anchor {path} is not a PEM certificate file", "pass the CA certificate in PEM") from exc
    if not certs:
        raise ConfigError(f"trust anchor {path} holds no certificate", "pass the CA certificate in PEM")
    return certs


def load_anchor_paths(paths: Iterable[Path]) -> Anchors:
    """``--trust FILE|DIR`` (repeatable): every certificate in each file, every ``*.pem``/``*.crt`` in each directory."""
    certs: list[x509.Certificate] = []
    names: list[str] = []
    for path in paths:
        names.append(str(path))
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in ANCHOR_SUFFIXES and p.is_file())
            if not files:
                raise ConfigError(f"trust directory {path} holds no *.pem or *.crt file",
                                  "put the platform CA certificate (PEM) in it, or pass the file itself")
            for file in files:
                certs.extend(_read_anchor_file(file))
        else:
            certs.extend(_read_anchor_file(path))
    return Anchors(certs, "--trust " + ", ".join(names)) if certs else Anchors()


def pinned_anchors(data_dir: Path) -> Anchors:
    """On the gateway that made a bundle: the platform CA pinned at enrolment, when there is one."""
    ca_path = data_dir / "identity" / "ca.pem"
    if not ca_path.is_file():
        return Anchors()
    try:
        certs = load_pem_certificates(ca_path.read_bytes())
    except (OSError, VerificationError):
        return Anchors()
    return Anchors(certs, f"platform CA pinned at enrolment: {ca_path}") if certs else Anchors()


@dataclass(frozen=True)
class SigningTime:
    """When a signature was made, as far as something other than the signer proves it; ``at`` None = unproven."""

    at: dt.datetime | None
    source: str

    @classmethod
    def from_proofs(cls, receipt_received_at: dt.datetime | None, receipt_signer: str = "",
                    timestamp: tuple[dt.datetime, str] | None = None) -> SigningTime:
        """The earliest independent proof. ``timestamp`` is the seam for an RFC 3161 token
        (its genTime and the TSA's name, already verified with ``Role.TIME_STAMPING``)."""
        proofs: list[tuple[dt.datetime, str]] = []
        if timestamp is not None:
            proofs.append((timestamp[0], f"RFC 3161 time-stamp by {timestamp[1]}"))
        if receipt_received_at is not None:
            proofs.append((receipt_received_at, f"receipt receivedAt (platform {receipt_signer})"))
        if not proofs:
            return cls(None, "unproven (no receipt or time-stamp): certificates judged at the present moment")
        at, source = min(proofs, key=lambda p: p[0])
        return cls(at, source)

    def judged_at(self) -> dt.datetime:
        return self.at or dt.datetime.now(dt.UTC)

    def describe(self) -> str:
        return f"{self.at.isoformat()} from {self.source}" if self.at else self.source


@dataclass(frozen=True)
class Revocations:
    """The CRL that counts (signed by a trust anchor, highest CRL number), or none."""

    crl: x509.CertificateRevocationList | None = None
    origin: str = ""
    ignored: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.crl is None:
            why = "; ".join(self.ignored)
            return "no CRL from the trust anchor: revocation not checked" + (f" ({why})" if why else "")
        number = _crl_number(self.crl)
        return (f"CRL #{number} from {self.origin}, issued {self.crl.last_update_utc.isoformat()}"
                f" by {self.crl.issuer.rfc4514_string()}")

    def check(self, cert: x509.Certificate, when: SigningTime) -> None:
        """Revoked at R fails every signature made at or after R, and every one whose time is unproven."""
        if self.crl is None:
            return
        entry = self.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is None or entry.revocation_date_utc is None:
            return
        revoked = entry.revocation_date_utc
        if when.at is None:
            raise VerificationError(f"certificate {cert.subject.rfc4514_string()} was revoked at {revoked.isoformat()} "
                                    "and nothing proves the signature was made before that")
        if when.at >= revoked:
            raise VerificationError(f"certificate {cert.subject.rfc4514_string()} was revoked at {revoked.isoformat()}, "
                                    f"before the signing time {when.at.isoformat()}")


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return -1


def read_crl_file(path: Path) -> bytes:
    """``--crl FILE``: a usage error (exit 2) when unreadable."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read CRL {path}: {exc.strerror or exc}", "pass --crl with a readable CRL file (PEM or DER)") from exc


def _parse_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise VerificationError(f"not a CRL ({exc})") from exc


def _signed_by_anchor(crl: x509.CertificateRevocationList, anchors: Anchors) -> bool:
    for anchor in anchors.certificates:
        key = anchor.public_key()
        if crl.issuer == anchor.subject and isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)) \
                and crl.is_signature_valid(key):
            return True
    return False


def select_crl(candidates: Iterable[tuple[str, bytes]], anchors: Anchors) -> Revocations:
    """Of ``(origin, bytes)`` candidates, the trust anchor's CRL with the highest number; others are named as ignored."""
    best: tuple[int, str, x509.CertificateRevocationList] | None = None
    ignored: list[str] = []
    for origin, data in candidates:
        try:
            crl = _parse_crl(data)
        except VerificationError as exc:
            ignored.append(f"{origin}: {exc}")
            continue
        if not _signed_by_anchor(crl, anchors):
            ignored.append(f"{origin}: not signed by the trust anchor")
            continue
        number = _crl_number(crl)
        if best is None or number > best[0]:
            best = (number, origin, crl)
    if best is None:
        return Revocations(None, "", tuple(ignored))
    return Revocations(best[2], best[1], tuple(ignored))


def check_signer(cert: x509.Certificate, intermediates: list[x509.Certificate], anchors: list[x509.Certificate],
                 role: Role, claimed_id: str | None, at: dt.datetime | None) -> tuple[str, str]:
    """Chain (validity at ``at``), then role and identity; return (how it chained, the identity it names)."""
    how = verify_certificate_chain(cert, intermediates, anchors, at=at)
    try:
        identity = require_role(cert, role, claimed_id)
    except RoleError as exc:
        raise VerificationError(str(exc) + _legacy_hint(cert)) from exc
    return how, identity


def _legacy_hint(cert: x509.Certificate) -> str:
    """Certificates made before egw's PKI roles carry no egw purpose at all: say so, so nobody reads forgery."""
    try:
        purposes = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        purposes = []
    if any(p.dotted_string.startswith(EGW_ARC + ".") for p in purposes):
        return ""
    return (" (it carries no egw role at all, as certificates issued before roles existed do: its signatures cannot "
            "show whom they speak for; re-enrol the gateway so that new evidence can)")
