"""The screen's rows come from the committed state database (gateway.station.records), whoever wrote them."""

import json

import pytest

from gateway.evidence.manifest import ManifestInput
from gateway.evidence.evidence_service import EvidenceService
from gateway.station.records import RecordFeed
from gateway.workflows.rapidtest import RESULT_MEDIA_TYPE
from gateway.workflows.signing import RECORD_MEDIA_TYPE
from tests.conftest import run_egw


@pytest.fixture
def service(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    with EvidenceService(data) as svc:
        yield svc


def _result(service: EvidenceService, n: int) -> str:
    rapid = {"sample": {"id": f"S{n}", "description": "spinach"}, "item": {"code": "OP", "name": "pesticides"},
             "value": 12.5, "unit": "%", "cutoff": 50, "judgement": "negative"}
    return service.ingest_bytes(json.dumps({"n": n}).encode(), ManifestInput(
        source_path=f"astm/x/{n}", kind="result", media_type=RESULT_MEDIA_TYPE, device_id="rapidtest-x",
        extra={"rapidtest": rapid})).evidence_id


def _signing(service: EvidenceService) -> str:
    record = {"signer": {"name": "Li Wei", "role": "party"}, "fingerprint": {"quality": 87}, "signature": {}}
    return service.ingest_bytes(json.dumps(record).encode(), ManifestInput(
        source_path="signing/abc/record.json", kind="signature", media_type=RECORD_MEDIA_TYPE,
        extra={"document": {"name": "record.pdf"}, "signer": record["signer"], "place": "hall 3"})).evidence_id


def test_rows_follow_their_items_state_and_new_rows_appear(service):
    feed = RecordFeed(service, results=3, signings=2)
    assert feed.refresh() == ([], [])
    first = _result(service, 1)
    service.ingest_bytes(b"a recording", ManifestInput(source_path="cam/1.mp4", kind="video", media_type="video/mp4"))
    results, signings = feed.refresh()
    assert [(r["evidence_id"], r["state"], r["sample_id"], r["judgement"], r["value"]) for r in results] == [
        (first, "queued", "S1", "negative", 12.5)] and signings == []
    service.transition(first, "uploading")
    service.transition(first, "receipted", custody_event="receipted", details={"receipt": "test"})
    signed = _signing(service)
    results, signings = feed.refresh()
    assert results[0]["state"] == "receipted"
    assert [(s["evidence_id"], s["signer"], s["role"], s["document"], s["fingerprint_quality"], s["state"]) for s in signings] == [
        (signed, "Li Wei", "party", "record.pdf", 87, "queued")]


def test_only_the_newest_rows_are_kept_newest_first(service):
    feed = RecordFeed(service, results=3, signings=2)
    ids = [_result(service, n) for n in range(5)]
    assert [r["evidence_id"] for r in feed.refresh()[0]] == ids[::-1][:3]
    newer = _result(service, 5)
    assert [r["evidence_id"] for r in feed.refresh()[0]] == [newer, *ids[::-1][:2]]


def test_a_fresh_feed_sees_what_an_earlier_process_committed(service):
    """A restarted ``egw run`` (a new feed) lists what was committed before it started, with its state."""
    earlier = _result(service, 1)
    service.transition(earlier, "uploading")
    assert [(r["evidence_id"], r["state"]) for r in RecordFeed(service).refresh()[0]] == [(earlier, "uploading")]
