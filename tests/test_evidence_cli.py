"""The evidence core through the ``egw`` command, as an operator uses it."""

import base64
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.conftest import egw_env, run_egw


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(d), "--gateway-id", "gw-test", check=True)
    return d


def trusting(data_dir):
    """An unenrolled gateway's bundle proves origin only to a verifier who chooses to trust that gateway's own
    certificate (docs/trust.md); without a trust anchor the best verdict is CONSISTENT, UNTRUSTED (exit 3)."""
    return ("--trust", str(data_dir / "identity" / "gateway.crt"))


def ingest(data_dir, *paths, extra=()):
    proc = run_egw("ingest", "--data-dir", str(data_dir), "--json", *extra, *map(str, paths))
    return proc, json.loads(proc.stdout)


def test_key_is_private_and_encrypted_with_a_passphrase(tmp_path):
    plain = tmp_path / "plain"
    run_egw("keys", "init", "--data-dir", str(plain), check=True)
    key = plain / "identity" / "gateway.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED" not in key.read_bytes()
    again = run_egw("keys", "init", "--data-dir", str(plain))
    assert again.returncode == 1 and "already exists" in again.stderr and "--force" in again.stderr

    secret = tmp_path / "secret"
    env = egw_env(EGW_KEY_PASSPHRASE="correct horse")
    run_egw("keys", "init", "--data-dir", str(secret), env=env, check=True)
    assert b"ENCRYPTED" in (secret / "identity" / "gateway.key").read_bytes()
    sample = tmp_path / "a.txt"
    sample.write_text("x")
    locked = run_egw("ingest", "--data-dir", str(secret), str(sample))
    assert locked.returncode == 1 and "EGW_KEY_PASSPHRASE" in locked.stderr
    assert "correct horse" not in locked.stderr + locked.stdout
    assert run_egw("ingest", "--data-dir", str(secret), str(sample), env=env).returncode == 0

    os.chmod(key, 0o644)
    loose = run_egw("status", "--data-dir", str(plain))
    assert loose.returncode == 1 and "readable by others" in loose.stderr


def test_ingest_export_verify_round_trip(tmp_path, data_dir):
    video = tmp_path / "clip.avi"
    video.write_bytes(os.urandom(300_000))
    proc, out = ingest(data_dir, video, extra=["--device-id", "cam-7", "--officer-id", "000042", "--kind", "video"])
    assert proc.returncode == 0, proc.stderr
    (item,) = out["items"]
    assert item["state"] == "queued" and not item["duplicate"]

    bundle = tmp_path / "bundle"
    run_egw("export", item["evidence_id"], str(bundle), "--data-dir", str(data_dir), check=True)
    verified = run_egw("verify", str(bundle), *trusting(data_dir))
    assert verified.returncode == 0, verified.stdout
    assert "VERIFIED" in verified.stdout and "FAIL" not in verified.stdout
    untrusted = run_egw("verify", str(bundle), "--data-dir", str(data_dir))  # not enrolled: no pinned CA
    assert untrusted.returncode == 3 and untrusted.stdout.rstrip().endswith("CONSISTENT, UNTRUSTED"), untrusted.stdout
    assert (bundle / "content" / "clip.avi").read_bytes() == video.read_bytes()
    manifest = json.loads(base64.b64decode(json.loads((bundle / "manifest.dsse.json").read_text())["payload"]))
    assert manifest["officer_id"] == "000042" and manifest["source"]["device_id"] == "cam-7"
    assert manifest["evidence_id"] == item["evidence_id"] and manifest["sha256"] == item["sha256"]

    status = json.loads(run_egw("status", "--data-dir", str(data_dir), "--json", check=True).stdout)
    assert status["counts"]["queued"] == 1 and status["oldest_unreceipted"]["evidence_id"] == item["evidence_id"]
    custody = json.loads(run_egw("custody", "verify", "--data-dir", str(data_dir), "--json", check=True).stdout)
    assert custody["ok"] and custody["entries"] == 2  # ingested, exported


