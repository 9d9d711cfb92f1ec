"""How the gateway reaches its platform: address, trust and client credentials.

Everything comes from ``DATA_DIR/identity/`` as written by ``egw enroll``:
``gateway.key``/``gateway.crt`` (client certificate), ``ca.pem`` (the platform
CA: trust anchor for the server and the receipt signer), ``platform.pem``
(the receipt signer) and ``gateway.json`` (``platform`` address, ``insecure``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.errors import ConfigError, IdentityError
from gateway.evidence import dsse
from gateway.evidence.identity import Identity, load_identity
from gateway.evidence.receipt import verify_receipt
from protos.egw.v1 import evidence_pb2

__all__ = ["PlatformLink", "CHANNEL_OPTIONS", "load_link"]

MAX_MESSAGE = 8 * 1024 * 1024
# Same reasoning as the platform's SERVER_OPTIONS (PERFORMANCE-NOTES, gRPC section).
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.http2.lookahead_bytes", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_retries", 0),  # the uploader resumes itself via QueryUpload
    # gRPC's default reconnect back-off grows to 120 s: a platform that restarted would stay
    # "unavailable" to a long-lived channel for up to two minutes after it was back. Reconnecting
    # to one platform every few seconds at most costs nothing.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 4_000),
]


@dataclass
class PlatformLink:
    identity: Identity
    address: str
    insecure: bool
    platform_certificate: x509.Certificate

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Plaintext platforms learn who calls from metadata; with mTLS the certificate says it."""
        return (("egw-gateway-id", self.identity.gateway_id),) if self.insecure else ()

    def verify_receipt(self, envelope: dsse.Envelope, *, evidence_id: str, sha256: str, size: int) -> evidence_pb2.Receipt:
        """A receipt arriving live: signed by exactly the signer pinned at enrolment (``identity/platform.pem``),
        which must chain to the pinned CA and hold the receipt-signer role, for this gateway and this item.
        Any other certificate the CA issued (another gateway's, the TLS server's) is not the platform speaking."""
        return verify_receipt(envelope, self.platform_certificate, self.identity.ca_certificates,
                              evidence_id=evidence_id, sha256=sha256, size=size, gateway_id=self.identity.gateway_id)

    def aio_channel(self, address: str | None = None) -> grpc.aio.Channel:
        target = address or self.address
        if self.insecure:
            return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(target, self.credentials(), options=CHANNEL_OPTIONS)

    def credentials(self) -> grpc.ChannelCredentials:
        key_pem = self.identity.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        ca_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.identity.ca_certificates)
        return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem,
                                            certificate_chain=self.identity.chain_pem())


def load_link(data_dir: Path, address: str | None = None) -> PlatformLink:
    """The enrolled platform of this data directory; a clear error when not enrolled."""
    identity = load_identity(data_dir)
    meta = json.loads((identity.directory / "gateway.json").read_text())
    platform_pem = identity.directory / "platform.pem"
    if not identity.enrolled or not platform_pem.exists():
        raise IdentityError(
            f"gateway {identity.gateway_id} in {data_dir} is not enrolled with a platform",
            "run `egw enroll --platform HOST:PORT --token-file FILE` (the token from `egw platform tokens`)",
        )
    target = address or meta.get("platform")
    if not target:
        raise ConfigError("no platform address stored at enrolment", "re-run `egw enroll --platform HOST:PORT …`")
    return PlatformLink(identity, str(target), bool(meta.get("insecure", False)),
                        x509.load_pem_x509_certificate(platform_pem.read_bytes()))
