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
    assert run_egw("verify", summary["verified_bundle"], "--data-dir", summary["gateway_data"]).returncode == 0
    record = summary["record"]  # issue #16: one sealed, delivered on-site record
    assert record["record"]["seal"] == "agency" and record["record_verdict"] == "VERIFIED"
    assert record["receipt"]["seal"] == "agency" and record["delivery"]["record"]["outcome"] == "acknowledged"
    assert record["link_first_bytes"] == record["record"]["size"] and record["link_second_status"] == 410
    ca = summary["platform_data"] + "/pki/ca.pem"
    assert run_egw("verify", record["record"]["path"], "--trust", ca).returncode == 0


def test_demo_stops_at_once_naming_a_part_that_died(tmp_path):
    """Found when a new amqtt release made the platform's MQTT side exit: the demo waited out its 90 s step
    timeout and reported items "queued" instead of saying that the platform had died, and why."""
    import sys
    import time

    from gateway.demo import Processes

    processes = Processes(log_dir=tmp_path)
    try:
        die = "import sys; print('ready', flush=True); sys.stderr.write('no subscription acknowledged\\n'); sys.exit(3)"
        processes.start("platform", [sys.executable, "-c", die])
        processes.start("analyzer", [sys.executable, "-c", "print('done', flush=True)"], finite=True)
        for _, proc in processes.procs:
            proc.wait(20)
        time.sleep(0.2)  # stderr reaches the log file
        with pytest.raises(RuntimeError) as failure:
            processes.check_alive()
        message = str(failure.value)
        assert "platform process exited (status 3)" in message and "no subscription acknowledged" in message
        assert "analyzer" not in message  # a child that ends on its own is not a failure
    finally:
        processes.stop()
