"""The terminal upload area's crash windows, each cut by hand (#19, item 2): a kill after the digest was
recorded, after the file became the blob, after the commit but before the evidence id was written back.
Each is finished at the next start, once."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.identity import init_identity
from gateway.evidence.terminals import TerminalRecord
from gateway.terminal.tus import Upload, UploadArea

TERMINAL = TerminalRecord("t-abc", "500001", None, "1f", "00" * 32, time.time() + 1e6, time.time(), None, None, None)


@pytest.fixture
def service(tmp_path):
    init_identity(tmp_path, "gw-area")
    with EvidenceService(tmp_path) as svc:
        yield svc


def _received(area: UploadArea, payload: bytes) -> Upload:
    upload = area.create(TERMINAL, len(payload), {"filename": "a.jpg", "filetype": "image/jpeg"})
    running = area.running(upload)
    area.append(upload, running, payload[:1000])
    area.append(upload, area.running(upload), payload[1000:])  # the digest carried across calls
    return upload


def _record_digest_only(area: UploadArea, upload: Upload) -> None:
    """The description as it is on disk after the digest was written and before the evidence id was."""
    upload.sha256 = upload.sha256 or area.running(upload).sha256.hexdigest()
    upload.evidence_id = None
    (area.directory / f"{upload.id}.json").write_text(json.dumps(asdict(upload)))


@pytest.mark.parametrize("killed_after", ["digest", "rename", "commit"])
def test_every_crash_window_is_finished_once_at_the_next_start(service: EvidenceService, tmp_path: Path, killed_after: str):
    payload = bytes(range(256)) * 40
    area = UploadArea(service)
    upload = _received(area, payload)
    _record_digest_only(area, upload)
    staged = area.directory / f"{upload.id}.data"
    if killed_after in ("rename", "commit"):
        service.store.adopt(staged, upload.sha256 or "", None, len(payload))
    if killed_after == "commit":
        area.finish(area.get(upload.id, None))
        _record_digest_only(area, upload)  # the evidence id never made it back into the description
    restarted = UploadArea(service)  # a new process: nothing in memory
    [result] = restarted.finish_pending()
    assert restarted.finish_pending() == []
    import hashlib

    assert result.sha256 == hashlib.sha256(payload).hexdigest() and result.size == len(payload)
    rows = [r for r in service.state.all_evidence() if r.sha256 == result.sha256]
    assert [(r.id, r.device_id, r.officer_id) for r in rows] == [(result.evidence_id, "t-abc", "500001")]
    assert restarted.get(upload.id, None).evidence_id == result.evidence_id


def test_the_digest_is_rebuilt_from_the_file_after_a_restart(service: EvidenceService):
    payload = b"x" * 5000 + b"y" * 3000
    area = UploadArea(service)
    upload = area.create(TERMINAL, len(payload), {})
    area.append(upload, area.running(upload), payload[:5000])
    restarted = UploadArea(service)
    running = restarted.running(upload)
    assert running.offset == 5000
    restarted.append(upload, running, payload[5000:])
    import hashlib

    assert restarted.finish(upload).sha256 == hashlib.sha256(payload).hexdigest()
