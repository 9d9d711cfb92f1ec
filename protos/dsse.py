"""DSSE envelopes, shared by the gateway and the reference platform (like the protos).

DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1).

The signature covers PAE(payloadType, payload), never a re-serialisation of
JSON, so a manifest can be verified from its exact bytes years later without
agreeing on a canonical JSON form.

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
    LEN(s)          = ASCII decimal byte length of s, no leading zeros
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


__all__ = ["pae", "Envelope", "EnvelopeError", "sign", "verify", "key_id"]


class EnvelopeError(ValueError):
    """An envelope that is malformed or whose signature does not verify."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-authentication encoding: what the signature is computed over."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the SubjectPublicKeyInfo: names the key without trusting a name."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True)
class Envelope:
    """A parsed DSSE envelope: the payload bytes exactly as signed."""

    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, DER ECDSA signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [
                {"keyid": kid, "sig": base64.b64encode(sig).decode("ascii")} for kid, sig in self.signatures
            ],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode("utf-8") + b"\n"

    def payload_json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EnvelopeError(f"envelope payload is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise EnvelopeError("envelope payload is JSON but not an object")
        return value

    @classmethod
    def from_json(cls, data: Any) -> "Envelope":
        """Parse the JSON form; every structural problem is a EnvelopeError."""
        if not isinstance(data, dict):
            raise EnvelopeError("DSSE envelope is not a JSON object")
        try:
            payload_type = data["payloadType"]
            payload = base64.b64decode(data["payload"], validate=True)
            signatures = tuple(
                (str(s.get("keyid", "")), base64.b64decode(s["sig"], validate=True)) for s in data["signatures"]
            )
        except (KeyError, TypeError, AttributeError, binascii.Error, ValueError) as exc:
            raise EnvelopeError(f"DSSE envelope is malformed ({exc.__class__.__name__}: {exc})") from exc
        if not isinstance(payload_type, str) or not signatures:
            raise EnvelopeError("DSSE envelope has no payloadType or no signatures")
        return cls(payload_type, payload, signatures)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Envelope":
        try:
            return cls.from_json(json.loads(raw))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EnvelopeError(f"DSSE envelope is not valid JSON: {exc}") from exc


def sign(payload_type: str, payload: bytes, private_key: ec.EllipticCurvePrivateKey) -> Envelope:
    signature = private_key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    return Envelope(payload_type, payload, ((key_id(private_key.public_key()), signature),))


def verify(envelope: Envelope, public_key: ec.EllipticCurvePublicKey, expected_type: str | None = None) -> None:
    """Raise EnvelopeError unless one signature by ``public_key`` covers the payload."""
    if expected_type is not None and envelope.payload_type != expected_type:
        raise EnvelopeError(
            f"envelope payloadType is {envelope.payload_type!r}, expected {expected_type!r}"
        )
    message = pae(envelope.payload_type, envelope.payload)
    for _kid, signature in envelope.signatures:
        try:
            public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            return
        except InvalidSignature:
            continue
    raise EnvelopeError("no signature in the envelope verifies with the signer's public key")
