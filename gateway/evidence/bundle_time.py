"""Trusted time in a bundle: an RFC 3161 token over a signed tree head that covers the item (docs/formats/bundle.md).

A receipt proves when the platform received an item, but only once it was uploaded; a time-stamp token
from the platform's TSA over a signed tree head proves that every entry the head covers (so the item's
``ingested`` entry, which commits to its manifest) existed at the token's ``genTime``. ``egw export``
carries the **earliest** stamped head that covers the item (a later one proves nothing more) in
``time-stamp.json``: the exact envelope bytes the token is over, the token, and an inclusion proof of the
item's entry in *that* head, so no consistency proof to the bundle's own head is needed. ``tsa.pem``
holds the certificates the token carries, for a reader with ``openssl ts -verify``.

``check_time_stamp`` is the verifier's side: the token must be over exactly those bytes and signed by a
certificate with the time-stamping role that chains to the trust anchor; the head must be signed by the
gateway key that signed the manifest and include the item's entry. Only then does its ``genTime`` count.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.errors import VerificationError
from gateway.evidence import dsse, merkle, tree_head_stamps
from gateway.evidence.custody import verify_tree_head

if TYPE_CHECKING:
    from gateway.evidence.evidence_service import EvidenceService

__all__ = ["TIME_STAMP_FILE", "TSA_FILE", "TimeStampProof", "export_time_stamp", "read_time_stamp", "check_time_stamp"]

TIME_STAMP_FILE = "time-stamp.json"
TSA_FILE = "tsa.pem"


def _covering(seq: int, stamps: list[tree_head_stamps.StampedHead]) -> tree_head_stamps.StampedHead | None:
    """The earliest stamped head that covers entry ``seq`` (it holds seq + 1 entries or more)."""
    covering = [s for s in stamps if s.tree_size > seq]
    return min(covering, key=lambda s: s.tree_size) if covering else None


def _token_certificates(token: bytes) -> list[x509.Certificate]:
    from asn1crypto import cms

    try:
        certificates = cms.ContentInfo.load(token)["content"]["certificates"]
        return [x509.load_der_x509_certificate(c.chosen.dump()) for c in certificates or []]
    except (ValueError, KeyError, TypeError):
        return []


def export_time_stamp(service: EvidenceService, seq: int, stamps: list[tree_head_stamps.StampedHead],
                      out_dir: Path) -> dict[str, Any]:
    """Write ``time-stamp.json`` (and ``tsa.pem``) for the item whose ``ingested`` entry is ``seq``; the index keys."""
    stamp = _covering(seq, stamps)
    if stamp is None:
        return {"time_stamp": None, "tsa_certificate": None}
    proof = {
        "leaf_index": seq,
        "tree_size": stamp.tree_size,
        "inclusion_path": [h.hex() for h in service.custody.inclusion(seq, stamp.tree_size)],
        "tree_head": base64.b64encode(stamp.envelope).decode("ascii"),
        "token": base64.b64encode(stamp.token).decode("ascii"),
    }
    (out_dir / TIME_STAMP_FILE).write_text(json.dumps(proof, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    certificates = _token_certificates(stamp.token)
    if not certificates:
        return {"time_stamp": TIME_STAMP_FILE, "tsa_certificate": None}
    (out_dir / TSA_FILE).write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return {"time_stamp": TIME_STAMP_FILE, "tsa_certificate": TSA_FILE}


@dataclass(frozen=True)
class TimeStampProof:
    leaf_index: int
    tree_size: int
    path: list[bytes]
    head: bytes
    token: bytes


def read_time_stamp(data: bytes) -> TimeStampProof:
    from gateway.evidence.schemas import check_schema

    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{TIME_STAMP_FILE} is not JSON: {exc}") from exc
    check_schema("time-stamp-proof", value, TIME_STAMP_FILE)
    try:
        return TimeStampProof(int(value["leaf_index"]), int(value["tree_size"]),
                              [bytes.fromhex(h) for h in value["inclusion_path"]],
                              base64.b64decode(value["tree_head"], validate=True),
                              base64.b64decode(value["token"], validate=True))
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        raise VerificationError(f"{TIME_STAMP_FILE} is malformed: {exc}") from exc


def check_time_stamp(proof: TimeStampProof, *, entry: bytes, leaf_index: int, gateway_key: Any, gateway_id: str,
                     anchors: list[x509.Certificate]) -> tuple[dt.datetime, str, x509.Certificate, str]:
    """(genTime, TSA identity, TSA certificate, what was checked), or VerificationError naming what does not hold."""
    from gateway.uplink.time_stamps import check_token_sync

    if proof.leaf_index != leaf_index:
        raise VerificationError(f"the time-stamped head's proof is for entry {proof.leaf_index}, the item's is {leaf_index}")
    size, root_hash, body = verify_tree_head(dsse.Envelope.from_bytes(proof.head), gateway_key)
    if body.get("gateway_id") != gateway_id:
        raise VerificationError(f"the time-stamped tree head is signed for gateway {body.get('gateway_id')!r}, "
                                f"not {gateway_id!r}")
    if size != proof.tree_size:
        raise VerificationError(f"the time-stamped tree head covers {size} entries, the proof claims {proof.tree_size}")
    merkle.verify_inclusion(merkle.leaf_hash(entry), leaf_index, size, proof.path, root_hash)
    if not anchors:
        raise VerificationError("cannot check: no certificate to chain the TSA to")
    with _quiet_validator_logs():  # the TSA is judged when it stamped, so a token outlives its certificate
        checked = check_token_sync(proof.token, proof.head, anchors, at=_claimed_gen_time(proof.token))
    signer = _signer_certificate(proof.token)
    when = dt.datetime.fromisoformat(checked.gen_time.replace("Z", "+00:00"))
    return when, checked.tsa, signer, f"tree head of size {size} (covers entry {leaf_index})"


def _claimed_gen_time(token: bytes) -> dt.datetime:
    """The genTime the token states (believed only once its signature and TSA check out)."""
    from asn1crypto import cms

    try:
        info = cms.ContentInfo.load(token)["content"]["encap_content_info"]["content"].parsed
        when = info["gen_time"].native
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(f"not a usable RFC 3161 time-stamp token: {exc}") from exc
    if not isinstance(when, dt.datetime):
        raise VerificationError("the time-stamp token states no genTime")
    return when


@contextlib.contextmanager
def _quiet_validator_logs() -> Iterator[None]:
    """pyHanko logs a refused path with its traceback before raising; the refusal is reported as a check line,
    so an operator must not see a traceback for a bundle that merely fails."""
    loggers = [logging.getLogger(name) for name in ("pyhanko", "pyhanko_certvalidator")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _signer_certificate(token: bytes) -> x509.Certificate:
    """The certificate the token's signer info names (the check above has already found and validated it)."""
    from asn1crypto import cms

    signed = cms.ContentInfo.load(token)["content"]
    sid = signed["signer_infos"][0]["sid"].chosen
    for cert in _token_certificates(token):
        if isinstance(sid, cms.IssuerAndSerialNumber) and cert.serial_number == sid["serial_number"].native:
            return cert
    certificates = _token_certificates(token)
    if len(certificates) == 1:
        return certificates[0]
    raise VerificationError("the time-stamp token does not carry the certificate that signed it")
