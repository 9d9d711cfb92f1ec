"""`egw record`: enforcement documents as PDF/A-3b, checked with poppler (pdftotext, pdffonts, pdfdetach,
pdftoppm) and OpenCV's QR decoder; and the pad simulator writing a Chinese name as handwriting."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import cv2
import numpy as np
import pytest

from tests.conftest import run_egw, spawn_egw

FORM = """\
agency = "某市市场监督管理局"
case_number = "市监检〔2026〕017号"
time = "2026年12月6日 09:30至10:15"
place = "某市某区农贸市场3号摊位"
findings = \"\"\"经现场检查，当事人经营的散装大米未标明产地、生产日期和保质期。
执法人员当场抽取样品一份进行快速检测，检测结果附后。\"\"\"

[[officers]]
name = "张伟"
id = "31010001"

[[officers]]
name = "李娜"
id = "31010002"

[party]
name = "王小明"
id_number = "310101199001011234"
address = "某市某区农贸市场3号摊位"
"""
CHINESE_FIELDS = ["某市市场监督管理局", "市监检〔2026〕017号", "2026年12月6日 09:30至10:15", "某市某区农贸市场3号摊位",
                  "经现场检查，当事人经营的散装大米未标明产地、生产日期和保质期。\n执法人员当场抽取样品一份进行快速检测，检测结果附后。",
                  "张伟", "李娜", "王小明", "310101199001011234", "现场检查笔录"]


def egw_here(*args: str) -> tuple[int, str, str]:
    """``egw ARGS`` in this process (the same code path as the command line, without starting an interpreter:
    the refusals below are many short runs). Returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from gateway.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _tool(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=60).stdout


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    assert egw_here("keys", "init", "--data-dir", d)[0] == 0
    return d


@pytest.fixture
def form(tmp_path):
    path = tmp_path / "form.toml"
    path.write_text(FORM, encoding="utf-8")
    return path


def _ingest(data_dir, path, *extra: str) -> dict:
    code, out, err = egw_here("ingest", path, "--data-dir", data_dir, "--json", *extra)
    assert code == 0, err
    return json.loads(out)["items"][0]


def _evidence(tmp_path, data_dir) -> tuple[dict, dict]:
    photo = tmp_path / "IMG_0001.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 a photo of stall 3\xff\xd9")
    result = tmp_path / "rapidtest-result.json"
    result.write_text(json.dumps({"v": "egw.rapidtest-result/1", "assay": "aflatoxin B1", "result": "negative"}), encoding="utf-8")
    return _ingest(data_dir, photo), _ingest(data_dir, result, "--kind", "result")


def _simulators():
    finger = spawn_egw("simulate", "fingerprint", "--tcp", "0", "--baud", "0", "--finger", "present", "--quality", "0.9")
    finger_url = finger.stdout.readline().strip()
    pad = spawn_egw("simulate", "signpad", "--listen", "127.0.0.1:0", "--signer", "王小明")
    pad_url = pad.stdout.readline().strip()
    assert finger_url.startswith("socket://") and pad_url.startswith("usbip://"), (finger_url, pad_url)
    return (finger, finger_url), (pad, pad_url)


def _stop(*procs) -> None:
    for proc in procs:
        proc.terminate()
        proc.communicate(timeout=10)


def _catalogue_and_filespecs(pdf: bytes) -> tuple[int, list[bytes]]:
    """(entries in the catalogue's /AF array, every /Filespec dictionary), from the PDF's object dictionaries
    (fpdf2 writes them uncompressed, one object per ``N 0 obj … endobj``)."""
    objects = [m.group(1) for m in re.finditer(rb"\d+ 0 obj\n(<<.*?>>)\n(?:stream|endobj)", pdf, re.S)]
    catalogue = [o for o in objects if b"/Type /Catalog" in o]
    assert catalogue  # one per revision: the render's, then one per approval signature's incremental update
    af = re.search(rb"/AF \[([^\]]*)\]", catalogue[-1])
    assert af, "the catalogue has no /AF (associated files) array"
    return len(re.findall(rb"\d+ 0 R", af.group(1))), [o for o in objects if b"/Type /Filespec" in o]


def _qr_codes(pdf_path, tmp_path) -> set[str]:
    _tool("pdftoppm", "-r", "200", "-png", str(pdf_path), str(tmp_path / "page"))
    found: set[str] = set()
    # Both of OpenCV's detectors, as a phone's scanner keeps trying: the classic one alone now and then missed
    # one of the two codes (a clean-clone CI run failed so) and failed all 100 synthetic pages of two such
    # codes at this size and resolution, which the ArUco-based one all read. A code neither reads is missing.
    detectors = (cv2.QRCodeDetectorAruco(), cv2.QRCodeDetector())
    for page in sorted(tmp_path.glob("page*.png")):
        image = cv2.imread(str(page))
        for detector in detectors:
            ok, texts, _, _ = detector.detectAndDecodeMulti(image)
            if ok:
                found |= {t for t in texts if t}
    return found


