"""Rapid-test results and signing records as the station screen lists them, read from the state database.

Why from the database and not from the workflow that made them: a row pushed once from memory never
learns that the platform receipted its item, and a record made by another entry point (``egw sign``
or ``egw rapidtest`` in their own process, the demo) was never pushed at all. The committed evidence
row is the one truth every entry point shares, so the screen shows that.

Reading stays bounded: the first refresh reads the newest ``limit`` items of each media type walking
the table backwards; later refreshes read only rows added since (by rowid, whatever their type) and
the current state of the rows on screen (by primary key). A signing record's fingerprint quality lives only in the record
itself, so that small JSON document is read once per record and remembered.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gateway.evidence.dsse import Envelope
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.state import EvidenceRow
from gateway.workflows.rapidtest import RESULT_MEDIA_TYPE
from gateway.workflows.signing import RECORD_MEDIA_TYPE

__all__ = ["RecordFeed", "RECORD_MEDIA_TYPES"]

log = logging.getLogger("egw.station")
RECORD_MEDIA_TYPES = (RESULT_MEDIA_TYPE, RECORD_MEDIA_TYPE)
MAX_RECORD_BYTES = 1 << 20  # a signing record is a few kB; never read more than this for the screen


class RecordFeed:
    """The newest results and signing records with their current delivery state."""

    def __init__(self, service: EvidenceService, *, results: int = 50, signings: int = 20) -> None:
        self.service = service
        self.limits = {RESULT_MEDIA_TYPE: results, RECORD_MEDIA_TYPE: signings}
        self.rows: dict[str, list[tuple[int, dict[str, Any]]]] = {t: [] for t in RECORD_MEDIA_TYPES}
        # Every row up to this rowid has been read. Evidence rows are never deleted and SQLite's writers are
        # serialised, so a newly committed row always has a rowid above every row committed before it.
        self.read_upto = 0

    def refresh(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(results, signings), newest first, each row with its committed ``state``."""
        upto = self.service.state.last_rowid()
        for media_type, limit in self.limits.items():
            fresh = [(rowid, self._row(media_type, row)) for rowid, row in self.service.state.latest_of_media_types(
                (media_type,), limit=limit, after_rowid=self.read_upto, upto_rowid=upto)]
            self.rows[media_type] = (fresh + self.rows[media_type])[:limit]
        self.read_upto = upto
        states = self.service.state.states_of([row["evidence_id"] for shown in self.rows.values() for _, row in shown])
        for shown in self.rows.values():
            for _, row in shown:
                row["state"] = states.get(row["evidence_id"], row["state"])
        return ([dict(r) for _, r in self.rows[RESULT_MEDIA_TYPE]], [dict(r) for _, r in self.rows[RECORD_MEDIA_TYPE]])

    def _row(self, media_type: str, row: EvidenceRow) -> dict[str, Any]:
        manifest = _manifest(row)
        base = {"evidence_id": row.id, "state": row.state, "at": row.created_at}
        if media_type == RESULT_MEDIA_TYPE:
            return {**base, **_result_fields(manifest)}
        return {**base, **self._signing_fields(row, manifest)}

    def _signing_fields(self, row: EvidenceRow, manifest: dict[str, Any]) -> dict[str, Any]:
        extra = manifest.get("extra") or {}
        document, signer = extra.get("document") or {}, extra.get("signer") or {}
        record = self._record(row)
        fingerprint = record.get("fingerprint") or {}
        return {"document": document.get("name", ""), "signer": signer.get("name", ""), "role": signer.get("role", ""),
                "place": extra.get("place") or "", "fingerprint_quality": fingerprint.get("quality"),
                "signature": "signature" in record, "fingerprint": bool(fingerprint)}

    def _record(self, row: EvidenceRow) -> dict[str, Any]:
        if row.size > MAX_RECORD_BYTES:
            return {}
        try:
            with self.service.store.open(row.sha256) as fh:
                parsed = json.loads(fh.read(MAX_RECORD_BYTES))
        except Exception as exc:  # noqa: BLE001 - the screen shows the row without the quality, never fails
            log.warning("signing record %s could not be read for the screen: %s", row.id, exc)
            return {}
        return parsed if isinstance(parsed, dict) else {}


def _manifest(row: EvidenceRow) -> dict[str, Any]:
    try:
        return Envelope.from_bytes(row.manifest).payload_json()
    except Exception as exc:  # noqa: BLE001 - a row the screen cannot read is shown bare, never hidden
        log.warning("manifest of %s could not be read for the screen: %s", row.id, exc)
        return {}


def _result_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    rapid = (manifest.get("extra") or {}).get("rapidtest") or {}
    sample, item = rapid.get("sample") or {}, rapid.get("item") or {}
    return {"sample_id": sample.get("id", ""), "sample_description": sample.get("description", ""),
            "item_code": item.get("code", ""), "item_name": item.get("name", ""), "value": rapid.get("value", ""),
            "unit": rapid.get("unit", ""), "judgement": rapid.get("judgement", ""),
            "tested_at": (manifest.get("capture") or {}).get("device_clock"),
            "received_at": manifest.get("ingested_at")}
