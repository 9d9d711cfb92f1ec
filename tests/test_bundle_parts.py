"""Bundles that carry their parts (issue #16 item 6): a document exported with the evidence it cites, its
signing record and the signature and fingerprint that record names; `egw verify` judges every part and
that the items reference exactly the parts carried, by digest.

One real `egw sign` session (fingerprint reader simulator) and one real `egw record new`; the attacks work
on copies of the exported bundle and are judged by the verifier in this process (the same code as
`egw verify`, which runs once as a real process for the genuine bundle).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.evidence.bundle_verify import judge_bundle
from gateway.evidence.trust import load_anchor_paths
from tests.conftest import run_egw, spawn_egw
from tests.test_documents import FORM, egw_here
from tests.test_schemas import errors

pytestmark = pytest.mark.timeout(240)


class Signed:
    """A data directory with two cited items, a signing record over a draft and the document made from both."""

    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        assert egw_here("keys", "init", "--data-dir", self.data)[0] == 0
        self.trust = self.data / "identity" / "gateway.crt"  # not enrolled: the verifier trusts this very gateway
        photo, result = root / "IMG_0001.jpg", root / "rapidtest-result.json"
        photo.write_bytes(b"\xff\xd8\xff\xe0 a photo of stall 3\xff\xd9")
        result.write_text(json.dumps({"v": "egw.rapidtest-result/1", "assay": "aflatoxin B1", "result": "negative"}))
        self.photo, self.result = self._ingest(photo), self._ingest(result, "--kind", "result")
        form = root / "form.toml"
        form.write_text(FORM, encoding="utf-8")
        cites = ["--cite", self.photo, "--cite", self.result]
        draft = root / "draft.pdf"
        code, _, err = egw_here("record", "draft", "--template", "onsite", "--form", form, *cites, "-o", draft,
                                "--data-dir", self.data)
        assert code == 0, err
        finger = spawn_egw("simulate", "fingerprint", "--tcp", "0", "--baud", "0", "--finger", "present", "--quality", "0.9")
        try:
            url = finger.stdout.readline().strip()  # type: ignore[union-attr]
            signed = run_egw("sign", "--document", str(draft), "--signer", "王小明", "--role", "party", "--fingerprint", url,
                             "--data-dir", str(self.data), "--json", timeout=120)
        finally:
            finger.terminate()
            finger.communicate(timeout=10)
        assert signed.returncode == 0, signed.stderr
        signing = json.loads(signed.stdout)
        self.signing, self.signing_items = signing["evidence_id"], signing["items"]
        code, made, err = egw_here("record", "new", "--template", "onsite", "--form", form, *cites,
                                   "--signing", self.signing, "--signed-draft", draft, "-o", root / "record.pdf",
                                   "--data-dir", self.data, "--json")
        assert code == 0, err
        self.document = json.loads(made)["evidence_id"]

    def _ingest(self, path: Path, *extra: str) -> str:
        code, out, err = egw_here("ingest", path, "--data-dir", self.data, "--json", *extra)
        assert code == 0, err
        return str(json.loads(out)["items"][0]["evidence_id"])

    def export(self, evidence_id: str, bundle: Path) -> dict[str, Any]:
        code, out, err = egw_here("export", evidence_id, bundle, "--data-dir", self.data, "--json")
        assert code == 0, err
        return dict(json.loads(out))

    def judge(self, bundle: Path) -> tuple[str, dict[str, tuple[bool, str]]]:
        report = judge_bundle(bundle, anchors=load_anchor_paths([self.trust]))
        return report.verdict, {c.name: (c.ok, c.detail) for c in report.checks}


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    return Signed(tmp_path_factory.mktemp("signed"))


@pytest.fixture(scope="module")
def document_bundle(signed: Signed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("export") / "document"
    signed.export(signed.document, bundle)
    return bundle


def _copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


def _index(bundle: Path) -> dict[str, Any]:
    return dict(json.loads((bundle / "bundle.json").read_text(encoding="utf-8")))


def _write_index(bundle: Path, index: dict[str, Any]) -> None:
    (bundle / "bundle.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def test_a_document_carries_what_it_cites_its_signing_record_and_the_records_items(signed, document_bundle):
    index = _index(document_bundle)
    expected = {signed.photo, signed.result, signed.signing, *signed.signing_items.values()}
    assert {p["evidence_id"] for p in index["parts"]} == expected
    for part in index["parts"]:
        inner = _index(document_bundle / part["bundle"])
        assert inner["evidence_id"] == part["evidence_id"] and "parts" not in inner
        assert (document_bundle / part["bundle"] / inner["content"]).is_file()
    proc = run_egw("verify", str(document_bundle), "--trust", str(signed.trust))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("VERIFIED"), proc.stdout
    assert f"ok   parts: {len(expected)} part(s), exactly the items referenced" in proc.stdout
    assert f"ok   part {signed.signing} manifest:" in proc.stdout


def test_a_signing_record_carries_its_signature_and_fingerprint(signed, tmp_path):
    index = signed.export(signed.signing, tmp_path / "record")
    assert {p["evidence_id"] for p in index["parts"]} == set(signed.signing_items.values())
    code, out, err = egw_here("verify", tmp_path / "record", "--trust", signed.trust, "--json")
    report = json.loads(out)
    assert code == 0 and report["verdict"] == "VERIFIED", out + err
    assert errors("cli-verify", report) == [] and errors("bundle-index", _index(tmp_path / "record")) == []
    assert all(errors("bundle-index", _index(tmp_path / "record" / p["bundle"])) == [] for p in index["parts"])
    assert errors("cli-export", index) == []
    plain = signed.export(signed.photo, tmp_path / "photo")
    assert plain["parts"] == [] and not (tmp_path / "photo" / "parts").exists()
    assert signed.judge(tmp_path / "photo")[1]["parts"] == (True, "the item references no other evidence")


def test_a_part_left_out_is_named(signed, document_bundle, tmp_path):
    bundle = _copy(document_bundle, tmp_path)
    index = _index(bundle)
    index["parts"] = [p for p in index["parts"] if p["evidence_id"] != signed.photo]
    shutil.rmtree(bundle / "parts" / signed.photo)
    _write_index(bundle, index)
    verdict, checks = signed.judge(bundle)
    assert verdict == "FAILED"
    assert checks["parts"] == (False, f"{signed.document} references {signed.photo} (document cites), "
                                      "but the bundle does not carry it")


def test_a_part_nobody_references_is_refused(signed, document_bundle, tmp_path):
    bundle = _copy(document_bundle, tmp_path)
    stray = tmp_path / "stray.txt"
    stray.write_text("planted afterwards\n")
    stray_id = signed._ingest(stray)
    signed.export(stray_id, tmp_path / "stray")
    shutil.copytree(tmp_path / "stray", bundle / "parts" / stray_id)
    (bundle / "parts" / stray_id / "bundle.json").write_text(
        json.dumps({k: v for k, v in _index(tmp_path / "stray").items() if k != "parts"}))
    index = _index(bundle)
    index["parts"].append({"evidence_id": stray_id, "sha256": _sha_of_part(tmp_path / "stray"), "bundle": f"parts/{stray_id}"})
    _write_index(bundle, index)
    verdict, checks = signed.judge(bundle)
    assert verdict == "FAILED" and checks[f"part {stray_id} manifest"][0]  # the stray part is genuine in itself
    assert checks["parts"] == (False, f"the bundle carries {stray_id}, which no item in it references")


def _sha_of_part(bundle: Path) -> str:
    from gateway.evidence import dsse

    return str(dsse.Envelope.from_bytes((bundle / "manifest.dsse.json").read_bytes()).payload_json()["sha256"])


def test_a_part_swapped_for_other_evidence_fails_the_reference_by_digest(signed, document_bundle, tmp_path):
    """The signing record names its fingerprint image by digest: a genuine item of this gateway put in its place
    (under the right directory name, listed with its own digest) is caught."""
    bundle = _copy(document_bundle, tmp_path)
    image = signed.signing_items["fingerprint.png"]
    other = tmp_path / "other.png"
    other.write_bytes(b"\x89PNG another finger\n")
    other_id = signed._ingest(other)
    signed.export(other_id, tmp_path / "other")
    shutil.rmtree(bundle / "parts" / image)
    shutil.copytree(tmp_path / "other", bundle / "parts" / image)
    verdict, checks = signed.judge(bundle)
    assert verdict == "FAILED"
    assert checks[f"part {image} manifest"][0]  # genuine in itself: only what references it can tell
    assert checks["parts"] == (False, f"the part listed as {image} holds the manifest of {other_id}")

    # ...and with the listing rewritten to the swapped item's own id and digest, the reference by digest is missed.
    index = _index(bundle)
    for entry in index["parts"]:
        if entry["evidence_id"] == image:
            entry.update(evidence_id=other_id, sha256=_sha_of_part(tmp_path / "other"), bundle=f"parts/{other_id}")
    (bundle / "parts" / image).rename(bundle / "parts" / other_id)
    _write_index(bundle, index)
    verdict, checks = signed.judge(bundle)
    assert verdict == "FAILED" and checks["parts"][1].startswith(f"{signed.signing} references {image} (signing record item")


def test_a_tampered_part_fails_its_own_check_and_a_false_listed_digest_fails_parts(signed, document_bundle, tmp_path):
    bundle = _copy(document_bundle, tmp_path)
    part = bundle / "parts" / signed.result
    content = part / _index(part)["content"]
    content.write_bytes(content.read_bytes().replace(b"negative", b"positive"))
    verdict, checks = signed.judge(bundle)
    assert verdict == "FAILED" and not checks[f"part {signed.result} content digest"][0]
    assert checks["parts"][0]  # the references still agree: the content check is the one that names it

    listed = _copy(document_bundle, tmp_path / "listed")
    index = _index(listed)
    for entry in index["parts"]:
        if entry["evidence_id"] == signed.signing:
            entry["sha256"] = "0" * 64
    _write_index(listed, index)
    verdict, checks = signed.judge(listed)
    assert verdict == "FAILED" and "bundle.json lists part " + signed.signing + " with SHA-256 " + "0" * 64 in checks["parts"][1]


def test_a_part_outside_its_directory_is_refused(signed, document_bundle, tmp_path):
    bundle = _copy(document_bundle, tmp_path)
    index = _index(bundle)
    index["parts"][0]["bundle"] = f"parts/{index['parts'][1]['evidence_id']}"
    _write_index(bundle, index)
    verdict, checks = signed.judge(bundle)
    assert verdict == "FAILED" and not checks[f"part {index['parts'][0]['evidence_id']}"][0]


def test_a_part_forged_with_the_gateway_key_still_differs_from_the_digest_its_record_states(signed, document_bundle, tmp_path):
    """A thief with the gateway key re-signs a part's manifest over other bytes (same id, every signature and
    hash inside the part agrees, the listing follows): the signing record, itself signed before the theft and
    unchanged, still names the original digest."""
    import hashlib

    from tests.pki_support import gateway_key, reforge

    bundle = _copy(document_bundle, tmp_path)
    image = signed.signing_items["fingerprint.png"]
    original = next(p["sha256"] for p in _index(bundle)["parts"] if p["evidence_id"] == image)
    part = bundle / "parts" / image
    forged = b"\x89PNG a finger that was never placed\n"
    (part / _index(part)["content"]).write_bytes(forged)
    digest = hashlib.sha256(forged).hexdigest()

    def edit(body: dict[str, Any]) -> None:
        body.update(sha256=digest, size=len(forged), digests={**body.get("digests", {}), "sha256": digest})

    reforge(part, gateway_key(signed.data), manifest_edit=edit)
    (part / "time-stamp.json").unlink(missing_ok=True)
    inner = _index(part)
    inner.update(time_stamp=None, tsa_certificate=None)
    _write_index(part, inner)
    index = _index(bundle)
    for entry in index["parts"]:
        if entry["evidence_id"] == image:
            entry["sha256"] = digest
    _write_index(bundle, index)
    verdict, checks = signed.judge(bundle)
    failed = {name for name, (ok, _) in checks.items() if not ok}
    assert verdict == "FAILED" and failed == {"parts"}, checks
    assert checks["parts"][1] == (f"{signed.signing} references {image} with SHA-256 "
                                  f"{original} (signing record item fingerprint.png), but the part "
                                  f"carried is {digest}")



def test_a_bundle_without_parts_says_its_references_are_not_proven_here(signed, document_bundle, tmp_path):
    """Bundles written before parts were carried (no `parts` key) still verify, and say what they do not prove."""
    bundle = _copy(document_bundle, tmp_path)
    index = _index(bundle)
    del index["parts"]
    shutil.rmtree(bundle / "parts")
    _write_index(bundle, index)
    verdict, checks = signed.judge(bundle)
    assert verdict == "VERIFIED"
    assert checks["parts"][1].startswith("not carried (this bundle.json lists no parts")
    assert "the 3 item(s) this one references" in checks["parts"][1]
    alone = signed.judge(document_bundle / "parts" / signed.signing)[1]["parts"][1]
    assert f"the {len(signed.signing_items)} item(s) this one references" in alone


def test_what_each_kind_of_record_references():
    """The rules export and verify share (gateway/evidence/bundle_parts.py), for the records not made above."""
    from gateway.errors import VerificationError
    from gateway.evidence.bundle_parts import DELIVERY_RECORD_TYPE, SIGNING_RECORD_TYPE, references

    doc, receipt, photo = "01a249db-ea3f-7a61-ab15-c1f3770a9269", "01a249db-ea3f-7a61-ab15-c1f3770a9270", "01a249db-0000-7000-8000-000000000001"
    delivery = json.dumps({"document": {"evidence_id": doc, "sha256": "a" * 64},
                           "receipt": {"evidence_id": receipt, "sha256": "b" * 64, "party": {"name": "王小明"}}}).encode()
    found = references({"media_type": DELIVERY_RECORD_TYPE, "kind": "document", "extra": {"delivery": {"document": doc}}},
                       lambda: delivery)
    assert [(r.evidence_id, r.sha256) for r in found] == [(doc, "a" * 64), (receipt, "b" * 64)]
    refused = json.dumps({"document": {"evidence_id": doc, "sha256": "a" * 64}, "receipt": None}).encode()
    assert len(references({"media_type": DELIVERY_RECORD_TYPE}, lambda: refused)) == 1  # a witnessed refusal
    reading = references({"kind": "result", "extra": {"photo": {"evidence_id": photo, "sha256": "c" * 64}}}, bytes)
    assert [(r.evidence_id, r.where) for r in reading] == [(photo, "strip reading photo")]
    counter_sealed = references({"kind": "document", "extra": {"document": {"cites": [], "signing_record": None,
                                                                           "counter_seal_of": doc}}}, bytes)
    assert [r.evidence_id for r in counter_sealed] == [doc]
    assert references({"kind": "photo", "media_type": "image/jpeg"}, lambda: pytest.fail("content read")) == []
    with pytest.raises(VerificationError, match="not JSON"):
        references({"media_type": SIGNING_RECORD_TYPE}, lambda: b"\xff not a record")
    with pytest.raises(VerificationError, match="more than a record can be"):
        references({"media_type": SIGNING_RECORD_TYPE}, lambda: b" " * (2 * 1024 * 1024))


def test_an_item_referencing_evidence_this_gateway_lacks_is_not_exported_half(tmp_path):
    """A strip reading whose photo is not in this data directory: refused with both ids, nothing written or recorded."""
    from gateway.evidence.evidence_service import EvidenceService
    from gateway.evidence.manifest import ManifestInput

    data = tmp_path / "data"
    assert egw_here("keys", "init", "--data-dir", data)[0] == 0
    absent = "01a249db-0000-7000-8000-00000000abcd"
    with EvidenceService(data) as service:
        reading = service.ingest_bytes(b'{"judgement": "negative"}\n', ManifestInput(
            source_path="strip/reading.json", kind="result", media_type="application/json",
            extra={"photo": {"evidence_id": absent, "sha256": "c" * 64}})).evidence_id
        before = service.custody.size
    code, _, err = egw_here("export", reading, tmp_path / "bundle", "--data-dir", data)
    assert code == 2 and f"evidence {reading} references {absent} (strip reading photo)" in err and "Traceback" not in err
    assert not (tmp_path / "bundle").exists() or not any((tmp_path / "bundle").iterdir())
    with EvidenceService(data) as service:
        assert service.custody.size == before  # no "exported" entry for an export that did not happen