def test_signed_onsite_record_is_pdfa3_with_its_evidence_embedded(tmp_path, data_dir, form):
    photo, result = _evidence(tmp_path, data_dir)
    draft = tmp_path / "draft.pdf"
    code, _, err = egw_here("record", "draft", "--template", "onsite", "--form", form, "--cite", photo["evidence_id"],
                            "--cite", result["evidence_id"], "-o", draft, "--data-dir", data_dir)
    assert code == 0, err
    (finger, finger_url), (pad, pad_url) = _simulators()
    try:
        signed = run_egw("sign", "--document", str(draft), "--signer", "王小明", "--signpad", pad_url, "--fingerprint", finger_url,
                         "--data-dir", str(data_dir), "--json", timeout=120)
    finally:
        _stop(pad, finger)
    assert signed.returncode == 0, signed.stderr
    signing = json.loads(signed.stdout)
    record = signing["record"]

    out = tmp_path / "record.pdf"
    code, made, err = egw_here("record", "new", "--template", "onsite", "--form", form, "--cite", photo["evidence_id"],
                               "--cite", result["evidence_id"], "--signing", signing["evidence_id"], "--signed-draft", draft,
                               "-o", out, "--data-dir", data_dir, "--json")
    assert code == 0, err
    document = json.loads(made)
    assert document["sealed"] is False and "未加盖" in err  # no sealer configured: said, not hidden
    assert document["sha256"] == _sha(out)

    # The text a person reads is the form's, character for character.
    text = _squash(_tool("pdftotext", "-enc", "UTF-8", str(out), "-"))
    for value in CHINESE_FIELDS:
        assert _squash(value) in text, value
    assert photo["evidence_id"] in text and photo["sha256"] in text

    # PDF/A-3b: identification in XMP, an output intent, every font embedded.
    xmp = _tool("pdfinfo", "-meta", str(out))
    # (element form as fpdf2 writes it, attribute form once pyHanko has rewritten the XMP for a signature: same RDF)
    assert re.search(r'<pdfaid:part>3</pdfaid:part>|pdfaid:part="3"', xmp), xmp
    assert re.search(r'<pdfaid:conformance>B</pdfaid:conformance>|pdfaid:conformance="B"', xmp), xmp
    raw = out.read_bytes()
    assert b"/OutputIntents" in raw and b"/S /GTS_PDFA1" in raw and b"/DestOutputProfile" in raw
    fonts = _tool("pdffonts", str(out)).splitlines()[2:]
    assert fonts and all(line.split()[-5] == "yes" for line in fonts), fonts  # the "emb" column

    # Associated files: each with an AFRelationship, listed in the catalogue's /AF, digests as the store has them.
    af_count, filespecs = _catalogue_and_filespecs(raw)
    assert len(filespecs) == af_count == len(document["embedded"])
    assert all(b"/AFRelationship /" in spec for spec in filespecs)
    files = tmp_path / "embedded"
    files.mkdir()
    _tool("pdfdetach", "-saveall", "-o", str(files), str(out))
    digests = {path.name: _sha(path) for path in files.iterdir()}
    assert digests == document["embedded"]
    assert digests["signature.iso19794-7"] == record["signature"]["iso_19794_7_sha256"]
    assert digests["fingerprint.iso19794-4"] == record["fingerprint"]["iso_19794_4_sha256"]
    assert digests["signature.png"] == record["signature"]["image_sha256"]
    assert digests["signed-draft.pdf"] == record["document"]["sha256"] == _sha(draft)
    assert digests[f"{result['evidence_id']}-rapidtest-result.json"] == result["sha256"]
    listing = {row["evidence_id"]: row for row in json.loads(egw_here("ls", "--data-dir", data_dir, "--json")[1])}
    assert digests["signing-record.json"] == hashlib.sha256((files / "signing-record.json").read_bytes()).hexdigest()
    assert json.loads((files / "signing-record.json").read_text(encoding="utf-8")) == record
    described = json.loads((files / "document.json").read_text(encoding="utf-8"))
    assert described["signing"]["evidence_id"] == signing["evidence_id"] and described["form"]["party"]["name"] == "王小明"

    # A QR code per citation, decoding to its evidence id and digest.
    codes = _qr_codes(out, tmp_path)
    assert {f"egw-evidence:{photo['evidence_id']}#sha256={photo['sha256']}",
            f"egw-evidence:{result['evidence_id']}#sha256={result['sha256']}"} <= codes, codes

    # Stored as evidence of kind document, manifested and queued like the rest.
    stored = listing[document["evidence_id"]]
    assert stored["kind"] == "document" and stored["state"] == "queued"


