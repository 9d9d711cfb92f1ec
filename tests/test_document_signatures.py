"""The party's and the officer's signatures on the document (issue #16), and `egw verify FILE.pdf` checking what
the document embeds against them.

Real pieces: two signing sessions on the pad and fingerprint simulators, `egw record new` sealing through the
platform's trust services on loopback (mutual TLS, its TSA), pyHanko, poppler's `pdfsig`. The attacks build
the documents a forger could: an embedded signing record of another session under the party's signature, the
party's signature field removed before the seal, an approval signature added after it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

from gateway.documents.approvals import OFFICER_FIELD, PARTY_FIELD, Approval, officer_approval, party_approval, sign_approvals
from gateway.documents.form import check_form, load_form
from gateway.documents.render import render_document
from gateway.documents.sources import signing_parts
from gateway.documents.templates import load_template
from gateway.documents.verify_pdf import PdfReport, verify_pdf
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.identity import load_identity, load_pem_certificates
from tests.conftest import run_egw
from tests.seal_support import Platform, enrolled_gateway, seal, trust_platform
from tests.test_documents import FORM, _simulators, _stop, egw_here

pytestmark = pytest.mark.timeout(300)


def _sign(draft: Path, data_dir: Path, pad_url: str, finger_url: str) -> dict[str, Any]:
    signed = run_egw("sign", "--document", str(draft), "--signer", "王小明", "--signpad", pad_url, "--fingerprint", finger_url,
                     "--data-dir", str(data_dir), "--json", timeout=120)
    assert signed.returncode == 0, signed.stderr
    return dict(json.loads(signed.stdout))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One platform, one enrolled station, two signing sessions of the party, one sealed on-site record."""
    root = tmp_path_factory.mktemp("docsigs")
    form = root / "form.toml"
    form.write_text(FORM, encoding="utf-8")
    data_dir = root / "data"
    with trust_platform(root / "platform") as platform:
        enrolled_gateway(data_dir, platform, "gw-docsigs-1")
        draft = root / "draft.pdf"
        code, _, err = egw_here("record", "draft", "--template", "onsite", "--form", form, "-o", draft, "--data-dir", data_dir)
        assert code == 0, err
        (finger, finger_url), (pad, pad_url) = _simulators()
        try:
            first = _sign(draft, data_dir, pad_url, finger_url)
            second = _sign(draft, data_dir, pad_url, finger_url)
        finally:
            _stop(pad, finger)
        record = root / "record.pdf"
        code, out, err = egw_here("record", "new", "--template", "onsite", "--form", form, "--signing", first["evidence_id"],
                                  "--signed-draft", draft, "-o", record, "--data-dir", data_dir, "--trust-services", platform.url,
                                  "--json")
        assert code == 0, err
        document = json.loads(out)
        assert document["seal"] == "agency", err
        yield {"root": root, "platform": platform, "data_dir": data_dir, "form": form, "draft": draft, "first": first,
               "second": second, "approved": record, "sealed": Path(document["path"]), "document": document,
               "anchors": [platform.pki.ca_cert], "ca": platform.ca_file()}


def _problems(report: PdfReport) -> str:
    return "\n".join(report.problems + [p for f in report.findings for p in f.problems])


