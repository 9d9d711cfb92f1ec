"""Render an enforcement document as PDF/A-3b (fpdf2): the page people read, the files machines check.

The page: issuing agency, title, the template's fields as filled in, the evidence it cites (name, kind,
evidence id, SHA-256, platform receipt id, and a QR code of id and digest for each), the statement the
party confirms, and the signature field with the party's handwriting and fingerprint from the signing
session. Text is set in Noto Serif CJK SC, embedded as a subset (PDF/A forbids fonts the reader has to
supply). Every page's footer names the document id.

The files (PDF/A-3 associated files, listed in the catalogue's /AF with an AFRelationship): ``document.json``
(the form, the citations and the signing session as data; Source), the signing record and each item it
names (Data: the signing record JSON, the ISO/IEC 19794-7 and 19794-4 records, the pen series, the images),
the draft the party signed (Source), and each cited result document (Data). Their digests are the ones in
the evidence store, so a reader can check them against the signing record and the platform's receipts
without the gateway.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import segno
from fpdf import FPDF
from fpdf.enums import XPos, YPos

from gateway.documents.fonts import find_font
from gateway.documents.form import Form
from gateway.documents.sources import Citation, SigningParts, attachment_name, qr_payload
from gateway.documents.templates import Field, Template
from gateway.i18n import _, current_language

__all__ = ["DOCUMENT_VERSION", "RenderedDocument", "render_document"]

DOCUMENT_VERSION = "egw.document/1"
FONT = "noto-serif"
MARGIN_MM = 18.0
LINE_MM = 7.0
QR_MM = 24.0
SIGNATURE_BOX_MM = (72.0, 30.0)
FINGERPRINT_BOX_MM = (24.0, 30.0)
PDF_LANG = {"zh_CN": "zh-CN", "en": "en"}


@dataclass(frozen=True)
class RenderedDocument:
    path: Path
    document_id: str
    description: dict[str, Any]  # document.json, as embedded
    embedded: dict[str, str]  # embedded file name -> SHA-256


class _Page(FPDF):
    """A4 pages whose footer says which document and which page this is (a loose page is still traceable)."""

    footer_text = ""

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, size=7.5)
        self.set_text_color(90, 90, 90)
        self.cell(0, 5, f"{self.footer_text}    {self.page_no()} / {{nb}}", align="C")
        self.set_text_color(0, 0, 0)


def _kind_label(kind: str) -> str:
    labels = {"photo": _("Photo"), "video": _("Video recording"), "audio": _("Audio recording"), "document": _("Document"),
              "result": _("Test result"), "signature": _("Signature record")}
    return labels.get(kind, kind)


def _party_lines(party: dict[str, str]) -> list[str]:
    labels = {"name": _("Name"), "id_number": _("ID number"), "address": _("Address"), "phone": _("Phone"),
              "representative": _("Legal representative")}
    return [f"{labels[key]}：{value}" for key, value in party.items()]


def _qr_png(payload: str) -> io.BytesIO:
    buffer = io.BytesIO()
    segno.make(payload, error="m", micro=False).save(buffer, kind="png", scale=6, border=2)
    buffer.seek(0)
    return buffer


class _Writer:
    """Lays out one document on a ``_Page``; one method per part of the page."""

    def __init__(self, template: Template, form: Form, language: str, document_id: str, draft: bool) -> None:
        self.template, self.form, self.language, self.draft = template, form, language, draft
        font = find_font("Serif", "Regular")
        pdf = _Page(orientation="P", unit="mm", format="A4", enforce_compliance="PDFA_3B")
        pdf.add_font(FONT, "", str(font.path), collection_font_number=font.face_index)
        pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
        pdf.set_auto_page_break(True, margin=20)
        pdf.set_lang(PDF_LANG.get(language, "zh-CN"))
        title = template.text(template.title, language)
        pdf.set_title(f"{title} {form.values.get('case_number', '')}".strip())
        pdf.set_author(form.agency or "egw")
        pdf.set_subject(template.kind)
        pdf.set_creator("egw record")
        pdf.footer_text = f"{_('Document id')} {document_id}"
        self.pdf = pdf

    @property
    def width(self) -> float:
        return float(self.pdf.epw)

    def header(self) -> None:
        pdf = self.pdf
        pdf.add_page()
        if self.draft:
            pdf.set_font(FONT, size=9)
            pdf.set_text_color(170, 0, 0)
            pdf.cell(0, 5, _("DRAFT for the party to read and sign; not a record until signed"), align="C",
                     new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.set_text_color(0, 0, 0)
        if self.form.agency:
            pdf.set_font(FONT, size=13)
            pdf.cell(0, 8, self.form.agency, align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font(FONT, size=20)
        pdf.cell(0, 13, self.template.text(self.template.title, self.language), align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(3)

    def field(self, field: Field) -> None:
        pdf = self.pdf
        label = field.label.get(self.language) or field.label["zh_CN"]
        if field.type == "officers":
            lines = [f"{o.name}（{_('Officer ID')} {o.id}）" if o.id else o.name for o in self.form.officers]
            value = "；".join(lines)
        elif field.type == "party":
            value = "\n".join(_party_lines(self.form.party))
        else:
            value = self.form.values.get(field.key, "")
        if not value:
            return
        pdf.set_font(FONT, size=11)
        if field.type in ("text", "party"):
            pdf.cell(0, LINE_MM, f"{label}：", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.multi_cell(0, 6.2, value, border=1, padding=2, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(2)
        else:
            label_w = 34.0
            pdf.cell(label_w, LINE_MM, f"{label}：")
            pdf.multi_cell(self.width - label_w, LINE_MM, value, new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def citations(self, citations: Sequence[Citation]) -> None:
        pdf = self.pdf
        pdf.ln(2)
        if citations and pdf.will_page_break(8 + QR_MM + 2):  # the heading stays with its first item
            pdf.add_page()
        pdf.set_font(FONT, size=12)
        pdf.cell(0, 8, _("Evidence cited"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        if not citations:
            pdf.set_font(FONT, size=10)
            pdf.cell(0, 6, _("No evidence is cited."), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            return
        for number, citation in enumerate(citations, 1):
            if pdf.will_page_break(QR_MM + 2):
                pdf.add_page()
            top = pdf.get_y()
            text_w = self.width - QR_MM - 4
            pdf.set_font(FONT, size=10)
            pdf.cell(text_w, 6, f"{number}. {_kind_label(citation.kind)}  {citation.name}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.set_font(FONT, size=8)
            receipt = citation.receipt_id or _("not yet receipted by the platform")
            for line in (f"{_('Evidence id')} {citation.evidence_id}", f"SHA-256 {citation.sha256}",
                         f"{_('Platform receipt')} {receipt}"):
                pdf.cell(text_w, 4.6, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.image(_qr_png(qr_payload(citation.evidence_id, citation.sha256)), x=MARGIN_MM + self.width - QR_MM, y=top,
                      w=QR_MM, h=QR_MM)
            pdf.set_y(top + QR_MM + 2)

    def statement(self) -> None:
        pdf = self.pdf
        pdf.ln(2)
        pdf.set_font(FONT, size=11)
        pdf.multi_cell(0, 6.2, self.template.text(self.template.statement, self.language), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(2)

    def signature(self, signing: SigningParts | None) -> None:
        pdf = self.pdf
        (sig_w, sig_h), (fp_w, fp_h) = SIGNATURE_BOX_MM, FINGERPRINT_BOX_MM
        if pdf.will_page_break(sig_h + 28):
            pdf.add_page()
        pdf.set_font(FONT, size=11)
        pdf.cell(0, LINE_MM, f"{self.template.text(self.template.signature_label, self.language)}：",
                 new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        top, left = pdf.get_y(), MARGIN_MM
        pdf.rect(left, top, sig_w, sig_h)
        pdf.rect(left + sig_w + 6, top, fp_w, fp_h)
        parts = signing.parts if signing is not None else {}
        if "signature.png" in parts:
            pdf.image(io.BytesIO(parts["signature.png"]), x=left + 1, y=top + 1, w=sig_w - 2, h=sig_h - 2, keep_aspect_ratio=True)
        if "fingerprint.png" in parts:
            pdf.image(io.BytesIO(parts["fingerprint.png"]), x=left + sig_w + 7, y=top + 1, w=fp_w - 2, h=fp_h - 2,
                      keep_aspect_ratio=True)
        pdf.set_font(FONT, size=8)
        pdf.set_xy(left + sig_w + 6, top + fp_h)
        pdf.cell(fp_w, 4.5, _("Fingerprint"), align="C")
        pdf.set_xy(left, top + max(sig_h, fp_h) + 6)
        if signing is not None:
            signer = signing.signer
            started = str(signing.record.get("started_at", ""))[:19].replace("T", " ")
            pdf.set_font(FONT, size=9)
            pdf.multi_cell(0, 5, f"{_('Signed on the pad by')} {signer['name']}，{started} UTC；"
                                 f"{_('signing record')} {signing.evidence_id}",
                           new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _embed(pdf: FPDF, name: str, data: bytes, media_type: str, relationship: str, description: str, when: datetime) -> None:
    pdf.embed_file(bytes=data, basename=name, mime_type=media_type, associated_file_relationship=relationship,
                   desc=description, creation_date=when, modification_date=when, compress=True)


PART_MEDIA_TYPES = {".png": "image/png", ".csv": "text/csv", ".json": "application/json"}


def _embed_all(pdf: FPDF, description: dict[str, Any], citations: Sequence[Citation], signing: SigningParts | None,
               signed_draft: bytes | None, when: datetime) -> dict[str, str]:
    import hashlib

    embedded: dict[str, str] = {}

    def add(name: str, data: bytes, media_type: str, relationship: str, text: str) -> None:
        _embed(pdf, name, data, media_type, relationship, text, when)
        embedded[name] = hashlib.sha256(data).hexdigest()

    add("document.json", json.dumps(description, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8"),
        "application/json", "Source", "egw document description: form, citations, signing session")
    if signing is not None:
        add("signing-record.json", signing.record_bytes, "application/json", "Data",
            f"egw signing record, evidence {signing.evidence_id}")
        for name, data in sorted(signing.parts.items()):
            media_type = PART_MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")
            add(name, data, media_type, "Data", f"signing session item {name}")
    if signed_draft is not None:
        add("signed-draft.pdf", signed_draft, "application/pdf", "Source", "the draft the party read and signed")
    for citation in citations:
        if citation.content is not None:
            add(attachment_name(citation.evidence_id, citation.name), citation.content, citation.media_type.split(";")[0].strip().lower()
                if "/" in citation.media_type else "application/octet-stream", "Data", f"cited evidence {citation.evidence_id}")
    return embedded


def _declared_approvals(signing: SigningParts | None, officer_id: str | None) -> dict[str, Any]:
    from gateway.documents.approvals import OFFICER_FIELD, PARTY_FIELD

    approvals: dict[str, Any] = {}
    if signing is not None and "signature.iso19794-7" in signing.parts:
        approvals[PARTY_FIELD] = {"role": "party", "signer": signing.signer["name"]}
    if officer_id:
        approvals[OFFICER_FIELD] = {"role": "officer", "officer_id": officer_id}
    return approvals


def render_document(template: Template, form: Form, output: Path, *, document_id: str, citations: Sequence[Citation] = (),
                    signing: SigningParts | None = None, signed_draft: bytes | None = None, draft: bool = False,
                    language: str | None = None, officer_id: str | None = None) -> RenderedDocument:
    """Write the document to ``output`` (through a temporary file: a reader never sees half a PDF).

    ``approvals`` in document.json names the approval signatures the station adds next (gateway/documents/approvals.py):
    the party's when there is a signing session with handwriting, the officer's when ``officer_id`` is known. Declared
    inside the signed bytes, so a verifier notices one that was removed."""
    import hashlib

    language = language or current_language()
    now = datetime.now(UTC).replace(microsecond=0)
    description: dict[str, Any] = {
        "v": DOCUMENT_VERSION, "document_id": document_id, "template": template.kind, "language": language,
        "draft": draft, "rendered_at": now.isoformat(), "form": form.as_json(),
        "citations": [c.as_json() for c in citations],
        "signing": None if signing is None else {
            "evidence_id": signing.evidence_id, "record_sha256": hashlib.sha256(signing.record_bytes).hexdigest(),
            "signer": signing.signer, "signed_document_sha256": (signing.record.get("document") or {}).get("sha256")},
    }
    if not draft:
        description["approvals"] = _declared_approvals(signing, officer_id)
    writer = _Writer(template, form, language, document_id, draft)
    writer.pdf.creation_date = now
    writer.header()
    for field in template.fields:
        writer.field(field)
    writer.citations(citations)
    writer.statement()
    writer.signature(signing)
    embedded = _embed_all(writer.pdf, description, citations, signing, signed_draft, now)
    partial = output.with_name(f".{output.name}.partial")
    try:
        writer.pdf.output(str(partial))
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return RenderedDocument(output, document_id, description, embedded)
