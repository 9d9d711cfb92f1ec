"""Device supervision: one task per device, re-opened with backoff, isolated from the rest.

A device workflow is an ``async def run()`` that returns when the device
leaves and raises when it fails. The supervisor restarts a failing one with
exponential backoff and jitter (capped), resets the backoff after a healthy
run, and never lets one device's failure reach another's task.

Each unit counts its consecutive failures (since its last healthy run) and
the delay before its next attempt, so the station can show a device as
failing and when it will be tried again (``on_error`` is called after both
are known).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["Supervisor", "Backoff"]

log = logging.getLogger("egw.supervisor")


@dataclass
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    healthy_after: float = 30.0  # a run this long resets the delay
    current: float = field(default=0.0, init=False)

    def next_delay(self) -> float:
        self.current = self.initial if self.current == 0 else min(self.maximum, self.current * self.factor)
        return self.current * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.current = 0.0


@dataclass
class _Unit:
    name: str
    factory: Callable[[], Awaitable[None]]
    backoff: Backoff
    task: asyncio.Task[None] | None = None
    failures: int = 0  # consecutive, since the last healthy run
    total_failures: int = 0
    last_error: str = ""
    retry_in: float = 0.0  # seconds until the next attempt after the latest failure


class Supervisor:
    def __init__(self, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self.units: dict[str, _Unit] = {}
        self.on_error = on_error

    def start(self, name: str, factory: Callable[[], Awaitable[None]], backoff: Backoff | None = None, restart: bool = True) -> None:
        running = self.units.get(name)
        if running is not None and running.task is not None and not running.task.done():
            return
        unit = _Unit(name, factory, backoff or Backoff())
        unit.task = asyncio.create_task(self._keep(unit, restart), name=f"device:{name}")
        self.units[name] = unit

    async def _keep(self, unit: _Unit, restart: bool) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await unit.factory()
                unit.backoff.reset()
                if not restart:
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the device; report and retry
                if loop.time() - started >= unit.backoff.healthy_after:
                    unit.backoff.reset()
                    unit.failures = 0
                unit.failures += 1
                unit.total_failures += 1
                unit.last_error = f"{type(exc).__name__}: {exc}"
                unit.retry_in = unit.backoff.next_delay()
                log.warning("device %s failed (%s); attempt %d failed, retrying in %.1f s", unit.name,
                            unit.last_error, unit.failures, unit.retry_in)
                if self.on_error:
                    try:
                        self.on_error(unit.name, exc)
                    except Exception:  # noqa: BLE001 - a reporting bug must not end the device's supervision
                        log.exception("reporting the failure of device %s failed", unit.name)
                await asyncio.sleep(unit.retry_in)
                continue
            unit.failures = 0
            await asyncio.sleep(unit.backoff.next_delay())

    async def stop(self, name: str) -> None:
        unit = self.units.pop(name, None)
        if unit and unit.task:
            unit.task.cancel()
            await asyncio.gather(unit.task, return_exceptions=True)

    async def stop_all(self) -> None:
        for name in list(self.units):
            await self.stop(name)
