"""The MQTT link: drains the durable outbox into paho, with back-pressure, and takes commands.

Threads and who owns what::

    producers ──submit──► OutboxWriter ──commit (fsync)──► outbox table
                                 │ wake            ▲ deletes (batched)
                                 ▼                 │
    supervisor thread  (owns the paho client, the lane cursors, its own SQLite
        │               connection; connects, reconnects with backoff + jitter,
        │               reads committed rows ahead into the lane buffers, starts
        │               the flow when nothing is in flight, parks refusals, runs commands)
        │  lane buffers (committed rows)               ▲ refusals / messages / disconnects
        ▼                                              │ (queued, then wake)
    network thread  (client.loop_forever(); one per connection; on each PUBACK it
                     settles the message and publishes the next from the buffers,
                     in on_publish: no hand-off per PUBACK (#18); if it dies the
                     supervisor notices, drops the client and connects a new one)

Delivery rules:
- A message is read from the table, so it was committed before paho sees it
  (the buffers the network thread publishes from hold only rows read back from it).
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

The link is one object in parts: ``mqtt_config`` (settings, counters), ``mqtt_core`` (the state the
parts share), ``mqtt_session`` (connection and session), ``mqtt_pump`` (the outbox pump) and
``mqtt_replies`` (commands); this module puts them together and adds ``drain_outbox``.
``mqtt_client`` is paho made cheaper per message (the client the session connects with).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion

from gateway.errors import ConfigError
from gateway.evidence import identity as identity_mod
from gateway.evidence.state import State
from gateway.uplink import outbox as ob
from gateway.uplink.commands import CommandHandler, CommandVerifier, load_command_signer
from gateway.uplink.mqtt_config import (
    LINK_NAME,
    LinkConfig,
    LinkStats,
    parse_broker_url,
)
from gateway.uplink.mqtt_pump import OutboxPump
from gateway.uplink.mqtt_replies import CommandReplies
from gateway.uplink.mqtt_session import LinkSession
from protos.egw.v1 import events_pb2

__all__ = ["DrainReport", "MqttLink", "drain_outbox", "link_status"]


def link_status(data_dir: Path | str) -> dict[str, Any]:
    """For `egw status`: the MQTT link's state, last error and outbox backlog (see ``outbox.mqtt_status``)."""
    return ob.mqtt_status(data_dir)


class MqttLink(LinkSession, OutboxPump, CommandReplies):
    """One gateway's MQTT connection, fed from the durable outbox."""

    def __init__(self, data_dir: Path | str, config: LinkConfig, *, identity: identity_mod.Identity | None = None,
                 sync_time_hooks: list[Callable[[dict[str, str]], dict[str, str] | None]] | None = None,
                 evidence_service: Any = None) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        self.url = parse_broker_url(config.broker_url, allow_plaintext_password=config.allow_plaintext_password)
        self.identity = identity or identity_mod.load_identity(self.data_dir)
        self.gateway_id = self.identity.gateway_id
        self.root = ob.topic_root(self.gateway_id)
        self.window = config.window or config.max_inflight
        self.stats = LinkStats()
        platform_source = config.platform_cert
        default_platform = self.data_dir / "identity" / "platform.pem"
        if platform_source is None and default_platform.exists():
            platform_source = default_platform
        self.verifier = CommandVerifier(self.gateway_id, load_command_signer(platform_source))
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
        self._pump_lock = threading.Lock()
        self._refill_asked = False
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
        self._unlisten: Callable[[], None] = lambda: None

    # ---- public API ---------------------------------------------------------
    def start(self) -> MqttLink:
        if self._thread is not None:
            raise ConfigError("the MQTT link is already started")
        # Open (and migrate) the database here, before any thread: concurrent first opens race.
        self._state = State(self.data_dir)
        self.writer = ob.OutboxWriter(self.data_dir, self.gateway_id, on_commit=self._on_commit)
        # rows this process queues inside evidence transactions (rapid-test results…) wake us at once
        self._unlisten = ob.COMMIT_BELL.listen(self._on_commit)
        self._thread = threading.Thread(target=self._supervise, name=f"egw-mqtt-{self.gateway_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is in flight, publish ``offline`` (retained), disconnect cleanly.

        Messages handed to ``publish`` are committed before this returns (they
        go out on the next start or ``drain_outbox``).
        """
        self._unlisten()
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.writer is not None:
            self.writer.close(timeout)

    def __enter__(self) -> MqttLink:
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

    # ---- callbacks (the writer) ---------------------------------------------
    def _on_commit(self, lanes: set[str]) -> None:
        with self._dirty_lock:
            self._dirty.update(lanes)
        self._drained.clear()
        self._wake.set()


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
                 config: LinkConfig | None = None, allow_plaintext_password: bool = False) -> DrainReport:
    """Connect, send every queued message, wait for each PUBACK, disconnect (for `egw sync --once --mqtt URL`).

    ``ok`` is False (exit non-zero) when anything is left (not delivered in
    time, or parked because the broker refused it) or the broker was never
    reached (then not even the custody tree head went out).
    """
    cfg = config or LinkConfig(broker_url, handle_commands=False)
    cfg.broker_url = broker_url
    cfg.allow_plaintext_password = cfg.allow_plaintext_password or allow_plaintext_password
    parse_broker_url(broker_url, allow_plaintext_password=cfg.allow_plaintext_password)  # refuse before touching anything
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