def test_the_party_and_the_officer_sign_the_document_and_the_seal_covers_both(made: dict[str, Any]) -> None:
    report = verify_pdf(made["sealed"], made["anchors"])
    assert report.verdict == "VERIFIED", _problems(report)
    kinds = [(f.field, f.kind) for f in report.findings]
    assert kinds[:3] == [(PARTY_FIELD, "party's handwritten signature"), (OFFICER_FIELD, "officer's signature"),
                         ("AgencySeal", "agency seal")] and kinds[3][1] == "document time-stamp"
    party, officer = report.findings[0], report.findings[1]
    record = made["first"]["record"]
    assert party.binding is not None and officer.binding is not None
    assert party.binding["iso_19794_7_sha256"] == record["signature"]["iso_19794_7_sha256"]
    assert party.binding["session_id"] == record["session_id"] and party.binding["signer"] == "王小明"
    assert officer.binding["officer_id"] == "31010001"
    assert party.binding["document_id"] == officer.binding["document_id"] == made["document"]["document_id"]
    assert party.signed_at and "time-stamping authority" in (party.time_source or "")  # when: the platform TSA's time

    # what a person reads: who, what binds it, when
    proc = run_egw("verify", str(made["sealed"]), "--trust", str(made["ca"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(f"[{PARTY_FIELD}] party's handwritten signature 王小明, handwriting captured by station urn:egw:gateway:gw-docsigs-1, "
               f"binds handwriting record ISO/IEC 19794-7 sha256 {record['signature']['iso_19794_7_sha256']}, signing session "
               f"{record['session_id']}" in line and "per time-stamp by" in line for line in lines), proc.stdout
    assert any(f"[{OFFICER_FIELD}] officer's signature officer 31010001" in line for line in lines), proc.stdout

    # an independent validator agrees on every signature
    pdfsig = subprocess.run(["pdfsig", str(made["sealed"])], capture_output=True, text=True).stdout
    assert pdfsig.count("Signature Validation: Signature is Valid.") == 3, pdfsig
    assert f"Signature Field Name: {PARTY_FIELD}" in pdfsig and "Signer full Distinguished Name" in pdfsig


def _embedded_streams(pdf: bytes) -> list[tuple[int, int]]:
    """(start, end) of each embedded file's stream data in the PDF (fpdf2 writes one object per file)."""
    spans = []
    for match in re.finditer(rb"/Type /EmbeddedFile\s*>>\s*stream\r?\n", pdf):
        end = pdf.index(b"endstream", match.end())
        spans.append((match.end(), end))
    return spans


def test_a_one_byte_change_in_any_embedded_file_fails(made: dict[str, Any], tmp_path: Path) -> None:
    original = made["sealed"].read_bytes()
    spans = _embedded_streams(original)
    assert len(spans) == len(made["document"]["embedded"]) == 8, spans  # description, record, 5 items, draft
    for number, (start, end) in enumerate(spans):
        tampered = bytearray(original)
        tampered[(start + end) // 2] ^= 0x01
        target = tmp_path / f"tampered-{number}.pdf"
        target.write_bytes(bytes(tampered))
        report = verify_pdf(target, made["anchors"])
        assert report.verdict == "FAILED", f"embedded file {number} changed, yet {report.verdict}"


def _parts(data_dir: Path, evidence_id: str) -> Any:
    with EvidenceService(data_dir, read_only=True) as service:
        return signing_parts(service, evidence_id)


def _render(made: dict[str, Any], target: Path, signing: Any, document_id: str) -> dict[str, Any]:
    template = load_template("onsite")
    form = check_form(template, load_form(made["form"], []))
    return render_document(template, form, target, document_id=document_id, signing=signing,
                           signed_draft=made["draft"].read_bytes(), officer_id="31010001").description


def _seal_for(made: dict[str, Any], source: Path, target: Path) -> Path:
    platform: Platform = made["platform"]
    seal(source, target, platform, load_identity(made["data_dir"]))
    return target


def test_an_embedded_record_of_another_session_under_the_party_signature_fails(made: dict[str, Any], tmp_path: Path) -> None:
    identity = load_identity(made["data_dir"])
    first, second = _parts(made["data_dir"], made["first"]["evidence_id"]), _parts(made["data_dir"], made["second"]["evidence_id"])
    assert first.record["session_id"] != second.record["session_id"]  # (the simulator writes the same strokes each time)
    forged = tmp_path / "forged.pdf"
    _render(made, forged, second, "forged-doc")  # embeds session 2's handwriting ...
    approvals = [party_approval(first, "forged-doc", identity.gateway_id),  # ... under a signature binding session 1's
                 officer_approval("31010001", "forged-doc", identity.gateway_id)]
    asyncio.run(sign_approvals(forged, forged, identity, approvals))
    report = verify_pdf(_seal_for(made, forged, tmp_path / "forged-sealed.pdf"), made["anchors"])
    assert report.verdict == "FAILED"
    assert any("the handwriting embedded is not the handwriting signed" in p and "binds session_id" in p for p in report.problems), \
        _problems(report)
    assert all(f.intact for f in report.findings)  # every signature is intact: only the binding check catches it


def _drop_field(source: Path, target: Path, name: str) -> None:
    """An incremental update that takes the signature field ``name`` out of the form and off its page."""
    with open(source, "rb") as handle:
        writer = IncrementalPdfFileWriter(handle, strict=False)
        acroform = writer.root["/AcroForm"]
        kept = generic.ArrayObject(ref for ref in acroform["/Fields"] if ref.get_object().get("/T") != name)
        acroform["/Fields"] = kept
        writer.update_container(acroform)
        for page_ref in writer.root["/Pages"]["/Kids"]:
            page = page_ref.get_object()
            annots = page.get("/Annots")
            if annots is not None:
                page["/Annots"] = generic.ArrayObject(ref for ref in annots if ref.get_object().get("/T") != name)
                writer.update_container(page)
        with open(target, "wb") as out:
            writer.write(out)


def test_a_removed_party_signature_field_fails(made: dict[str, Any], tmp_path: Path) -> None:
    stripped = tmp_path / "stripped.pdf"
    _drop_field(made["approved"], stripped, PARTY_FIELD)
    report = verify_pdf(_seal_for(made, stripped, tmp_path / "stripped-sealed.pdf"), made["anchors"])
    assert report.verdict == "FAILED"
    assert PARTY_FIELD not in [f.field for f in report.findings]
    assert any(f"declares the party's signature ({PARTY_FIELD}), but the document carries no such approval signature" in p
               for p in report.problems), _problems(report)


def test_an_approval_signature_added_after_the_seal_fails(made: dict[str, Any], tmp_path: Path) -> None:
    identity = load_identity(made["data_dir"])
    first = _parts(made["data_dir"], made["first"]["evidence_id"])
    late = party_approval(first, made["document"]["document_id"], identity.gateway_id)
    after = tmp_path / "after.pdf"
    asyncio.run(sign_approvals(made["sealed"], after, identity, [Approval("LateSignature", late.binding, late.name, late.reason)]))
    report = verify_pdf(after, made["anchors"])
    assert report.verdict == "FAILED"
    assert any("[LateSignature] party's handwritten signature was added after the agency seal: the seal does not cover it" in p
               for p in report.problems), _problems(report)
    seal_finding = next(f for f in report.findings if f.field == "AgencySeal")
    assert any("changed after it was signed" in p for p in seal_finding.problems), _problems(report)  # the seal's /Lock, per pyHanko
    pdfsig = subprocess.run(["pdfsig", str(after)], capture_output=True, text=True).stdout
    assert "Signature Field Name: LateSignature" in pdfsig


def test_the_approvals_are_declared_in_document_json(made: dict[str, Any], tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    subprocess.run(["pdfdetach", "-saveall", "-o", str(files), str(made["sealed"])], check=True, capture_output=True)
    described = json.loads((files / "document.json").read_text(encoding="utf-8"))
    assert described["approvals"] == {PARTY_FIELD: {"role": "party", "signer": "王小明"},
                                      OFFICER_FIELD: {"role": "officer", "officer_id": "31010001"}}
    anchors = load_pem_certificates(made["ca"].read_bytes())
    assert verify_pdf(made["approved"], anchors).problems == [  # before the seal: consistent, but not the agency's
        "no agency seal: the document is signed only provisionally (or by a certificate with no document role); "
        "it is sealed once the platform adds the agency's seal"]


def test_a_party_signature_made_by_another_station_than_it_names_fails(made: dict[str, Any], tmp_path: Path) -> None:
    """Another enrolled station (a valid certificate of the same CA) cannot pass its signature off as this one's."""
    other = enrolled_gateway(tmp_path / "other", made["platform"], "gw-other")
    station = load_identity(made["data_dir"]).gateway_id
    first = _parts(made["data_dir"], made["first"]["evidence_id"])
    forged = tmp_path / "forged.pdf"
    _render(made, forged, first, "forged-station")
    asyncio.run(sign_approvals(forged, forged, other, [party_approval(first, "forged-station", station),
                                                       officer_approval("31010001", "forged-station", station)]))
    report = verify_pdf(_seal_for(made, forged, tmp_path / "forged-sealed.pdf"), made["anchors"])
    assert report.verdict == "FAILED"
    assert any(f"[{PARTY_FIELD}] names station '{station}', but was signed by station gw-other" in p for p in report.problems), \
        _problems(report)
    assert all(f.ok for f in report.findings)  # each signature is valid and trusted on its own: only the binding catches it
