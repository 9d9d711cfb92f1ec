"""Platform receipts: a DSSE envelope signed by the platform's receipt signer whose payload is
``egw.v1.Receipt`` in the proto3 JSON mapping.

A receipt is believed only when (docs/trust.md) its signer certificate chains to the trust anchor,
holds ``Role.RECEIPT_SIGNER`` (a gateway's own certificate, also issued by the platform CA, must not
be able to sign "platform receipts"), the signature verifies, and it is for exactly what we hold:
digest, size, ``evidenceId`` and ``gatewayId`` (both required). The gateway, receiving a receipt
live, also requires the very certificate pinned at enrolment (``gateway/uplink/link.py``).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from google.protobuf import json_format

from gateway.errors import VerificationError
from gateway.evidence import dsse
from gateway.evidence.identity import verify_certificate_chain
from protos.egw.v1 import evidence_pb2
from protos.pki_roles import Role, RoleError, require_role

__all__ = ["RECEIPT_TYPE", "verify_receipt", "parse_receipt", "received_at"]

RECEIPT_TYPE = "application/vnd.egw.receipt.v1+json"


def parse_receipt(envelope: dsse.Envelope) -> evidence_pb2.Receipt:
    if envelope.payload_type != RECEIPT_TYPE:
        raise VerificationError(f"receipt has payloadType {envelope.payload_type!r}, expected {RECEIPT_TYPE!r}")
    try:
        return json_format.Parse(envelope.payload.decode("utf-8"), evidence_pb2.Receipt(), ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise VerificationError(f"receipt payload is not an egw.v1.Receipt: {exc}") from exc


def received_at(receipt: evidence_pb2.Receipt) -> dt.datetime:
    """When the platform says it received the item; VerificationError when the receipt has no time."""
    if not receipt.received_at.seconds:
        raise VerificationError("receipt carries no receivedAt time to check its signer certificate against")
    return receipt.received_at.ToDatetime(tzinfo=dt.UTC)


def verify_receipt(
    envelope: dsse.Envelope,
    platform_certificate: x509.Certificate,
    ca_certificates: list[x509.Certificate],
    *,
    evidence_id: str,
    sha256: str,
    size: int,
    gateway_id: str,
    intermediates: list[x509.Certificate] | None = None,
    at_signing_time: bool = False,
) -> evidence_pb2.Receipt:
    """Raise VerificationError naming the first thing that does not hold.

    ``at_signing_time``: check the signer certificate's validity at the receipt's own
    ``receivedAt`` instead of now — for a bundle read years later, after that certificate
    expired. The gateway, receiving a receipt live, checks at now.
    """
    if not ca_certificates:
        raise VerificationError("no platform CA certificate to check the receipt signer against (gateway not enrolled?)")
    moment = received_at(parse_receipt(envelope)) if at_signing_time else None
    try:
        verify_certificate_chain(platform_certificate, intermediates or [], ca_certificates, at=moment)
        require_role(platform_certificate, Role.RECEIPT_SIGNER)
    except (VerificationError, RoleError) as exc:
        raise VerificationError(f"receipt signer certificate: {exc}") from exc
    try:
        dsse.verify(envelope, platform_certificate.public_key(), RECEIPT_TYPE)  # type: ignore[arg-type]  # a non-EC key fails verify(); narrowing would change that error
    except VerificationError as exc:
        raise VerificationError(f"receipt signature: {exc}") from exc
    receipt = parse_receipt(envelope)
    if receipt.sha256 != sha256:
        raise VerificationError(f"receipt is for digest {receipt.sha256}, not {sha256}")
    if receipt.size != size:
        raise VerificationError(f"receipt is for {receipt.size} bytes, not {size}")
    if receipt.evidence_id != evidence_id:
        raise VerificationError(f"receipt names evidence {receipt.evidence_id or '(none)'}, not {evidence_id}")
    if receipt.gateway_id != gateway_id:
        raise VerificationError(f"receipt names gateway {receipt.gateway_id or '(none)'}, not {gateway_id}")
    return receipt
