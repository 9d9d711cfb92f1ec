"""The durable MQTT outbox: every QoS 1 message is committed here before paho sees it.

Why a table and not paho's queue: paho keeps unacknowledged messages in
memory (lost on a crash) and refuses more than 65,535 of them. The outbox
makes delivery survive a restart or a long outage, and lets the link apply
back-pressure: it hands paho only as many messages as PUBACKs free slots.

Lanes (one FIFO each, ordered by the AUTOINCREMENT id)::

    lane      topic under egw/v1/<gw>/       kept            retained
    evidence  evidence/<evidence_id>         every message   no
    results   results/rapidtest              every message   no
    device    devices/<device_id>/state      latest per dev  yes
    custody   custody/sth                    latest only     yes

``evidence`` and ``results`` are never dropped. When the outbox holds more
than its quota the gateway stops accepting new captures (``outbox_full``,
``OutboxFullError`` from the evidence hook) and raises an alarm; it never
deletes a message to make room. ``device`` and ``custody`` keep only the
newest value (a new one replaces the queued one, taking a new id so it goes
out after anything older on the same topic).

A message leaves the table only when the broker acknowledged it (PUBACK).
A message the broker refused (MQTT 5 PUBACK reason >= 0x80, e.g. an ACL
denial) is *parked*: kept, skipped by the sender, counted in the status, and
put back in line by ``requeue_parked`` once the operator fixed the cause.

Group commit: ``OutboxWriter`` commits whatever producers handed it in one
transaction (``synchronous=FULL``) and only then tells the sender, so each
message is on disk before it is sent while a burst costs one fsync, not one
per message.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.errors import StateError, StoreFullError
from gateway.evidence.ids import uuid7
from gateway.evidence.state import EvidenceRow, State
from protos.egw.v1 import events_pb2, evidence_pb2

__all__ = [
    "LANES", "NEVER_DROP", "LATEST_ONLY", "DEFAULT_QUOTA_BYTES", "MAX_PAYLOAD_BYTES",
    "OutboxError", "OutboxFullError", "OutboxMessage", "OutboxUsage", "Outbox", "OutboxWriter", "OutboxTicket",
    "topic_root", "check_topic", "to_json_bytes", "enqueue", "fetch", "delete", "park", "requeue_parked",
    "usage", "outbox_full", "evidence_state_message", "evidence_hook", "attach_to_service",
    "set_link_status", "read_link_status", "mqtt_status", "timestamp_now",
]

log = logging.getLogger("egw.mqtt.outbox")

LANES = ("evidence", "results", "device", "custody")
NEVER_DROP = frozenset({"evidence", "results"})
LATEST_ONLY = frozenset({"device", "custody"})
DEFAULT_QUOTA_BYTES = 256 * 1024 * 1024
MAX_PAYLOAD_BYTES = 256 * 1024  # a signed result is ~1-4 KB; anything near this is a bug upstream
MAX_TOPIC_BYTES = 1024


class OutboxError(StateError):
    default_hint = "this is a bug in the caller (topic or payload); nothing was queued"


class OutboxFullError(StoreFullError):
    default_hint = (
        "the MQTT outbox reached its disk quota because the broker has been unreachable; "
        "check `egw status` (mqtt link), restore the connection or run `egw sync --once --mqtt URL`; "
        "the data stays on the device until then"
    )


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    lane: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class OutboxUsage:
    count: int
    bytes: int
    by_lane: dict[str, int]
    parked: int
    oldest_age_s: float | None
    quota_bytes: int

    @property
    def full(self) -> bool:
        return self.bytes >= self.quota_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count, "bytes": self.bytes, "by_lane": self.by_lane, "parked": self.parked,
            "oldest_age_s": self.oldest_age_s, "quota_bytes": self.quota_bytes, "full": self.full,
        }


# ---- topics and payloads -----------------------------------------------------

def topic_root(gateway_id: str) -> str:
    """``egw/v1/<gateway_id>/``; the id must be one plain topic level."""
    if not gateway_id or any(c in gateway_id for c in "/+#\x00") or len(gateway_id.encode()) > 128:
        raise OutboxError(f"gateway id {gateway_id!r} cannot be an MQTT topic level", "use the id from `egw keys init`")
    return f"egw/v1/{gateway_id}/"


def check_topic(root: str, topic: str) -> None:
    """Refuse a topic outside the gateway's own root, with wildcards, or empty levels."""
    if not topic.startswith(root) or topic == root:
        raise OutboxError(f"topic {topic!r} is outside this gateway's root {root!r}")
    if any(c in topic for c in "+#\x00") or "//" in topic or topic.endswith("/"):
        raise OutboxError(f"topic {topic!r} has a wildcard, NUL or empty level")
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise OutboxError(f"topic {topic[:60]!r}… is longer than {MAX_TOPIC_BYTES} bytes")


