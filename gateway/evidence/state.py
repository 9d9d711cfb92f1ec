"""The gateway's state: one SQLite database in WAL mode, versioned by migrations.

Every transition that gates deleting data from a device is committed with
``synchronous=FULL`` before the caller acts on it. Connections are opened per
thread/process by the caller; SQLite serialises writers.

Evidence state machine::

    ingested ──► queued ──► uploading ──► receipted ──► released
                   ▲            │
                   └────────────┘  (upload interrupted: back to the queue)
"""

from __future__ import annotations

import enum
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from gateway.errors import NotFoundError, StateError, TransitionError
from gateway.evidence.private_files import create_private_file, private_dir, tighten

__all__ = ["AFTER_TRANSACTION", "State", "EvidenceRow", "ReleaseIntent", "EvidenceListing", "EvidenceState", "STATES", "TRANSITIONS", "UNRECEIPTED",
           "MIGRATIONS"]


class EvidenceState(str, enum.Enum):  # noqa: UP042 - StrEnum changes str() and format() of members, which are printed
    """Where an item is in the state machine. A ``str``: the value is what is stored in ``state.db``,
    printed and put in JSON, so ``EvidenceState.QUEUED == "queued"`` and ``json.dumps`` writes ``"queued"``."""

    INGESTED = "ingested"
    QUEUED = "queued"
    UPLOADING = "uploading"
    RECEIPTED = "receipted"
    RELEASED = "released"

    def __str__(self) -> str:  # f-strings and str() print the stored value, never "EvidenceState.QUEUED"
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


STATES: tuple[str, ...] = tuple(s.value for s in EvidenceState)
# Not yet receipted: what the uploader still owes the platform.
UNRECEIPTED: tuple[str, ...] = (EvidenceState.INGESTED.value, EvidenceState.QUEUED.value, EvidenceState.UPLOADING.value)
TRANSITIONS: dict[str, frozenset[str]] = {
    EvidenceState.INGESTED.value: frozenset({EvidenceState.QUEUED.value}),
    EvidenceState.QUEUED.value: frozenset({EvidenceState.UPLOADING.value, EvidenceState.RECEIPTED.value}),
    EvidenceState.UPLOADING.value: frozenset({EvidenceState.QUEUED.value, EvidenceState.RECEIPTED.value}),
    EvidenceState.RECEIPTED.value: frozenset({EvidenceState.RELEASED.value}),
    EvidenceState.RELEASED.value: frozenset(),
}

