"""What the parts of ``egw run`` see of the running station, as protocols.

Why a module of its own: the uplink components (``delivery``) and the device watchers
(``devices``) need the station's config, evidence service, screen state and metrics, and the
runtime that owns those needs the components. Typing both sides against these protocols, rather
than against ``Runtime`` itself, keeps the imports one way: ``runtime`` → ``delivery``/``devices``
→ ``context``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.evidence.evidence_service import EvidenceService
    from gateway.station.live_state import Station
    from gateway.station.metrics import Metrics

__all__ = ["Component", "StationContext"]


class Component(Protocol):
    """A long-lived part of the service (an uplink, a watcher) with a clean stop."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class StationContext(Protocol):
    """The running station, as its components and device watchers use it."""

    config: GatewayConfig
    service: EvidenceService
    station: Station
    metrics: Metrics
    stopping: asyncio.Event
    thread_copy_slots: threading.Semaphore
    result_publishers: list[Callable[[Any], None]]

    def device_recovered(self, name: str) -> None: ...
