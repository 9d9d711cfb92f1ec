"""The MQTT link: drains the durable outbox into paho, with back-pressure, and takes commands.

Threads and who owns what::

    producers ──submit──► OutboxWriter ──commit (fsync)──► outbox table
                                 │ wake
                                 ▼
    supervisor thread  (owns the paho client, the in-flight map, the lane cursors,
        │               its own SQLite connection; connects, reconnects with
        │               backoff + jitter, feeds paho, deletes on PUBACK, runs commands)
        │  publish() while in flight < window          ▲ acks / messages / disconnects
        ▼                                              │ (queued, then wake)
    network thread  (client.loop_forever(); one per connection; if it dies the
                     supervisor notices, drops the client and connects a new one)

Delivery rules:
- A message is read from the table, so it was committed before paho sees it.
- At most ``window`` messages are handed to paho un-acknowledged (paho's own
  in-flight limit is set to ``max_inflight``; more in flight makes paho slower
  and it refuses > 65,535 queued), so a long backlog never builds up in memory.
- Lanes are served round-robin, each in id order: a device-state update or a
  tree head goes out at once even behind 100,000 queued evidence messages, and
  order per topic is kept (a topic always lives in one lane).
- PUBACK → the row is deleted. A refusal (MQTT 5 reason >= 0x80, e.g. 0x87 not
  authorised) → the row is parked, the link status says why.
- Connection lost → everything un-acknowledged is re-sent from the oldest,
  in order, on a fresh client (duplicates possible, detectable by message id).

What a subscriber can check: over MQTT 5 every outbox message carries the
user property ``egw-seq``, its outbox id (decimal). It increases within a
lane (never reused, kept across restarts of the gateway, not contiguous: the
lanes share one counter and latest-only lanes replace queued rows), so the
first arrivals of a lane come in increasing ``egw-seq``; a repeated
``egw-seq`` is a redelivery. Payload ids (UUIDv7) and timestamps follow the
wall clock and may go backwards when it is stepped; ``egw-seq`` does not.
A parked message put back in line (``requeue_parked``) is the one exception:
it goes out after newer ones. MQTT 3.1.1 has no properties: no ``egw-seq``.

Each connection starts clean (MQTT 5 clean start, 3.1.1 clean session): the
outbox, not the broker session, is the memory of what is still owed.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import __version__
from gateway.errors import ConfigError
from gateway.evidence import identity as identity_mod
from gateway.evidence.custody import CustodyLog, log_size
from gateway.evidence.state import State
from gateway.uplink import outbox as ob
from gateway.uplink.commands import CommandHandler, CommandRejected, CommandVerifier, PlatformKeySource, load_platform_key, make_reply
from protos.egw.v1 import events_pb2

__all__ = [
    "BrokerUrl", "parse_broker_url", "LinkConfig", "LinkStats", "MqttLink", "DrainReport", "drain_outbox",
    "link_status", "SEQ_PROPERTY",
]

log = logging.getLogger("egw.mqtt")

LINK_NAME = "mqtt"
SEQ_PROPERTY = "egw-seq"  # MQTT 5 user property: the message's outbox id (see the module docstring)
BATCH_READ = 500
# PUBACKed ids are deleted in batches of this many (or when nothing is in flight): a crash
# re-sends at most window + DELETE_BATCH messages, each a duplicate detectable by message id.
DELETE_BATCH = 64


@dataclass(frozen=True)
class BrokerUrl:
    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def redacted(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://[user[:pass]@]host[:1883]`` or ``mqtts://…[:8883]`` (TLS, client certificate)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    scheme = "mqtts" if parts.scheme in ("mqtts", "ssl") else "mqtt"
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} has no host", "e.g. mqtt://127.0.0.1:1883")
    try:
        port = parts.port or (8883 if scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} has a bad port") from exc
    return BrokerUrl(scheme, parts.hostname, port, unquote(parts.username) if parts.username else None,
                     unquote(parts.password) if parts.password else None)


@dataclass
class LinkConfig:
    broker_url: str
    protocol: str = "auto"          # "5", "3.1.1", or "auto" (5, falling back to 3.1.1)
    max_inflight: int = 20          # paho's own limit (PERFORMANCE-NOTES: 20 beats 1000)
    window: int = 0                 # messages handed to paho un-acked; 0 → max_inflight (measured: 2× is slower)
    keepalive: int = 30
    backoff_min_s: float = 0.2
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    ca_file: Path | None = None     # default DATA_DIR/identity/ca.pem, else the system store
    cert_file: Path | None = None   # default DATA_DIR/identity/gateway.crt
    key_file: Path | None = None    # default DATA_DIR/identity/gateway.key (EGW_KEY_PASSPHRASE)
    platform_cert: PlatformKeySource = None  # default DATA_DIR/identity/platform.pem when present
    handle_commands: bool = True
    sth_interval_s: float = 1.0     # custody tree heads: at most one per interval, only on change
    poll_interval_s: float = 0.2    # how soon rows queued by other processes are noticed
    client_id: str | None = None    # default: the gateway id


@dataclass
class LinkStats:
    connects: int = 0
    connect_failures: int = 0
    published: int = 0
    acked: int = 0
    resent: int = 0
    parked: int = 0
    network_restarts: int = 0
    max_in_flight: int = 0  # never above the window: the proof of back-pressure
    last_ack_ns: int = 0    # time.monotonic_ns() of the last PUBACK for an outbox message
    commands_ok: int = 0
    commands_rejected: int = 0


def link_status(data_dir: Path | str) -> dict[str, Any]:
    """For `egw status`: the MQTT link's state, last error and outbox backlog (see ``outbox.mqtt_status``)."""
    return ob.mqtt_status(data_dir)


