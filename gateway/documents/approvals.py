"""The party's and the officer's signatures as PAdES signatures on the document, made by the station.

The party signs on the pad and has no certificate; the officer storing the document has none either. What
the station can honestly do is sign, with its own gateway key, a statement bound into the signature itself:
an approval signature (PAdES, its own signature field, before the agency seal) whose CMS signed attributes
carry a **binding** (``BINDING_OID``, canonical JSON as a UTF8String) naming

* for the party (field ``PartySignature``): the signer's name, the signing session id, the SHA-256 of the
  signing record and of the ISO/IEC 19794-7 handwriting record (and the 19794-4 fingerprint record) it names;
* for the officer (field ``OfficerSignature``): the officer id under which the document was issued;

and, for both, the document id and the station. The signature field's ``/Name`` and ``/Reason`` say the same
in words ("handwritten signature captured by station X"). What this proves and does not prove:
docs/documents-sealing.md, "The party's and the officer's signatures". ``verify_pdf`` checks every binding
against the embedded signing record and its items; the agency seal added afterwards covers them all.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asn1crypto import cms, core
from asn1crypto import keys as asn1_keys
from cryptography.hazmat.primitives import serialization
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.attributes import CMSAttributeProvider
from pyhanko.sign.timestamps import TimeStamper

from gateway.documents.seal import _asn1_cert, _store, _write_atomically
from gateway.documents.sources import SigningParts
from gateway.evidence.identity import Identity
from protos.pki_roles import EGW_ARC

__all__ = ["BINDING_OID", "BINDING_VERSION", "PARTY_FIELD", "OFFICER_FIELD", "Approval", "party_approval", "officer_approval",
           "sign_approvals", "binding_of"]

log = logging.getLogger("egw.documents")

BINDING_OID = f"{EGW_ARC}.3.1"
"""The signed attribute that binds an approval signature to what it approves (docs/documents-sealing.md)."""
BINDING_VERSION = "egw.signature-binding/1"
PARTY_FIELD = "PartySignature"
OFFICER_FIELD = "OfficerSignature"


@dataclass(frozen=True)
class Approval:
    """One approval signature to make: its field, the binding it signs, and the words a PDF reader shows."""

    field: str
    binding: dict[str, Any]
    name: str
    reason: str


def _canonical(binding: dict[str, Any]) -> bytes:
    return json.dumps(binding, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def party_approval(signing: SigningParts, document_id: str, station: str) -> Approval:
    """The party's approval: the handwriting (and fingerprint) record of signing session ``signing``."""
    record = signing.record
    handwriting = record.get("signature") or {}
    finger = record.get("fingerprint") or {}
    binding = {"v": BINDING_VERSION, "role": "party", "signer": signing.signer["name"], "document_id": document_id,
               "station": station, "session_id": str(record.get("session_id", "")),
               "signing_record": signing.evidence_id,
               "signing_record_sha256": hashlib.sha256(signing.record_bytes).hexdigest(),
               "iso_19794_7_sha256": handwriting.get("iso_19794_7_sha256"), "iso_19794_4_sha256": finger.get("iso_19794_4_sha256")}
    return Approval(PARTY_FIELD, binding, signing.signer["name"],
                    f"当事人手写签名，由执法站 {station} 采集（签名会话 {binding['session_id']}）")


def officer_approval(officer_id: str, document_id: str, station: str) -> Approval:
    """The issuing officer's approval: the officer id the document was stored under (no handwriting)."""
    binding = {"v": BINDING_VERSION, "role": "officer", "officer_id": officer_id, "document_id": document_id, "station": station}
    return Approval(OFFICER_FIELD, binding, f"执法人员 {officer_id}", f"执法人员 {officer_id} 制作文书，由执法站 {station} 签署")


class _BindingAttribute(CMSAttributeProvider):
    attribute_type = BINDING_OID

    def __init__(self, binding: bytes) -> None:
        self.binding = binding

    async def build_attr_value(self, dry_run: bool = False) -> core.UTF8String:
        return core.UTF8String(self.binding.decode("utf-8"))


