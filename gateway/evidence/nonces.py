"""The ``command_nonces`` table: nonces of signed MQTT commands already used.

Kept in ``state.db`` so a replayed command is refused even after a restart. Nonces of
commands expired long ago are forgotten (the table stays bounded); the latest expiry
forgotten is kept in the row ``FORGOTTEN_UP_TO``, so a command that expired before it is
refused even though its nonce is gone (see ``gateway.uplink.commands``). Every function
runs inside the caller's transaction: the check and the insert commit together.
"""

from __future__ import annotations

import sqlite3

__all__ = ["FORGOTTEN_UP_TO", "NonceReplayed", "forget_expired_before", "forgotten_up_to", "use_nonce"]

FORGOTTEN_UP_TO = ""  # the command_nonces row holding the latest expiry of forgotten nonces (no command has this nonce)


class NonceReplayed(Exception):
    """The nonce is already in the table: the command was used before."""


def forgotten_up_to(db: sqlite3.Connection) -> float | None:
    """The latest expiry of the nonces forgotten so far (None: none ever was)."""
    row = db.execute("SELECT expires_at FROM command_nonces WHERE nonce = ?", (FORGOTTEN_UP_TO,)).fetchone()
    return None if row is None else float(row[0])


def use_nonce(db: sqlite3.Connection, nonce: str, name: str, expires_at: float, now: float) -> None:
    """Record the nonce as used; raises ``NonceReplayed`` when it already was."""
    try:
        db.execute("INSERT INTO command_nonces (nonce, name, expires_at, seen_at) VALUES (?, ?, ?, ?)",
                   (nonce, name, expires_at, now))
    except sqlite3.IntegrityError as exc:
        raise NonceReplayed(nonce) from exc


def forget_expired_before(db: sqlite3.Connection, cutoff: float, now: float) -> None:
    """Drop the nonces of commands that expired before ``cutoff``, remembering the latest expiry dropped."""
    newest = db.execute("SELECT MAX(expires_at) FROM command_nonces WHERE expires_at < ? AND nonce != ?",
                        (cutoff, FORGOTTEN_UP_TO)).fetchone()[0]
    if newest is None:
        return
    db.execute("DELETE FROM command_nonces WHERE expires_at < ? AND nonce != ?", (cutoff, FORGOTTEN_UP_TO))
    db.execute("INSERT INTO command_nonces (nonce, name, expires_at, seen_at) VALUES (?, '(forgotten up to)', ?, ?) "
               "ON CONFLICT(nonce) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at), seen_at = excluded.seen_at",
               (FORGOTTEN_UP_TO, newest, now))
