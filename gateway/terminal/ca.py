"""The station's terminal CA: it issues the certificates the station's handhelds authenticate with.

Why a CA of the station's own and not the platform's: a terminal is paired at the station, by an officer
standing in front of it, often while the platform is out of reach; its certificate speaks to this station
only. The CA key never leaves ``DATA_DIR/terminal/`` (0700, key files 0600).

Files under ``DATA_DIR/terminal/``:
    ca.key, ca.pem           the terminal CA (ECDSA P-256, 10 years)
    station.key, station.pem the station's TLS server certificate, issued by that CA for the listen names;
                             its SHA-256 is what the pairing QR code carries so the terminal can pin it
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import TerminalError
from protos.files import write_atomically
from protos.pki_roles import Role, identity_uri

__all__ = ["TerminalCA", "IssuedTerminal", "TERMINAL_CERT_DAYS", "certificate_sha256", "new_terminal_id"]

CA_YEARS = 10
TERMINAL_CERT_DAYS = 2 * 365
STATION_CERT_DAYS = 2 * 365


def certificate_sha256(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the DER certificate: what a terminal pins and what `egw terminal ls` shows."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def new_terminal_id() -> str:
    return "t-" + secrets.token_hex(6)


@dataclass(frozen=True)
class IssuedTerminal:
    terminal_id: str
    certificate: x509.Certificate

    @property
    def serial_hex(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def not_after(self) -> float:
        return self.certificate.not_valid_after_utc.timestamp()

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    write_atomically(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    write_atomically(path, data, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TerminalCA:
    """Loads (or creates, on first use) the terminal CA and the station's server certificate."""

    def __init__(self, data_dir: Path, gateway_id: str, server_names: tuple[str, ...] = ()) -> None:
        self.directory = data_dir / "terminal"
        self.gateway_id = gateway_id
        self.server_names = tuple(dict.fromkeys(("127.0.0.1", "localhost", socket.gethostname(), *server_names)))
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.ca_key, self.ca_cert = self._load_or_create_ca()
        self.station_key, self.station_cert = self._load_or_create_station()

    # ---- files -----------------------------------------------------------------
    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    def _load_or_create_ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path, cert_path = self.directory / "ca.key", self.ca_path
        if key_path.exists() and cert_path.exists():
            return self._load_pair(key_path, cert_path)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"egw terminal CA {self.gateway_id}"),
                          x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "egw station terminals")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return key, cert

    def _load_or_create_station(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path, cert_path = self.directory / "station.key", self.directory / "station.pem"
        if key_path.exists() and cert_path.exists():
            key, cert = self._load_pair(key_path, cert_path)
            if self._covers_names(cert) and cert.not_valid_after_utc > _now() + dt.timedelta(days=30):
                return key, cert
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(x509.CertificateBuilder()
                          .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"egw station {self.gateway_id}")]))
                          .public_key(key.public_key())
                          .add_extension(x509.SubjectAlternativeName(self._alt_names()), critical=False)
                          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False),
                          STATION_CERT_DAYS)
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return key, cert

    def _alt_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = []
        for name in self.server_names:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                names.append(x509.DNSName(name))
        return names

    def _covers_names(self, cert: x509.Certificate) -> bool:
        try:
            present = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            return False
        return set(self._alt_names()) <= present

    @staticmethod
    def _load_pair(key_path: Path, cert_path: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise TerminalError(f"the terminal CA files in {key_path.parent} cannot be read: {exc}",
                                "restore them from backup; if they are lost, move the directory away and pair every terminal again") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TerminalError(f"{key_path} is not an ECDSA key", "restore the terminal CA files from backup")
        return key, cert

    def _sign(self, builder: x509.CertificateBuilder, days: int) -> x509.Certificate:
        now = _now()
        return (builder.issuer_name(self.ca_cert.subject).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
                .sign(self.ca_key, hashes.SHA256()))

    # ---- what the station does with it ----------------------------------------
    @property
    def station_fingerprint(self) -> str:
        return certificate_sha256(self.station_cert)

    def issue_terminal(self, csr_pem: bytes, terminal_id: str) -> IssuedTerminal:
        """A certificate with the terminal role for the key in ``csr_pem``; the CSR's own names are ignored."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise TerminalError("the pairing request's CSR is not a PEM certificate signing request",
                                "send the terminal's CSR (PKCS#10, PEM) as made by its key") from exc
        if not csr.is_signature_valid:
            raise TerminalError("the CSR's signature does not match its key", "generate the CSR with the terminal's own key")
        key = csr.public_key()
        if not ((isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 256)
                or (isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048)):
            raise TerminalError("the CSR's key is too weak or of an unsupported kind",
                                "use an ECDSA P-256 (or larger) or RSA 2048+ key")
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, terminal_id),
                                            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"egw terminals of {self.gateway_id}")]))
                   .public_key(key)
                   .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri(Role.TERMINAL, terminal_id))]),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage([Role.TERMINAL.purpose, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True))
        return IssuedTerminal(terminal_id, self._sign(builder, TERMINAL_CERT_DAYS))

    def verify_issued(self, cert: x509.Certificate) -> None:
        """Raise TerminalError unless this CA signed ``cert`` (the TLS layer checked it already; this is for callers off it)."""
        try:
            cert.verify_directly_issued_by(self.ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise TerminalError("the certificate was not issued by this station's terminal CA") from exc

    # ---- TLS -------------------------------------------------------------------
    def _server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        chain = self.directory / "station-chain.pem"
        if not chain.exists() or chain.read_bytes() != self._chain_pem():
            _write_public(chain, self._chain_pem())
        ctx.load_cert_chain(chain, self.directory / "station.key")
        return ctx

    def _chain_pem(self) -> bytes:
        return self.station_cert.public_bytes(serialization.Encoding.PEM) + self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def pairing_context(self) -> ssl.SSLContext:
        """Server TLS only: a terminal without a certificate comes here to get one (it pins our fingerprint)."""
        return self._server_context()

    def api_context(self) -> ssl.SSLContext:
        """Mutual TLS: a client certificate from this CA is required at the handshake."""
        ctx = self._server_context()
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(self.ca_path))
        return ctx
