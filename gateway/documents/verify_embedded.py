"""What a sealed document carries, checked against itself: the embedded files and the approval signatures.

The signatures prove the bytes did not change since they were signed; this module proves the bytes say what
they should: that the embedded signing record is the one ``document.json`` names, that every item the record
lists (handwriting, pen series, fingerprint, their images) is embedded with the digest the record gives, that
the signed draft is the one the session bound, and that each approval signature binds exactly that
handwriting record, session, signer, officer and document. An approval that ``document.json`` declares but
the document lacks (a removed signature field) fails, and so does one it does not declare.
(docs/documents-sealing.md, "What `egw verify` checks in the document".)
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any

from pyhanko.pdf_utils.misc import PdfError

from gateway.documents.approvals import OFFICER_FIELD, PARTY_FIELD

__all__ = ["BoundSignature", "embedded_files", "check_document", "describe_binding"]

DESCRIPTION = "document.json"
SIGNING_RECORD = "signing-record.json"
SIGNED_DRAFT = "signed-draft.pdf"


@dataclass(frozen=True)
class BoundSignature:
    """An approval signature as the verifier found it: its field, its binding, the station whose key made it."""

    field: str
    binding: dict[str, Any]
    station: str | None  # the gateway id of its certificate, None when it is no gateway certificate


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _name_tree(node: Any, found: list[tuple[str, Any]], depth: int = 0) -> None:
    if depth > 16:
        raise ValueError("the embedded-files name tree is nested deeper than 16 levels")
    names = node.get("/Names")
    if names is not None:
        found += [(str(names[i]), names[i + 1]) for i in range(0, len(names) - 1, 2)]
    for kid in node.get("/Kids") or []:
        _name_tree(kid.get_object(), found, depth + 1)


def embedded_files(root: Any, problems: list[str]) -> dict[str, bytes]:
    """The embedded files of the PDF catalogue ``root``, by name (a name used twice is a problem)."""
    tree = (root.get("/Names") or {}).get("/EmbeddedFiles")
    if tree is None:
        return {}
    entries: list[tuple[str, Any]] = []
    _name_tree(tree.get_object(), entries)
    files: dict[str, bytes] = {}
    for name, spec in entries:
        if name in files:
            problems.append(f"two embedded files are named {name!r}: a reader cannot tell which one is meant")
        try:
            files[name] = spec.get_object()["/EF"]["/F"].get_object().data
        except (zlib.error, PdfError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"the embedded file {name!r} cannot be read: it is damaged ({type(exc).__name__}: {exc})")
    return files


def describe_binding(binding: dict[str, Any]) -> str:
    """What an approval signature binds, in one line for `egw verify`."""
    if binding.get("role") == "party":
        return (f"handwriting record ISO/IEC 19794-7 sha256 {binding.get('iso_19794_7_sha256')}, signing session "
                f"{binding.get('session_id')}, signing record {binding.get('signing_record')}")
    return f"officer id {binding.get('officer_id')}, document {binding.get('document_id')}"


def _json(files: dict[str, bytes], name: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(files[name])
    except (ValueError, UnicodeDecodeError) as exc:
        problems.append(f"the embedded {name} is not JSON ({exc})")
        return None
    if not isinstance(value, dict):
        problems.append(f"the embedded {name} is not a JSON object")
        return None
    return value


def _check_signing(files: dict[str, bytes], signing: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    """The embedded signing record and its items against document.json and the record's own digests."""
    if SIGNING_RECORD not in files:
        problems.append(f"document.json names signing record {signing.get('evidence_id')}, but {SIGNING_RECORD} is not embedded")
        return None
    if _sha(files[SIGNING_RECORD]) != signing.get("record_sha256"):
        problems.append(f"the embedded {SIGNING_RECORD} (sha256 {_sha(files[SIGNING_RECORD])}) is not the signing record "
                        f"document.json names (sha256 {signing.get('record_sha256')})")
    record = _json(files, SIGNING_RECORD, problems)
    if record is None:
        return None
    for name, item in sorted((record.get("items") or {}).items()):
        if name not in files:
            problems.append(f"the signing record lists {name}, but it is not embedded")
        elif _sha(files[name]) != item.get("sha256"):
            problems.append(f"the embedded {name} (sha256 {_sha(files[name])}) is not the one the signing record names "
                            f"(sha256 {item.get('sha256')})")
    draft = (record.get("document") or {}).get("sha256")
    if SIGNED_DRAFT in files and _sha(files[SIGNED_DRAFT]) != draft:
        problems.append(f"the embedded {SIGNED_DRAFT} is not the draft the signing session bound (sha256 {draft})")
    return record