MIGRATIONS: list[str] = [
    # 1: the evidence core
    """
    CREATE TABLE evidence (
        id            TEXT PRIMARY KEY,
        sha256        TEXT NOT NULL,
        sm3           TEXT,
        size          INTEGER NOT NULL,
        kind          TEXT NOT NULL,
        media_type    TEXT NOT NULL,
        device_id     TEXT,
        officer_id    TEXT,
        source_path   TEXT NOT NULL,
        source_mtime  REAL,
        priority      INTEGER NOT NULL DEFAULT 0,
        state         TEXT NOT NULL,
        manifest      BLOB NOT NULL,
        receipt       BLOB,
        upload_offset INTEGER NOT NULL DEFAULT 0,
        attempts      INTEGER NOT NULL DEFAULT 0,
        last_error    TEXT,
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL
    );
    CREATE INDEX evidence_state ON evidence(state, priority DESC, size, created_at);
    CREATE UNIQUE INDEX evidence_source ON evidence(COALESCE(device_id, ''), source_path, sha256);
    CREATE TABLE custody (
        seq         INTEGER PRIMARY KEY,
        evidence_id TEXT,
        event       TEXT NOT NULL,
        entry       BLOB NOT NULL,
        leaf_hash   BLOB NOT NULL,
        at          REAL NOT NULL
    );
    CREATE INDEX custody_evidence ON custody(evidence_id, seq);
    CREATE TABLE custody_frontier (
        height INTEGER PRIMARY KEY,
        hash   BLOB NOT NULL
    );
    CREATE TABLE tree_heads (
        tree_size INTEGER PRIMARY KEY,
        root_hash BLOB NOT NULL,
        envelope  BLOB NOT NULL,
        at        REAL NOT NULL
    );
    CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        lane       TEXT NOT NULL,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        qos        INTEGER NOT NULL DEFAULT 1,
        retain     INTEGER NOT NULL DEFAULT 0,
        dedupe_key TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX outbox_lane ON outbox(lane, id);
    CREATE UNIQUE INDEX outbox_dedupe ON outbox(dedupe_key) WHERE dedupe_key IS NOT NULL;
    """,
    # 2: the MQTT link (gateway/uplink): messages the broker refused are parked (kept, not
    # re-sent until an operator requeues them); what the operator sees of the link; command
    # nonces already used, so a replayed signed command is refused even after a restart.
    """
    ALTER TABLE outbox ADD COLUMN parked_reason TEXT;
    ALTER TABLE outbox ADD COLUMN parked_at REAL;
    CREATE INDEX outbox_parked ON outbox(parked_reason) WHERE parked_reason IS NOT NULL;
    CREATE TABLE link_status (
        link              TEXT PRIMARY KEY,
        state             TEXT NOT NULL,
        broker            TEXT,
        detail            TEXT,
        protocol          TEXT,
        since             REAL NOT NULL,
        last_connected_at REAL,
        last_error        TEXT,
        last_error_at     REAL,
        updated_at        REAL NOT NULL
    );
    CREATE TABLE command_nonces (
        nonce      TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        expires_at REAL NOT NULL,
        seen_at    REAL NOT NULL
    );
    CREATE INDEX command_nonces_expiry ON command_nonces(expires_at);
    """,
    # 3: RFC 3161 time-stamp tokens from the platform TSA over signed tree heads: the independent
    # proof of when the log had that content (docs/trust.md, Time; docs/documents-sealing.md).
    """
    CREATE TABLE tree_head_timestamps (
        tree_size INTEGER PRIMARY KEY REFERENCES tree_heads(tree_size),
        token     BLOB NOT NULL,
        gen_time  TEXT NOT NULL,
        tsa       TEXT NOT NULL,
        at        REAL NOT NULL
    );
    """,
    # 4: mobile terminals (gateway/terminal, see gateway/evidence/terminals.py): the terminals paired with
    # this station and whether they are revoked, the one-time pairing codes (only their SHA-256), and
    # cases (a case number grouping evidence ids, filled from the terminals).
    """
    CREATE TABLE terminals (
        id            TEXT PRIMARY KEY,
        officer_id    TEXT NOT NULL,
        label         TEXT,
        serial        TEXT NOT NULL UNIQUE,
        cert_sha256   TEXT NOT NULL,
        not_after     REAL NOT NULL,
        paired_at     REAL NOT NULL,
        revoked_at    REAL,
        revoked_by    TEXT,
        revoke_reason TEXT
    );
    CREATE TABLE terminal_pairing_codes (
        code_sha256 TEXT PRIMARY KEY,
        officer_id  TEXT,
        issued_by   TEXT NOT NULL,
        expires_at  REAL NOT NULL,
        used_at     REAL,
        terminal_id TEXT
    );
    CREATE TABLE case_items (
        case_no     TEXT NOT NULL,
        evidence_id TEXT NOT NULL REFERENCES evidence(id),
        officer_id  TEXT NOT NULL,
        terminal_id TEXT,
        added_at    REAL NOT NULL,
        PRIMARY KEY (case_no, evidence_id)
    );
    """,
    # 5: documents sealed provisionally (platform unreachable) waiting for the agency's counter-seal, and the
    # one-time links a party downloads a delivered document with (docs/documents-sealing.md, docs/delivery.md).
    """
    CREATE TABLE counter_seal_queue (
        evidence_id    TEXT PRIMARY KEY REFERENCES evidence(id),
        document_id    TEXT NOT NULL,
        trust_services TEXT NOT NULL,
        queued_at      REAL NOT NULL,
        attempts       INTEGER NOT NULL DEFAULT 0,
        last_error     TEXT,
        sealed_by      TEXT
    );
    CREATE TABLE delivery_links (
        token_sha256 TEXT PRIMARY KEY,
        delivery_id  TEXT NOT NULL,
        evidence_id  TEXT NOT NULL REFERENCES evidence(id),
        created_at   REAL NOT NULL,
        expires_at   REAL NOT NULL,
        used_at      REAL,
        used_by      TEXT
    );
    """,
    # 6: write-ahead intents of the dock's deletions from a recorder. A row exists from just before a
    # recording is deleted from the device until its "released-from-device" is committed (same
    # transaction), so a kill between the two is found and finished at the recorder's next dock.
    """
    CREATE TABLE release_intents (
        evidence_id TEXT PRIMARY KEY REFERENCES evidence(id),
        device_id   TEXT NOT NULL,
        device_path TEXT NOT NULL,
        details     TEXT NOT NULL,
        started_at  REAL NOT NULL
    );
    CREATE INDEX release_intents_device ON release_intents(device_id);
    """,
]


