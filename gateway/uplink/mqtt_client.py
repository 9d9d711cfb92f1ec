"""paho, made cheaper per message for the outbox's flood: what the link hands paho and how paho settles it.

``SeqProperties`` packs the ``egw-seq`` user property by hand; ``FastAckClient`` settles plain PUBACKs
without paho's per-ack objects, writes many PUBLISHes in one ``send``, and lets only its loop's thread
write to the socket (#18). Kept apart from the pump (``gateway.uplink.mqtt_pump``) because it is about
paho, not about the outbox: tests/test_outbox_store.py holds each shortcut against paho's own result.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBLISH
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.uplink.mqtt_config import SEQ_PROPERTY

__all__ = ["COALESCE_BYTES", "FastAckClient", "SeqProperties"]


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
