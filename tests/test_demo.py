"""``egw demo --json``: the newcomer's first command must work, end to end."""

import json

import pytest

from tests.conftest import egw_env, run_egw


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_receipts_and_verifies_everything(tmp_path, broker):
    env = egw_env(EGW_DEMO_BROKER=broker) if broker == "embedded" else egw_env()
    proc = run_egw("demo", "--json", "--workdir", str(tmp_path / "demo"), env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["ok"] and not summary["failures"]
    counts = summary["counts"]
    assert sum(counts["video"].values()) == 6 and counts["video"].get("released") == 6
    assert sum(counts["result"].values()) == 5
    assert all(item["receipt_id"] for item in summary["items"])
    assert any("ok   receipt" in line for line in summary["bundle_checks"])
    assert run_egw("verify", summary["verified_bundle"]).returncode == 0
