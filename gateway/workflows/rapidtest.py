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
4. the signed envelope is queued for ``egw/v1/<gw>/results/rapidtest`` in the
   durable outbox, in the same transaction that commits the result's evidence:
   whichever entry point recorded it (``egw rapidtest``, the analyzer watcher of
   ``egw run``), the message exists exactly when the evidence does, and the MQTT
   link (``egw run``, or ``egw sync --once --mqtt URL``) delivers it.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from drivers.rapidtest import RapidTestResult
from gateway.evidence.evidence_service import EvidenceService, IngestResult
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.outbox import enqueue, to_json_bytes, topic_root
from gateway.evidence.state import EvidenceRow
from protos.egw.v1 import events_pb2, evidence_pb2

__all__ = ["RapidTestPipeline", "RecordedResult", "result_document", "result_message", "attach_result_messages"]

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
        "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
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
RESULTS_HOOK_MARK = "egw_rapidtest_results_hook"


def result_message(evidence_id: str, document: dict[str, Any], envelope: bytes) -> events_pb2.RapidTestResult:
    """The MQTT form of a recorded rapid-test result: the signed envelope plus a readable copy."""
    parsed = json.loads(envelope)
    signed = evidence_pb2.Envelope(
        payload_type=parsed["payloadType"], payload=base64.b64decode(parsed["payload"]),
        signatures=[evidence_pb2.Signature(keyid=s.get("keyid", ""), sig=base64.b64decode(s["sig"])) for s in parsed["signatures"]],
    )
    return events_pb2.RapidTestResult(
        message_id=str(uuid.uuid4()), evidence_id=evidence_id, signed_result=signed,
        instrument_id=document["instrument"]["id"], sample_id=document["sample"]["id"], item_code=document["item"]["code"],
        item_name=document["item"]["name"], value=document["value"], unit=document["unit"], cutoff=document["cutoff"],
        judgement=document["judgement"],
    )


# The document being recorded by this thread, keyed by its source path: the hook below runs in the
# thread that ingests (inside the ingest transaction), so a thread-local tells it which document the
# new row holds without reading the blob back or matching on media type alone.
_recording = threading.local()


def attach_result_messages(service: EvidenceService) -> None:
    """Queue ``results/rapidtest`` in the transaction that commits a result's evidence.

    Why a transition hook and not a publisher called after ``ingest``: a crash
    between the commit and the publish would lose the message while keeping
    the evidence (or, the other way round, announce a result that was rolled
    back). Registered once per service; a re-sent (duplicate) result commits
    nothing, so it queues nothing.
    """
    root = topic_root(service.identity.gateway_id)

    def hook(db: sqlite3.Connection, row: EvidenceRow, details: dict[str, Any]) -> None:
        pending: dict[str, dict[str, Any]] = getattr(_recording, "documents", {})
        document = pending.get(row.source_path or "")
        if details.get("event") != "ingested" or row.media_type != RESULT_MEDIA_TYPE or document is None:
            return
        enqueue(db, root, "results", f"{root}results/rapidtest", to_json_bytes(result_message(row.id, document, row.manifest)))

    setattr(hook, RESULTS_HOOK_MARK, True)
    with service.state.lock:  # held by every transaction while it runs the hooks: none is iterating now
        if not any(getattr(h, RESULTS_HOOK_MARK, False) for h in service.transition_hooks):
            service.transition_hooks = [*service.transition_hooks, hook]


class RapidTestPipeline:
    def __init__(self, service: EvidenceService, *, inspector_id: str | None = None, site: str | None = None,
                 publishers: list[Publisher] | None = None) -> None:
        self.service = service
        self.inspector_id = inspector_id
        self.site = site
        self.publishers = publishers or []  # e.g. the station screen's rows; MQTT goes through the outbox hook
        attach_result_messages(service)

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
        _recording.documents = {source_path: document}
        try:
            stored = self._ingest_result(body, source_path, device_id, result, document)
        finally:
            _recording.documents = {}
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

    def _ingest_result(self, body: bytes, source_path: str, device_id: str, result: RapidTestResult,
                       document: dict[str, Any]) -> IngestResult:
        return self.service.ingest_bytes(
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
