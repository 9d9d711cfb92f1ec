"""What a document cites and what it carries, looked up in the evidence store.

Every byte that goes into a document from the store is hashed again as it is read and compared with the
digest the store's row (and, for signing parts, the signing record) names: a blob changed on disk is
refused with the evidence id, never printed or embedded as if it were the evidence.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from gateway.errors import ConfigError, NotFoundError, VerificationError
from gateway.evidence import dsse
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.state import EvidenceRow

__all__ = ["Citation", "SigningParts", "attachment_name", "EMBEDDED_KINDS", "MAX_EMBEDDED_BYTES", "cite", "signing_parts", "qr_payload"]

SIGNING_RECORD_MEDIA_TYPE = "application/vnd.egw.signing-record+json"  # gateway.workflows.signing.RECORD_MEDIA_TYPE
EMBEDDED_KINDS = ("result", "signature")  # cited items small enough to travel inside the PDF (results, records)
MAX_EMBEDDED_BYTES = 8 << 20  # a "result" bigger than this is not a result document


@dataclass(frozen=True)
class Citation:
    """One cited item as the document prints it (and, for results and records, embeds it)."""

    evidence_id: str
    kind: str
    media_type: str
    name: str  # the source's file name, as data
    sha256: str
    size: int
    receipt_id: str | None  # the platform's, once receipted
    content: bytes | None  # embedded as an associated file (results, records); None for photos and recordings

    def as_json(self) -> dict[str, Any]:
        return {"evidence_id": self.evidence_id, "kind": self.kind, "media_type": self.media_type, "name": self.name,
                "sha256": self.sha256, "size": self.size, "receipt_id": self.receipt_id, "embedded": self.content is not None}


@dataclass(frozen=True)
class SigningParts:
    """A signing session's pieces, checked against its record: images for the signature fields, records to embed."""

    evidence_id: str
    record: dict[str, Any]
    record_bytes: bytes
    parts: dict[str, bytes]  # item name (signature.png, fingerprint.iso19794-4 …) -> bytes

    @property
    def signer(self) -> dict[str, str]:
        signer = self.record.get("signer") or {}
        return {"name": str(signer.get("name", "")), "role": str(signer.get("role", ""))}


def qr_payload(evidence_id: str, sha256: str) -> str:
    """What each citation's QR code says: the evidence id and its digest (docs/formats/document.md)."""
    return f"egw-evidence:{evidence_id}#sha256={sha256}"


def _row(service: EvidenceService, evidence_id: str) -> EvidenceRow:
    try:
        return service.state.get(evidence_id)
    except NotFoundError as exc:
        raise NotFoundError(f"the document cites {evidence_id!r}, which is not evidence in {service.data_dir}",
                            "check the id with `egw ls` (and --data-dir)") from exc


def _read_checked(service: EvidenceService, row: EvidenceRow, expected_sha256: str | None = None) -> bytes:
    if row.size > MAX_EMBEDDED_BYTES:
        raise ConfigError(f"evidence {row.id} is {row.size} bytes, too large to embed in a document (at most {MAX_EMBEDDED_BYTES})",
                          "cite it without embedding: only results and signing records are embedded")
    with service.store.open(row.sha256) as blob:
        data = blob.read(MAX_EMBEDDED_BYTES + 1)
    actual = hashlib.sha256(data).hexdigest()
    for wanted in {row.sha256, expected_sha256 or row.sha256}:
        if actual != wanted:
            raise VerificationError(f"evidence {row.id} does not hash to {wanted} in the store (it hashes to {actual}); "
                                    "nothing was rendered")
    return data


def _receipt_id(row: EvidenceRow) -> str | None:
    if row.receipt is None:
        return None
    from gateway.evidence.receipt import parse_receipt

    try:
        return str(parse_receipt(dsse.Envelope.from_bytes(row.receipt)).receipt_id) or None
    except (VerificationError, ValueError):
        return None  # the receipt was verified when it arrived; a listing that cannot read it shows none


MAX_NAME_CHARS = 120


def _source_name(row: EvidenceRow) -> str:
    """The cited file's name as printed: control and format characters from a device's file name are shown
    as ``\\uXXXX`` (never obeyed by a viewer), and a very long name is cut with an ellipsis."""
    name = PurePosixPath(row.source_path.replace("\\", "/")).name or row.source_path
    shown = "".join(ch if unicodedata.category(ch)[0] != "C" else f"\\u{ord(ch):04x}" for ch in name)
    return shown if len(shown) <= MAX_NAME_CHARS else shown[: MAX_NAME_CHARS - 1] + "…"


def attachment_name(evidence_id: str, name: str) -> str:
    """The associated file's name for a cited item: its evidence id and its name in portable characters."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "item"
    return f"{evidence_id}-{safe[:80]}"


def cite(service: EvidenceService, evidence_id: str) -> Citation:
    """The cited item by id; results and records are read (and checked) to be embedded."""
    row = _row(service, evidence_id)
    content = _read_checked(service, row) if row.kind in EMBEDDED_KINDS else None
    return Citation(row.id, row.kind, row.media_type, _source_name(row), row.sha256, row.size, _receipt_id(row), content)


def signing_parts(service: EvidenceService, evidence_id: str) -> SigningParts:
    """The signing record ``evidence_id`` and each item it names, each checked against the digest it names."""
    row = _row(service, evidence_id)
    if row.media_type != SIGNING_RECORD_MEDIA_TYPE:
        raise ConfigError(f"evidence {evidence_id} is not a signing record (it is {row.kind}, {row.media_type})",
                          "pass the evidence id `egw sign` printed first (the signing record's)")
    record_bytes = _read_checked(service, row)
    record = json.loads(record_bytes)
    parts: dict[str, bytes] = {}
    for name, item in sorted((record.get("items") or {}).items()):
        parts[name] = _read_checked(service, _row(service, str(item["evidence_id"])), str(item["sha256"]))
    return SigningParts(row.id, record, record_bytes, parts)
