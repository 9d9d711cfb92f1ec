"""Signing sessions end to end through ``egw sign``, against the simulators."""

import json

import pytest

from tests.conftest import run_egw, spawn_egw


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(d), check=True)
    return d


@pytest.fixture
def fingerprint_url():
    proc = spawn_egw("simulate", "fingerprint", "--tcp", "0", "--baud", "0", "--finger", "present", "--quality", "0.9")
    url = proc.stdout.readline().strip()
    assert url.startswith("socket://"), proc.stderr.read()
    yield url
    proc.terminate()
    proc.communicate(timeout=10)


def test_fingerprint_session_binds_the_document_and_verifies(tmp_path, data_dir, fingerprint_url):
    document = tmp_path / "inspection-record.pdf"
    document.write_bytes(b"%PDF-1.4 on-site inspection record, stall 17\n")
    proc = run_egw("sign", "--document", str(document), "--signer", "Li Wei", "--role", "party",
                   "--fingerprint", fingerprint_url, "--place", "Market hall 3", "--data-dir", str(data_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    record = out["record"]
    assert record["signer"] == {"name": "Li Wei", "role": "party"} and record["place"] == "Market hall 3"
    assert 0 <= record["fingerprint"]["quality"] <= 100 and "fingerprint.png" in out["items"]

    bundle = tmp_path / "bundle"
    run_egw("export", out["evidence_id"], str(bundle), "--data-dir", str(data_dir), check=True)
    trust = ("--trust", str(data_dir / "identity" / "gateway.crt"))  # not enrolled: the verifier trusts this gateway
    good = run_egw("verify", str(bundle), "--document", str(document), *trust)
    assert good.returncode == 0 and "binds inspection-record.pdf" in good.stdout, good.stdout
    other = tmp_path / "forged.pdf"
    other.write_bytes(b"%PDF-1.4 a different record\n")
    bad = run_egw("verify", str(bundle), "--document", str(other), *trust)
    assert bad.returncode == 1
    assert f"binds document SHA-256 {record['document']['sha256']}" in bad.stdout and "FAIL document" in bad.stdout


def test_missing_devices_and_bad_role_are_refused(tmp_path, data_dir):
    document = tmp_path / "d.txt"
    document.write_text("x")
    proc = run_egw("sign", "--document", str(document), "--signer", "A", "--data-dir", str(data_dir))
    assert proc.returncode == 1 and "needs a signature pad, a fingerprint reader, or both" in proc.stderr
    proc = run_egw("sign", "--document", str(tmp_path / "nope.txt"), "--signer", "A", "--fingerprint", "socket://127.0.0.1:1",
                   "--data-dir", str(data_dir))
    assert proc.returncode == 1 and "cannot read the document" in proc.stderr


def test_unreachable_reader_makes_no_record(tmp_path, data_dir):
    document = tmp_path / "d.txt"
    document.write_text("x")
    proc = run_egw("sign", "--document", str(document), "--signer", "A", "--fingerprint", "socket://127.0.0.1:9",
                   "--data-dir", str(data_dir))
    assert proc.returncode == 1 and "fingerprint reader at socket://127.0.0.1:9" in proc.stderr
    status = json.loads(run_egw("status", "--data-dir", str(data_dir), "--json", check=True).stdout)
    assert status["total"] == 0


def _signpad(*extra: str):
    proc = spawn_egw("simulate", "signpad", "--listen", "127.0.0.1:0", "--signer", "Li Wei", *extra)
    url = proc.stdout.readline().strip()
    assert url.startswith("usbip://"), proc.stderr.read()
    return proc, url


def test_pad_and_fingerprint_session_reaches_the_platform(tmp_path, fingerprint_url):
    from tests.test_dock import enrolled_gateway
    from tests.uplink_support import spawn_platform, stop_process

    platform, address, _ = spawn_platform(tmp_path / "platform")
    pad, pad_url = _signpad()
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        document = tmp_path / "record.txt"
        document.write_text("on-site inspection record\n")
        proc = run_egw("sign", "--document", str(document), "--signer", "Li Wei", "--signpad", pad_url,
                       "--fingerprint", fingerprint_url, "--data-dir", str(data), "--json", timeout=120)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        signature = out["record"]["signature"]
        assert signature["samples"] > 50 and signature["strokes"] >= 1 and signature["device"]["product_id"] == 0xA8
        assert {"signature.png", "pen.csv", "signature.iso19794-7", "fingerprint.png", "fingerprint.iso19794-4"} <= set(out["items"])
        assert run_egw("sync", "--once", "--data-dir", str(data)).returncode == 0
        bundle = tmp_path / "bundle"
        run_egw("export", out["evidence_id"], str(bundle), "--data-dir", str(data), check=True)
        verified = run_egw("verify", str(bundle), "--document", str(document), "--data-dir", str(data))
        assert verified.returncode == 0 and "ok   receipt" in verified.stdout and "ok   document" in verified.stdout
    finally:
        stop_process(pad)
        stop_process(platform)


def test_pad_unplugged_mid_signature_signs_nothing(tmp_path, data_dir, fingerprint_url):
    pad, pad_url = _signpad("--unplug-mid-signature")
    try:
        document = tmp_path / "record.txt"
        document.write_text("x")
        proc = run_egw("sign", "--document", str(document), "--signer", "Li Wei", "--signpad", pad_url,
                       "--fingerprint", fingerprint_url, "--data-dir", str(data_dir), timeout=120)
        assert proc.returncode == 1
        assert "signature pad at" in proc.stderr and "no signing record was made" in proc.stderr
        status = json.loads(run_egw("status", "--data-dir", str(data_dir), "--json", check=True).stdout)
        assert status["total"] == 0  # nothing partial was stored or signed
    finally:
        pad.terminate()
        pad.communicate(timeout=10)