def to_json_bytes(message: Message) -> bytes:
    """proto3 JSON mapping, compact, keys sorted: what ``mosquitto_sub`` shows."""
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"), sort_keys=True).encode("utf-8")


def timestamp_now() -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


# ---- the table, inside the caller's transaction -------------------------------

def enqueue(db: sqlite3.Connection, root: str, lane: str, topic: str, payload: bytes, *, retain: bool = False,
            qos: int = 1) -> int:
    """Insert one message inside the caller's transaction; returns its id.

    ``device``/``custody`` lanes replace any queued message for the same topic.
    """
    if lane not in LANES:
        raise OutboxError(f"unknown outbox lane {lane!r}; expected one of {', '.join(LANES)}")
    check_topic(root, topic)
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise OutboxError(f"payload for {topic} is {type(payload).__name__}, not bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise OutboxError(f"payload for {topic} is {len(payload)} bytes, more than the {MAX_PAYLOAD_BYTES} allowed")
    if qos not in (0, 1):
        raise OutboxError(f"qos {qos} is not supported by the outbox (0 or 1)")
    dedupe = topic if lane in LATEST_ONLY else None
    if dedupe is not None:
        db.execute("DELETE FROM outbox WHERE dedupe_key = ?", (dedupe,))
    cur = db.execute(
        "INSERT INTO outbox (lane, topic, payload, qos, retain, dedupe_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (lane, topic, bytes(payload), qos, int(retain), dedupe, time.time()),
    )
    return int(cur.lastrowid or 0)


def fetch(db: sqlite3.Connection, lane: str, after_id: int, limit: int) -> list[OutboxMessage]:
    rows = db.execute(
        "SELECT id, lane, topic, payload, qos, retain FROM outbox "
        "WHERE lane = ? AND id > ? AND parked_reason IS NULL ORDER BY id LIMIT ?",
        (lane, after_id, limit),
    ).fetchall()
    return [OutboxMessage(int(r[0]), r[1], r[2], bytes(r[3]), int(r[4]), bool(r[5])) for r in rows]


def delete(db: sqlite3.Connection, ids: Iterable[int]) -> None:
    db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])


def park(db: sqlite3.Connection, message_id: int, reason: str) -> None:
    db.execute("UPDATE outbox SET parked_reason = ?, parked_at = ? WHERE id = ?", (reason, time.time(), message_id))


def requeue_parked(db: sqlite3.Connection) -> int:
    """Put refused messages back in line (after the operator fixed the ACL / topic)."""
    return db.execute("UPDATE outbox SET parked_reason = NULL, parked_at = NULL WHERE parked_reason IS NOT NULL").rowcount


def usage(db: sqlite3.Connection, quota_bytes: int = DEFAULT_QUOTA_BYTES) -> OutboxUsage:
    by_lane = {lane: 0 for lane in LANES}
    count = total = 0
    for lane, n, size in db.execute("SELECT lane, COUNT(*), COALESCE(SUM(length(payload)), 0) FROM outbox GROUP BY lane"):
        by_lane[lane] = int(n)
        count += int(n)
        total += int(size)
    parked = int(db.execute("SELECT COUNT(*) FROM outbox WHERE parked_reason IS NOT NULL").fetchone()[0])
    oldest = db.execute("SELECT MIN(created_at) FROM outbox").fetchone()[0]
    age = None if oldest is None else round(max(0.0, time.time() - float(oldest)), 1)
    return OutboxUsage(count, total, by_lane, parked, age, quota_bytes)


def outbox_full(db_or_dir: sqlite3.Connection | Path | str, quota_bytes: int = DEFAULT_QUOTA_BYTES) -> bool:
    """True when new captures must be refused: the outbox holds ``quota_bytes`` or more."""
    if isinstance(db_or_dir, sqlite3.Connection):
        return usage(db_or_dir, quota_bytes).full
    with State(Path(db_or_dir)) as state:
        return usage(state.db, quota_bytes).full


