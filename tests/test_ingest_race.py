"""Two threads of one writer ingesting the same bytes from the same source at the same moment (two
delegated `egw ingest` of one file inside `egw run`, or two docks of one recorder) make ONE item: the
second is told it is a duplicate, never an IntegrityError from the database's unique index."""

import io
import threading

from gateway.evidence.identity import init_identity
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.evidence_service import EvidenceService


def test_the_same_source_ingested_twice_at_once_is_one_item(tmp_path):
    data_dir = tmp_path / "gw"
    init_identity(data_dir, "gw-race")
    both_past_the_first_check = threading.Barrier(2, timeout=10)
    results, errors = [], []
    with EvidenceService(data_dir) as service:

        def ingest() -> None:
            item = ManifestInput(source_path="/media/clip.bin", device_id="cam-1")
            try:
                results.append(service.ingest_stream(io.BytesIO(b"x" * 4096), item, expected_size=4096,
                                                     enrich=lambda blob, mi: both_past_the_first_check.wait()))
            except Exception as exc:  # noqa: BLE001 - the assertion below names it
                errors.append(exc)

        threads = [threading.Thread(target=ingest) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        rows = [r for r in service.state.all_evidence() if r.source_path == "/media/clip.bin"]
    assert not errors, errors
    assert len(rows) == 1
    assert sorted(r.duplicate for r in results) == [False, True]
    assert {r.evidence_id for r in results} == {rows[0].id}
