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
    # not enrolled: the verifier chooses to trust this gateway's own certificate (docs/trust.md)
    assert run_egw("verify", str(bundle), "--trust", str(data / "identity" / "gateway.crt")).returncode == 0
    document = json.loads(next((bundle / "content").iterdir()).read_text())
    assert document["sample"] == results[0]["sample"] and document["judgement"] == results[0]["judgement"]


def test_unreachable_analyzer_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    proc = run_egw("rapidtest", "--port", str(tmp_path / "no-such-tty"), "--count", "1", "--data-dir", str(data))
    assert proc.returncode == 2 and "hint:" in proc.stderr and "--port" in proc.stderr


def test_a_result_the_instrument_resends_after_a_gateway_restart_is_not_new_evidence(tmp_path):
    """At-least-once from the instrument: a gateway killed after storing a result but before its ACK gets the same
    message again after restart. The result document carries the wall-clock ``received_at``, so its bytes (and
    digest) differ the second time; it was stored and published as a second result."""
    import hashlib
    import time
    from datetime import datetime, timezone

    from drivers.rapidtest import Judgement, RapidTestResult
    from gateway.evidence.identity import init_identity
    from gateway.evidence.evidence_service import EvidenceService
    from gateway.workflows.rapidtest import RapidTestPipeline

    init_identity(tmp_path / "gw")
    text = b"H|\\^&|||RT-9^1.0^SN42\rR|1|^^^OPPEST^organophosphates|62.5|%|0^50|H||F\rL|1|N\r"
    result = RapidTestResult(
        instrument_id="SN42", instrument_model="RT-9", instrument_version="1.0", message_id="M7", sample_id="S1",
        sample_description="spinach", item_code="OPPEST", item_name="organophosphates", method="enzyme inhibition",
        standard="GB/T 5009.199-2003", value="62.5", unit="%", reference_range="0^50", cutoff="50", abnormal_flag="H",
        status="F", judgement=Judgement.POSITIVE, operator="op", started_at=None,
        tested_at=datetime(2026, 5, 1, 9, 30, tzinfo=timezone.utc), comments=(), result_index=1, results_in_message=1,
        termination_code="N", message_digest=hashlib.sha256(text).hexdigest(), message_text=text, transcript=b"\x05" + text)
    published = []
    with EvidenceService(tmp_path / "gw") as service:
        first = RapidTestPipeline(service, publishers=[published.append]).record(result)
    time.sleep(0.01)  # the re-sent message arrives later: received_at differs
    with EvidenceService(tmp_path / "gw") as service:  # egw run restarted
        again = RapidTestPipeline(service, publishers=[published.append]).record(result)
        kinds = [row.kind for row in service.state.all_evidence()]
    assert again.duplicate and again.evidence_id == first.evidence_id and again.document == first.document
    assert sorted(kinds) == ["document", "result"] and len(published) == 1