def test_english_document_and_operator_mistakes(tmp_path, data_dir, form):
    out = tmp_path / "en.pdf"
    code, _, err = egw_here("record", "draft", "--template", "sampling", "--form", form, "-o", out, "--data-dir", data_dir)
    assert code == 2 and "lacks 'samples'" in err and "Traceback" not in err
    code, _, err = egw_here("record", "draft", "--template", "delivery", "--form", form, "--set", "colour=red", "-o", out,
                            "--data-dir", data_dir)
    assert code == 2 and "does not know: colour" in err
    code, _, err = egw_here("record", "draft", "--template", "onsite", "--form", form, "--set", "case_number=", "-o", out,
                            "--data-dir", data_dir)
    assert code == 2 and "lacks 'case_number'" in err and not out.exists()
    code, _, err = egw_here("record", "draft", "--template", "onsite", "--form", form, "--cite", "no-such-id", "-o", out,
                            "--data-dir", data_dir)
    assert code == 1 and "cites 'no-such-id', which is not evidence" in err and not out.exists()

    delivery = tmp_path / "delivery.toml"
    delivery.write_text(FORM.replace('time = "', 'served_document = "决定书 市监罚〔2026〕017号"\nmethod = "直接送达"\ntime = "'),
                        encoding="utf-8")
    code, _, err = egw_here("record", "draft", "--template", "delivery", "--form", delivery, "--lang", "en", "-o", out,
                            "--data-dir", data_dir)
    assert code == 0, err
    text = _squash(_tool("pdftotext", "-enc", "UTF-8", str(out), "-"))
    assert "Deliveryreceipt" in text and "Recipient" in text and "DRAFT" in text and "决定书市监罚〔2026〕017号" in text
    assert "Noevidenceiscited." in text


def test_signature_from_another_draft_or_party_is_refused(tmp_path, data_dir, form):
    """Attack: paste a signing session onto a document whose draft the party never signed (or onto another party's)."""
    draft = tmp_path / "draft.pdf"
    assert egw_here("record", "draft", "--template", "onsite", "--form", form, "-o", draft, "--data-dir", data_dir)[0] == 0
    finger = spawn_egw("simulate", "fingerprint", "--tcp", "0", "--baud", "0", "--finger", "present", "--quality", "0.9")
    try:
        url = finger.stdout.readline().strip()
        signed = json.loads(run_egw("sign", "--document", str(draft), "--signer", "李四", "--fingerprint", url,
                                    "--data-dir", str(data_dir), "--json", check=True).stdout)
        witness = json.loads(run_egw("sign", "--document", str(draft), "--signer", "王小明", "--role", "witness",
                                     "--fingerprint", url, "--data-dir", str(data_dir), "--json", check=True).stdout)
    finally:
        _stop(finger)
    other = tmp_path / "other.pdf"
    other.write_bytes(draft.read_bytes() + b"\n% changed after signing\n")
    before = json.loads(egw_here("status", "--data-dir", data_dir, "--json")[1])["total"]
    common = ("record", "new", "--template", "onsite", "--form", form, "--signing", signed["evidence_id"],
              "-o", tmp_path / "r.pdf", "--data-dir", data_dir)
    code, _, err = egw_here(*common, "--signed-draft", other)
    assert code == 2 and "is not the document signing record" in err
    code, _, err = egw_here(*common, "--signed-draft", draft)
    assert code == 2 and "signed by '李四'" in err
    code, _, err = egw_here(*common)
    assert code == 2 and "--signing needs --signed-draft" in err
    code, _, err = egw_here("record", "new", "--template", "onsite", "--form", form, "--signing", witness["evidence_id"],
                            "--signed-draft", draft, "-o", tmp_path / "r.pdf", "--data-dir", data_dir)
    assert code == 2 and "is a witness signature" in err  # the party's field never holds a witness's hand
    code, _, err = egw_here("record", "new", "--template", "onsite", "--form", form, "--signing", signed["items"]["fingerprint.png"],
                            "--signed-draft", draft, "-o", tmp_path / "r.pdf", "--data-dir", data_dir)
    assert code == 2 and "is not a signing record" in err
    assert json.loads(egw_here("status", "--data-dir", data_dir, "--json")[1])["total"] == before  # nothing stored
    assert not (tmp_path / "r.pdf").exists()