@dataclass(frozen=True)
class ReleaseIntent:
    """A deletion from a recorder that was about to happen: what ``released-from-device`` will record."""

    evidence_id: str
    device_id: str
    device_path: str
    details: dict[str, Any]
    started_at: float = 0.0


@dataclass(frozen=True)
class EvidenceRow:
    id: str
    sha256: str
    sm3: str | None
    size: int
    kind: str
    media_type: str
    device_id: str | None
    officer_id: str | None
    source_path: str
    source_mtime: float | None
    priority: int
    state: str
    manifest: bytes
    receipt: bytes | None
    upload_offset: int
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class EvidenceListing:
    """One line of ``egw ls``: what an operator looks an item up by, without its manifest."""

    id: str
    kind: str
    device_id: str | None
    officer_id: str | None
    source_path: str
    size: int
    state: str
    receipt: bytes | None
    created_at: float


# Named, never ``*``: a column added by a migration must not shift the fields of every row read.
_LISTING_FIELDS = tuple(f.name for f in fields(EvidenceListing))
_LISTING_COLUMNS = ", ".join(_LISTING_FIELDS)
_EVIDENCE_FIELDS = tuple(f.name for f in fields(EvidenceRow))
_EVIDENCE_COLUMNS = ", ".join(_EVIDENCE_FIELDS)
_UNRECEIPTED_MARKS = ", ".join("?" for _ in UNRECEIPTED)


def _evidence_row(found: sqlite3.Row | tuple[Any, ...]) -> EvidenceRow:
    """An ``EvidenceRow`` from a row selected with ``_EVIDENCE_COLUMNS``, field by column name."""
    return EvidenceRow(**dict(zip(_EVIDENCE_FIELDS, found)))


_P = ParamSpec("_P")
_R = TypeVar("_R")


# Called after every State.transaction, outside its lock, with whether it committed. Process-local: how
# the outbox wakes its sender in the same process the moment a row is committed (gateway.evidence.outbox).
AFTER_TRANSACTION: list[Callable[[bool], None]] = []


