"""``egw run``'s trust round: counter-seal provisionally sealed documents and time-stamp tree heads.

Every ``EGW_TRUST_ROUND_S`` seconds (default 60) while the service runs, when the platform's trust services
are known (``[platform] trust_services``, or a document queued for its counter-seal names them), the service
runs ``gateway/documents/agency.py`` ``trust_round`` in a worker thread: a platform that was unreachable
when a document was sealed provisionally gets asked again, and every signed tree head gets its RFC 3161
token as soon as the TSA answers. A failed round is logged and retried; it never stops the service.
"""

from __future__ import annotations

import asyncio
import logging
import os

from gateway.station.context import StationContext

__all__ = ["TrustComponent", "ROUND_SETTING"]

log = logging.getLogger("egw.trust")
ROUND_SETTING = "EGW_TRUST_ROUND_S"


def _interval() -> float:
    try:
        return max(0.2, float(os.environ.get(ROUND_SETTING, "60")))
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using 60", ROUND_SETTING, os.environ.get(ROUND_SETTING))
        return 60.0


class TrustComponent:
    """The periodic trust round (a no-op round when nothing is known or owed)."""

    def __init__(self, runtime: StationContext) -> None:
        self.runtime = runtime
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from gateway.documents.agency import remember_trust_services

        url = self.runtime.config.trust_services
        if url:
            remember_trust_services(self.runtime.config.data_dir, url)  # for `egw record new` run through the service
        self.task = asyncio.create_task(self._loop(), name="trust-round")

    async def _loop(self) -> None:
        from gateway.documents.agency import run_trust_round

        interval = _interval()
        while not self.stop_event.is_set():
            if self.runtime.service.identity.enrolled:
                try:
                    report = await asyncio.to_thread(run_trust_round, self.runtime.service, self.runtime.config.trust_services)
                    for provisional, sealed in report.counter_sealed.items():
                        log.info("counter-sealed document %s as %s", provisional, sealed)
                    for problem in report.problems:
                        log.warning("trust round: %s (tried again in %.0f s)", problem, interval)
                except Exception:  # noqa: BLE001 - the round must never take the service down
                    log.exception("trust round failed (tried again in %.0f s)", interval)
            try:
                await asyncio.wait_for(self.stop_event.wait(), interval)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 20)
            except TimeoutError:
                self.task.cancel()
