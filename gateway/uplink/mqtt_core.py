"""What every part of the MQTT link shares: its attributes and the steps one part asks of another.

``MqttLink`` (``gateway.uplink.mqtt_link``) is one object built from three parts, each in its own
module so each stays readable: the connection and session (``mqtt_session``), the outbox pump
(``mqtt_pump``) and the command replies (``mqtt_replies``). They run on one thread, the link's
supervisor, and share its state; ``LinkCore`` declares that state once (``MqttLink.__init__`` sets
it) and the steps a part calls in another, so each part type-checks on its own.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTProtocolVersion

from gateway.evidence import identity as identity_mod
from gateway.evidence.state import State
from gateway.uplink import outbox as ob
from gateway.uplink.commands import CommandHandler, CommandVerifier
from gateway.uplink.mqtt_config import LINK_NAME, BrokerUrl, LinkConfig, LinkStats

__all__ = ["LinkCore"]


class LinkCore:
    """The state of one MQTT link (set by ``MqttLink.__init__``) and the steps its parts share."""

    data_dir: Path
    config: LinkConfig
    url: BrokerUrl
    identity: identity_mod.Identity
    gateway_id: str
    root: str
    window: int
    stats: LinkStats
    verifier: CommandVerifier
    commands: CommandHandler
    writer: ob.OutboxWriter | None
    connected: threading.Event  # CONNACK accepted: the outbox is being fed
    ready: threading.Event      # …and the command subscription is acknowledged
    _drained: threading.Event
    _stopping: threading.Event
    _wake: threading.Event
    _events: deque[tuple[Any, ...]]
    _thread: threading.Thread | None
    # supervisor-only state
    _client: mqtt.Client | None
    _net: threading.Thread | None
    _gen: int
    _protocol: MQTTProtocolVersion
    _inflight: dict[int, ob.OutboxMessage]
    _buffers: dict[str, deque[ob.OutboxMessage]]
    _cursor: dict[str, int]
    _exhausted: dict[str, bool]
    _dirty: set[str]  # lanes with rows committed since they were last read to the end
    _dirty_lock: threading.Lock
    _pump_lock: threading.Lock  # the in-flight map, the buffers' heads, the acknowledged ids (see mqtt_pump)
    _refill_asked: bool  # the network thread asked the supervisor to read more rows
    _sent_before: set[int]
    _rr: int
    _to_delete: list[int]
    _delete_done: Future[None] | None
    _failures: int
    _next_attempt: float
    _sth_size: int
    _sth_due: float
    _last_poll: float
    _state: State | None

    # ---- status (what `egw status` shows of the link) ---------------------------
    def _set_status(self, state: str, detail: str, *, protocol: str | None = None, error: str | None = None) -> None:
        if self._state is None:
            return
        with self._state.transaction() as db:
            ob.set_link_status(db, LINK_NAME, state, broker=self.url.redacted(), detail=detail, protocol=protocol, error=error)

    # ---- steps one part asks of another (implemented by mqtt_session, mqtt_pump, mqtt_replies) ----
    def _handle_events(self) -> None:
        raise NotImplementedError

    def _teardown(self, reason: str, *, failed: bool, state: str = "disconnected") -> None:
        raise NotImplementedError

    def _feed(self) -> None:
        raise NotImplementedError

    def _on_puback(self, client: mqtt.Client, gen: int, mid: int, reason_code: Any) -> None:
        raise NotImplementedError

    def _park_refused(self, refused: list[tuple[ob.OutboxMessage, Any]]) -> None:
        raise NotImplementedError

    def _flush_deletes(self, wait: bool = False) -> None:
        raise NotImplementedError

    def _check_drained(self) -> None:
        raise NotImplementedError

    def _maybe_tree_head(self, now: float) -> None:
        raise NotImplementedError

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        raise NotImplementedError
