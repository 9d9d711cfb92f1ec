"""The platform's small CA: its key, the platform certificate, gateway certificates.

Files in ``DIR/pki/`` (created on first start, kept afterwards)::

    ca.key / ca.pem              the CA that issues gateway certificates
    platform.key / platform.pem  the platform: TLS server certificate AND receipt signer

One platform key serves TLS and receipts so that a gateway that trusts the
CA can check both with the one certificate it received at enrolment.
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

__all__ = ["PlatformPKI", "PKIError", "fingerprint", "pem"]

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
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class PlatformPKI:
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    platform_key: ec.EllipticCurvePrivateKey
    platform_cert: x509.Certificate
    platform_id: str

    @classmethod
    def load_or_create(cls, data_dir: Path) -> "PlatformPKI":
        directory = data_dir / "pki"
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if not (directory / "ca.key").exists():
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
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        if not (directory / "platform.key").exists():
            pkey = ec.generate_private_key(ec.SECP256R1())
            pid = "platform-" + hashlib.sha256(pkey.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()[:12]
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, pid)]))
                .issuer_name(ca_cert.subject).public_key(pkey.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - dt.timedelta(minutes=5))
                .not_valid_after(_now() + dt.timedelta(days=365 * PLATFORM_YEARS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            _write(directory / "platform.pem", pem(cert))
            _write(directory / "platform.key", _key_pem(pkey), 0o600)
        pkey = serialization.load_pem_private_key((directory / "platform.key").read_bytes(), None)
        pcert = x509.load_pem_x509_certificate((directory / "platform.pem").read_bytes())
        assert isinstance(pkey, ec.EllipticCurvePrivateKey)
        pid = pcert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return cls(ca_key, ca_cert, pkey, pcert, str(pid))

    # ---- TLS material ---------------------------------------------------
    def server_key_pem(self) -> bytes:
        return _key_pem(self.platform_key)

    def server_chain_pem(self) -> bytes:
        return pem(self.platform_cert) + pem(self.ca_cert)

    def ca_pem(self) -> bytes:
        return pem(self.ca_cert)

    # ---- issuing -------------------------------------------------------
    def issue(self, csr_pem: bytes, gateway_id: str) -> x509.Certificate:
        """Certificate for a gateway key from its CSR; the CSR must be self-consistent."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PKIError(f"the CSR is not valid PEM: {exc}") from exc
        if not csr.is_signature_valid:
            raise PKIError("the CSR signature does not verify (was it made with the gateway key?)")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise PKIError("the CSR key is not ECDSA P-256")
        if not gateway_id or len(gateway_id) > 64:
            raise PKIError("gateway_id must be 1..64 characters")
        return self.issue_for_key(public, gateway_id)

    def issue_for_key(self, public: ec.EllipticCurvePublicKey, gateway_id: str, days: int = GATEWAY_DAYS) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "egw gateway")]))
            .issuer_name(self.ca_cert.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )

    def check_issued(self, cert: x509.Certificate) -> None:
        """Raise PKIError unless ``cert`` was issued by this CA and is valid now."""
        now = _now()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise PKIError(f"certificate {cert.subject.rfc4514_string()} is expired or not yet valid")
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PKIError(f"certificate {cert.subject.rfc4514_string()} was not issued by this platform's CA") from exc
