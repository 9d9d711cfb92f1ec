"""The gateway's identity: an ECDSA P-256 key and its certificate chain.

The same key signs manifests, tree heads and (after enrolment) authenticates
the gateway over mutual TLS. Until the platform CA issues a certificate the
gateway uses a self-signed one, which proves integrity but not who signed.

Files under ``DATA_DIR/identity/``:
    gateway.key   PKCS#8 PEM, mode 0600, encrypted when EGW_KEY_PASSPHRASE is set (PBES2:
                  PBKDF2-HMAC-SHA256 at 600,000 iterations, AES-256-CBC; ``openssl pkey`` reads it)
    gateway.crt   the gateway certificate (self-signed, or issued at enrolment)
    ca.pem        the platform CA (only after enrolment)
    gateway.json  {"gateway_id": ..., "enrolled": bool, "platform": ...}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import IdentityError, VerificationError
from gateway.evidence import key_wrap
from protos.files import write_atomically
from protos.pki_roles import Role, RoleError, identity_uri

__all__ = ["Identity", "init_identity", "load_identity", "PASSPHRASE_ENV", "verify_certificate_chain", "load_pem_certificates"]

log = logging.getLogger(__name__)

PASSPHRASE_ENV = "EGW_KEY_PASSPHRASE"
SELF_SIGNED_YEARS = 10


@dataclass
class Identity:
    """What the gateway signs with, and the chain a verifier needs."""

    gateway_id: str
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca_certificates: list[x509.Certificate]
    directory: Path

    @property
    def enrolled(self) -> bool:
        return bool(self.ca_certificates)

    def chain_pem(self) -> bytes:
        certs = [self.certificate, *self.ca_certificates]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _identity_dir(data_dir: Path) -> Path:
    return data_dir / "identity"


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def _write_private(path: Path, data: bytes) -> None:
    """Create with 0600 from the start: the key never exists world-readable, even briefly."""
    write_atomically(path, data, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    write_atomically(path, data, 0o644)


def default_gateway_id(public_key: ec.EllipticCurvePublicKey) -> str:
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "gw-" + hashlib.sha256(spki).hexdigest()[:12]


def self_signed_certificate(key: ec.EllipticCurvePrivateKey, gateway_id: str) -> x509.Certificate:
    try:
        uri = identity_uri(Role.GATEWAY, gateway_id)
    except RoleError as exc:
        raise IdentityError(str(exc), "choose a gateway id of letters, digits, '-' or '_'") from exc
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "egw self-signed")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * SELF_SIGNED_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        # The gateway role and identity of docs/trust.md: a verifier that chooses to trust this very
        # certificate (`egw verify --trust gateway.crt`) still checks who it may speak for.
        .add_extension(x509.ExtendedKeyUsage([Role.GATEWAY.purpose, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def init_identity(data_dir: Path, gateway_id: str | None = None, force: bool = False) -> Identity:
    """Create the key and a self-signed certificate; refuse to overwrite an existing key."""
    directory = _identity_dir(data_dir)
    key_path = directory / "gateway.key"
    if key_path.exists() and not force:
        raise IdentityError(
            f"a gateway key already exists at {key_path}",
            "keep it (evidence already signed depends on it) or pass --force to replace it deliberately",
        )
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    gid = gateway_id or default_gateway_id(key.public_key())
    _write_private(key_path, key_wrap.key_to_pem(key, _passphrase()))
    cert = self_signed_certificate(key, gid)
    _write_public(directory / "gateway.crt", cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.pem").unlink(missing_ok=True)
    _write_public(directory / "gateway.json", json.dumps({"gateway_id": gid, "enrolled": False}, indent=2).encode())
    return Identity(gid, key, cert, [], directory)


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise VerificationError(f"certificate file is not valid PEM: {exc}") from exc


def _load_private(key_path: Path) -> ec.EllipticCurvePrivateKey:
    """Read the gateway key; a key encrypted the old, cheap way (before PBES2 at 600,000 iterations) is
    re-wrapped in place with the same passphrase, so a stolen copy of the file costs a guesser as much
    as a new one. The key itself never changes: signatures and certificates stay valid."""
    data = key_path.read_bytes()
    passphrase = _passphrase()
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError as exc:
        raise IdentityError(
            f"gateway key {key_path} is encrypted but {PASSPHRASE_ENV} is not set (or set but the key is not encrypted)",
            f"export {PASSPHRASE_ENV} with the passphrase used at `egw keys init`",
        ) from exc
    except ValueError as exc:
        raise IdentityError(f"cannot decrypt or parse gateway key {key_path}: wrong {PASSPHRASE_ENV}?") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"gateway key {key_path} is not an EC key")
    if passphrase and key_wrap.needs_rewrap(data):
        try:
            _write_private(key_path, key_wrap.key_to_pem(key, passphrase))
        except OSError as exc:  # a read-only copy still signs; say how to fix it where it can be written
            log.warning("gateway key %s uses a weak key-derivation cost and could not be re-wrapped (%s); "
                        "run any egw command as the key's owner where the file is writable", key_path, exc)
        else:
            log.info("gateway key %s re-wrapped: PBKDF2-HMAC-SHA256, %d iterations", key_path, key_wrap.ITERATIONS)
    return key


def load_identity(data_dir: Path) -> Identity:
    directory = _identity_dir(data_dir)
    key_path = directory / "gateway.key"
    if not key_path.exists():
        raise IdentityError(f"no gateway key in {directory}")
    mode = key_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise IdentityError(
            f"gateway key {key_path} is readable by others (mode {mode:o})",
            f"run `chmod 600 {key_path}` and check who could have read it",
        )
    key = _load_private(key_path)
    try:
        meta = json.loads((directory / "gateway.json").read_text())
        cert = x509.load_pem_x509_certificate((directory / "gateway.crt").read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"gateway identity in {directory} is incomplete: {exc}") from exc
    ca_path = directory / "ca.pem"
    cas = load_pem_certificates(ca_path.read_bytes()) if ca_path.exists() else []
    return Identity(meta["gateway_id"], key, cert, cas, directory)


def store_enrolled_chain(identity: Identity, certificate: x509.Certificate, cas: list[x509.Certificate], platform: str) -> Identity:
    """Replace the self-signed certificate with the one the platform CA issued."""
    if certificate.public_key().public_numbers() != identity.private_key.public_key().public_numbers():  # type: ignore[union-attr]  # gateway keys are EC; narrowing would change the error
        raise IdentityError("the issued certificate is not for this gateway's key", "re-run `egw enroll` with a fresh token")
    verify_certificate_chain(certificate, cas, cas[-1:] if cas else [])
    _write_public(identity.directory / "gateway.crt", certificate.public_bytes(serialization.Encoding.PEM))
    _write_public(identity.directory / "ca.pem", b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cas))
    meta = {"gateway_id": identity.gateway_id, "enrolled": True, "platform": platform}
    _write_public(identity.directory / "gateway.json", json.dumps(meta, indent=2).encode())
    return Identity(identity.gateway_id, identity.private_key, certificate, cas, identity.directory)


def _check_signed_by(child: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise VerificationError(
            f"certificate {child.subject.rfc4514_string()} is not signed by {issuer.subject.rfc4514_string()}"
        ) from exc


def verify_certificate_chain(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    anchors: list[x509.Certificate],
    at: dt.datetime | None = None,
) -> str:
    """Check validity periods and signatures up to a trust anchor.

    With no anchors, a self-signed leaf is accepted as such (integrity only);
    the returned string says which case held, for the verifier's report.
    """
    moment = at or dt.datetime.now(dt.UTC)
    clock = "" if at is not None else " by this machine's clock; if that clock is wrong, correct it (NTP) first"
    for cert in [leaf, *intermediates]:
        if moment < cert.not_valid_before_utc:
            raise VerificationError(
                f"certificate {cert.subject.rfc4514_string()} is not yet valid at {moment.isoformat()} "
                f"(valid from {cert.not_valid_before_utc.isoformat()}){clock}"
            )
        if moment > cert.not_valid_after_utc:
            raise VerificationError(
                f"certificate {cert.subject.rfc4514_string()} has expired at {moment.isoformat()} "
                f"(valid until {cert.not_valid_after_utc.isoformat()}){clock}"
            )
    if not anchors and not intermediates:
        if leaf.issuer != leaf.subject:
            raise VerificationError("signer certificate is not self-signed and no CA certificate accompanies it")
        _check_signed_by(leaf, leaf)
        return "self-signed (gateway not enrolled with a platform CA)"
    chain = [leaf, *[c for c in intermediates if c != leaf]]
    for child, parent in zip(chain, chain[1:]):
        _check_may_issue(parent)
        _check_signed_by(child, parent)
    top = chain[-1]
    trusted = anchors or [c for c in intermediates if c.issuer == c.subject]
    for anchor in trusted:
        if top == anchor:
            _check_signed_by(anchor, anchor)
            return f"issued by {anchor.subject.rfc4514_string()}"
    for anchor in trusted:  # several anchors may share a name (an attacker's look-alike CA): try each
        if top.issuer == anchor.subject and _is_ca(anchor):
            try:
                _check_signed_by(top, anchor)
            except VerificationError:
                continue
            return f"issued by {anchor.subject.rfc4514_string()}"
    raise VerificationError(
        f"certificate chain of {leaf.subject.rfc4514_string()} does not end at a trusted CA "
        f"(it ends at {top.issuer.rfc4514_string()}, which no trust anchor with that name signed)")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _check_may_issue(issuer: x509.Certificate) -> None:
    """Only a CA certificate may vouch for another: a gateway certificate the CA issued must not mint
    a "platform" certificate of its own."""
    if not _is_ca(issuer):
        raise VerificationError(
            f"certificate {issuer.subject.rfc4514_string()} is not a CA (basic constraints) but issued another "
            "certificate in the chain; only the platform CA may issue certificates")
