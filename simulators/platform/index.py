"""The platform's SQLite index: tokens, gateways, revocations, blobs, partial uploads, receipts.

Tokens are bound to one gateway id (and optionally a site) and say whether they
may replace an existing certificate (``reenrol``). Revocations are an
append-only, hash-chained log (triggers refuse UPDATE and DELETE); the CRL is
built from it (``simulators/platform/revocation.py``).

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

__all__ = ["Index", "ReceiptRow", "PartialRow", "GatewayRow", "TokenGrant", "Revocation", "TokenError", "DEFAULT_TOKEN_TTL",
           "TOKEN_REFUSED"]

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
CREATE TABLE IF NOT EXISTS revocations (
    seq INTEGER PRIMARY KEY, gateway_id TEXT NOT NULL, serial TEXT NOT NULL, cert_sha256 TEXT NOT NULL,
    revoked_at REAL NOT NULL, reason TEXT NOT NULL, prev_hash TEXT NOT NULL, entry_hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS revocations_no_update BEFORE UPDATE ON revocations
BEGIN SELECT RAISE(ABORT, 'the revocation log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS revocations_no_delete BEFORE DELETE ON revocations
BEGIN SELECT RAISE(ABORT, 'the revocation log is append-only'); END;
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


# columns added after the first release: (table, column, declaration)
_MIGRATIONS = (
    ("tokens", "gateway_id", "TEXT"), ("tokens", "site", "TEXT"), ("tokens", "purpose", "TEXT NOT NULL DEFAULT 'enrol'"),
    ("gateways", "revoked_at", "REAL"), ("gateways", "site", "TEXT"),
)

TOKEN_REFUSED = (
    "enrolment refused: this token is not valid for this gateway (unknown, already used, expired, or issued for "
    "another gateway id); ask the platform operator for a new one: `egw platform token --gateway-id <this gateway's id>`"
)
"""The one answer to every bad token, so that a caller learns nothing about which tokens exist."""

_GENESIS = "0" * 64


class TokenError(ValueError):
    """An enrolment token that is unknown, used, expired or for another gateway: always ``TOKEN_REFUSED``."""

    def __init__(self) -> None:
        super().__init__(TOKEN_REFUSED)


@dataclass(frozen=True)
class TokenGrant:
    """What a redeemed token allows: enrol ``gateway_id`` (at ``site``), replacing its certificate if ``reenrol``."""

    gateway_id: str
    site: str | None
    reenrol: bool


@dataclass(frozen=True)
class GatewayRow:
    gateway_id: str
    cert_sha256: str
    certificate: bytes
    enrolled_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class Revocation:
    seq: int
    gateway_id: str
    serial: int
    cert_sha256: str
    revoked_at: float
    reason: str


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


def _revocation_hash(prev: str, seq: int, gateway_id: str, serial: int, cert_sha256: str, revoked_at: float, reason: str) -> str:
    line = "\n".join([prev, str(seq), gateway_id, format(serial, "x"), cert_sha256, repr(revoked_at), reason])
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


class Index:
    """One connection guarded by a lock: the gRPC handlers run on a thread pool."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "index.db"
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.lock = threading.RLock()
        with self.lock:
            self.db.executescript(SCHEMA)
            for table, column, declaration in _MIGRATIONS:
                columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

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
    def new_token(self, gateway_id: str, *, site: str | None = None, reenrol: bool = False,
                  ttl_s: float = DEFAULT_TOKEN_TTL) -> tuple[str, float]:
        """A fresh single-use secret for one gateway id (only its hash is kept) and its expiry time."""
        secret = secrets.token_hex(16)
        now = time.time()
        with self.tx() as db:
            db.execute("INSERT INTO tokens (token_hash, created_at, expires_at, used_at, used_by, gateway_id, site, purpose) "
                       "VALUES (?, ?, ?, NULL, NULL, ?, ?, ?)",
                       (_hash_token(secret), now, now + ttl_s, gateway_id, site, "reenrol" if reenrol else "enrol"))
        return secret, now + ttl_s

    def redeem_token(self, db: sqlite3.Connection, secret: str, gateway_id: str) -> TokenGrant:
        """Inside the enrolment transaction: burn the token if it is valid for ``gateway_id``, else TokenError.

        The token is burnt only if the whole transaction (certificate recorded) commits."""
        row = db.execute("SELECT expires_at, gateway_id, site, purpose FROM tokens WHERE token_hash = ? AND used_at IS NULL",
                         (_hash_token(secret),)).fetchone()
        if row is None or row[0] < time.time() or row[1] is None or row[1] != gateway_id:
            raise TokenError()
        updated = db.execute("UPDATE tokens SET used_at = ?, used_by = ? WHERE token_hash = ? AND used_at IS NULL",
                             (time.time(), gateway_id, _hash_token(secret)))
        if updated.rowcount != 1:
            raise TokenError()
        return TokenGrant(gateway_id, row[2], row[3] == "reenrol")

    # ---- gateways -------------------------------------------------------
    def add_gateway(self, db: sqlite3.Connection, gateway_id: str, cert_sha256: str, key_id: str, cert_pem: bytes,
                    site: str | None = None) -> None:
        db.execute("INSERT INTO gateways (gateway_id, cert_sha256, key_id, certificate, enrolled_at, revoked_at, site) "
                   "VALUES (?, ?, ?, ?, ?, NULL, ?)", (gateway_id, cert_sha256, key_id, cert_pem, time.time(), site))

    def gateway_by_cert(self, cert_sha256: str) -> GatewayRow | None:
        row = self._one("SELECT gateway_id, cert_sha256, certificate, enrolled_at, revoked_at FROM gateways WHERE cert_sha256 = ?",
                        (cert_sha256,))
        return None if row is None else GatewayRow(str(row[0]), str(row[1]), bytes(row[2]), float(row[3]), row[4])

    def active_certificate(self, gateway_id: str, db: sqlite3.Connection | None = None) -> bytes | None:
        """The PEM of the gateway's unrevoked certificate, or None."""
        sql = "SELECT certificate FROM gateways WHERE gateway_id = ? AND revoked_at IS NULL ORDER BY enrolled_at DESC"
        if db is not None:
            row = db.execute(sql, (gateway_id,)).fetchone()
        else:
            row = self._one(sql, (gateway_id,))
        return None if row is None else bytes(row[0])

    def gateway_cert_by_key(self, key_id: str) -> tuple[str, bytes] | None:
        row = self._one("SELECT gateway_id, certificate FROM gateways WHERE key_id = ? AND revoked_at IS NULL "
                        "ORDER BY enrolled_at DESC", (key_id,))
        return None if row is None else (str(row[0]), bytes(row[1]))

    # ---- revocations -------------------------------------------------------
    def revoke(self, db: sqlite3.Connection, gateway_id: str, reason: str) -> list[Revocation]:
        """Inside a transaction: revoke every unrevoked certificate of ``gateway_id``, appending to the log."""
        from cryptography import x509  # only here: the index otherwise stores certificates as opaque bytes

        done: list[Revocation] = []
        rows = db.execute("SELECT cert_sha256, certificate FROM gateways WHERE gateway_id = ? AND revoked_at IS NULL",
                          (gateway_id,)).fetchall()
        for cert_sha256, cert_pem in rows:
            now = time.time()
            serial = x509.load_pem_x509_certificate(bytes(cert_pem)).serial_number
            last = db.execute("SELECT seq, entry_hash FROM revocations ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (1, _GENESIS) if last is None else (int(last[0]) + 1, str(last[1]))
            entry = _revocation_hash(prev, seq, gateway_id, serial, str(cert_sha256), now, reason)
            db.execute("INSERT INTO revocations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (seq, gateway_id, format(serial, "x"), cert_sha256, now, reason, prev, entry))
            db.execute("UPDATE gateways SET revoked_at = ? WHERE cert_sha256 = ?", (now, cert_sha256))
            done.append(Revocation(seq, gateway_id, serial, str(cert_sha256), now, reason))
        return done

    def revocations(self) -> list[Revocation]:
        with self.lock:
            rows = self.db.execute("SELECT seq, gateway_id, serial, cert_sha256, revoked_at, reason FROM revocations ORDER BY seq")
            return [Revocation(int(r[0]), str(r[1]), int(r[2], 16), str(r[3]), float(r[4]), str(r[5])) for r in rows]

    def check_revocation_log(self) -> int:
        """Re-walk the hash chain; the number of entries, or ValueError naming the first broken one."""
        prev = _GENESIS
        with self.lock:
            rows = self.db.execute("SELECT seq, gateway_id, serial, cert_sha256, revoked_at, reason, prev_hash, entry_hash "
                                   "FROM revocations ORDER BY seq").fetchall()
        for seq, gid, serial, cert_sha256, revoked_at, reason, prev_hash, entry_hash in rows:
            expected = _revocation_hash(prev, int(seq), str(gid), int(serial, 16), str(cert_sha256), float(revoked_at), str(reason))
            if prev_hash != prev or entry_hash != expected:
                raise ValueError(f"revocation log entry {seq} does not chain: the log was altered")
            prev = str(entry_hash)
        return len(rows)

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
