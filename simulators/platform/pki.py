"""The platform's small CA: its key, the platform certificate, gateway certificates.

Files in ``DIR/pki/`` (created on first start, kept afterwards)::

    ca.key / ca.pem              the CA that issues every certificate below
    platform.key / platform.pem  the TLS server certificate (serverAuth only: it signs nothing)
    signer.key / signer.pem      the platform signer: receipt-signer and command-signer roles,
                                 URI SAN ``urn:egw:platform:<platform_id>``
    crl.pem                      the CA's revocation list (see ``simulators/platform/revocation.py``)

Certificates carry roles (``protos/pki_roles.py``, ``docs/trust.md``): a key
that terminates TLS must not also sign receipts, and a gateway certificate
must not pass as the platform's. A data directory from before roles existed
gets its signer created on load; its TLS certificate keeps the platform id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protos.files import write_atomically
from protos.pki_roles import Role, identity_uri

__all__ = ["PlatformPKI", "PKIError", "fingerprint", "pem", "load_key"]

CA_YEARS = 10
PLATFORM_YEARS = 5
GATEWAY_DAYS = 397


class PKIError(ValueError):
    """A CSR or certificate the CA will not accept; the message says why."""


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the DER certificate: what an enrolment token pins."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    write_atomically(path, data, mode)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An unencrypted P-256 private key written by this module."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{path} does not hold an EC P-256 private key; restore it from backup or start a new platform directory")
    return key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _leaf(subject: str, public: ec.EllipticCurvePublicKey, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
          days: int, names: list[x509.GeneralName], purposes: list[x509.ObjectIdentifier]) -> x509.Certificate:
    """An end-entity certificate: digitalSignature only, the given SANs and extended key usages (the roles)."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(ca_cert.subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _create_ca(directory: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egw reference platform CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egw")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca.pem", pem(ca_cert))
    _write(directory / "ca.key", _key_pem(ca_key), 0o600)  # written last: its presence means "CA complete"


def _create_tls(directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate) -> None:
    """The TLS server certificate; its CN is the platform id (kept from before roles existed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pid = "platform-" + hashlib.sha256(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()[:12]
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = _leaf(pid, key.public_key(), ca_key, ca_cert, 365 * PLATFORM_YEARS, names, [ExtendedKeyUsageOID.SERVER_AUTH])
    _write(directory / "platform.pem", pem(cert))
    _write(directory / "platform.key", _key_pem(key), 0o600)


def _create_signer(directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, platform_id: str) -> None:
    """The platform's signing identity: receipts and MQTT commands, nothing else (no TLS)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(Role.RECEIPT_SIGNER, platform_id))]
    cert = _leaf(f"{platform_id} signer", key.public_key(), ca_key, ca_cert, 365 * PLATFORM_YEARS, names,
                 [Role.RECEIPT_SIGNER.purpose, Role.COMMAND_SIGNER.purpose])
    _write(directory / "signer.pem", pem(cert))
    _write(directory / "signer.key", _key_pem(key), 0o600)  # written last: its presence means "signer complete"


@dataclass
class PlatformPKI:
    """The CA, the TLS server identity and the signer of one platform data directory."""

    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    tls_key: ec.EllipticCurvePrivateKey
    tls_cert: x509.Certificate
    signer_key: ec.EllipticCurvePrivateKey
    signer_cert: x509.Certificate
    platform_id: str
    directory: Path

    @classmethod
    def load_or_create(cls, data_dir: Path) -> PlatformPKI:
        directory = data_dir / "pki"
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if not (directory / "ca.key").exists():
            _create_ca(directory)
        ca_key = load_key(directory / "ca.key")
        ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        if not (directory / "platform.key").exists():
            _create_tls(directory, ca_key, ca_cert)
        tls_key = load_key(directory / "platform.key")
        tls_cert = x509.load_pem_x509_certificate((directory / "platform.pem").read_bytes())
        pid = str(tls_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        if not (directory / "signer.key").exists():
            _create_signer(directory, ca_key, ca_cert, pid)
        signer_key = load_key(directory / "signer.key")
        signer_cert = x509.load_pem_x509_certificate((directory / "signer.pem").read_bytes())
        return cls(ca_key, ca_cert, tls_key, tls_cert, signer_key, signer_cert, pid, directory)

    @property
    def platform_key(self) -> ec.EllipticCurvePrivateKey:
        """The key gateways pin at enrolment: it signs receipts and commands (the signer, not the TLS key)."""
        return self.signer_key

    @property
    def platform_cert(self) -> x509.Certificate:
        """The certificate ``EnrollResponse.platform_certificate_pem`` carries: the signer's."""
        return self.signer_cert

    # ---- TLS material ---------------------------------------------------
    def server_key_pem(self) -> bytes:
        return _key_pem(self.tls_key)

    def server_chain_pem(self) -> bytes:
        return pem(self.tls_cert) + pem(self.ca_cert)

    def ca_pem(self) -> bytes:
        return pem(self.ca_cert)

    # ---- issuing -------------------------------------------------------
    def issue(self, csr_pem: bytes, gateway_id: str) -> x509.Certificate:
        """Certificate for a gateway key from its CSR; the CSR must be self-consistent."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PKIError("the CSR is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----)") from exc
        if not csr.is_signature_valid:
            raise PKIError("the CSR signature does not verify (was it made with the gateway key?)")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise PKIError("the CSR key is not ECDSA P-256 (the only key type gateways use)")
        if not gateway_id or len(gateway_id) > 64:
            raise PKIError("gateway_id must be 1..64 characters")
        return self.issue_for_key(public, gateway_id)

    def issue_for_key(self, public: ec.EllipticCurvePublicKey, gateway_id: str, days: int = GATEWAY_DAYS) -> x509.Certificate:
        """A gateway certificate: the gateway role and clientAuth, URI SAN ``urn:egw:gateway:<id>``."""
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(Role.GATEWAY, gateway_id))]
        return _leaf(gateway_id, public, self.ca_key, self.ca_cert, days, names,
                     [Role.GATEWAY.purpose, ExtendedKeyUsageOID.CLIENT_AUTH])

    def check_issued(self, cert: x509.Certificate) -> None:
        """Raise PKIError unless ``cert`` was issued by this CA and is valid now."""
        now = _now()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PKIError(f"certificate {cert.subject.rfc4514_string()} is expired or not yet valid")
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PKIError(f"certificate {cert.subject.rfc4514_string()} was not issued by this platform's CA") from exc
