"""Device supervision: one task per device, re-opened with backoff, isolated from the rest.

A device workflow is an ``async def run()`` that returns when the device
leaves and raises when it fails. The supervisor restarts a failing one with
exponential backoff and jitter (capped), resets the backoff after a healthy
run, and never lets one device's failure reach another's task.
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
    failures: int = 0
    last_error: str = ""


class Supervisor:
    def __init__(self, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self.units: dict[str, _Unit] = {}
        self.on_error = on_error

    def start(self, name: str, factory: Callable[[], Awaitable[None]], backoff: Backoff | None = None, restart: bool = True) -> None:
        if name in self.units and self.units[name].task and not self.units[name].task.done():  # type: ignore[union-attr]
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
                unit.failures += 1
                unit.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("device %s failed (%s); retrying", unit.name, unit.last_error)
                if self.on_error:
                    self.on_error(unit.name, exc)
                if loop.time() - started >= unit.backoff.healthy_after:
                    unit.backoff.reset()
            await asyncio.sleep(unit.backoff.next_delay())

    async def stop(self, name: str) -> None:
        unit = self.units.pop(name, None)
        if unit and unit.task:
            unit.task.cancel()
            await asyncio.gather(unit.task, return_exceptions=True)

    async def stop_all(self) -> None:
        for name in list(self.units):
            await self.stop(name)
