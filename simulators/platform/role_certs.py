"""Certificates for the platform's trust services: the time-stamping authority and the agency seal.

Both are issued by the platform CA (``PlatformPKI``) with the roles of
``protos/pki_roles.py``: the TSA certificate carries ``timeStamping`` as its
only extended key usage, marked critical (RFC 3161 §2.3); the seal certificate
carries the agency-seal purpose and one URI SAN ``urn:egw:agency:<unit code>``.
Both name a CRL distribution point on the platform's trust-services endpoint,
so a PAdES signer can find (and embed) revocation data for them.

Files in ``DIR/pki/``, kept across restarts and re-issued only when the unit,
its name or the CRL address changes::

    tsa.key / tsa.pem                     the TSA
    agency-seal.key / agency-seal.pem     the agency's electronic seal

The CRL: the platform CA's own ``pki/crl.pem`` when present and signed by the
CA (the platform publishes it, see docs/trust.md); otherwise an empty CRL is
made in memory, signed by the CA, so that revocation data always exists.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protos.files import write_atomically
from protos.pki_roles import Role, identity_uri
from simulators.platform.pki import PlatformPKI, pem

__all__ = ["RoleCertificates", "TrustMaterial", "load_or_issue", "current_crl"]

ROLE_CERT_DAYS = 3 * 365
CRL_DAYS = 7


@dataclass(frozen=True)
class TrustMaterial:
    """One signing key with its certificate (issued by the platform CA)."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


@dataclass(frozen=True)
class RoleCertificates:
    tsa: TrustMaterial
    seal: TrustMaterial
    unit_code: str
    unit_name: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    write_atomically(path, data, mode)


def _builder(pki: PlatformPKI, subject: x509.Name, public: ec.EllipticCurvePublicKey, crl_url: str) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(pki.ca_cert.subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=ROLE_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # digitalSignature + contentCommitment (non-repudiation): what a seal and a TSA need, nothing else
        .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _issue_tsa(pki: PlatformPKI, public: ec.EllipticCurvePublicKey, crl_url: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{pki.platform_id} time-stamping authority"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egw")])
    return (_builder(pki, subject, public, crl_url)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
            .sign(pki.ca_key, hashes.SHA256()))


def _issue_seal(pki: PlatformPKI, public: ec.EllipticCurvePublicKey, crl_url: str, unit_code: str, unit_name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_name),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit_code),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egw agency seal")])
    return (_builder(pki, subject, public, crl_url)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                identity_uri(Role.AGENCY_SEAL, unit_code))]), critical=False)
            # emailProtection too: NSS-based validators (poppler's pdfsig, Thunderbird) accept a document signer only for
            # that usage; it grants no egw role (docs/trust.md), so nothing here treats it as one
            .add_extension(x509.ExtendedKeyUsage([Role.AGENCY_SEAL.purpose, ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .sign(pki.ca_key, hashes.SHA256()))


def _crl_url_of(cert: x509.Certificate) -> str | None:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier):
                return str(name.value)
    return None


def _load(directory: Path, stem: str) -> TrustMaterial | None:
    key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.pem"
    if not key_path.exists() or not cert_path.exists():
        return None
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    return TrustMaterial(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))


def _store(directory: Path, stem: str, material: TrustMaterial) -> None:
    _write(directory / f"{stem}.pem", pem(material.certificate), 0o644)
    _write(directory / f"{stem}.key", material.key_pem(), 0o600)


def _still_fits(material: TrustMaterial | None, pki: PlatformPKI, crl_url: str, subject_cn: str | None = None) -> bool:
    if material is None or _crl_url_of(material.certificate) != crl_url:
        return False
    if material.certificate.issuer != pki.ca_cert.subject or material.certificate.not_valid_after_utc < _now():
        return False
    if subject_cn is not None:
        names = material.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        units = material.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        if not names or not units or f"{names[0].value}|{units[0].value}" != subject_cn:
            return False
    return True


def load_or_issue(pki: PlatformPKI, data_dir: Path, crl_url: str, unit_code: str, unit_name: str) -> RoleCertificates:
    """The TSA and agency-seal keys and certificates, issued (or re-issued) when missing or out of date."""
    identity_uri(Role.AGENCY_SEAL, unit_code)  # RoleError early for a unit code that cannot be an identity
    directory = data_dir / "pki"
    tsa = _load(directory, "tsa")
    if not _still_fits(tsa, pki, crl_url):
        key = tsa.key if tsa is not None else ec.generate_private_key(ec.SECP256R1())
        tsa = TrustMaterial(key, _issue_tsa(pki, key.public_key(), crl_url))
        _store(directory, "tsa", tsa)
    seal = _load(directory, "agency-seal")
    if not _still_fits(seal, pki, crl_url, f"{unit_name}|{unit_code}"):
        key = ec.generate_private_key(ec.SECP256R1())
        seal = TrustMaterial(key, _issue_seal(pki, key.public_key(), crl_url, unit_code, unit_name))
        _store(directory, "agency-seal", seal)
    return RoleCertificates(tsa=tsa, seal=seal, unit_code=unit_code, unit_name=unit_name)


def _published_crl(pki: PlatformPKI, data_dir: Path) -> x509.CertificateRevocationList | None:
    path = data_dir / "pki" / "crl.pem"
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None
    public = pki.ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public):
        return None
    if crl.next_update_utc is not None and crl.next_update_utc < _now():
        return None
    return crl


def current_crl(pki: PlatformPKI, data_dir: Path, cached: x509.CertificateRevocationList | None = None) -> x509.CertificateRevocationList:
    """The CA's current CRL: the published ``pki/crl.pem`` if valid, else ``cached`` if still fresh, else a new empty one."""
    published = _published_crl(pki, data_dir)
    if published is not None:
        return published
    if cached is not None and cached.next_update_utc is not None and cached.next_update_utc > _now() + dt.timedelta(days=1):
        return cached
    now = _now()
    return (
        x509.CertificateRevocationListBuilder().issuer_name(pki.ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=CRL_DAYS))
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.ca_key.public_key()), critical=False)
        .sign(pki.ca_key, hashes.SHA256())
    )
