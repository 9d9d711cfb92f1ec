"""The ``link_status`` table: what ``egw status`` shows of each uplink (state, since when, last error).

Written by the link inside its own transactions, read by ``egw status`` beside the writer.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

__all__ = ["read_link_status", "set_link_status"]

def set_link_status(db: sqlite3.Connection, link: str, state: str, *, broker: str | None = None,
                    detail: str | None = None, protocol: str | None = None, error: str | None = None) -> None:
    """Record the link's state; ``since`` only moves when the state changes."""
    now = time.time()
    row = db.execute("SELECT state FROM link_status WHERE link = ?", (link,)).fetchone()
    if row is None:
        db.execute(
            "INSERT INTO link_status (link, state, broker, detail, protocol, since, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (link, state, broker, detail, protocol, now, now),
        )
    else:
        db.execute(
            "UPDATE link_status SET state = ?, broker = COALESCE(?, broker), detail = ?, protocol = COALESCE(?, protocol), "
            "since = CASE WHEN state = ? THEN since ELSE ? END, updated_at = ? WHERE link = ?",
            (state, broker, detail, protocol, state, now, now, link),
        )
    if state == "connected":
        db.execute("UPDATE link_status SET last_connected_at = ? WHERE link = ?", (now, link))
    if error:
        db.execute("UPDATE link_status SET last_error = ?, last_error_at = ? WHERE link = ?", (error, now, link))


def read_link_status(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    cols = ("link", "state", "broker", "detail", "protocol", "since", "last_connected_at", "last_error",
            "last_error_at", "updated_at")
    out: dict[str, dict[str, Any]] = {}
    for row in db.execute(f"SELECT {', '.join(cols)} FROM link_status ORDER BY link"):
        out[row[0]] = dict(zip(cols[1:], row[1:]))
    return out