def test_tampered_blob_is_not_embedded(tmp_path, data_dir, form):
    """Attack: change a result's bytes in the store; the document must refuse to embed (and vouch for) them."""
    _, result = _evidence(tmp_path, data_dir)
    blob = data_dir / "blobs" / "sha256" / result["sha256"][:2] / result["sha256"][2:]
    assert blob.is_file()
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b"negative", b"positive"))
    code, _, err = egw_here("record", "new", "--template", "onsite", "--form", form, "--cite", result["evidence_id"],
                            "-o", tmp_path / "r.pdf", "--data-dir", data_dir)
    assert code == 1 and "does not hash to" in err and not (tmp_path / "r.pdf").exists()


def test_record_new_runs_inside_egw_run(tmp_path, data_dir, form):
    """With `egw run` holding the data directory, `egw record new` is delegated through the control socket
    (relative paths are the client's), stored by the service, and the unsealed note reaches the client."""
    from tests.test_one_writer import egw_in, serve

    photo, _ = _evidence(tmp_path, data_dir)
    work = tmp_path / "work"
    work.mkdir()
    (work / "form.toml").write_text(form.read_text(encoding="utf-8"), encoding="utf-8")
    with serve(tmp_path, data_dir):
        made = egw_in(work, "--no-wait", "record", "new", "--template", "onsite", "--form", "./form.toml",
                      "--cite", photo["evidence_id"], "-o", "./record.pdf", "--data-dir", str(data_dir), "--json")
        assert made.returncode == 0, made.stderr
        assert "未加盖电子印章" in made.stderr and "Traceback" not in made.stderr
        document = json.loads(made.stdout)
        assert document["path"] == str(work / "record.pdf") and _sha(work / "record.pdf") == document["sha256"]
        listing = json.loads(egw_in(work, "ls", "--data-dir", str(data_dir), "--json").stdout)
    assert {row["evidence_id"]: row["kind"] for row in listing}[document["evidence_id"]] == "document"


# ---- the pad simulator's handwriting ----------------------------------------------------------

def _ink(name: str) -> np.ndarray:
    """What the simulated signer draws for ``name`` on a blank 800×480 screen, as a 0/1 image."""
    from simulators.signpad.signer import PenSample, build_phase

    events, _ = build_phase([{"sign": name}], 0, np.full((480, 800, 3), 255, np.uint8), [])
    ink = np.zeros((480, 800), np.uint8)
    previous = None
    for event in events:
        if isinstance(event, PenSample) and event.touching:
            if previous is not None:
                cv2.line(ink, (round(previous.x), round(previous.y)), (round(event.x), round(event.y)), 1, 2)
            previous = event
        else:
            previous = None
    return ink


def _coverage(target: np.ndarray, ink: np.ndarray, tolerance_px: int = 7) -> float:
    """Share of ``target`` pixels with ink within ``tolerance_px``."""
    near = cv2.dilate(ink, np.ones((2 * tolerance_px + 1,) * 2, np.uint8))
    return float((near[: target.shape[0], : target.shape[1]] & target).sum() / max(1, target.sum()))


def _centre_lines(name: str) -> np.ndarray:
    from simulators.signpad.handwriting import glyph_mask
    from simulators.signpad.signer import _thin

    mask = glyph_mask(name, (int(0.08 * 800), int(0.28 * 480), int(0.92 * 800), int(0.75 * 480) - int(0.06 * 480)))  # the signer's box
    lines = np.zeros((480, 800), np.uint8)
    thin = _thin(mask > 0)[:480, :800]
    lines[: thin.shape[0], : thin.shape[1]] = thin
    return lines


def test_chinese_name_is_handwritten_from_its_glyphs_not_an_x():
    ink = _ink("王小明")
    glyphs = _centre_lines("王小明")
    assert ink.sum() > 500
    assert _coverage(glyphs, ink) > 0.85  # the pen went along the strokes of 王小明
    assert _coverage(ink, glyphs.astype(np.uint8), 12) > 0.85  # and hardly anywhere else
    assert _coverage(_centre_lines("李大海"), ink) < 0.6  # another name's strokes are not what was written
    cross = np.zeros_like(ink)
    cv2.line(cross, (64, 134), (736, 332), 1, 1)
    cv2.line(cross, (64, 332), (736, 134), 1, 1)
    assert _coverage(cross, ink, 3) < 0.3  # not an X
    assert not np.array_equal(_ink("王小明"), _ink("王小红"))  # 明 and 红 differ


