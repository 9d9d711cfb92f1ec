"""The MQTT link's outbox pump: feeds paho from the outbox table with back-pressure, deletes rows on
PUBACK, parks the ones the broker refused, and publishes the custody tree head when the log grew.

At most ``window`` messages are with paho un-acknowledged; lanes are served round-robin, each in id
order (see ``gateway.uplink.mqtt_link`` for the delivery rules).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBLISH
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.evidence.custody import CustodyLog, log_size
from gateway.uplink import outbox as ob
from gateway.uplink.mqtt_config import BATCH_READ, DELETE_BATCH, LINK_NAME, REFILL_AT, SEQ_PROPERTY
from gateway.uplink.mqtt_core import LinkCore
from protos.egw.v1 import events_pb2

__all__ = ["FastAckClient", "OutboxPump", "SeqProperties"]

log = logging.getLogger("egw.mqtt")


_USER_PROPERTY = 0x26  # MQTT 5 §2.2.2.2: User Property, a UTF-8 string pair


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


_SEQ_PREFIX = bytes([_USER_PROPERTY]) + _utf8(SEQ_PROPERTY)


class SeqProperties(Properties):
    """The PUBLISH properties of a lane message: only ``egw-seq``, packed once, by hand.

    Why not ``Properties``: paho builds two dictionaries per instance and looks the property name
    up linearly on every assignment, ~56 µs per message, a third of the outbox's cost per message
    (#18). paho only ever calls ``pack()`` on what it is given (and ``str()`` in debug logs), so
    this subclass skips ``Properties.__init__`` and returns the bytes the MQTT 5 encoding
    prescribes, identical to what paho itself packs (tests/test_outbox_store.py compares them).
    """

    _packed: bytes
    _seq: int

    def __init__(self, seq: int) -> None:  # Properties.__init__ is skipped on purpose
        body = _SEQ_PREFIX + _utf8(str(seq))
        # straight into __dict__: Properties.__setattr__ would look each name up (and refuse these)
        attributes = self.__dict__
        attributes["packetType"] = PacketTypes.PUBLISH
        attributes["_packed"] = _varint(len(body)) + body
        attributes["_seq"] = seq

    def pack(self) -> bytes:
        return self._packed

    def __str__(self) -> str:
        return f"[UserProperty : [('{SEQ_PROPERTY}', '{self._seq}')]]"

    __repr__ = __str__


COALESCE_BYTES = 64 * 1024  # at most this much in one send (loopback and TCP segments take it whole)


def _coalescable(packet: Any) -> bool:
    """A QoS 1/2 PUBLISH: nothing is done when it is written, so it may share a ``send``."""
    return bool((packet["command"] & 0xF0) == PUBLISH and packet["qos"] > 0)


class FastAckClient(mqtt.Client):
    """paho's client, with the common PUBACK (accepted, no properties) settled in a few steps.

    Why (#18): on every PUBACK paho builds a fresh ``ReasonCode`` and ``Properties`` (dictionaries
    and a linear name lookup each, ~25 µs), calls ``on_publish`` while the message still counts as
    in flight, so the next message published from that callback is queued, and then scans every
    message in flight to find it and send it. A QoS 1 flood pays all three once per message on the
    network thread, which is our bottleneck.

    Here, a PUBACK that is the packet id alone, or the id and reason code 0x00 Success or 0x10 No
    matching subscribers (which Mosquitto sends; MQTT 5 §3.4.2.1) with no properties, settles the
    message first (published, one fewer in flight), then calls ``on_publish`` (VERSION2) with the
    values paho would build (made once, shared, read-only), so what the callback publishes is sent
    at once rather than queued; paho's own queue is scanned only if it holds something (a command
    reply or the birth message waiting for a slot). The loop writes what the callbacks published
    once it has read the PUBACKs waiting, many PUBLISHes in one ``send`` (``_packet_write``). Any
    other PUBACK (a refusal, properties) or callback API goes through paho unchanged.
    tests/test_outbox_store.py compares both paths with paho's own.
    """

    _NO_PROPERTIES = Properties(PacketTypes.PUBACK)
    _REASONS = {code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in (0x00, 0x10)}
    _loop_ident: int | None = None

    def run_loop(self) -> MQTTErrorCode:
        """``loop_forever`` on this thread, which from now on is the only one writing to the socket.

        Why: paho run by ``loop_forever`` on a thread of our own (not ``loop_start``) believes it is
        single-threaded and writes a packet published from another thread (the supervisor's birth
        message, a command reply, the start of a flow) on that thread, at the same time as its own
        thread may be writing: two writers of one stream. Here such a packet is queued and the loop
        woken (``_packet_queue``), as ``loop_start`` would, but without a wake-up per packet the
        loop publishes itself from ``on_publish``.
        """
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._sockpairR, self._sockpairW = wake_r, wake_w
        self._loop_ident = threading.get_ident()
        try:
            return self.loop_forever()
        finally:
            wake_w.close()  # a late publish from another thread finds it closed and is dropped with the client
            wake_r.close()

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: mqtt.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        if self._loop_ident is None:
            return super()._packet_queue(command, packet, mid, qos, info)  # before the loop runs: paho's way
        self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet),
                                 "packet": packet, "info": info})
        if threading.get_ident() != self._loop_ident:
            try:
                self._sockpairW.send(b"0")  # type: ignore[union-attr] # the loop writes it; wake it from select
            except OSError:
                pass  # already awake (full), or the loop is gone and the client with it
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if self._in_callback_mutex.acquire(False):  # the loop's thread, outside a callback: now, as paho does
            self._in_callback_mutex.release()
            return self.loop_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS  # in a callback: the loop writes it once it has read what waits

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        size = len(packet)
        reason = None
        if cmd == "PUBACK" and (size == 2 or size == 3 or (size == 4 and packet[3] == 0)):
            reason = self._REASONS.get(packet[2] if size > 2 else 0)
        if reason is None or self._callback_api_version != CallbackAPIVersion.VERSION2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        self._easy_log(mqtt.MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with self._out_message_mutex:
            msg = self._out_messages.pop(mid, None)
            if msg is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS  # unknown or already settled: nobody is told
            msg.info._set_as_published()  # noqa: SLF001
            if msg.qos > 0:
                self._inflight_messages -= 1
            self._tell_published(mid, reason)
            if self._max_inflight_messages > 0 and len(self._out_messages) > self._inflight_messages:
                return self._update_inflight()  # paho holds queued messages of its own
        # What the callback published is written by the loop once it has read what is waiting,
        # several PUBLISHes in one send (``_packet_write``), not one system call per PUBACK.
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        """Write queued QoS 1/2 PUBLISHes together, one ``send`` for many, then the rest as paho does.

        Why: paho sends each packet with its own system call; in a flood those are nearly half the
        network thread's time (#18). A QoS > 0 PUBLISH needs nothing done once written (paho
        settles it on its PUBACK), so consecutive ones can share a ``send``; a partial write
        leaves the unsent bytes at the head of the queue, in order, exactly as paho would.
        """
        out = self._out_packet
        while len(out) > 1 and _coalescable(out[0]) and _coalescable(out[1]):
            batch: list[Any] = []
            size = 0
            while out and size < COALESCE_BYTES and _coalescable(out[0]):
                packet = out.popleft()
                batch.append(packet)
                size += packet["to_process"]
            try:
                sent = self._sock_send(b"".join(p["packet"][p["pos"]:] for p in batch))
            except (AttributeError, ValueError):
                out.extendleft(reversed(batch))
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                out.extendleft(reversed(batch))
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                out.extendleft(reversed(batch))
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            for packet in batch:
                done = min(sent, packet["to_process"])
                packet["pos"] += done
                packet["to_process"] -= done
                sent -= done
            out.extendleft(reversed([p for p in batch if p["to_process"] > 0]))
            with self._msgtime_mutex:
                self._last_msg_out = mqtt.time_func()
            if batch[-1]["to_process"] > 0:
                return MQTTErrorCode.MQTT_ERR_SUCCESS  # the socket is full: the rest when it is writable
        return super()._packet_write()

    def _tell_published(self, mid: int, reason: ReasonCode) -> None:
        on_publish = self.on_publish
        if on_publish is None:
            return
        with self._in_callback_mutex:
            try:
                on_publish(self, self._userdata, mid, reason, self._NO_PROPERTIES)  # type: ignore[call-arg]
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_publish: %s", err)
                if not self.suppress_exceptions:
                    raise


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