# ---- link status (what `egw status` shows) ------------------------------------

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


def mqtt_status(data_dir: Path | str, quota_bytes: int = DEFAULT_QUOTA_BYTES) -> dict[str, Any]:
    """Everything `egw status` needs about MQTT: link state, last error, outbox backlog, alarm."""
    with State(Path(data_dir), read_only=True) as state:  # beside the writer: read-only, never migrates
        links = read_link_status(state.db)
        used = usage(state.db, quota_bytes)
    link = links.get("mqtt", {"state": "never-connected"})
    alarms = []
    if used.full:
        alarms.append("outbox full: new captures are refused until the broker takes the backlog")
    if used.parked:
        alarms.append(f"{used.parked} message(s) refused by the broker are parked (see last_error)")
    return {"link": link, "outbox": used.as_dict(), "alarms": alarms}


# ---- evidence state messages ----------------------------------------------------

def _manifest_summary(row: EvidenceRow, gateway_id: str) -> evidence_pb2.ManifestSummary:
    summary = evidence_pb2.ManifestSummary(
        evidence_id=row.id, sha256=row.sha256, sm3=row.sm3 or "", size=row.size, media_type=row.media_type,
        kind=row.kind, device_id=row.device_id or "", officer_id=row.officer_id or "", gateway_id=gateway_id,
    )
    summary.ingested_at.FromSeconds(int(row.created_at))
    try:
        manifest = json.loads(_envelope_payload(row.manifest))
        corrected = (manifest.get("capture") or {}).get("corrected")
        if corrected:
            summary.captured_at.FromDatetime(datetime.fromisoformat(corrected.replace("Z", "+00:00")).astimezone(timezone.utc).replace(tzinfo=None))
        summary.important = bool(manifest.get("important"))
    except (ValueError, KeyError, TypeError):
        pass  # the summary is a convenience; the signed manifest stays the authority
    return summary


def _envelope_payload(raw: bytes) -> bytes:
    import base64

    return base64.b64decode(json.loads(raw)["payload"])


def _receipt_id(row: EvidenceRow) -> str:
    if not row.receipt:
        return ""
    try:
        return str(json.loads(_envelope_payload(row.receipt)).get("receipt_id", ""))
    except (ValueError, KeyError, TypeError):
        return ""


def evidence_state_message(row: EvidenceRow, gateway_id: str) -> events_pb2.EvidenceState:
    msg = events_pb2.EvidenceState(
        message_id=str(uuid7()), evidence_id=row.id, state=row.state, summary=_manifest_summary(row, gateway_id),
        receipt_id=_receipt_id(row),
    )
    msg.at.GetCurrentTime()
    return msg


def evidence_hook(gateway_id: str) -> Callable[[sqlite3.Connection, EvidenceRow, dict[str, Any]], None]:
    """A TransitionHook: queue ``evidence/<id>`` in the same transaction as the state change."""
    root = topic_root(gateway_id)

    def hook(db: sqlite3.Connection, row: EvidenceRow, details: dict[str, Any]) -> None:
        if details.get("event") == "ingested":
            return  # ingest moves straight on to "queued" in the same transaction: one message is enough
        enqueue(db, root, "evidence", f"{root}evidence/{row.id}", to_json_bytes(evidence_state_message(row, gateway_id)))

    return hook


def attach_to_service(service: Any, quota_bytes: int = DEFAULT_QUOTA_BYTES) -> None:
    """Wire an ``EvidenceService``: evidence messages in its transactions, captures refused when full.

    The quota check runs inside the ingest transaction, so raising rolls the
    new item back: the caller keeps the data on the device and retries later.
    """
    gateway_id = service.identity.gateway_id
    publish = evidence_hook(gateway_id)
    # Summing the outbox is a table scan (~0.2 s at 250,000 rows): far below the quota, reuse
    # the last figure for a second; near it (> 90 %), measure on every capture.
    cached: list[float] = [0.0, 0.0]  # [monotonic time measured, bytes]

    def full(db: sqlite3.Connection) -> bool:
        now = time.monotonic()
        if now - cached[0] > 1.0 or cached[1] > 0.9 * quota_bytes:
            cached[0], cached[1] = now, float(usage(db, quota_bytes).bytes)
        return cached[1] >= quota_bytes

    def gate(db: sqlite3.Connection, row: EvidenceRow, details: dict[str, Any]) -> None:
        if details.get("event") == "ingested" and full(db):
            detail = f"outbox holds >= {quota_bytes} bytes; capture {row.source_path!r} refused"
            # The alarm cannot be written in this transaction (raising rolls it back); `egw status`
            # derives it from the outbox size (mqtt_status()["alarms"]), and the log says it now.
            log.error("ALARM: MQTT outbox full (%s); new captures are refused, nothing is dropped", detail)
            raise OutboxFullError(f"cannot accept {row.source_path!r}: the MQTT outbox is full ({quota_bytes} bytes)")

    service.transition_hooks.append(gate)
    service.transition_hooks.append(publish)


