"""The MQTT link's outbox pump: feeds paho from the outbox table with back-pressure, deletes rows on
PUBACK, parks the ones the broker refused, and publishes the custody tree head when the log grew.

At most ``window`` messages are with paho un-acknowledged; lanes are served round-robin, each in id
order (see ``gateway.uplink.mqtt_link`` for the delivery rules).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion

from gateway.evidence.custody import CustodyLog, log_size
from gateway.uplink import outbox as ob
from gateway.uplink.mqtt_client import SeqProperties
from gateway.uplink.mqtt_config import BATCH_READ, DELETE_BATCH, LINK_NAME, REFILL_AT
from gateway.uplink.mqtt_core import LinkCore
from protos.egw.v1 import events_pb2

__all__ = ["OutboxPump"]

log = logging.getLogger("egw.mqtt")


class OutboxPump(LinkCore):
    """The sending half of ``MqttLink``.

    Who does what (#18): the supervisor reads committed rows into the lane buffers (its SQLite
    connection), paho's network thread publishes them, one per PUBACK, from ``on_publish``. A PUBACK
    therefore costs no thread hand-off, and paho's ``_out_message_mutex`` is only contended when the
    supervisor finds room in the window after reading rows (the start of a flow, a quiet link).
    ``_pump_lock`` guards the in-flight map, the buffers' heads and the acknowledged ids; it is
    always taken after paho's ``_out_message_mutex`` (which paho holds around ``on_publish``), never
    before it, so the two threads cannot deadlock.
    """

    # ---- supervisor: read committed rows, start the flow -----------------------
    def _feed(self) -> None:
        """Top up the lane buffers from the table, and hand paho what fits in the window now.

        Why not leave every free slot to the next PUBACK: a broker may hold its PUBACKs back. Mosquitto
        (no TCP_NODELAY) sends the second of two PUBACKs only once our TCP acknowledgement of the
        first arrives, which Linux delays up to 40 ms when we have nothing to send; at 1,000 msg/s
        waiting for PUBACKs made the median latency 30 ms instead of 0.7 (bench/mqtt.py, paced).
        In a flood the window is nearly always full here, and paho's thread does the publishing.
        """
        self._refill()
        client = self._client
        if client is None:
            return
        with self._pump_lock:
            if len(self._inflight) >= self.window or not any(self._buffers.values()):
                return
        # paho's lock first: the order the network thread takes them in (see the class docstring)
        with client._out_message_mutex, self._pump_lock:  # noqa: SLF001
            before = self.stats.published
            self._publish_ready(client, self._gen)
            self.stats.fed_by_supervisor += self.stats.published - before

    def _refill(self) -> None:
        """Read the next rows of every lane running low (they were committed: they come from the table)."""
        assert self._state is not None
        self._refill_asked = False
        for lane in ob.LANES:
            buf = self._buffers[lane]
            if self._exhausted[lane] or len(buf) >= REFILL_AT:
                continue
            rows = ob.fetch(self._state.db, lane, self._cursor[lane], BATCH_READ)
            if rows:
                self._cursor[lane] = rows[-1].id
                buf.extend(rows)  # a deque: appending beside the network thread's popleft is safe
            if len(rows) < BATCH_READ:
                self._exhausted[lane] = True

    # ---- network thread (and the supervisor, under both locks) -----------------
    def _publish_ready(self, client: mqtt.Client, gen: int) -> None:
        """Hand paho buffered messages while fewer than ``window`` are un-acknowledged (``_pump_lock`` held).

        Nothing new once the link is stopping: ``stop`` waits only for what is already in flight."""
        inflight, buffers, lanes, stopping = self._inflight, self._buffers, ob.LANES, self._stopping
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        while len(inflight) < self.window and gen == self._gen and not stopping.is_set():
            for i in range(len(lanes)):  # round-robin over the lanes, each in id order
                lane = lanes[(self._rr + i) % len(lanes)]
                buf = buffers[lane]
                if buf:
                    self._rr = (self._rr + i + 1) % len(lanes)
                    break
            else:
                return
            msg = buf.popleft()
            if len(buf) < REFILL_AT and not self._refill_asked and not self._exhausted[lane]:
                self._refill_asked = True
                self._wake.set()
            info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain,
                                  properties=SeqProperties(msg.id) if v5 else None)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                buf.appendleft(msg)
                if info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
                    log.warning("paho refused to queue %s: %s; will retry", msg.topic, mqtt.error_string(info.rc))
                return
            inflight[info.mid] = msg
            stats = self.stats
            stats.published += 1
            if len(inflight) > stats.max_in_flight:
                stats.max_in_flight = len(inflight)
            if self._sent_before and msg.id in self._sent_before:
                stats.resent += 1
                self._sent_before.discard(msg.id)

    def _on_puback(self, client: mqtt.Client, gen: int, mid: int, reason_code: Any) -> None:
        """paho's ``on_publish`` (network thread): settle the message, then send the next one at once."""
        with self._pump_lock:
            if gen != self._gen:
                return  # a connection already torn down
            msg = self._inflight.pop(mid, None)
            if msg is None:
                return  # birth message, a command reply, or a duplicate ack
            if reason_code is not None and getattr(reason_code, "is_failure", False):
                self._events.append(("refused", gen, msg, reason_code))  # parked by the supervisor
                self._wake.set()
            else:
                self._to_delete.append(msg.id)
                self.stats.acked += 1
                self.stats.last_ack_ns = time.monotonic_ns()
            self._publish_ready(client, gen)
            if len(self._to_delete) >= DELETE_BATCH and self.writer is not None and not self.writer.closed:
                self._delete_done = self.writer.delete(self._to_delete)
                self._to_delete = []
            if not self._inflight:
                self._wake.set()  # idle or starved: the supervisor reads more, flushes deletes, checks drained

    # ---- supervisor: acknowledgements the network thread left to it ------------
    def _park_refused(self, refused: list[tuple[ob.OutboxMessage, Any]]) -> None:
        """Messages the broker refused (PUBACK reason >= 0x80) stay in the table, parked, with the reason."""
        if not refused:
            return
        assert self._state is not None
        with self._state.transaction() as db:
            why = ""
            for msg, reason_code in refused:
                why = f"broker refused {msg.topic} (outbox id {msg.id}): {reason_code}"
                ob.park(db, msg.id, why)
                self.stats.parked += 1
                log.error("MQTT: %s; message parked (kept), fix the ACL/topic then requeue", why)
            ob.set_link_status(db, LINK_NAME, "connected", detail="some messages were refused by the broker", error=why)

    def _flush_deletes(self, wait: bool = False) -> None:
        """Hand acknowledged ids to the writer thread (the one writing connection); optionally wait."""
        with self._pump_lock:
            ids: list[int] = []
            if self._to_delete and (wait or len(self._to_delete) >= DELETE_BATCH or not self._inflight):
                ids, self._to_delete = self._to_delete, []
                if self.writer is not None and not self.writer.closed:
                    self._delete_done = self.writer.delete(ids)
                    ids = []
            done = self._delete_done if wait else None
            if wait:
                self._delete_done = None
        if ids:  # no writer (stopping): the supervisor's own connection
            assert self._state is not None
            with self._state.transaction() as db:
                ob.delete(db, ids)
        if done is not None:
            try:
                done.result(30)
            except Exception as exc:  # noqa: BLE001 - a lost delete only means a duplicate later
                log.warning("could not delete acknowledged outbox rows (%s); they will be sent again", exc)

    def _check_drained(self) -> None:
        with self._pump_lock:
            if self._inflight or self._to_delete or any(self._buffers.values()) or not all(self._exhausted.values()):
                return
            if self._delete_done is not None and not self._delete_done.done():
                return
        if self._dirty or (self.writer is not None and self.writer.busy):
            return
        if self._sth_size < 0:
            return
        assert self._state is not None
        left = ob.count_sendable(self._state.db)
        if left == 0:
            self._drained.set()
        else:
            for lane in ob.LANES:
                self._exhausted[lane] = False

    def _maybe_tree_head(self, now: float) -> None:
        """Publish the custody tree head (retained) when the log grew; at most once per interval."""
        if now < self._sth_due or self.writer is None:
            return
        self._sth_due = now + self.config.sth_interval_s
        assert self._state is not None
        size = log_size(self._state)
        if size == self._sth_size:
            return
        if size > 0:
            head = CustodyLog(self._state, self.identity).sign_tree_head()
            env = head.envelope
            sth = events_pb2.SignedTreeHead(tree_size=head.tree_size, root_hash=head.root_hash.hex())
            sth.envelope.payload_type = env.payload_type
            sth.envelope.payload = env.payload
            for kid, sig in env.signatures:
                sth.envelope.signatures.add(keyid=kid, sig=sig)
            self.writer.submit("custody", "custody/sth", sth, retain=True).result(10)
        self._sth_size = size
