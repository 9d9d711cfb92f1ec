"""Rapid-test results through ``egw rapidtest``: each becomes signed, verifiable evidence."""

import json

from tests.conftest import run_egw, spawn_egw


def test_results_from_the_simulator_become_signed_evidence(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    sim = spawn_egw("simulate", "rapidtest", "--kind", "pesticide", "--tests", "5", "--tcp", "0", "--interval", "0.1",
                    "--reply-timeout", "2", "--retry-delay", "0.2")
    url = sim.stdout.readline().strip()
    assert url.startswith("socket://"), sim.stderr.read()
    try:
        proc = run_egw("rapidtest", "--port", url, "--count", "5", "--inspector", "inspector-7", "--site", "Market hall 3",
                       "--timeout", "60", "--data-dir", str(data), "--json", timeout=120)
        assert proc.returncode == 0, proc.stderr
        results = [json.loads(line) for line in proc.stdout.splitlines()]
        assert len(results) == 5 and len({r["evidence_id"] for r in results}) == 5
        for r in results:
            assert r["inspector_id"] == "inspector-7" and r["judgement"] in {"positive", "negative", "invalid"}
            assert r["item"]["standard"] and r["transcript"]["sha256"]
            assert r["unit"] == "%" or r["judgement"] == "invalid"  # an invalid test carries no value
    finally:
        sim.terminate()
        sim.communicate(timeout=10)
    status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
    assert status["counts"]["queued"] == 10  # 5 results + 5 transcripts (one per message)
    bundle = tmp_path / "bundle"
    run_egw("export", results[0]["evidence_id"], str(bundle), "--data-dir", str(data), check=True)
    assert run_egw("verify", str(bundle)).returncode == 0
    document = json.loads(next((bundle / "content").iterdir()).read_text())
    assert document["sample"] == results[0]["sample"] and document["judgement"] == results[0]["judgement"]


def test_unreachable_analyzer_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    proc = run_egw("rapidtest", "--port", str(tmp_path / "no-such-tty"), "--count", "1", "--data-dir", str(data))
    assert proc.returncode == 2 and "hint:" in proc.stderr and "--port" in proc.stderr