def _check_party(binding: dict[str, Any], record: dict[str, Any] | None, files: dict[str, bytes], problems: list[str]) -> None:
    if record is None:
        problems.append(f"[{PARTY_FIELD}] the party's signature binds a signing record the document does not carry")
        return
    expected = {"signer": (record.get("signer") or {}).get("name"), "session_id": record.get("session_id"),
                "signing_record_sha256": _sha(files[SIGNING_RECORD]),
                "iso_19794_7_sha256": (record.get("signature") or {}).get("iso_19794_7_sha256"),
                "iso_19794_4_sha256": (record.get("fingerprint") or {}).get("iso_19794_4_sha256")}
    for key, value in expected.items():
        if binding.get(key) != value:
            problems.append(f"[{PARTY_FIELD}] the party's signature binds {key} {binding.get(key)!r}, but the embedded signing "
                            f"record gives {value!r}: the handwriting embedded is not the handwriting signed")


def check_document(files: dict[str, bytes], bound: list[BoundSignature]) -> list[str]:
    """Every problem with the embedded files and the approval signatures ``bound`` (empty: all consistent).
    A PDF without ``document.json`` is not an egw document: only its signatures are checked."""
    problems: list[str] = []
    if DESCRIPTION not in files:
        for signature in bound:
            problems.append(f"[{signature.field}] an approval signature in a document without {DESCRIPTION}: nothing says what it approves")
        return problems
    description = _json(files, DESCRIPTION, problems)
    if description is None:
        return problems
    signing = description.get("signing")
    record = _check_signing(files, signing, problems) if isinstance(signing, dict) else None
    declared: dict[str, Any] = description.get("approvals") or {}
    by_field = {s.field: s for s in bound}
    for field, what in declared.items():
        if field not in by_field:
            problems.append(f"document.json declares the {what.get('role')}'s signature ({field}), but the document carries no "
                            "such approval signature: a signature field was removed or never made")
    for signature in bound:
        problems += _check_one(signature, description, declared, record, files)
    return problems


def _check_one(signature: BoundSignature, description: dict[str, Any], declared: dict[str, Any], record: dict[str, Any] | None,
               files: dict[str, bytes]) -> list[str]:
    problems: list[str] = []
    binding, field = signature.binding, signature.field
    if field not in declared:
        return [f"[{field}] an approval signature document.json does not declare (declared: {', '.join(declared) or 'none'})"]
    if binding.get("role") != declared[field].get("role"):
        problems.append(f"[{field}] binds the role {binding.get('role')!r}, but the field is the {declared[field].get('role')}'s")
    if binding.get("document_id") != description.get("document_id"):
        problems.append(f"[{field}] was made for document {binding.get('document_id')}, not this one ({description.get('document_id')})")
    if signature.station is None or binding.get("station") != signature.station:
        problems.append(f"[{field}] names station {binding.get('station')!r}, but was signed by "
                        f"{'no station certificate' if signature.station is None else 'station ' + signature.station}")
    if field == PARTY_FIELD:
        _check_party(binding, record, files, problems)
    elif field == OFFICER_FIELD and binding.get("officer_id") != declared[field].get("officer_id"):
        problems.append(f"[{field}] binds officer {binding.get('officer_id')!r}, but document.json names {declared[field].get('officer_id')!r}")
    return problems
