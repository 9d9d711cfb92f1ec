"""The durable MQTT outbox: every QoS 1 message is committed here before paho sees it.

Why a table and not paho's queue: paho keeps unacknowledged messages in
memory (lost on a crash) and refuses more than 65,535 of them. The outbox
makes delivery survive a restart or a long outage, and lets the link apply
back-pressure: it hands paho only as many messages as PUBACKs free slots.

The table's evidence-level half (lanes, quota, ``enqueue``, the hook the
evidence service registers on itself) lives in ``gateway.evidence.outbox`` and
is re-exported here; this module adds what only the uplink needs.

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

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from gateway.evidence.link_status import read_link_status, set_link_status
from gateway.evidence.outbox import (
    COMMIT_BELL,
    DEFAULT_QUOTA_BYTES,
    LANES,
    LATEST_ONLY,
    MAX_PAYLOAD_BYTES,
    MAX_TOPIC_BYTES,
    NEVER_DROP,
    OutboxError,
    OutboxFullError,
    OutboxMessage,
    OutboxUsage,
    attach_outbox,
    check_topic,
    count_sendable,
    delete,
    enqueue,
    evidence_hook,
    evidence_state_message,
    fetch,
    insert_batch,
    outbox_full,
    park,
    pending,
    requeue_parked,
    timestamp_now,
    to_json_bytes,
    topic_root,
    usage,
)
from gateway.evidence.state import State
from protos.egw.v1 import events_pb2

__all__ = [
    "COMMIT_BELL", "LANES", "NEVER_DROP", "LATEST_ONLY", "DEFAULT_QUOTA_BYTES", "MAX_PAYLOAD_BYTES", "MAX_TOPIC_BYTES",
    "OutboxError", "OutboxFullError", "OutboxMessage", "OutboxUsage", "Outbox", "OutboxWriter", "OutboxTicket",
    "topic_root", "check_topic", "to_json_bytes", "enqueue", "fetch", "pending", "count_sendable", "insert_batch", "delete",
    "park", "requeue_parked",
    "usage", "outbox_full", "evidence_state_message", "evidence_hook", "attach_outbox", "attach_to_service",
    "set_link_status", "read_link_status", "mqtt_status", "timestamp_now",
]

# The evidence service attaches its outbox hooks itself; kept for callers that attach explicitly
# (another quota, a service built before the hook existed). Idempotent: no duplicate messages.
attach_to_service = attach_outbox

log = logging.getLogger("egw.mqtt.outbox")

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

    def __enter__(self) -> Outbox:
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
        return pending(self.state.db)


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
        self._committing = False  # a batch taken from the queue is being committed (and announced)
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
        """Messages or deletions handed over but not yet committed and announced.

        A batch being committed counts: while it was neither queued nor visible in the database, the
        link could see nothing to send and call itself drained with 51 messages on their way (a CI
        failure of test_everything_queued_arrives_with_retained_state_and_a_verified_tree_head)."""
        with self._cond:
            return bool(self._batch.items or self._deletes or self._committing)

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

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
                    self._committing = True
                try:
                    self._commit(state, batch, deletes, waiters)
                finally:
                    with self._cond:
                        self._committing = False
        finally:
            state.close()

    def _commit(self, state: State, batch: _Batch, deletes: list[int], waiters: list[Future[None]]) -> None:
        """One transaction for a batch of messages and deletions; then tell producers and ``on_commit``."""
        only_deletes = not batch.items
        try:
            # Deletions only: losing one to a power cut means a duplicate, not a loss,
            # so this transaction need not wait for an fsync.
            with state.synchronous_normal() if only_deletes else contextlib.nullcontext(), state.transaction() as db:
                ids = insert_batch(db, batch.items) if batch.items else []
                if deletes:
                    delete(db, deletes)
        except Exception as exc:  # noqa: BLE001 - every producer must hear about it
            log.error("outbox commit of %d message(s) and %d deletion(s) failed: %s", len(batch.items), len(deletes), exc)
            batch.error = exc
            batch.done.set()
            for waiter in waiters:
                waiter.set_exception(exc)
            return
        batch.ids = ids
        batch.done.set()
        for waiter in waiters:
            waiter.set_result(None)
        if batch.items and self.on_commit is not None:
            self.on_commit({item[0] for item in batch.items})