def _gateway_state(gateway_id: str, state: str) -> bytes:
    msg = events_pb2.GatewayState(gateway_id=gateway_id, state=state, version=__version__)
    msg.at.GetCurrentTime()
    return ob.to_json_bytes(msg)


class MqttLink:
    """One gateway's MQTT connection, fed from the durable outbox."""

    def __init__(self, data_dir: Path | str, config: LinkConfig, *, identity: identity_mod.Identity | None = None,
                 sync_time_hooks: list[Callable[[dict[str, str]], dict[str, str] | None]] | None = None,
                 evidence_service: Any = None) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        self.url = parse_broker_url(config.broker_url)
        self.identity = identity or identity_mod.load_identity(self.data_dir)
        self.gateway_id = self.identity.gateway_id
        self.root = ob.topic_root(self.gateway_id)
        self.window = config.window or config.max_inflight
        self.stats = LinkStats()
        platform_source = config.platform_cert
        default_platform = self.data_dir / "identity" / "platform.pem"
        if platform_source is None and default_platform.exists():
            platform_source = default_platform
        self.verifier = CommandVerifier(self.gateway_id, load_platform_key(platform_source))
        self.commands = CommandHandler(self.data_dir, self.gateway_id, list(sync_time_hooks or []),
                                       status_extra=self._status_extra, evidence_service=evidence_service,
                                       identity=self.identity)
        self.writer: ob.OutboxWriter | None = None
        self.connected = threading.Event()  # CONNACK accepted: the outbox is being fed
        self.ready = threading.Event()      # …and the command subscription is acknowledged
        self._drained = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._events: deque[tuple[Any, ...]] = deque()
        self._thread: threading.Thread | None = None
        # supervisor-only state
        self._client: mqtt.Client | None = None
        self._net: threading.Thread | None = None
        self._gen = 0
        self._protocol = MQTTProtocolVersion.MQTTv311 if config.protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5
        self._inflight: dict[int, ob.OutboxMessage] = {}
        self._buffers: dict[str, deque[ob.OutboxMessage]] = {lane: deque() for lane in ob.LANES}
        self._cursor: dict[str, int] = {lane: 0 for lane in ob.LANES}
        self._exhausted: dict[str, bool] = {lane: False for lane in ob.LANES}
        self._dirty: set[str] = set()  # lanes with rows committed since they were last read to the end
        self._dirty_lock = threading.Lock()
        self._sent_before: set[int] = set()
        self._rr = 0
        self._to_delete: list[int] = []
        self._delete_done: Future[None] | None = None
        self._failures = 0
        self._next_attempt = 0.0
        self._sth_size = -1
        self._sth_due = 0.0
        self._last_poll = 0.0
        self._state: State | None = None

    # ---- public API ---------------------------------------------------------
    def start(self) -> "MqttLink":
        if self._thread is not None:
            raise ConfigError("the MQTT link is already started")
        # Open (and migrate) the database here, before any thread: concurrent first opens race.
        self._state = State(self.data_dir)
        self.writer = ob.OutboxWriter(self.data_dir, self.gateway_id, on_commit=self._on_commit)
        self._thread = threading.Thread(target=self._supervise, name=f"egw-mqtt-{self.gateway_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is in flight, publish ``offline`` (retained), disconnect cleanly.

        Messages handed to ``publish`` are committed before this returns (they
        go out on the next start or ``drain_outbox``).
        """
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.writer is not None:
            self.writer.close(timeout)

    def __enter__(self) -> "MqttLink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish(self, lane: str, subtopic: str, payload: Any, *, retain: bool = False) -> ob.OutboxTicket:
        """Queue durably; ``ticket.result(timeout)`` is the outbox id once committed (before it is sent)."""
        if self.writer is None:
            raise ConfigError("start the MQTT link before publishing")
        self._drained.clear()
        return self.writer.submit(lane, subtopic, payload, retain=retain)

    def put_device_state(self, state: events_pb2.DeviceState) -> ob.OutboxTicket:
        return self.publish("device", f"devices/{state.device_id}/state", state, retain=True)

    def put_result(self, result: events_pb2.RapidTestResult) -> ob.OutboxTicket:
        return self.publish("results", "results/rapidtest", result)

    def wait_connected(self, timeout: float) -> bool:
        """True once connected and (if commands are handled) subscribed to ``cmd/+``."""
        return self.ready.wait(timeout)

    def wait_drained(self, timeout: float) -> bool:
        """True once connected and every committed, non-parked message has its PUBACK."""
        self._drained.clear()
        self._wake.set()
        return self._drained.wait(timeout)

    def add_sync_time_hook(self, hook: Callable[[dict[str, str]], dict[str, str] | None]) -> None:
        self.commands.sync_time_hooks.append(hook)

    # ---- callbacks (paho's network thread / the writer) ---------------------
    def _on_commit(self, lanes: set[str]) -> None:
        with self._dirty_lock:
            self._dirty.update(lanes)
        self._drained.clear()
        self._wake.set()

    def _push(self, *event: Any) -> None:
        self._events.append(event)
        self._wake.set()

    def _bind(self, client: mqtt.Client, gen: int) -> None:
        def on_connect(_c: Any, _u: Any, flags: Any, reason_code: Any, properties: Any) -> None:
            self._push("connack", gen, reason_code)

        def on_disconnect(_c: Any, _u: Any, flags: Any, reason_code: Any, properties: Any) -> None:
            self._push("disconnect", gen, reason_code)

        def on_publish(_c: Any, _u: Any, mid: int, reason_code: Any, properties: Any) -> None:
            self._push("ack", gen, mid, reason_code)

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            self._push("message", gen, message)

        def on_subscribe(_c: Any, _u: Any, mid: int, reason_codes: Any, properties: Any) -> None:
            self._push("suback", gen, reason_codes)

        client.on_subscribe = on_subscribe

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message

    # ---- supervisor -----------------------------------------------------------
    def _supervise(self) -> None:
        assert self._state is not None
        # Deleting acknowledged rows need not be fsynced: losing a delete only re-sends a duplicate.
        self._state.use_synchronous_normal()
        try:
            while not self._stopping.is_set():
                try:
                    self._step()
                except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any one failure
                    log.exception("MQTT link supervisor error (%s); dropping the connection and retrying", exc)
                    try:
                        self._teardown(f"internal error: {exc}", failed=True)
                    except Exception as again:  # noqa: BLE001 - e.g. a full disk refuses the status row too
                        # The connection is already dropped; only the status write failed. Without this the
                        # thread died and the link stayed down until a restart (found by bench/faults.py, disk).
                        log.error("MQTT link could not record its state (%s); retrying in 1 s", again)
                        self._stopping.wait(1.0)
            self._shutdown()
        finally:
            self._state.close()

    def _step(self) -> None:
        now = time.monotonic()
        if self._client is None:
            if now >= self._next_attempt:
                self._connect()
            else:
                self._wake.wait(min(self._next_attempt - now, 0.5))
                self._wake.clear()
            return
        self._wake.clear()
        self._handle_events()
        if self._client is None or not self.connected.is_set():
            if self._client is not None:
                self._wake.wait(0.05)
            return
        if self._dirty:
            with self._dirty_lock:
                dirty, self._dirty = self._dirty, set()
            for lane in dirty:
                self._exhausted[lane] = False
        if now - self._last_poll >= self.config.poll_interval_s:
            self._last_poll = now  # rows queued by other processes (evidence service, CLI)
            for lane in ob.LANES:
                self._exhausted[lane] = False
        self._maybe_tree_head(now)
        self._feed()
        self._flush_deletes()
        self._check_drained()
        if not self._events and not self._dirty:
            self._wake.wait(self.config.poll_interval_s)

    def _connect(self) -> None:
        assert self._state is not None
        self._gen += 1
        gen = self._gen
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.config.client_id or self.gateway_id,
            protocol=self._protocol, reconnect_on_failure=False, clean_session=None if v5 else True,
        )
        client.max_inflight_messages_set(self.config.max_inflight)
        if self.url.username:
            client.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            self._configure_tls(client)
        client.will_set(self.root + "state", _gateway_state(self.gateway_id, "offline"), qos=1, retain=True)
        self._bind(client, gen)
        proto_name = "5" if v5 else "3.1.1"
        self._set_status("connecting", f"connecting to {self.url.redacted()} (MQTT {proto_name})", protocol=proto_name)
        try:
            if v5:
                client.connect(self.url.host, self.url.port, self.config.keepalive, clean_start=True)
            else:
                client.connect(self.url.host, self.url.port, self.config.keepalive)
        except ssl.SSLError as exc:
            self._connect_failed("tls-error", f"TLS handshake with {self.url.redacted()} failed: {exc.reason or exc}; "
                                 "check the broker's CA (identity/ca.pem) and the gateway certificate")
            return
        except (OSError, ValueError) as exc:
            self._connect_failed("unreachable", f"cannot reach {self.url.redacted()}: {exc}")
            return
        net = threading.Thread(target=self._network_main, args=(client, gen), name=f"egw-mqtt-net-{gen}", daemon=True)
        self._client, self._net = client, net
        net.start()
        deadline = time.monotonic() + self.config.connect_timeout_s
        while not self.connected.is_set() and self._client is client and not self._stopping.is_set():
            if time.monotonic() > deadline:
                if self._fall_back_to_311(f"sent no CONNACK within {self.config.connect_timeout_s} s"):
                    return
                self._teardown(f"no CONNACK from {self.url.redacted()} within {self.config.connect_timeout_s} s", failed=True)
                return
            self._wake.wait(0.05)
            self._wake.clear()
            self._handle_events()

    def _configure_tls(self, client: mqtt.Client) -> None:
        ident = self.data_dir / "identity"
        ca = self.config.ca_file or (ident / "ca.pem" if (ident / "ca.pem").exists() else None)
        cert = self.config.cert_file or ident / "gateway.crt"
        key = self.config.key_file or ident / "gateway.key"
        try:
            client.tls_set(ca_certs=str(ca) if ca else None, certfile=str(cert), keyfile=str(key),
                           keyfile_password=os.environ.get(identity_mod.PASSPHRASE_ENV) or None,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot set up TLS for {self.url.redacted()}: {exc}",
                              "check identity/gateway.crt, gateway.key, ca.pem and EGW_KEY_PASSPHRASE") from exc

    def _network_main(self, client: mqtt.Client, gen: int) -> None:
        try:
            client.loop_forever()
            self._push("net-exit", gen, None)
        except BaseException as exc:  # noqa: BLE001 - report, the supervisor restarts the client
            log.error("MQTT network thread died: %s: %s; the link will reconnect", type(exc).__name__, exc)
            self._push("net-exit", gen, exc)

    def _handle_events(self) -> None:
        acks: list[tuple[int, Any]] = []
        while self._events:
            event = self._events.popleft()
            kind, gen = event[0], event[1]
            if gen != self._gen:
                continue  # from a connection already torn down
            if kind == "ack":
                acks.append((event[2], event[3]))
            elif kind == "connack":
                self._process_acks(acks)
                acks = []
                self._on_connack(event[2])
            elif kind == "suback":
                codes = event[2] or []
                if any(getattr(rc, "is_failure", False) for rc in codes):
                    why = f"broker refused the command subscription {self.root}cmd/+ ({codes[0]}); commands will not arrive"
                    log.error("MQTT: %s", why)
                    self._set_status("connected", "connected, but commands are refused by the broker ACL", error=why)
                self.ready.set()
            elif kind == "message":
                self._process_acks(acks)
                acks = []
                self._on_message(event[2])
            elif kind in ("disconnect", "net-exit"):
                self._process_acks(acks)
                acks = []
                if kind == "net-exit" and event[2] is not None:
                    self.stats.network_restarts += 1
                    self._teardown(f"network thread died: {type(event[2]).__name__}: {event[2]}", failed=True)
                elif not self.connected.is_set() and self._fall_back_to_311("closed the connection before a CONNACK"):
                    return
                elif not self.connected.is_set():
                    why = f"{self.url.redacted()} closed the connection before accepting it (no CONNACK)"
                    if self.url.tls:
                        why += ("; with TLS this usually means the broker does not trust this gateway's certificate "
                                "(enrolled? identity/gateway.crt issued by the broker's CA?)")
                    self._teardown(why, failed=True, state="refused")
                else:
                    rc = event[2]
                    code = int(getattr(rc, "value", 0) or 0)
                    why = f"connection to {self.url.redacted()} lost" + (f" ({rc})" if code else "")
                    self._teardown(why, failed=True)
                return
        self._process_acks(acks)

    def _fall_back_to_311(self, what: str) -> bool:
        """Some 3.1.1-only brokers (amqtt, old Mosquitto) drop an MQTT 5 CONNECT without a CONNACK.
        In "auto" mode that is answered like a refusal: the next attempt speaks 3.1.1."""
        if self.config.protocol != "auto" or self._protocol != MQTTProtocolVersion.MQTTv5:
            return False
        log.warning("broker %s %s to an MQTT 5 CONNECT; trying MQTT 3.1.1", self.url.redacted(), what)
        self._protocol = MQTTProtocolVersion.MQTTv311
        self._teardown(f"broker {what} to MQTT 5; falling back to MQTT 3.1.1", failed=False)
        self._next_attempt = 0.0
        return True

    def _on_connack(self, reason_code: Any) -> None:
        assert self._client is not None
        if reason_code.is_failure:
            value = int(getattr(reason_code, "value", 0))
            text = str(reason_code)
            if self.config.protocol == "auto" and self._protocol == MQTTProtocolVersion.MQTTv5 and value in (1, 0x84):
                log.warning("broker %s refuses MQTT 5 (%s); falling back to 3.1.1", self.url.redacted(), text)
                self._protocol = MQTTProtocolVersion.MQTTv311
                self._teardown("falling back to MQTT 3.1.1", failed=False)
                self._next_attempt = 0.0
                return
            state = "refused"
            hint = {4: "bad user name or password", 5: "not authorised", 0x86: "bad user name or password",
                    0x87: "not authorised", 0x8C: "bad authentication method"}.get(value, "")
            self._teardown(f"broker {self.url.redacted()} refused the connection: {text}"
                           + (f" — {hint}; check credentials / certificate and the broker ACL" if hint else ""),
                           failed=True, state=state)
            return
        self._failures = 0
        self.stats.connects += 1
        self.connected.set()
        proto = "5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"
        self._set_status("connected", f"connected to {self.url.redacted()} (MQTT {proto})", protocol=proto)
        log.info("MQTT link up: %s as %s (MQTT %s)", self.url.redacted(), self.gateway_id, proto)
        self._client.publish(self.root + "state", _gateway_state(self.gateway_id, "online"), qos=1, retain=True)
        if self.config.handle_commands:
            self._client.subscribe(self.root + "cmd/+", qos=1)
        else:
            self.ready.set()
        for lane in ob.LANES:
            self._exhausted[lane] = False

    def _connect_failed(self, state: str, message: str) -> None:
        self.stats.connect_failures += 1
        self._failures += 1
        delay = self._backoff()
        log.warning("MQTT link %s: %s; retrying in %.1f s", state, message, delay)
        self._set_status(state, message, error=message)

    def _backoff(self) -> float:
        """Exponential backoff with jitter (half to full of the step), so a fleet does not reconnect in step."""
        step = min(self.config.backoff_max_s, self.config.backoff_min_s * (2 ** min(self._failures - 1, 16)))
        delay = random.uniform(step / 2, step)
        self._next_attempt = time.monotonic() + delay
        return delay

    def _teardown(self, reason: str, *, failed: bool, state: str = "disconnected") -> None:
        client, net = self._client, self._net
        self._client, self._net = None, None
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.ready.clear()
        self._gen += 1  # events still queued from that client are ignored
        if client is not None:
            sock = client.socket()
            try:
                if sock is not None:
                    sock.close()  # not DISCONNECT: an unclean end keeps the last will meaningful
            except OSError:
                pass
            client._thread_terminate = True  # noqa: SLF001 - stop loop_forever promptly
        if net is not None and net is not threading.current_thread():
            net.join(2.0)
        self._flush_deletes(wait=True)  # acknowledged rows must be gone before the cursors rewind
        # Everything un-acknowledged goes out again, oldest first.
        self._sent_before.update(m.id for m in self._inflight.values())
        self._inflight.clear()
        for lane in ob.LANES:
            self._buffers[lane].clear()
            self._cursor[lane] = 0
            self._exhausted[lane] = False
        if failed:
            if was_connected:
                self._failures = 1
            else:
                self._failures += 1
                self.stats.connect_failures += 1
            delay = self._backoff()
            log.warning("MQTT link: %s; reconnecting in %.1f s", reason, delay)
            self._set_status(state, reason, error=reason)

    # ---- feeding paho ---------------------------------------------------------
    def _next_message(self) -> ob.OutboxMessage | None:
        assert self._state is not None
        lanes = ob.LANES
        for i in range(len(lanes)):
            lane = lanes[(self._rr + i) % len(lanes)]
            buf = self._buffers[lane]
            if not buf and not self._exhausted[lane]:
                rows = ob.fetch(self._state.db, lane, self._cursor[lane], BATCH_READ)
                if rows:
                    self._cursor[lane] = rows[-1].id
                    buf.extend(rows)
                if len(rows) < BATCH_READ:
                    self._exhausted[lane] = True
            if buf:
                self._rr = (self._rr + i + 1) % len(lanes)
                return buf.popleft()
        return None

    def _feed(self) -> None:
        client = self._client
        while client is not None and len(self._inflight) < self.window:
            msg = self._next_message()
            if msg is None:
                return
            properties = None
            if self._protocol == MQTTProtocolVersion.MQTTv5:
                properties = Properties(PacketTypes.PUBLISH)
                properties.UserProperty = (SEQ_PROPERTY, str(msg.id))
            info = client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=properties)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
                self._buffers[msg.lane].appendleft(msg)
                log.warning("paho refused to queue %s: %s; will retry", msg.topic, mqtt.error_string(info.rc))
                return
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                self._buffers[msg.lane].appendleft(msg)
                return
            self._inflight[info.mid] = msg
            self.stats.published += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, len(self._inflight))
            if msg.id in self._sent_before:
                self.stats.resent += 1
                self._sent_before.discard(msg.id)

    def _process_acks(self, acks: list[tuple[int, Any]]) -> None:
        if not acks:
            return
        parked: list[tuple[int, str]] = []
        for mid, reason_code in acks:
            msg = self._inflight.pop(mid, None)
            if msg is None:
                continue  # birth message, a command reply, or a duplicate ack
            if reason_code is not None and getattr(reason_code, "is_failure", False):
                why = f"broker refused {msg.topic} (outbox id {msg.id}): {reason_code}"
                parked.append((msg.id, why))
            else:
                self._to_delete.append(msg.id)
                self.stats.acked += 1
                self.stats.last_ack_ns = time.monotonic_ns()
        if parked:
            assert self._state is not None
            with self._state.transaction() as db:
                for row_id, why in parked:
                    ob.park(db, row_id, why)
                    self.stats.parked += 1
                    log.error("MQTT: %s; message parked (kept), fix the ACL/topic then requeue", why)
                ob.set_link_status(db, LINK_NAME, "connected", detail="some messages were refused by the broker", error=parked[-1][1])
        self._flush_deletes()

    def _flush_deletes(self, wait: bool = False) -> None:
        """Hand acknowledged ids to the writer thread (the one writing connection); optionally wait."""
        if self._to_delete and (wait or len(self._to_delete) >= DELETE_BATCH or not self._inflight):
            ids, self._to_delete = self._to_delete, []
            if self.writer is not None and not self.writer.closed:
                self._delete_done = self.writer.delete(ids)
            else:
                assert self._state is not None
                with self._state.transaction() as db:
                    ob.delete(db, ids)
        if wait and self._delete_done is not None:
            try:
                self._delete_done.result(30)
            except Exception as exc:  # noqa: BLE001 - a lost delete only means a duplicate later
                log.warning("could not delete acknowledged outbox rows (%s); they will be sent again", exc)
            self._delete_done = None

    def _check_drained(self) -> None:
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

    # ---- commands -------------------------------------------------------------
    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        assert self._client is not None and self._state is not None
        topic = message.topic
        prefix = self.root + "cmd/"
        if not topic.startswith(prefix) or "/" in topic[len(prefix):]:
            log.warning("MQTT: ignoring a message on unexpected topic %r (%d bytes)", topic[:200], len(message.payload))
            return
        name = topic[len(prefix):]
        props = getattr(message, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        reply_topic = f"{prefix}{name}/reply"
        if response_topic:
            try:
                ob.check_topic(self.root, response_topic)
                reply_topic = response_topic
            except ob.OutboxError:
                log.warning("command %s asked for a reply on %r, outside this gateway's root; replying on %s",
                            name, response_topic, reply_topic)
        nonce = ""
        try:
            try:
                command, _ = self.verifier.parse(bytes(message.payload))
                nonce = command.nonce[:128]
            except CommandRejected:
                pass
            with self._state.synchronous_full(), self._state.transaction() as db:  # a used nonce must survive a power cut
                verified = self.verifier.verify(db, name, bytes(message.payload))
        except CommandRejected as exc:
            self.stats.commands_rejected += 1
            log.warning("MQTT: rejected command %r (nonce %r): %s", name, nonce, exc)
            reply = make_reply(name, nonce, False, error=str(exc))
        else:
            log.info("MQTT: running command %s (nonce %s)", verified.name, verified.nonce)
            reply = self.commands.run(verified)
            if reply.ok:
                self.stats.commands_ok += 1
            else:
                self.stats.commands_rejected += 1
        properties = None
        if self._protocol == MQTTProtocolVersion.MQTTv5 and correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        self._client.publish(reply_topic, ob.to_json_bytes(reply), qos=1, properties=properties)

    def _status_extra(self) -> dict[str, str]:
        return {f"link_{k}": str(v) for k, v in asdict(self.stats).items()}

    # ---- status and shutdown ----------------------------------------------------
    def _set_status(self, state: str, detail: str, *, protocol: str | None = None, error: str | None = None) -> None:
        if self._state is None:
            return
        with self._state.transaction() as db:
            ob.set_link_status(db, LINK_NAME, state, broker=self.url.redacted(), detail=detail, protocol=protocol, error=error)

    def _shutdown(self) -> None:
        client = self._client
        if client is not None and self.connected.is_set():
            # finish what is in flight (bounded), then say goodbye so the will is not sent
            deadline = time.monotonic() + 2.0
            info = client.publish(self.root + "state", _gateway_state(self.gateway_id, "offline"), qos=1, retain=True)
            while (self._inflight or not info.is_published()) and time.monotonic() < deadline and self._client is client:
                self._wake.wait(0.02)
                self._wake.clear()
                self._handle_events()
            self._flush_deletes(wait=True)
            if self._client is client:
                client.disconnect()
                if self._net is not None:
                    self._net.join(2.0)
                self._client, self._net = None, None
        elif client is not None:
            self._teardown("stopping", failed=False)
        self.connected.clear()
        self.ready.clear()
        self._flush_deletes(wait=True)
        self._set_status("stopped", "link stopped by the gateway")


@dataclass(frozen=True)
class DrainReport:
    ok: bool
    delivered: int
    remaining: int
    parked: int
    elapsed_s: float
    link_state: str
    error: str | None = None
    stats: dict[str, int] = field(default_factory=dict)


def drain_outbox(data_dir: Path | str, broker_url: str, timeout: float = 60.0, *,
                 config: LinkConfig | None = None) -> DrainReport:
    """Connect, send every queued message, wait for each PUBACK, disconnect (for `egw sync --once --mqtt URL`).

    ``ok`` is False (exit non-zero) when anything is left (not delivered in
    time, or parked because the broker refused it) or the broker was never
    reached (then not even the custody tree head went out).
    """
    cfg = config or LinkConfig(broker_url, handle_commands=False)
    cfg.broker_url = broker_url
    started = time.monotonic()
    link = MqttLink(data_dir, cfg)
    link.start()
    try:
        link.wait_drained(timeout)
        with State(Path(data_dir)) as state:
            state_before_stop = str(ob.read_link_status(state.db).get(LINK_NAME, {}).get("state", "unknown"))
    finally:
        link.stop()
    with State(Path(data_dir)) as state:
        used = ob.usage(state.db)
        status = ob.read_link_status(state.db).get(LINK_NAME, {})
    never = link.stats.connects == 0
    return DrainReport(
        ok=used.count == 0 and not never, delivered=link.stats.acked, remaining=used.count, parked=used.parked,
        elapsed_s=round(time.monotonic() - started, 3), link_state=state_before_stop,
        error=status.get("last_error") if used.count or never else None, stats=asdict(link.stats),
    )
