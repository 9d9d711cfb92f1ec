"""The ``delivery_links`` table: one-time links a party downloads a delivered document with.

Only the SHA-256 of a link's token is stored: someone who reads ``state.db`` learns which documents have
links, not a token that opens one. A link is bound to one document (``evidence_id``), opens once
(``used_at`` is set in the same transaction that hands out the file) and not after ``expires_at``
(docs/delivery.md).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

__all__ = ["Link", "add_link", "find_link", "claim_link"]


@dataclass(frozen=True)
class Link:
    token_sha256: str
    delivery_id: str
    evidence_id: str
    created_at: float
    expires_at: float
    used_at: float | None
    used_by: str | None


def add_link(db: sqlite3.Connection, token_sha256: str, delivery_id: str, evidence_id: str, created_at: float,
             expires_at: float) -> None:
    db.execute("INSERT INTO delivery_links (token_sha256, delivery_id, evidence_id, created_at, expires_at) "
               "VALUES (?, ?, ?, ?, ?)", (token_sha256, delivery_id, evidence_id, created_at, expires_at))


def find_link(db: sqlite3.Connection, token_sha256: str) -> Link | None:
    row = db.execute("SELECT token_sha256, delivery_id, evidence_id, created_at, expires_at, used_at, used_by "
                     "FROM delivery_links WHERE token_sha256 = ?", (token_sha256,)).fetchone()
    return None if row is None else Link(str(row[0]), str(row[1]), str(row[2]), float(row[3]), float(row[4]),
                                         None if row[5] is None else float(row[5]), row[6])


def claim_link(db: sqlite3.Connection, token_sha256: str, now: float, used_by: str) -> bool:
    """Mark the link used inside the caller's transaction; False when it was used already or has expired."""
    cursor = db.execute("UPDATE delivery_links SET used_at = ?, used_by = ? WHERE token_sha256 = ? AND used_at IS NULL "
                        "AND expires_at > ?", (now, used_by, token_sha256, now))
    return cursor.rowcount == 1
