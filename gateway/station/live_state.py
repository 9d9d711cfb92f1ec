"""What the station knows right now, for the screen, ``egw status`` and metrics.

Workflows report progress here (from any thread); the screen subscribes and
gets each change as it happens. The snapshot is plain JSON-able data so the
page, the SSE stream and tests all see the same thing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Station", "DeviceCard"]


@dataclass
class DeviceCard:
    device_id: str
    kind: str
    name: str = ""
    state: str = "docked"  # docked | offloading | waiting-for-receipts | safe | attention | undocked | error
    officer_name: str = ""
    officer_no: str = ""
    unit: str = ""
    battery_percent: int | None = None
    files_total: int = 0
    files_ingested: int = 0
    bytes_total: int = 0
    bytes_ingested: int = 0
    files_receipted: int = 0
    files_released: int = 0
    safe_to_undock: bool = False
    detail: str = ""
    clock_offset_s: float | None = None
    failures: int = 0  # consecutive failed attempts (the supervisor's count); 0 once it works again
    retry_in_s: float | None = None  # backoff before the next attempt, after a failure
    updated: float = field(default_factory=time.time)


class Station:
    """Thread-safe state plus fan-out to asyncio subscribers."""

    def __init__(self, gateway_id: str = "") -> None:
        self.gateway_id = gateway_id
        self._lock = threading.Lock()
        self.devices: dict[str, DeviceCard] = {}
        # Read from the state database (gateway.station.records) by the service's refresher, never pushed:
        # each row carries the committed state of its item, whoever made it.
        self.results: list[dict[str, Any]] = []
        self.signings: list[dict[str, Any]] = []
        self.record_hints: list[Callable[[], None]] = []  # "a record may have changed: read it now"
        self.alarms: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = set()
        self.listeners: list[Any] = []  # called in the publishing thread, e.g. to forward device states to MQTT

    # ---- updates (any thread) ------------------------------------------------
    def update_device(self, device_id: str, kind: str, **fields: Any) -> DeviceCard:
        with self._lock:
            card = self.devices.get(device_id) or DeviceCard(device_id=device_id, kind=kind)
            for key, value in fields.items():
                setattr(card, key, value)
            card.updated = time.time()
            self.devices[device_id] = card
            payload = asdict(card)
        self._publish({"type": "device", "device": payload})
        return card

    def remove_device(self, device_id: str) -> None:
        with self._lock:
            card = self.devices.get(device_id)
            if card is None:
                return
            card.state, card.updated = "undocked", time.time()
            payload = asdict(card)
        self._publish({"type": "device", "device": payload})

    def forget_device(self, device_id: str) -> None:
        """Drop a card entirely (a placeholder replaced by the device's real identity)."""
        with self._lock:
            if self.devices.pop(device_id, None) is None:
                return
        self._publish({"type": "device-removed", "device_id": device_id})

    def add_result(self, result: dict[str, Any]) -> None:
        """A workflow says it recorded a result: read the database now (the row itself is not trusted to
        stay current, so it is not kept)."""
        self._hint_records()

    def add_signing(self, record: dict[str, Any]) -> None:
        """Same as ``add_result`` for a signing session."""
        self._hint_records()

    def set_records(self, results: list[dict[str, Any]], signings: list[dict[str, Any]]) -> None:
        """The rows as committed in the state database; subscribers hear only of a change."""
        with self._lock:
            changed = results != self.results or signings != self.signings
            self.results, self.signings = list(results), list(signings)
        if changed:
            self._publish({"type": "records", "results": results, "signings": signings})

    def _hint_records(self) -> None:
        for hint in list(self.record_hints):
            hint()

    def set_alarm(self, key: str, message: str | None) -> None:
        with self._lock:
            if message:
                self.alarms[key] = message
            else:
                self.alarms.pop(key, None)
            alarms = dict(self.alarms)
        self._publish({"type": "alarms", "alarms": alarms})

    def set_counts(self, counts: dict[str, int]) -> None:
        with self._lock:
            changed = counts != self.counts
            self.counts = dict(counts)
        if changed:
            self._publish({"type": "counts", "counts": dict(counts)})

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "gateway_id": self.gateway_id,
                "devices": [asdict(c) for c in sorted(self.devices.values(), key=lambda c: (c.kind, c.name or c.device_id))],
                "results": list(self.results),
                "signings": list(self.signings),
                "alarms": dict(self.alarms),
                "counts": dict(self.counts),
                "at": time.time(),
            }

    # ---- subscribers (asyncio) ----------------------------------------------
    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        with self._lock:
            self._subscribers.add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._subscribers = {s for s in self._subscribers if s[1] is not queue}

    def _publish(self, event: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - an uplink problem must never stop the station's own state
                import logging

                logging.getLogger("egw.station").exception("station listener failed")
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            try:
                loop.call_soon_threadsafe(_offer, queue, event)
            except RuntimeError:  # that loop has closed
                self.unsubscribe(queue)


def _offer(queue: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    """A slow page must never block the station: drop its oldest update, it reloads the snapshot."""
    if queue.full():
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
    queue.put_nowait(event)
