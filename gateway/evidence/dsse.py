"""DSSE for the gateway: ``protos.dsse`` with failures raised as VerificationError."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import VerificationError
from protos.dsse import Envelope as _Envelope
from protos.dsse import EnvelopeError, key_id, pae, sign
from protos.dsse import verify as _verify

__all__ = ["Envelope", "SignedEnvelope", "pae", "sign", "verify", "key_id"]

#: What ``sign`` returns: the shared envelope class, which ``Envelope`` below only refines for parsing.
#: Annotate with it where an envelope may come from either (a fresh signature or a parsed file).
SignedEnvelope = _Envelope


class Envelope(_Envelope):
    """Same envelope; parsing errors surface as VerificationError."""

    @classmethod
    def from_json(cls, data: Any) -> Envelope:
        try:
            parsed = _Envelope.from_json(data)
        except EnvelopeError as exc:
            raise VerificationError(str(exc)) from exc
        return cls(parsed.payload_type, parsed.payload, parsed.signatures)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        try:
            parsed = _Envelope.from_bytes(raw)
        except EnvelopeError as exc:
            raise VerificationError(str(exc)) from exc
        return cls(parsed.payload_type, parsed.payload, parsed.signatures)

    def payload_json(self) -> dict[str, Any]:
        try:
            return super().payload_json()
        except EnvelopeError as exc:
            raise VerificationError(str(exc)) from exc


def verify(envelope: _Envelope, public_key: ec.EllipticCurvePublicKey, expected_type: str | None = None) -> None:
    try:
        _verify(envelope, public_key, expected_type)
    except EnvelopeError as exc:
        raise VerificationError(str(exc)) from exc
