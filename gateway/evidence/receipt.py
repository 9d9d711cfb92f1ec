"""Platform receipts: a DSSE envelope signed by the platform key whose payload
is ``egw.v1.Receipt`` in the proto3 JSON mapping.

A receipt is only believed when its signature verifies with the platform
certificate, that certificate chains to the platform CA the gateway enrolled
with, and its digest, size and evidence id are the ones we sent.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from google.protobuf import json_format

from gateway.errors import VerificationError
from gateway.evidence import dsse
from gateway.evidence.identity import verify_certificate_chain
from protos.egw.v1 import evidence_pb2

__all__ = ["RECEIPT_TYPE", "verify_receipt", "parse_receipt"]

RECEIPT_TYPE = "application/vnd.egw.receipt.v1+json"


def parse_receipt(envelope: dsse.Envelope) -> evidence_pb2.Receipt:
    if envelope.payload_type != RECEIPT_TYPE:
        raise VerificationError(f"receipt has payloadType {envelope.payload_type!r}, expected {RECEIPT_TYPE!r}")
    try:
        return json_format.Parse(envelope.payload.decode("utf-8"), evidence_pb2.Receipt(), ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise VerificationError(f"receipt payload is not an egw.v1.Receipt: {exc}") from exc


def verify_receipt(
    envelope: dsse.Envelope,
    platform_certificate: x509.Certificate,
    ca_certificates: list[x509.Certificate],
    *,
    evidence_id: str,
    sha256: str,
    size: int,
    at_signing_time: bool = False,
) -> evidence_pb2.Receipt:
    """Raise VerificationError naming the first thing that does not hold.

    ``at_signing_time``: check the platform certificate's validity at the receipt's own
    ``received_at`` instead of now — for a bundle read years later, after that certificate
    expired (the signature is what proves the receipt; the validity period bounds when it
    could be made). The gateway, receiving a receipt live, checks at now.
    """
    if not ca_certificates:
        raise VerificationError("no platform CA certificate to check the receipt signer against (gateway not enrolled?)")
    moment = None
    if at_signing_time:
        stamp = parse_receipt(envelope).received_at
        if not stamp.seconds:
            raise VerificationError("receipt carries no received_at time to check its signer certificate against")
        moment = stamp.ToDatetime(tzinfo=dt.UTC)
    try:
        verify_certificate_chain(platform_certificate, [], ca_certificates, at=moment)
    except VerificationError as exc:
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
    if receipt.evidence_id and receipt.evidence_id != evidence_id:
        raise VerificationError(f"receipt names evidence {receipt.evidence_id}, not {evidence_id}")
    return receipt
