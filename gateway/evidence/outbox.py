"""The outbox table's evidence-level half: lanes, quota, and the hook that queues
``evidence/<id>`` in the same transaction as every state change.

Why here and not in ``gateway.uplink``: the evidence service registers this
hook itself when it is constructed (every writable service, whatever command
opened it), and the evidence core must not depend on the uplinks. What is
written here is only rows in ``state.db`` (this module is the only code that
queries the outbox table); ``gateway.uplink.outbox`` (group commit) and
``gateway.uplink.mqtt_link`` (the MQTT connection) deliver them, inside
``egw run`` or in ``egw sync --once --mqtt URL``.

Lanes (one FIFO each, ordered by the AUTOINCREMENT id)::

    lane      topic under egw/v1/<gw>/       kept            retained
    evidence  evidence/<evidence_id>         every message   no
    results   results/rapidtest              every message   no
    device    devices/<device_id>/state      latest per dev  yes
    custody   custody/sth                    latest only     yes

``evidence`` and ``results`` are never dropped. When the outbox holds more
than its quota the gateway stops accepting new captures (``OutboxFullError``
from the quota gate, which rolls the ingest back); it never deletes a message
to make room. ``device`` and ``custody`` keep only the newest value.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.errors import StateError, StoreFullError
from gateway.evidence.ids import uuid7
from gateway.evidence.state import AFTER_TRANSACTION, EvidenceRow, State
from protos.egw.v1 import events_pb2, evidence_pb2

__all__ = [
    "COMMIT_BELL", "LANES", "NEVER_DROP", "LATEST_ONLY", "DEFAULT_QUOTA_BYTES", "MAX_PAYLOAD_BYTES", "MAX_TOPIC_BYTES",
    "OutboxError", "OutboxFullError", "OutboxMessage", "OutboxUsage",
    "topic_root", "check_topic", "to_json_bytes", "enqueue", "fetch", "pending", "count_sendable", "insert_batch", "delete", "park", "requeue_parked",
    "usage", "outbox_full", "evidence_state_message", "evidence_hook", "attach_outbox", "timestamp_now",
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

class _CommitBell:
    """Wakes this process's MQTT sender the moment a transaction that queued a message commits.

    Why: rows queued inside evidence transactions (a rapid-test result, a delivery record, an evidence
    state) were found only by the sender's poll, every 200 ms, which was most of a result's latency from
    instrument to platform. The poll stays as the fallback for rows another process queued (the writing
    commands run inside ``egw run`` when it serves the directory). A transaction's body runs on one thread, so the lanes it queued are kept per thread
    until it ends: rung when it commits, forgotten when it rolls back (those rows never existed). A
    ring is only a wake-up: one too many costs a query, none at all costs the poll's wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued = threading.local()
        self._listeners: list[Callable[[set[str]], None]] = []

    def note(self, lane: str) -> None:
        lanes: set[str] | None = getattr(self._queued, "lanes", None)
        if lanes is None:
            lanes = self._queued.lanes = set()
        lanes.add(lane)

    def transaction_ended(self, committed: bool) -> None:
        lanes: set[str] | None = getattr(self._queued, "lanes", None)
        if not lanes:
            return
        self._queued.lanes = None
        if committed:
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(lanes)
                except Exception:  # noqa: BLE001 - the transaction committed: a wake-up that failed must not say otherwise
                    log.exception("a listener of the outbox's commits failed; its poll will find the rows")

    def listen(self, listener: Callable[[set[str]], None]) -> Callable[[], None]:
        """Call ``listener(lanes)`` after every commit in this process that queued messages; returns the undo."""
        with self._lock:
            self._listeners.append(listener)

        def forget() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return forget


COMMIT_BELL = _CommitBell()
AFTER_TRANSACTION.append(COMMIT_BELL.transaction_ended)


def enqueue(db: sqlite3.Connection, root: str, lane: str, topic: str, payload: bytes, *, retain: bool = False,
            qos: int = 1) -> int:
    """Insert one message inside the caller's transaction; returns its id.

    ``device``/``custody`` lanes replace any queued message for the same topic. Listeners of
    :data:`COMMIT_BELL` in this process hear of it once the transaction commits.
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
    COMMIT_BELL.note(lane)
    return int(cur.lastrowid or 0)


def fetch(db: sqlite3.Connection, lane: str, after_id: int, limit: int) -> list[OutboxMessage]:
    rows = db.execute(
        "SELECT id, lane, topic, payload, qos, retain FROM outbox "
        "WHERE lane = ? AND id > ? AND parked_reason IS NULL ORDER BY id LIMIT ?",
        (lane, after_id, limit),
    ).fetchall()
    return [OutboxMessage(int(r[0]), r[1], r[2], bytes(r[3]), int(r[4]), bool(r[5])) for r in rows]


def pending(db: sqlite3.Connection) -> list[OutboxMessage]:
    """Every message still in the outbox, parked ones included, oldest first."""
    rows = db.execute("SELECT id, lane, topic, payload, qos, retain FROM outbox ORDER BY id").fetchall()
    return [OutboxMessage(int(r[0]), r[1], r[2], bytes(r[3]), int(r[4]), bool(r[5])) for r in rows]


def count_sendable(db: sqlite3.Connection) -> int:
    """Messages waiting to be sent (parked ones wait for an operator, not for the link)."""
    return int(db.execute("SELECT COUNT(*) FROM outbox WHERE parked_reason IS NULL").fetchone()[0])


def insert_batch(db: sqlite3.Connection, items: list[tuple[str, str, bytes, bool]]) -> list[int]:
    """Insert (lane, topic, payload, retain) in order inside the caller's transaction; returns their ids.

    Runs of keep-every-message lanes go in one ``executemany`` (the group commit of
    ``gateway.uplink.outbox.OutboxWriter``: a burst costs one statement, not one per message);
    a latest-only lane replaces the message queued for the same topic.
    """
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
            summary.captured_at.FromDatetime(datetime.fromisoformat(corrected.replace("Z", "+00:00")).astimezone(UTC).replace(tzinfo=None))
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


OUTBOX_HOOK_MARK = "egw_outbox_hook"


def attach_outbox(service: Any, quota_bytes: int = DEFAULT_QUOTA_BYTES) -> None:
    """Wire an ``EvidenceService``: evidence messages in its transactions, captures refused when full.

    Called by the service's constructor, so every state change queues its
    ``evidence/<id>`` message whichever command made it (``egw ingest``,
    ``egw dock``, the uploader in ``egw sync --once`` …), not only inside
    ``egw run``. Calling it again replaces the hooks (e.g. with another
    quota) instead of adding a second set: one message per change.

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

    for hook in (gate, publish):
        setattr(hook, OUTBOX_HOOK_MARK, True)
    # Under the state lock: every transaction holds it while it runs the hooks, so no thread is
    # iterating the list while it is replaced, and two attachments cannot lose each other's hooks.
    with service.state.lock:
        others = [h for h in service.transition_hooks if not getattr(h, OUTBOX_HOOK_MARK, False)]
        service.transition_hooks = [gate, publish, *others]  # the gate first: a refused capture queues nothing
