"""Enrolment: trade a one-time token and a CSR for a certificate from the platform CA.

The gateway trusts nothing yet, so it reads the certificate chain the
enrolment listener presents (no verification), keeps only the CA whose
SHA-256 fingerprint the token pins, and then opens a *verified* TLS channel
with that CA as its only trust anchor. A machine in the middle cannot present
a CA with that fingerprint. Plaintext only with an explicit ``insecure=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gateway.errors import ConfigError, IdentityError, VerificationError
from gateway.evidence.identity import load_identity, store_enrolled_chain, verify_certificate_chain
from gateway.uplink.link import CHANNEL_OPTIONS
from protos.egw.v1 import ingest_pb2, ingest_pb2_grpc
from protos.enrolment_token import TokenFormatError, parse_token
from protos.files import write_atomically

__all__ = ["EnrolmentResult", "enroll", "split_address", "fetch_pinned_ca"]

TIMEOUT_S = 15.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrolmentResult:
    gateway_id: str
    platform_id: str
    platform: str
    certificate_sha256: str
    not_after: str


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"platform address {address!r} is not HOST:PORT", "e.g. --platform 127.0.0.1:50051")
    return host.strip("[]"), int(port)


def fetch_pinned_ca(host: str, port: int, ca_sha256: str) -> bytes:
    """The CA certificate (PEM) from the presented chain whose fingerprint is pinned."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted from this connection except the pinned fingerprint
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
            # public SSLSocket.get_unverified_chain() from Python 3.13; the same method on _sslobj before
            getter = getattr(tls, "get_unverified_chain", None) or tls._sslobj.get_unverified_chain  # type: ignore[attr-defined]  # private before 3.13, absent from typeshed
            chain = getter() or []
            ders = [c.public_bytes(2) for c in chain]  # 2 = _ssl.ENCODING_DER
    except OSError as exc:
        raise ConfigError(f"cannot reach the enrolment listener {host}:{port}: {exc}",
                          "check the platform address and that the platform is running; the token names the enrolment port") from exc
    for der in ders:
        if hashlib.sha256(der).hexdigest() == ca_sha256:
            return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    raise VerificationError(
        f"the platform at {host}:{port} did not present the CA the token pins (sha256 {ca_sha256[:16]}…)",
        "you may be talking to the wrong machine (or one in the middle); get a fresh token from the platform operator",
    )


def enroll(data_dir: Path, platform: str, token: str, *, insecure: bool = False) -> EnrolmentResult:
    identity = load_identity(data_dir)
    host, port = split_address(platform)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.gateway_id)]))
        .sign(identity.private_key, hashes.SHA256())
    )
    pinned: bytes | None = None
    if insecure:
        secret = token.rsplit(".", 1)[-1]
        channel = grpc.insecure_channel(platform, options=CHANNEL_OPTIONS)
    else:
        try:
            parsed = parse_token(token)
        except TokenFormatError as exc:
            raise ConfigError(str(exc), "copy the whole token printed by `egw platform token --data DIR --gateway-id ID`") from exc
        secret = parsed.secret
        pinned = fetch_pinned_ca(host, parsed.enroll_port, parsed.ca_sha256)
        channel = grpc.secure_channel(f"{host}:{parsed.enroll_port}", grpc.ssl_channel_credentials(root_certificates=pinned),
                                      options=CHANNEL_OPTIONS)
    try:
        with channel:
            reply = ingest_pb2_grpc.EvidenceIngestStub(channel).Enroll(
                ingest_pb2.EnrollRequest(csr_pem=csr.public_bytes(serialization.Encoding.PEM), token=secret,
                                         gateway_id=identity.gateway_id), timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        code = exc.code()
        raise IdentityError(f"enrolment refused by the platform ({code.name}): {exc.details()}", _refusal_hint(code, identity.gateway_id)) from exc
    certificate = x509.load_pem_x509_certificate(reply.certificate_pem)
    cas = x509.load_pem_x509_certificates(reply.ca_chain_pem)
    if pinned is not None and x509.load_pem_x509_certificate(pinned) not in cas:
        raise VerificationError("the platform returned a CA chain without the CA the token pins; refusing it")
    platform_cert = x509.load_pem_x509_certificate(reply.platform_certificate_pem)
    verify_certificate_chain(platform_cert, [], cas)
    updated = store_enrolled_chain(identity, certificate, cas, platform)
    _write(updated.directory / "platform.pem", reply.platform_certificate_pem)
    meta_path = updated.directory / "gateway.json"
    meta = json.loads(meta_path.read_text())
    meta.update({"platform_id": reply.platform_id, "insecure": insecure})
    _write(meta_path, json.dumps(meta, indent=2).encode())
    _first_revocation_list(data_dir)
    return EnrolmentResult(identity.gateway_id, reply.platform_id, platform,
                           hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest(),
                           certificate.not_valid_after_utc.isoformat())


def _refusal_hint(code: grpc.StatusCode, gateway_id: str) -> str:
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"ask the platform operator for a token for this gateway: `egw platform token --gateway-id {gateway_id}`"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "too many refused attempts from this address: wait a minute, then retry with a token issued for this gateway"
    return "check the platform address and that it is running"


def _first_revocation_list(data_dir: Path) -> None:
    """The CA's CRL right after enrolment; a failure only means the next sync fetches it (the enrolment stands)."""
    from gateway.uplink.link import load_link
    from gateway.uplink.revocation import refresh_revocation_list

    try:
        refresh_revocation_list(load_link(data_dir))
    except (ConfigError, VerificationError) as exc:
        log.warning("enrolled, but the revocation list was not fetched: %s (%s)", exc, exc.hint)


def _write(path: Path, data: bytes) -> None:
    write_atomically(path, data, 0o644)
