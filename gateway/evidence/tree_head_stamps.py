"""The ``tree_head_timestamps`` table: RFC 3161 time-stamp tokens over signed tree heads.

A signed tree head proves what the custody log held, but its own ``timestamp``
is the gateway's claim; a token from the platform TSA over the tree head's
DSSE envelope (the exact bytes stored in ``tree_heads.envelope``) proves the
head, and so every entry it covers, existed by the token's ``genTime``
(docs/trust.md, Time). One token per tree head; a head is stamped once.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

__all__ = ["StampedHead", "unstamped_heads", "store_token", "stamped_heads"]


@dataclass(frozen=True)
class StampedHead:
    tree_size: int
    envelope: bytes
    token: bytes
    gen_time: str
    tsa: str


def unstamped_heads(db: sqlite3.Connection, limit: int = 100) -> list[tuple[int, bytes]]:
    """(tree size, envelope bytes) of signed tree heads without a token yet, oldest first."""
    rows = db.execute(
        "SELECT h.tree_size, h.envelope FROM tree_heads h LEFT JOIN tree_head_timestamps t ON t.tree_size = h.tree_size "
        "WHERE t.tree_size IS NULL ORDER BY h.tree_size LIMIT ?", (limit,)).fetchall()
    return [(int(size), bytes(envelope)) for size, envelope in rows]


def store_token(db: sqlite3.Connection, tree_size: int, token: bytes, gen_time: str, tsa: str) -> None:
    """Keep the token for that tree head (a second token for the same head is ignored: the first is the earlier proof)."""
    db.execute("INSERT OR IGNORE INTO tree_head_timestamps (tree_size, token, gen_time, tsa, at) VALUES (?, ?, ?, ?, ?)",
               (tree_size, token, gen_time, tsa, time.time()))


def stamped_heads(db: sqlite3.Connection) -> list[StampedHead]:
    """Every time-stamped tree head with its envelope and token, by tree size (what `egw export` would carry)."""
    rows = db.execute(
        "SELECT h.tree_size, h.envelope, t.token, t.gen_time, t.tsa FROM tree_head_timestamps t "
        "JOIN tree_heads h ON h.tree_size = t.tree_size ORDER BY h.tree_size").fetchall()
    return [StampedHead(int(r[0]), bytes(r[1]), bytes(r[2]), str(r[3]), str(r[4])) for r in rows]