# ---- a standalone outbox (its own connection) -----------------------------------

class Outbox:
    """The outbox of one data directory, for producers outside an evidence transaction."""

    def __init__(self, data_dir: Path | str, gateway_id: str, quota_bytes: int = DEFAULT_QUOTA_BYTES) -> None:
        self.state = State(Path(data_dir))
        self.gateway_id = gateway_id
        self.root = topic_root(gateway_id)
        self.quota_bytes = quota_bytes

    def close(self) -> None:
        self.state.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, lane: str, subtopic: str, payload: bytes | Message, *, retain: bool = False) -> int:
        data = to_json_bytes(payload) if isinstance(payload, Message) else payload
        with self.state.transaction() as db:
            return enqueue(db, self.root, lane, self.root + subtopic, data, retain=retain)

    def put_device_state(self, state: events_pb2.DeviceState) -> int:
        return self.put("device", f"devices/{state.device_id}/state", state, retain=True)

    def put_result(self, result: events_pb2.RapidTestResult) -> int:
        return self.put("results", "results/rapidtest", result)

    def usage(self) -> OutboxUsage:
        return usage(self.state.db, self.quota_bytes)

    def full(self) -> bool:
        return self.usage().full

    def pending(self) -> list[OutboxMessage]:
        rows = self.state.db.execute("SELECT id, lane, topic, payload, qos, retain FROM outbox ORDER BY id").fetchall()
        return [OutboxMessage(int(r[0]), r[1], r[2], bytes(r[3]), int(r[4]), bool(r[5])) for r in rows]


class _Batch:
    """Messages committed together: one transaction, one fsync, one wake-up for every waiter."""

    __slots__ = ("items", "done", "ids", "error")

    def __init__(self) -> None:
        self.items: list[tuple[str, str, bytes, bool]] = []
        self.done = threading.Event()
        self.ids: list[int] = []
        self.error: BaseException | None = None


class OutboxTicket:
    """What ``OutboxWriter.submit`` returns: ``result()`` waits until the message is on disk."""

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self._batch = batch
        self._index = index

    def done(self) -> bool:
        return self._batch.done.is_set()

    def result(self, timeout: float | None = None) -> int:
        """The outbox id once committed; raises what the commit raised, or TimeoutError."""
        if not self._batch.done.wait(timeout):
            raise TimeoutError(f"the outbox did not commit within {timeout} s (disk stalled?)")
        if self._batch.error is not None:
            raise self._batch.error
        return self._batch.ids[self._index]


