"""The platform's SQLite index: tokens, gateways, blobs, partial uploads, receipts.

Blobs are content-addressed (stored once whoever sent them); receipts are per
gateway and evidence id, so the same file from two gateways is one blob and two
receipts, and a repeated upload of the same item gets its original receipt.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Index", "ReceiptRow", "PartialRow", "TokenError", "DEFAULT_TOKEN_TTL"]

DEFAULT_TOKEN_TTL = 3600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, created_at REAL NOT NULL, expires_at REAL NOT NULL,
    used_at REAL, used_by TEXT
);
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id TEXT NOT NULL, cert_sha256 TEXT PRIMARY KEY, key_id TEXT NOT NULL,
    certificate BLOB NOT NULL, enrolled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS partials (
    gateway_id TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    synced_offset INTEGER NOT NULL, boot_id TEXT NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (gateway_id, sha256)
);
CREATE TABLE IF NOT EXISTS receipts (
    receipt_id TEXT PRIMARY KEY, gateway_id TEXT NOT NULL, evidence_id TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, received_at REAL NOT NULL,
    manifest BLOB NOT NULL, envelope BLOB NOT NULL,
    UNIQUE (gateway_id, evidence_id)
);
"""


class TokenError(ValueError):
    """An enrolment token that is unknown, used or expired."""


@dataclass(frozen=True)
class ReceiptRow:
    receipt_id: str
    gateway_id: str
    evidence_id: str
    sha256: str
    size: int
    received_at: float
    manifest: bytes
    envelope: bytes


@dataclass(frozen=True)
class PartialRow:
    gateway_id: str
    sha256: str
    size: int
    synced_offset: int
    boot_id: str
    updated_at: float


def _hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Index:
    """One connection guarded by a lock: the gRPC handlers run on a thread pool."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "index.db"
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.lock = threading.RLock()
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                self.db.execute(stmt)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        with self.lock:
            return self.db.execute(sql, args).fetchone()  # type: ignore[no-any-return]

    # ---- tokens ----------------------------------------------------------
    def new_token(self, ttl_s: float = DEFAULT_TOKEN_TTL) -> tuple[str, float]:
        """A fresh single-use secret (only its hash is kept) and its expiry time."""
        secret = secrets.token_hex(16)
        now = time.time()
        with self.tx() as db:
            db.execute("INSERT INTO tokens VALUES (?, ?, ?, NULL, NULL)", (_hash_token(secret), now, now + ttl_s))
        return secret, now + ttl_s

    def use_token(self, db: sqlite3.Connection, secret: str, gateway_id: str) -> None:
        """Inside the enrolment transaction: the token is burnt only if the certificate is recorded too."""
        row = db.execute("SELECT expires_at, used_at FROM tokens WHERE token_hash = ?", (_hash_token(secret),)).fetchone()
        if row is None:
            raise TokenError("the enrolment token is unknown to this platform; issue one with `egw platform tokens --data DIR`")
        if row[1] is not None:
            raise TokenError("the enrolment token was already used (tokens are single-use); issue a new one with `egw platform tokens`")
        if row[0] < time.time():
            raise TokenError("the enrolment token has expired; issue a new one with `egw platform tokens`")
        db.execute("UPDATE tokens SET used_at = ?, used_by = ? WHERE token_hash = ?", (time.time(), gateway_id, _hash_token(secret)))

    # ---- gateways -------------------------------------------------------
    def add_gateway(self, db: sqlite3.Connection, gateway_id: str, cert_sha256: str, key_id: str, cert_pem: bytes) -> None:
        db.execute("INSERT OR REPLACE INTO gateways VALUES (?, ?, ?, ?, ?)", (gateway_id, cert_sha256, key_id, cert_pem, time.time()))

    def gateway_by_cert(self, cert_sha256: str) -> str | None:
        row = self._one("SELECT gateway_id FROM gateways WHERE cert_sha256 = ?", (cert_sha256,))
        return None if row is None else str(row[0])

    def gateway_cert_by_key(self, key_id: str) -> tuple[str, bytes] | None:
        row = self._one("SELECT gateway_id, certificate FROM gateways WHERE key_id = ? ORDER BY enrolled_at DESC", (key_id,))
        return None if row is None else (str(row[0]), bytes(row[1]))

    # ---- blobs / partials / receipts --------------------------------------
    def blob_size(self, sha256: str) -> int | None:
        row = self._one("SELECT size FROM blobs WHERE sha256 = ?", (sha256,))
        return None if row is None else int(row[0])

    def partial(self, gateway_id: str, sha256: str) -> PartialRow | None:
        row = self._one("SELECT * FROM partials WHERE gateway_id = ? AND sha256 = ?", (gateway_id, sha256))
        return None if row is None else PartialRow(*row)

    def save_partial(self, gateway_id: str, sha256: str, size: int, synced_offset: int, boot_id: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO partials VALUES (?, ?, ?, ?, ?, ?)",
                       (gateway_id, sha256, size, synced_offset, boot_id, time.time()))

    def drop_partial(self, db: sqlite3.Connection, gateway_id: str, sha256: str) -> None:
        db.execute("DELETE FROM partials WHERE gateway_id = ? AND sha256 = ?", (gateway_id, sha256))

    def receipt_for(self, gateway_id: str, evidence_id: str) -> ReceiptRow | None:
        row = self._one("SELECT * FROM receipts WHERE gateway_id = ? AND evidence_id = ?", (gateway_id, evidence_id))
        return None if row is None else ReceiptRow(*row)

    def receipt_by_digest(self, gateway_id: str, sha256: str) -> ReceiptRow | None:
        row = self._one("SELECT * FROM receipts WHERE gateway_id = ? AND sha256 = ? ORDER BY received_at LIMIT 1", (gateway_id, sha256))
        return None if row is None else ReceiptRow(*row)

    def receipts(self) -> list[ReceiptRow]:
        with self.lock:
            return [ReceiptRow(*r) for r in self.db.execute("SELECT * FROM receipts ORDER BY received_at, receipt_id")]

    def blob_count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM blobs", ())
        return int(row[0]) if row else 0