class _BindingSigner(signers.SimpleSigner):
    """The gateway's key, adding the binding to the standard PAdES signed attributes."""

    def __init__(self, binding: bytes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.binding = binding

    def _signed_attr_providers(self, *args: Any, **kwargs: Any) -> Iterator[CMSAttributeProvider]:
        yield from super()._signed_attr_providers(*args, **kwargs)
        yield _BindingAttribute(self.binding)


async def sign_approvals(source: Path, target: Path, identity: Identity, approvals: list[Approval],
                         timestamper: TimeStamper | None = None) -> int:
    """Each approval as a signature of its own on ``source`` (one incremental update each), written to
    ``target`` (may be ``source``); the bytes added. With ``timestamper`` each gets a signature time-stamp."""
    key_der = identity.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
    key = asn1_keys.PrivateKeyInfo.load(key_der)
    original = source.stat().st_size
    document: io.BytesIO = io.BytesIO(source.read_bytes())
    for approval in approvals:
        signer = _BindingSigner(_canonical(approval.binding), signing_cert=_asn1_cert(identity.certificate), signing_key=key,
                                cert_registry=_store(identity.ca_certificates))
        meta = signers.PdfSignatureMetadata(field_name=approval.field, md_algorithm="sha256",
                                            subfilter=fields.SigSeedSubFilter.PADES, reason=approval.reason, name=approval.name)
        pdf_signer = signers.PdfSigner(meta, signer=signer, timestamper=timestamper,
                                       new_field_spec=fields.SigFieldSpec(sig_field_name=approval.field, on_page=-1))
        writer = IncrementalPdfFileWriter(document, strict=False)
        signed = await pdf_signer.async_sign_pdf(writer, output=io.BytesIO())
        assert isinstance(signed, io.BytesIO)
        document = signed
    _write_atomically(target, document)
    return target.stat().st_size - original


def binding_of(signed_data: cms.SignedData) -> dict[str, Any] | None:
    """The binding a signature's signed attributes carry, or None (not an approval signature). ValueError when
    the attribute is there but is not one JSON object."""
    for attribute in signed_data["signer_infos"][0]["signed_attrs"] or []:
        if attribute["type"].dotted != BINDING_OID:
            continue
        values = list(attribute["values"])
        if len(values) != 1:
            raise ValueError("the binding attribute must carry exactly one value")
        text = values[0].parse(core.UTF8String).native if isinstance(values[0], core.Any) else values[0].native
        binding = json.loads(text)
        if not isinstance(binding, dict):
            raise ValueError("the binding is not a JSON object")
        return binding
    return None


def approvals_for(description: dict[str, Any], signing: SigningParts | None, station: str) -> list[Approval]:
    """The approvals ``description`` (document.json) declares, made from the signing session and the officer id."""
    declared = description.get("approvals") or {}
    document_id = str(description["document_id"])
    made: list[Approval] = []
    if PARTY_FIELD in declared and signing is not None:
        made.append(party_approval(signing, document_id, station))
    if OFFICER_FIELD in declared:
        made.append(officer_approval(str(declared[OFFICER_FIELD]["officer_id"]), document_id, station))
    return made


async def _approve(path: Path, identity: Identity, approvals: list[Approval], url: str | None) -> tuple[int, bool]:
    from gateway.documents.agency import _unavailable
    from gateway.documents.seal import SealService

    if url is not None and identity.enrolled:
        try:
            async with SealService(url, identity) as service:
                return await sign_approvals(path, path, identity, approvals, service.timestamper()), True
        except _unavailable() as exc:
            log.warning("no time-stamp for the approval signatures, the platform's TSA is unavailable: %s", exc)
    return await sign_approvals(path, path, identity, approvals), False


def approve_document(path: Path, identity: Identity, description: dict[str, Any], signing: SigningParts | None,
                     url: str | None) -> tuple[int, bool]:
    """Add the approvals ``description`` declares to the rendered document at ``path`` (in place, atomically),
    time-stamped by the platform's TSA when the trust services at ``url`` answer, else without a time-stamp (the
    agency seal's time-stamp then proves they existed by then). Returns (bytes added, time-stamped)."""
    approvals = approvals_for(description, signing, identity.gateway_id)
    if not approvals:
        return 0, False
    return asyncio.run(_approve(path, identity, approvals, url))
