"""The ``counter_seal_queue`` table: documents sealed provisionally, waiting for the agency's counter-seal.

When the platform's sealing service cannot be reached, ``egw record new`` signs the document with the
gateway's own key (``seal_provisionally``) and stores it; the row here remembers that it still owes the
agency seal and where the trust services are. ``egw sync --once`` and ``egw run`` counter-seal it when the
platform is back, store the counter-sealed PDF as new evidence and set ``sealed_by`` to its evidence id
(docs/documents-sealing.md, Offline fallback). A row is never deleted: it is the record of the fallback.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

__all__ = ["AwaitingSeal", "await_counter_seal", "awaiting", "mark_sealed", "mark_failed", "counter_seal_of"]


@dataclass(frozen=True)
class AwaitingSeal:
    evidence_id: str
    document_id: str
    trust_services: str
    attempts: int
    last_error: str | None


def await_counter_seal(db: sqlite3.Connection, evidence_id: str, document_id: str, trust_services: str) -> None:
    """Remember inside the caller's transaction that ``evidence_id`` (a provisionally sealed document) owes its seal."""
    db.execute("INSERT OR IGNORE INTO counter_seal_queue (evidence_id, document_id, trust_services, queued_at) "
               "VALUES (?, ?, ?, ?)", (evidence_id, document_id, trust_services, time.time()))


def awaiting(db: sqlite3.Connection, limit: int = 50) -> list[AwaitingSeal]:
    """Documents still owing their counter-seal, oldest first."""
    rows = db.execute("SELECT evidence_id, document_id, trust_services, attempts, last_error FROM counter_seal_queue "
                      "WHERE sealed_by IS NULL ORDER BY queued_at LIMIT ?", (limit,)).fetchall()
    return [AwaitingSeal(str(r[0]), str(r[1]), str(r[2]), int(r[3]), r[4]) for r in rows]


def mark_sealed(db: sqlite3.Connection, evidence_id: str, sealed_by: str) -> None:
    db.execute("UPDATE counter_seal_queue SET sealed_by = ?, last_error = NULL WHERE evidence_id = ?", (sealed_by, evidence_id))


def mark_failed(db: sqlite3.Connection, evidence_id: str, error: str) -> None:
    db.execute("UPDATE counter_seal_queue SET attempts = attempts + 1, last_error = ? WHERE evidence_id = ?",
               (error[:500], evidence_id))


def counter_seal_of(db: sqlite3.Connection, evidence_id: str) -> str | None:
    """The evidence id of the counter-sealed copy of ``evidence_id``, if it has one."""
    row = db.execute("SELECT sealed_by FROM counter_seal_queue WHERE evidence_id = ?", (evidence_id,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])
