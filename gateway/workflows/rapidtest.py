"""Rapid-test results → signed evidence, published and queued for upload.

For each result the instrument sends:

1. the raw ASTM transcript is stored as evidence (one item per message: all
   results of a message share it, content-addressed and deduplicated);
2. a result document (JSON: instrument, sample, item, method, value, unit,
   cutoff, judgement, operator, times, inspector, site, the transcript's
   digest and evidence id) is stored as evidence of kind ``result`` — its
   manifest is the DSSE-signed result envelope;
3. both get custody events and join the upload queue (results are small, so
   the uploader sends them before queued video);
4. the signed envelope is published on ``egw/v1/<gw>/results/rapidtest``
   through the durable outbox (when an MQTT link is configured).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from drivers.rapidtest import RapidTestResult
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.service import EvidenceService

__all__ = ["RapidTestPipeline", "RecordedResult", "result_document"]

log = logging.getLogger("egw.rapidtest")
RESULT_MEDIA_TYPE = "application/vnd.egw.rapidtest-result+json"
TRANSCRIPT_MEDIA_TYPE = "application/x-astm-e1381-transcript"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def result_document(result: RapidTestResult, *, inspector_id: str | None, site: str | None,
                    transcript_sha256: str, transcript_evidence_id: str) -> dict[str, Any]:
    return {
        "v": "egw.rapidtest-result/1",
        "instrument": {"id": result.instrument_id, "model": result.instrument_model, "version": result.instrument_version},
        "message_id": result.message_id,
        "message_digest": result.message_digest,
        "result_index": result.result_index,
        "results_in_message": result.results_in_message,
        "sample": {"id": result.sample_id, "description": result.sample_description},
        "item": {"code": result.item_code, "name": result.item_name, "method": result.method, "standard": result.standard},
        "value": result.value,
        "unit": result.unit,
        "reference_range": result.reference_range,
        "cutoff": result.cutoff,
        "abnormal_flag": result.abnormal_flag,
        "status": result.status,
        "judgement": result.judgement.value,
        "operator": result.operator,
        "comments": list(result.comments),
        "started_at_instrument_clock": _iso(result.started_at),
        "tested_at_instrument_clock": _iso(result.tested_at),
        "received_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "inspector_id": inspector_id,
        "site": site,
        "transcript": {"sha256": transcript_sha256, "evidence_id": transcript_evidence_id},
    }


@dataclass(frozen=True)
class RecordedResult:
    evidence_id: str
    transcript_evidence_id: str
    document: dict[str, Any]
    envelope: bytes  # the DSSE-signed manifest (the "signed result envelope")
    duplicate: bool


Publisher = Callable[[RecordedResult], None]


class RapidTestPipeline:
    def __init__(self, service: EvidenceService, *, inspector_id: str | None = None, site: str | None = None,
                 publishers: list[Publisher] | None = None) -> None:
        self.service = service
        self.inspector_id = inspector_id
        self.site = site
        self.publishers = publishers or []

    def record(self, result: RapidTestResult) -> RecordedResult:
        device_id = f"rapidtest-{result.instrument_id or 'unknown'}"
        transcript = self.service.ingest_bytes(
            result.transcript,
            ManifestInput(
                source_path=f"astm/{result.instrument_id}/{result.message_id}/{result.message_digest}.transcript",
                kind="document", media_type=TRANSCRIPT_MEDIA_TYPE, device_id=device_id, officer_id=self.inspector_id,
                extra={"astm_message_id": result.message_id, "message_digest": result.message_digest},
            ),
            priority=2,
        )
        # The source path names the message (by the digest of its text) and the position, so an instrument
        # re-sending a message is not new evidence. Matched by source alone: the document's received_at is the
        # gateway's wall clock, so a re-sent result's document differs from the stored one in its bytes.
        source_path = f"astm/{result.instrument_id}/{result.message_id}/{result.message_digest}/{result.result_index}"
        known = self.service.state.first_from_source(device_id, source_path)
        if known is not None:
            with self.service.store.open(known.sha256) as fh:  # the first recording's document: it is what was signed
                document = json.loads(fh.read())
            log.info("rapid-test result re-sent by the instrument; already evidence", extra={"fields": {
                "evidence_id": known.id, "sample": result.sample_id, "item": result.item_code}})
            return RecordedResult(known.id, transcript.evidence_id, document, known.manifest, True)
        document = result_document(result, inspector_id=self.inspector_id, site=self.site,
                                   transcript_sha256=transcript.sha256, transcript_evidence_id=transcript.evidence_id)
        body = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
        stored = self.service.ingest_bytes(
            body,
            ManifestInput(
                source_path=source_path,
                kind="result", media_type=RESULT_MEDIA_TYPE, device_id=device_id, officer_id=self.inspector_id,
                captured_at=result.tested_at.timestamp() if result.tested_at else None,
                captured_at_device=_iso(result.tested_at),
                extra={"rapidtest": {k: document[k] for k in ("sample", "item", "value", "unit", "cutoff", "judgement")},
                       "transcript": document["transcript"]},
            ),
            priority=2,
        )
        if stored.duplicate:  # keep the first recording's document: it is what was signed
            row = self.service.state.get(stored.evidence_id)
            with self.service.store.open(row.sha256) as fh:
                document = json.loads(fh.read())
        self.service.sign_tree_head()
        recorded = RecordedResult(stored.evidence_id, transcript.evidence_id, document,
                                  self.service.state.get(stored.evidence_id).manifest, stored.duplicate)
        if not stored.duplicate:
            for publish in self.publishers:
                publish(recorded)
        log.info("rapid-test result recorded", extra={"fields": {
            "evidence_id": recorded.evidence_id, "sample": result.sample_id, "item": result.item_code,
            "judgement": result.judgement.value, "duplicate": stored.duplicate}})
        return recorded


