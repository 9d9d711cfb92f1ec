"""What one piece of evidence references, so that a bundle can carry its parts (docs/formats/bundle.md, *Parts*).

A signing record is worth little without the signature and fingerprint it names, a document without the
evidence it cites and the signing record it carries, a delivery record without the document delivered and
the receipt signed. ``references`` reads those links from a manifest (and, for records whose links live in
their content, from the content) by the same rules at export and at verification, so ``egw verify`` can
check that a bundle carries exactly the parts its item names, no more and no fewer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import VerificationError

__all__ = ["Reference", "references", "MAX_RECORD_BYTES", "SIGNING_RECORD_TYPE", "DELIVERY_RECORD_TYPE"]

# The media types whose content names other evidence with its digest (gateway/workflows/signing.py and
# delivery.py own them; repeated here because the evidence core must not import the workflows).
SIGNING_RECORD_TYPE = "application/vnd.egw.signing-record+json"
DELIVERY_RECORD_TYPE = "application/vnd.egw.delivery.v1+json"
# Such records are a few kilobytes; anything larger is not one of ours and is not read into memory.
MAX_RECORD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Reference:
    """One link from an item to another: the id, the digest when the item states one, and where it was read."""

    evidence_id: str
    sha256: str | None
    where: str


def _record(read_content: Callable[[], bytes], what: str) -> dict[str, Any]:
    data = read_content()
    if len(data) > MAX_RECORD_BYTES:
        raise VerificationError(f"the {what} is {len(data)} bytes, more than a record can be; it is not one of egw's")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"the {what} is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise VerificationError(f"the {what} is not a JSON object")
    return body


def _linked(value: Any, where: str) -> Reference | None:
    """``{"evidence_id", "sha256"}`` (the form records use), or None for an absent link."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("evidence_id"), str):
        raise VerificationError(f"{where} is not a link to evidence (an object with evidence_id)")
    sha = value.get("sha256")
    return Reference(value["evidence_id"], sha if isinstance(sha, str) else None, where)


def _by_id(value: Any, where: str) -> Reference | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise VerificationError(f"{where} is not an evidence id")
    return Reference(value, None, where)


def _signing_record(read_content: Callable[[], bytes]) -> list[Reference | None]:
    items = _record(read_content, "signing record").get("items") or {}
    if not isinstance(items, dict):
        raise VerificationError("the signing record's items is not an object")
    return [_linked(link, f"signing record item {name}") for name, link in sorted(items.items())]


def _delivery_record(read_content: Callable[[], bytes]) -> list[Reference | None]:
    body = _record(read_content, "delivery record")
    return [_linked(body.get("document"), "delivery record document"),
            _linked(body.get("receipt"), "delivery record receipt")]


def _document(document: dict[str, Any]) -> list[Reference | None]:
    cites = document.get("cites") or []
    if not isinstance(cites, list):
        raise VerificationError("the manifest's extra.document.cites is not a list")
    found: list[Reference | None] = [_by_id(c, "document cites") for c in cites]
    found.append(_by_id(document.get("signing_record"), "document signing_record"))
    found.append(_by_id(document.get("counter_seal_of"), "document counter_seal_of"))
    return found


def references(manifest: dict[str, Any], read_content: Callable[[], bytes]) -> list[Reference]:
    """Every mention of other evidence in ``manifest``'s item (an id may be mentioned more than once: each
    mention that states a digest is checked).

    ``read_content`` is called only for the records whose links live in their content."""
    extra = manifest.get("extra") or {}
    media_type = manifest.get("media_type")
    found: list[Reference | None] = []
    if media_type == SIGNING_RECORD_TYPE:
        found += _signing_record(read_content)
    elif media_type == DELIVERY_RECORD_TYPE:
        found += _delivery_record(read_content)
    document = extra.get("document")
    if manifest.get("kind") == "document" and isinstance(document, dict):
        found += _document(document)
    if isinstance(extra.get("photo"), dict):  # a strip reading names the photo it was read from
        found.append(_linked(extra["photo"], "strip reading photo"))
    return [ref for ref in found if ref is not None and ref.evidence_id != manifest.get("evidence_id")]