class OutboxWriter:
    """Group commit: producers hand messages over; one thread commits them in batches.

    ``submit`` returns a ticket whose ``result()`` is the row id once the row
    is durable; ``on_commit`` (the link's wake-up) is called after every
    commit, so nothing reaches paho before it is on disk. A burst costs one
    fsync and one ``executemany``, not one per message.

    The link's deletions (rows PUBACKed) go through this thread too: with one
    writing connection, the sender never waits in SQLite's busy handler
    (which sleeps up to 100 ms at a time) behind an fsync.
    """

    def __init__(self, data_dir: Path | str, gateway_id: str, on_commit: Callable[[set[str]], None] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.root = topic_root(gateway_id)
        self.on_commit = on_commit
        self._batch = _Batch()
        self._deletes: list[int] = []
        self._delete_waiters: list[Future[None]] = []
        self._cond = threading.Condition()
        self._closing = False
        # Opened here, not in the thread: two first opens racing would both run the migrations.
        self._state = State(self.data_dir)
        self._thread = threading.Thread(target=self._run, name="egw-outbox-writer", daemon=True)
        self._thread.start()

    def submit(self, lane: str, subtopic: str, payload: bytes | Message, *, retain: bool = False) -> OutboxTicket:
        data = to_json_bytes(payload) if isinstance(payload, Message) else bytes(payload)
        topic = self.root + subtopic
        # validate now, in the caller's thread, so a bad topic fails where it was made
        check_topic(self.root, topic)
        if lane not in LANES:
            raise OutboxError(f"unknown outbox lane {lane!r}")
        if len(data) > MAX_PAYLOAD_BYTES:
            raise OutboxError(f"payload for {topic} is {len(data)} bytes, more than the {MAX_PAYLOAD_BYTES} allowed")
        with self._cond:
            if self._closing:
                raise OutboxError("the outbox writer is closed", "start the MQTT link before publishing")
            batch = self._batch
            batch.items.append((lane, topic, data, retain))
            if len(batch.items) == 1:
                self._cond.notify()
        return OutboxTicket(batch, len(batch.items) - 1)

    def delete(self, ids: list[int]) -> Future[None]:
        """Remove acknowledged rows in the next transaction; the Future resolves once committed."""
        done: Future[None] = Future()
        with self._cond:
            self._deletes.extend(ids)
            self._delete_waiters.append(done)
            self._cond.notify()
        return done

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def busy(self) -> bool:
        """Messages or deletions handed over but not yet committed."""
        with self._cond:
            return bool(self._batch.items or self._deletes)

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    @staticmethod
    def _insert(db: sqlite3.Connection, items: list[tuple[str, str, bytes, bool]]) -> list[int]:
        """Insert in order; runs of keep-every-message lanes go in one executemany."""
        ids: list[int] = []
        now = time.time()
        run: list[tuple[str, str, bytes, int, float]] = []

        def flush_run() -> None:
            if not run:
                return
            db.executemany(
                "INSERT INTO outbox (lane, topic, payload, qos, retain, dedupe_key, created_at) VALUES (?, ?, ?, 1, ?, NULL, ?)",
                run,
            )
            last = int(db.execute("SELECT last_insert_rowid()").fetchone()[0])
            # one writer holds the lock and AUTOINCREMENT only grows: the run got consecutive ids
            ids.extend(range(last - len(run) + 1, last + 1))
            run.clear()

        for lane, topic, data, retain in items:
            if lane in LATEST_ONLY:
                flush_run()
                db.execute("DELETE FROM outbox WHERE dedupe_key = ?", (topic,))
                cur = db.execute(
                    "INSERT INTO outbox (lane, topic, payload, qos, retain, dedupe_key, created_at) VALUES (?, ?, ?, 1, ?, ?, ?)",
                    (lane, topic, data, int(retain), topic, now),
                )
                ids.append(int(cur.lastrowid or 0))
            else:
                run.append((lane, topic, data, int(retain), now))
        flush_run()
        return ids

    def _run(self) -> None:
        state = self._state
        try:
            while True:
                with self._cond:
                    while not self._batch.items and not self._deletes and not self._closing:
                        self._cond.wait()
                    if not self._batch.items and not self._deletes and self._closing:
                        return
                    batch, self._batch = self._batch, _Batch()
                    deletes, self._deletes = self._deletes, []
                    waiters, self._delete_waiters = self._delete_waiters, []
                only_deletes = not batch.items
                try:
                    if only_deletes:
                        # Deletions only: losing one to a power cut means a duplicate, not a loss,
                        # so this transaction need not wait for an fsync.
                        state.db.execute("PRAGMA synchronous=NORMAL")
                    with state.transaction() as db:
                        ids = self._insert(db, batch.items) if batch.items else []
                        if deletes:
                            delete(db, deletes)
                except Exception as exc:  # noqa: BLE001 - every producer must hear about it
                    log.error("outbox commit of %d message(s) and %d deletion(s) failed: %s", len(batch.items), len(deletes), exc)
                    batch.error = exc
                    batch.done.set()
                    for waiter in waiters:
                        waiter.set_exception(exc)
                    continue
                finally:
                    if only_deletes:
                        state.db.execute("PRAGMA synchronous=FULL")
                batch.ids = ids
                batch.done.set()
                for waiter in waiters:
                    waiter.set_result(None)
                if batch.items and self.on_commit is not None:
                    self.on_commit({item[0] for item in batch.items})
        finally:
            state.close()