def test_status_oldest_unreceipted_is_the_first_ingested_with_no_negative_age_after_a_clock_step(tmp_path):
    """Seen reviewing wall-clock uses for issue 9's clock fault: ``oldest_unreceipted`` (and the metric
    egw_upload_queue_oldest_age_seconds) picked the item with the smallest wall-clock created_at and could report
    a negative age. An item ingested while the clock was an hour ahead, then one ingested after it was set right."""
    from gateway.evidence.identity import init_identity
    from gateway.evidence.manifest import ManifestInput
    from gateway.evidence.evidence_service import EvidenceService

    init_identity(tmp_path / "gw")
    with EvidenceService(tmp_path / "gw") as service:
        first = service.ingest_bytes(b"first", ManifestInput(source_path="a.bin")).evidence_id
        service.ingest_bytes(b"second", ManifestInput(source_path="b.bin"))
        service.state.db.execute("UPDATE evidence SET created_at = created_at + 3600 WHERE id = ?", (first,))
        oldest = service.status()["oldest_unreceipted"]
    assert oldest["evidence_id"] == first and oldest["age_s"] == 0.0


def _flip_json_payload(path: Path, key: str, mutate):
    doc = json.loads(path.read_text())
    doc[key] = mutate(doc[key])
    path.write_text(json.dumps(doc))


