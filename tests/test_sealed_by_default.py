"""Sealed by default (issue #16): with a real platform process, `egw record new` stores the document with the
agency seal; with the platform stopped it seals provisionally and queues the document; `egw sync --once`
after the platform is back counter-seals it (new evidence, linked by a custody event) and time-stamps the
newest signed tree head with a token `openssl ts -verify` accepts."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway.evidence.identity import init_identity
from gateway.uplink.enroll import enroll
from simulators.platform.cli import issue_token
from tests.platform_process import PlatformProcess
from tests.test_documents import FORM, egw_here


@pytest.fixture
def platform(tmp_path: Path):
    process = PlatformProcess(tmp_path / "platform").start()
    yield process
    process.stop()


def _gateway(tmp_path: Path, platform: PlatformProcess) -> Path:
    data_dir = tmp_path / "gw"
    init_identity(data_dir, "gw-seal-default")
    enroll(data_dir, platform.address, issue_token(platform.data, gateway_id="gw-seal-default")["token"])
    return data_dir


def _record(tmp_path: Path, data_dir: Path, name: str, *extra: str) -> tuple[dict, str]:
    form = tmp_path / "form.toml"
    form.write_text(FORM, encoding="utf-8")
    code, out, err = egw_here("record", "new", "--template", "onsite", "--form", form, "-o", tmp_path / name,
                              "--data-dir", data_dir, "--json", *extra)
    assert code == 0, err
    return json.loads(out), err


def _verify(path: Path, ca: Path) -> str:
    code, out, err = egw_here("verify", path, "--trust", ca)
    return out.strip().splitlines()[-1] if out.strip() else err


def _custody(data_dir: Path, evidence_id: str) -> list[dict]:
    with sqlite3.connect(data_dir / "state.db") as db:
        return [json.loads(bytes(r[0])) for r in db.execute("SELECT entry FROM custody WHERE evidence_id = ? ORDER BY seq",
                                                            (evidence_id,))]


def test_sealed_online_provisional_offline_and_counter_sealed_when_the_platform_is_back(tmp_path: Path, platform) -> None:
    data_dir = _gateway(tmp_path, platform)

    sealed, err = _record(tmp_path, data_dir, "online.pdf", "--trust-services", platform.trust_url)
    assert (sealed["seal"], sealed["sealed"]) == ("agency", True), err
    assert _verify(Path(sealed["path"]), platform.ca) == "VERIFIED"

    platform.stop()
    provisional, err = _record(tmp_path, data_dir, "offline.pdf")  # the address was remembered from --trust-services
    assert (provisional["seal"], provisional["sealed"]) == ("provisional", False)
    assert "临时" in err or "provisionally" in err, err
    assert _verify(Path(provisional["path"]), platform.ca) == "FAILED"  # the gateway's own signature is no agency seal
    assert [e["event"] for e in _custody(data_dir, provisional["evidence_id"])][-1] == "awaiting-counter-seal"

    code, out, err = egw_here("sync", "--once", "--data-dir", data_dir, "--json")  # still down: nothing sealed, said so
    assert code == 1 and "counter-seal" in err, err
    assert json.loads(out)["trust"]["still_awaiting"] == 1

    platform.start()
    code, out, err = egw_here("sync", "--once", "--data-dir", data_dir, "--json")
    report = json.loads(out)
    assert code == 0, (err, [u["last_error"] for u in report["undelivered"]])
    counter = report["trust"]["counter_sealed"][provisional["evidence_id"]]
    assert report["trust"]["still_awaiting"] == 0 and not report["undelivered"]
    from tests.test_schemas import errors as schema_errors

    assert schema_errors("cli-sync", report) == []
    assert counter in {o["evidence_id"] for o in report["outcomes"] if o["status"] == "receipted"}  # reached the platform

    linked = [e for e in _custody(data_dir, provisional["evidence_id"]) if e["event"] == "counter-sealed"]
    assert linked and linked[0]["counter_sealed_by"] == counter
    from tests.test_schemas import errors

    assert errors("custody-entry", linked[0]) == [] and all(
        errors("custody-entry", e) == [] for e in _custody(data_dir, provisional["evidence_id"]) if e["event"] == "awaiting-counter-seal")
    export = tmp_path / "counter-sealed.pdf"
    with sqlite3.connect(data_dir / "state.db") as db:
        sha256, manifest = db.execute("SELECT sha256, manifest FROM evidence WHERE id = ?", (counter,)).fetchone()
    from gateway.evidence.dsse import Envelope
    from gateway.evidence.store import BlobStore

    assert Envelope.from_bytes(bytes(manifest)).payload_json()["extra"]["document"]["counter_seal_of"] == provisional["evidence_id"]
    export.write_bytes(BlobStore(data_dir, read_only=True).path_for(sha256).read_bytes())
    assert _verify(export, platform.ca) == "VERIFIED"  # the provisional signature stays, the agency seal now covers it

    # trusted time on the newest signed tree head, checked by an independent verifier
    with sqlite3.connect(data_dir / "state.db") as db:
        size, envelope = db.execute("SELECT tree_size, envelope FROM tree_heads ORDER BY tree_size DESC LIMIT 1").fetchone()
        stamped = db.execute("SELECT token FROM tree_head_timestamps WHERE tree_size = ?", (size,)).fetchone()
    assert stamped is not None, f"tree head {size} has no time-stamp"
    (tmp_path / "head.dsse").write_bytes(bytes(envelope))
    (tmp_path / "token.der").write_bytes(bytes(stamped[0]))
    checked = subprocess.run(["openssl", "ts", "-verify", "-token_in", "-in", str(tmp_path / "token.der"),
                              "-data", str(tmp_path / "head.dsse"), "-CAfile", str(platform.ca), "-untrusted", str(platform.tsa)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and "Verification: OK" in checked.stdout, checked.stdout + checked.stderr
    (tmp_path / "head.dsse").write_bytes(bytes(envelope) + b" ")  # and it is over exactly those bytes
    tampered = subprocess.run(["openssl", "ts", "-verify", "-token_in", "-in", str(tmp_path / "token.der"),
                               "-data", str(tmp_path / "head.dsse"), "-CAfile", str(platform.ca), "-untrusted", str(platform.tsa)],
                              capture_output=True, text=True, timeout=30)
    assert tampered.returncode != 0


def test_egw_run_counter_seals_and_stamps_on_its_own_when_the_platform_comes_back(tmp_path: Path, platform, monkeypatch) -> None:
    """`egw run` with [platform] trust_services: a record stored through it while the platform is down is sealed
    provisionally (the address comes from the configuration, through the data directory); the service's own trust
    round counter-seals it and time-stamps the tree heads once the platform is back, with nobody running a command."""
    import time

    from tests.test_one_writer import egw_in, serve

    data_dir = _gateway(tmp_path, platform)
    platform.stop()
    monkeypatch.setenv("EGW_TRUST_ROUND_S", "0.5")
    (tmp_path / "form.toml").write_text(FORM, encoding="utf-8")
    with serve(tmp_path, data_dir, f'[platform]\ntrust_services = "{platform.trust_url}"\n'):
        made = egw_in(tmp_path, "--no-wait", "record", "new", "--template", "onsite", "--form", "form.toml", "-o", "r.pdf",
                      "--data-dir", str(data_dir), "--json")
        assert made.returncode == 0, made.stderr
        provisional = json.loads(made.stdout)
        assert provisional["seal"] == "provisional" and "临时签章" in made.stderr
        platform.start()
        deadline, sealed_by, stamps = time.monotonic() + 60, None, 0
        while time.monotonic() < deadline and not (sealed_by and stamps):
            time.sleep(0.5)
            with sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True) as db:
                sealed_by = db.execute("SELECT sealed_by FROM counter_seal_queue WHERE evidence_id = ?",
                                       (provisional["evidence_id"],)).fetchone()[0]
                stamps = db.execute("SELECT COUNT(*) FROM tree_head_timestamps").fetchone()[0]
    assert sealed_by, "egw run did not counter-seal the provisional record within 60 s of the platform's return"
    assert stamps > 0, "egw run did not time-stamp any tree head"
    assert [e["counter_sealed_by"] for e in _custody(data_dir, provisional["evidence_id"]) if e["event"] == "counter-sealed"] == [sealed_by]