def _locked(method: Callable[Concatenate[State, _P], _R]) -> Callable[Concatenate[State, _P], _R]:
    """Serialise use of the one connection across the service's threads."""

    def wrapper(self: State, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            return method(self, *args, **kwargs)

    functools.update_wrapper(wrapper, method)  # what @functools.wraps does, without retyping wrapper
    return wrapper


class State:
    """A connection to ``DATA_DIR/state.db`` with the schema brought up to date.

    The connection is shared by the service's threads (copy workers, uplinks);
    ``lock`` makes each transaction and each read atomic with respect to them.
    """

    def __init__(self, data_dir: Path, *, read_only: bool = False) -> None:
        self.lock = threading.RLock()
        self.path = data_dir / "state.db"
        self.read_only = read_only
        try:
            if read_only:
                self.db = self._connect_read_only()
            else:
                self._prepare_private_files(data_dir)
                self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                self._enable_wal()
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc}") from exc

    def _prepare_private_files(self, data_dir: Path) -> None:
        """The data directory 0700 and the database 0600 before SQLite opens it (its -wal and -shm
        files take the database's mode); files left looser by an older release are tightened."""
        private_dir(data_dir)
        create_private_file(self.path)
        for suffix in ("-wal", "-shm", "-journal"):
            tighten(self.path.with_name(self.path.name + suffix))

    def _enable_wal(self, patience_s: float = 30.0) -> None:
        """Switch a new database to WAL. SQLite answers "database is locked" at once, without its busy
        timeout, while another connection is creating the same file; that is worth a short wait, not
        a failure (seen with processes opening a fresh data directory together)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that cannot change anything (``mode=ro`` and ``query_only``): what ``egw status``,
        ``export`` and ``custody verify`` use, so they can run beside the writer without touching its
        data. It neither creates the database nor migrates it: that is the writer's job."""
        if not self.path.is_file():
            # Nothing was ever written here (e.g. right after `egw keys init`): read an empty schema
            # rather than create the file, which is the writer's to create.
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self._migrate()
            self.db.execute("PRAGMA query_only=ON")
            return self.db
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA query_only=ON")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version != len(MIGRATIONS):
            db.close()
            raise StateError(f"{self.path} has schema version {version}, this egw reads version {len(MIGRATIONS)}",
                             "start `egw run` (or any writing command) once to bring it up to date" if version < len(MIGRATIONS)
                             else "upgrade egw; never open a newer data directory with an older release")
        return db

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StateError(
                f"{self.path} has schema version {current}, newer than this egw knows ({len(MIGRATIONS)})",
                "upgrade egw; never open a newer data directory with an older release",
            )
        for version in range(current, len(MIGRATIONS)):
            with self.transaction():
                # Read again under BEGIN IMMEDIATE: another process (a reader opening a fresh data directory
                # beside its first writer) may have applied this step since we looked.
                if self.schema_version > version:
                    continue
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={version + 1}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT: one writer at a time, all or nothing.

        The listeners in :data:`AFTER_TRANSACTION` hear how it ended, once the lock is released."""
        committed = False
        try:
            with self.lock:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    yield self.db
                except BaseException:
                    if self.db.in_transaction:  # SQLite may have rolled back already (full disk, I/O error)
                        self.db.execute("ROLLBACK")
                    raise
                if not self.db.in_transaction:
                    # SQLite rolls a transaction back by itself on SQLITE_FULL / SQLITE_IOERR; a caller that
                    # caught that error and went on would otherwise meet only "cannot commit - no transaction
                    # is active", and what it did afterwards ran outside any transaction.
                    raise StateError("the state database ended a transaction early (it rolls back by itself when "
                                     "the disk is full or an I/O error occurs); the change was not recorded as one "
                                     "unit", "free disk space under the data directory and retry; "
                                     "`egw custody verify` checks the log")
                self.db.execute("COMMIT")
                committed = True
        finally:
            for listener in AFTER_TRANSACTION:
                listener(committed)

    # ---- evidence ------------------------------------------------------
    @_locked
    def insert_evidence(self, row: dict[str, Any]) -> None:
        now = time.time()
        values = {"created_at": now, "updated_at": now, "priority": 0, "state": EvidenceState.INGESTED.value, **row}
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        self.db.execute(f"INSERT INTO evidence ({columns}) VALUES ({marks})", tuple(values.values()))

    @_locked
    def get(self, evidence_id: str) -> EvidenceRow:
        cur = self.db.execute(f"SELECT {_EVIDENCE_COLUMNS} FROM evidence WHERE id = ?", (evidence_id,))
        found = cur.fetchone()
        if found is None:
            raise NotFoundError(f"no evidence with id {evidence_id!r} in {self.path}")
        return _evidence_row(found)

    @_locked
    def find_by_source(self, device_id: str | None, source_path: str, sha256: str) -> EvidenceRow | None:
        cur = self.db.execute(
            f"SELECT {_EVIDENCE_COLUMNS} FROM evidence WHERE COALESCE(device_id, '') = ? AND source_path = ? AND sha256 = ?",
            (device_id or "", source_path, sha256),
        )
        found = cur.fetchone()
        return _evidence_row(found) if found else None

    # ---- write-ahead intents of deletions from a recorder (see the dock workflow) ----------
    @_locked
    def add_release_intents(self, intents: list[ReleaseIntent]) -> None:
        """Record, durably and in one transaction, that these recordings are about to be deleted."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO release_intents (evidence_id, device_id, device_path, details, started_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(i.evidence_id, i.device_id, i.device_path, json.dumps(i.details, sort_keys=True), now) for i in intents])

    @_locked
    def release_intents_for(self, device_id: str) -> list[ReleaseIntent]:
        rows = self.db.execute(
            "SELECT evidence_id, device_id, device_path, details, started_at FROM release_intents WHERE device_id = ? "
            "ORDER BY started_at, evidence_id", (device_id,)).fetchall()
        return [ReleaseIntent(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    @_locked
    def drop_release_intent(self, evidence_id: str) -> None:
        """The deletion was recorded (inside that transaction) or did not happen (on its own: the file is still there)."""
        self.db.execute("DELETE FROM release_intents WHERE evidence_id = ?", (evidence_id,))

    @_locked
    def first_from_source(self, device_id: str | None, source_path: str) -> EvidenceRow | None:
        """The first item (in insertion order, not by any clock) ingested from this source, whatever its digest."""
        cur = self.db.execute(
            f"SELECT {_EVIDENCE_COLUMNS} FROM evidence WHERE COALESCE(device_id, '') = ? AND source_path = ? ORDER BY rowid LIMIT 1",
            (device_id or "", source_path),
        )
        found = cur.fetchone()
        return _evidence_row(found) if found else None

    @_locked
    def find_unchanged(self, device_id: str | None, source_path: str, size: int, mtime: float) -> EvidenceRow | None:
        """An item already ingested from this source with the same size and mtime (digest still to confirm)."""
        cur = self.db.execute(
            f"SELECT {_EVIDENCE_COLUMNS} FROM evidence WHERE COALESCE(device_id, '') = ? AND source_path = ? AND size = ? AND source_mtime = ?",
            (device_id or "", source_path, size, mtime),
        )
        found = cur.fetchone()
        return _evidence_row(found) if found else None

    @_locked
    def transition(self, /, evidence_id: str, to_state: str, **fields: Any) -> str:
        """Move one item along the state machine; returns the state it left."""
        current = self.db.execute("SELECT state FROM evidence WHERE id = ?", (evidence_id,)).fetchone()
        if current is None:
            raise NotFoundError(f"no evidence with id {evidence_id!r}")
        from_state = current[0]
        to_state = str(to_state)  # an EvidenceState is stored as its value
        if to_state not in TRANSITIONS.get(from_state, frozenset()):
            raise TransitionError(f"evidence {evidence_id} cannot go from {from_state!r} to {to_state!r}")
        assignments = ", ".join(f"{k} = ?" for k in fields)
        extra = f", {assignments}" if assignments else ""
        self.db.execute(
            f"UPDATE evidence SET state = ?, updated_at = ?{extra} WHERE id = ?",
            (to_state, time.time(), *fields.values(), evidence_id),
        )
        return str(from_state)

    @_locked
    def counts_by_state(self) -> dict[str, int]:
        counts = {s: 0 for s in STATES}
        for state, n in self.db.execute("SELECT state, COUNT(*) FROM evidence GROUP BY state"):
            counts[state] = n
        return counts

    @_locked
    def oldest_unreceipted(self) -> EvidenceRow | None:
        """The first ingested (insertion order: created_at is the wall clock, which may have been stepped)."""
        found = self.db.execute(
            f"SELECT {_EVIDENCE_COLUMNS} FROM evidence WHERE state IN ({_UNRECEIPTED_MARKS}) ORDER BY rowid LIMIT 1",
            UNRECEIPTED).fetchone()
        return _evidence_row(found) if found else None

    @_locked
    def all_evidence(self) -> list[EvidenceRow]:
        return [_evidence_row(r) for r in self.db.execute(f"SELECT {_EVIDENCE_COLUMNS} FROM evidence ORDER BY created_at, id")]

    @_locked
    def last_rowid(self) -> int:
        """The newest evidence row's rowid (0 for none): where a poller's next read starts."""
        return int(self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM evidence").fetchone()[0])

    @_locked
    def latest_of_media_types(self, media_types: tuple[str, ...], *, limit: int, after_rowid: int = 0,
                              upto_rowid: int | None = None) -> list[tuple[int, EvidenceRow]]:
        """The newest items of these media types (rowid, row), newest first, with ``after_rowid < rowid <= upto_rowid``.

        Walks the table backwards by rowid, so a caller that remembers how far it has read reads only the
        rows added since (the station screen polls this every second).
        """
        marks = ", ".join("?" for _ in media_types)
        upto = self.last_rowid() if upto_rowid is None else upto_rowid
        cur = self.db.execute(
            f"SELECT rowid, {_EVIDENCE_COLUMNS} FROM evidence WHERE rowid > ? AND rowid <= ? AND media_type IN ({marks}) "
            "ORDER BY rowid DESC LIMIT ?",
            (after_rowid, upto, *media_types, limit),
        )
        return [(found[0], _evidence_row(found[1:])) for found in cur]

    @_locked
    def states_of(self, evidence_ids: list[str]) -> dict[str, str]:
        """The current state of each of these items (by primary key; unknown ids are left out)."""
        if not evidence_ids:
            return {}
        marks = ", ".join("?" for _ in evidence_ids)
        cur = self.db.execute(f"SELECT id, state FROM evidence WHERE id IN ({marks})", tuple(evidence_ids))
        return {evidence_id: state for evidence_id, state in cur}

    def list_evidence(self, *, device_id: str | None = None, officer_id: str | None = None,
                      since: float | None = None, states: tuple[str, ...] = (), kinds: tuple[str, ...] = (),
                      limit: int | None = None, batch: int = 500) -> Iterator[EvidenceListing]:
        """Items matching every filter given, newest first (insertion order: ``created_at`` is the wall
        clock, which may have been stepped), fetched ``batch`` rows at a time so a store of a million
        items costs one batch of memory. The lock is held per batch, never across a caller's work."""
        where: list[str] = []
        params: list[str | float] = []
        for column, value in (("device_id", device_id), ("officer_id", officer_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        for column, values in (("state", states), ("kind", kinds)):
            if values:
                where.append(f"{column} IN ({', '.join('?' for _ in values)})")
                params.extend(values)
        sql = f"SELECT {_LISTING_COLUMNS} FROM evidence" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY rowid DESC" + (" LIMIT ?" if limit is not None else "")
        with self.lock:
            cursor = self.db.execute(sql, (*params, *([limit] if limit is not None else [])))
        while True:
            with self.lock:
                rows = cursor.fetchmany(batch)
            if not rows:
                return
            for row in rows:
                yield EvidenceListing(**dict(zip(_LISTING_FIELDS, row)))

    # ---- the upload queue (what the uploader claims next) ------------------
    @_locked
    def ids_in_state(self, state: str) -> list[str]:
        """Every item now in ``state`` (ids only: e.g. the uploads a killed gateway left behind)."""
        return [str(r[0]) for r in self.db.execute("SELECT id FROM evidence WHERE state = ?", (str(state),))]

    @_locked
    def next_queued(self, *, max_size: int | None = None, skip: frozenset[str] | set[str] = frozenset()) -> EvidenceRow | None:
        """The next item to upload: highest priority, then smallest, then oldest. ``max_size`` keeps
        only express items (priority > 0 or at most that size); ``skip`` are items already taken."""
        where, args = "state = ?", list[Any]([EvidenceState.QUEUED.value])
        if max_size is not None:
            where += " AND (priority > 0 OR size <= ?)"
            args.append(max_size)
        if skip:
            where += f" AND id NOT IN ({','.join('?' for _ in skip)})"
            args.extend(skip)
        found = self.db.execute(
            f"SELECT {_EVIDENCE_COLUMNS} FROM evidence WHERE {where} ORDER BY priority DESC, size ASC, created_at ASC, id LIMIT 1",
            args,
        ).fetchone()
        return _evidence_row(found) if found else None

    @_locked
    def set_upload_offset(self, evidence_id: str, offset: int) -> None:
        """How far the platform holds this item's bytes (a resumed upload starts there)."""
        self.db.execute("UPDATE evidence SET upload_offset = ? WHERE id = ?", (offset, evidence_id))

    @_locked
    def count_unreceipted(self) -> int:
        """Items not yet delivered (ingested, queued or uploading)."""
        row = self.db.execute(f"SELECT COUNT(*) FROM evidence WHERE state IN ({_UNRECEIPTED_MARKS})", UNRECEIPTED).fetchone()
        return int(row[0])

    @_locked
    def unreceipted_progress(self) -> dict[str, tuple[str, int, str, int, str | None]]:
        """id → (state, upload offset, sha256, size, last error) of every item not yet receipted (no
        manifests: ``egw sync`` polls this while it follows the service's uploader)."""
        rows = self.db.execute(
            f"SELECT id, state, upload_offset, sha256, size, last_error FROM evidence WHERE state IN ({_UNRECEIPTED_MARKS})",
            UNRECEIPTED).fetchall()
        return {r[0]: (r[1], int(r[2]), r[3], int(r[4]), r[5]) for r in rows}

    # ---- connection settings -------------------------------------------------
    @contextmanager
    def synchronous_normal(self) -> Iterator[None]:
        """``synchronous=NORMAL`` for what a power cut may lose without losing evidence (e.g. deleting
        outbox rows the broker acknowledged: a duplicate, never a loss); ``FULL`` again after."""
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            self.db.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def synchronous_full(self) -> Iterator[None]:
        """``synchronous=FULL`` on a connection that usually runs ``NORMAL`` (the MQTT link's), for a
        write that must survive a power cut (a used command nonce); ``NORMAL`` again after."""
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def use_synchronous_normal(self) -> None:
        """This connection commits with ``synchronous=NORMAL`` from now on (a link's own connection)."""
        self.db.execute("PRAGMA synchronous=NORMAL")