def test_sealer_seam_stores_the_sealed_file_and_a_misnamed_sealer_is_refused(tmp_path, data_dir, form, monkeypatch):
    from gateway.documents.sealer import register_sealer

    seen = []

    def seal(path):
        seen.append(_sha(path))
        sealed = path.with_name(path.stem + "-sealed.pdf")
        sealed.write_bytes(path.read_bytes() + b"%stand-in for an incremental PAdES update\n")
        return sealed

    register_sealer(seal)
    try:
        code, out, err = egw_here("record", "new", "--template", "onsite", "--form", form, "-o", tmp_path / "r.pdf",
                                  "--data-dir", data_dir, "--json")
    finally:
        register_sealer(None)
    assert code == 0, err
    document = json.loads(out)
    sealed = tmp_path / "r-sealed.pdf"
    assert document["sealed"] is True and document["path"] == str(sealed) and document["sha256"] == _sha(sealed)
    assert seen == [_sha(tmp_path / "r.pdf")] and "未加盖" not in err  # the sealer got the rendered PDF, unchanged

    before = json.loads(egw_here("status", "--data-dir", data_dir, "--json")[1])["total"]

    def broken(path):
        raise RuntimeError("HSM not reachable")

    def in_place(path):
        path.write_bytes(path.read_bytes() + b"%changed\n")
        return path

    for sealer, said in ((broken, "could not be applied to"), (in_place, "which is not a new file")):
        register_sealer(sealer)
        try:
            code, _, err = egw_here("record", "new", "--template", "onsite", "--form", form, "-o", tmp_path / "r3.pdf",
                                    "--data-dir", data_dir)
        finally:
            register_sealer(None)
        assert code == 1 and said in err and "Traceback" not in err, err
    assert json.loads(egw_here("status", "--data-dir", data_dir, "--json")[1])["total"] == before  # nothing stored unsealed

    monkeypatch.setenv("EGW_DOCUMENT_SEALER", "gateway.no_such_module:seal")
    code, _, err = egw_here("record", "new", "--template", "onsite", "--form", form, "-o", tmp_path / "r2.pdf", "--data-dir", data_dir)
    assert code == 2 and "EGW_DOCUMENT_SEALER" in err and not (tmp_path / "r2.pdf").exists()


def test_a_hostile_file_name_is_shown_not_obeyed(tmp_path, data_dir, form):
    """A device's file name with a terminal escape and a right-to-left override is printed as escapes, and the
    associated file gets a portable name (its evidence id first)."""
    hostile = tmp_path / "样品\x1b[2J\u202egpj.json"
    hostile.write_text('{"result": "negative"}', encoding="utf-8")
    item = _ingest(data_dir, hostile, "--kind", "result")
    code, out, err = egw_here("record", "new", "--template", "onsite", "--form", form, "--cite", item["evidence_id"],
                              "-o", tmp_path / "r.pdf", "--data-dir", data_dir, "--json")
    assert code == 0, err
    names = list(json.loads(out)["embedded"])
    assert f"{item['evidence_id']}-u001b_2J_u202egpj.json" in names and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    text = _tool("pdftotext", "-enc", "UTF-8", str(tmp_path / "r.pdf"), "-")
    assert "样品\\u001b[2J\\u202egpj.json" in text and "\x1b" not in text and "\u202e" not in text


def test_a_receipted_item_is_cited_with_the_platforms_receipt_id(tmp_path):
    from tests.test_dock import enrolled_gateway
    from tests.uplink_support import spawn_platform, stop_process

    platform, address, _ = spawn_platform(tmp_path / "platform")
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        photo = tmp_path / "IMG_0002.jpg"
        photo.write_bytes(b"\xff\xd8\xff\xe0 stall 3, scale\xff\xd9")
        item = _ingest(data, photo)
        assert run_egw("sync", "--once", "--data-dir", str(data)).returncode == 0
    finally:
        stop_process(platform)
    (row,) = json.loads(egw_here("ls", "--data-dir", data, "--json")[1])
    assert row["evidence_id"] == item["evidence_id"] and row["receipt_id"]
    form = tmp_path / "form.toml"
    form.write_text(FORM, encoding="utf-8")
    out = tmp_path / "d.pdf"
    code, _, err = egw_here("record", "draft", "--template", "onsite", "--form", form, "--cite", item["evidence_id"], "-o", out,
                            "--data-dir", data)
    assert code == 0, err
    text = _squash(_tool("pdftotext", "-enc", "UTF-8", str(out), "-"))
    assert f"平台回执{row['receipt_id']}" in text and "尚未出具" not in text