def _reencode_payload(path: Path, change):
    doc = json.loads(path.read_text())
    body = json.loads(base64.b64decode(doc["payload"]))
    change(body)
    doc["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    path.write_text(json.dumps(doc))


def _other_certificate(tmp_path):
    other = tmp_path / "other"
    run_egw("keys", "init", "--data-dir", str(other), "--gateway-id", "gw-test", check=True)
    return (other / "identity" / "gateway.crt").read_bytes()


TAMPERINGS = {
    "content digest": lambda b, t: (b / "content" / "clip.bin").write_bytes(b"forged" + (b / "content" / "clip.bin").read_bytes()[6:]),
    "manifest signature": lambda b, t: _reencode_payload(b / "manifest.dsse.json", lambda m: m.update(officer_id="999999")),
    "signer certificate": lambda b, t: (b / "certificates.pem").write_bytes(_other_certificate(t)),
    "inclusion proof": lambda b, t: _flip_json_payload(b / "custody-proof.json", "inclusion_path", lambda p: p[:-1] if p else ["00" * 32]),
    "tree-head signature": lambda b, t: _flip_json_payload(
        b / "custody-proof.json", "tree_head",
        lambda th: {**th, "payload": base64.b64encode(base64.b64decode(th["payload"]).replace(b'"tree_size": ', b'"tree_size": 1')).decode()}),
}


@pytest.mark.parametrize("what", sorted(TAMPERINGS))
def test_each_kind_of_tampering_is_caught_by_its_own_check(tmp_path, data_dir, what):
    sample = tmp_path / "clip.bin"
    sample.write_bytes(os.urandom(50_000))
    _, out = ingest(data_dir, sample)
    ingest(data_dir, *[tmp_path / "clip.bin"])  # same source again: a duplicate, not new evidence
    for i in range(3):  # some more history so the proof has a path
        extra = tmp_path / f"other{i}.bin"
        extra.write_bytes(os.urandom(100))
        ingest(data_dir, extra)
    bundle = tmp_path / "bundle"
    run_egw("export", out["items"][0]["evidence_id"], str(bundle), "--data-dir", str(data_dir), check=True)
    assert run_egw("verify", str(bundle), *trusting(data_dir)).returncode == 0
    TAMPERINGS[what](bundle, tmp_path)
    proc = run_egw("verify", str(bundle), "--json", *trusting(data_dir))
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert what in failed, report
    text = run_egw("verify", str(bundle), *trusting(data_dir)).stdout
    assert f"FAIL {what}:" in text and "FAILED" in text.splitlines()[-1]


def test_missing_and_escaping_bundle_files_are_reported(tmp_path, data_dir):
    sample = tmp_path / "x.bin"
    sample.write_bytes(b"1234")
    _, out = ingest(data_dir, sample)
    bundle = tmp_path / "bundle"
    run_egw("export", out["items"][0]["evidence_id"], str(bundle), "--data-dir", str(data_dir), check=True)
    index = json.loads((bundle / "bundle.json").read_text())
    index["content"] = "../../etc/passwd"
    (bundle / "bundle.json").write_text(json.dumps(index))
    proc = run_egw("verify", str(bundle))
    assert proc.returncode == 1 and "bundle-index.schema.json at content" in proc.stdout  # the published format
    (bundle / "content" / "link").symlink_to("/etc/passwd")  # a name the format allows, resolving elsewhere
    (bundle / "bundle.json").write_text(json.dumps({**index, "content": "content/link"}))
    proc = run_egw("verify", str(bundle))
    assert proc.returncode == 1 and "points outside the bundle" in proc.stdout
    shutil.rmtree(bundle)
    bundle.mkdir()
    proc = run_egw("verify", str(bundle))
    assert proc.returncode == 1 and "no bundle.json" in proc.stdout


def test_hostile_file_names_are_data_never_paths(tmp_path, data_dir):
    src = tmp_path / "card"
    src.mkdir()
    nasty = ["..", "a\nb\x1b[31mred", "名前.mp4", "-rf", " lead", "x" * 200 + ".mp4"]
    made = []
    for i, name in enumerate(nasty):
        folder = src / f"d{i}"
        folder.mkdir()
        target = folder / (name if name != ".." else "..dots..")
        target.write_bytes(name.encode() * 3)
        made.append(target)
    raw = os.fsencode(src / "d0") + b"/bad-\xff\xfe.bin"  # not UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"undecodable name")
    (src / "escape.mp4").symlink_to("/etc/hostname")
    proc, out = ingest(data_dir, src)
    assert proc.returncode == 1  # the symlink is refused
    ok = [i for i in out["items"] if "evidence_id" in i]
    errors = [i for i in out["items"] if "error" in i]
    assert len(ok) == len(made) + 1 and len(errors) == 1 and "escape.mp4" in errors[0]["path"]
    assert any("\\xff\\xfe" in i["path"] for i in ok)
    for item in ok:
        bundle = tmp_path / "out" / item["evidence_id"]
        run_egw("export", item["evidence_id"], str(bundle), "--data-dir", str(data_dir), check=True)
        contents = list((bundle / "content").iterdir())
        assert len(contents) == 1 and contents[0].parent == bundle / "content"
        assert not any(ord(c) < 32 for c in contents[0].name)
        assert run_egw("verify", str(bundle), *trusting(data_dir)).returncode == 0


def test_unreadable_and_vanished_sources_fail_clearly_and_the_rest_go_on(tmp_path, data_dir):
    good = tmp_path / "good.bin"
    good.write_bytes(b"fine")
    missing = tmp_path / "gone.bin"
    proc, out = ingest(data_dir, missing, good)
    assert proc.returncode == 1
    assert "cannot read" in out["items"][0]["error"] or "cannot open" in out["items"][0]["error"]
    assert out["items"][1]["evidence_id"]
    human = run_egw("ingest", "--data-dir", str(data_dir), str(missing))
    assert "error:" in human.stderr and "hint:" in human.stderr


def test_custody_verify_names_the_first_altered_entry(tmp_path, data_dir):
    for i in range(5):
        f = tmp_path / f"{i}.bin"
        f.write_bytes(os.urandom(64))
        ingest(data_dir, f)
    assert run_egw("custody", "verify", "--data-dir", str(data_dir)).returncode == 0
    db = sqlite3.connect(data_dir / "state.db")
    entry = db.execute("SELECT entry FROM custody WHERE seq = 2").fetchone()[0]
    db.execute("UPDATE custody SET entry = ? WHERE seq = 2", (bytes(entry).replace(b"ingested", b"inGested"),))
    db.commit()
    proc = run_egw("custody", "verify", "--data-dir", str(data_dir), "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["first_bad_entry"] == 2

    # Rewriting the leaf hash too does not help: the signed tree heads no longer match.
    from gateway.evidence.merkle import leaf_hash
    forged = bytes(db.execute("SELECT entry FROM custody WHERE seq = 2").fetchone()[0])
    db.execute("UPDATE custody SET leaf_hash = ? WHERE seq = 2", (leaf_hash(forged),))
    db.commit()
    report = json.loads(run_egw("custody", "verify", "--data-dir", str(data_dir), "--json").stdout)
    assert not report["ok"] and report["first_bad_entry"] == 2
    assert any("does not match the log" in p["message"] for p in report["problems"])

    db.execute("DELETE FROM custody WHERE seq = 4")
    db.commit()
    report = json.loads(run_egw("custody", "verify", "--data-dir", str(data_dir), "--json").stdout)
    assert any("removed" in p["message"] for p in report["problems"])
