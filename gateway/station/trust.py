"""``egw run``'s trust round: counter-seal provisionally sealed documents and time-stamp tree heads.

Every ``EGW_TRUST_ROUND_S`` seconds (default 60) while the service runs, when the platform's trust services
are known (``[platform] trust_services``, or a document queued for its counter-seal names them), the service
runs ``gateway/documents/agency.py`` ``trust_round`` in a worker thread: a platform that was unreachable
when a document was sealed provisionally gets asked again, and every signed tree head gets its RFC 3161
token as soon as the TSA answers. The platform CA's revocation list is fetched again every
``EGW_CRL_REFRESH_S`` seconds (default 600) into ``identity/crl.pem``, so bundles exported from a station
that runs for months carry a recent CRL (``egw sync --once`` fetches it too). A failed round is logged and
retried; it never stops the service.
"""

from __future__ import annotations

import asyncio
import logging
import os

from gateway.station.context import StationContext

__all__ = ["TrustComponent", "ROUND_SETTING", "CRL_SETTING"]

log = logging.getLogger("egw.trust")
ROUND_SETTING = "EGW_TRUST_ROUND_S"
CRL_SETTING = "EGW_CRL_REFRESH_S"


def _seconds(setting: str, default: float) -> float:
    try:
        return max(0.2, float(os.environ.get(setting, str(default))))
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", setting, os.environ.get(setting), default)
        return default


def _interval() -> float:
    return _seconds(ROUND_SETTING, 60.0)


def _refresh_crl(runtime: StationContext) -> None:
    """The platform's newest CRL into identity/crl.pem; a failure is a warning (the old list stays)."""
    from gateway.errors import GatewayError
    from gateway.uplink.link import load_link
    from gateway.uplink.revocation import refresh_revocation_list

    try:
        number = refresh_revocation_list(load_link(runtime.config.data_dir))
        log.debug("revocation list number %d kept", number)
    except GatewayError as exc:
        log.warning("revocation list not refreshed: %s (%s)", exc, exc.hint)


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
        """Two cadences on one task: the trust round every ``interval``, the CRL every ``crl_every``."""
        loop = asyncio.get_running_loop()
        interval, crl_every = _interval(), _seconds(CRL_SETTING, 600.0)
        round_due = crl_due = loop.time()
        while not self.stop_event.is_set():
            enrolled = self.runtime.service.identity.enrolled
            if enrolled and loop.time() >= crl_due:
                crl_due = loop.time() + crl_every
                await asyncio.to_thread(_refresh_crl, self.runtime)
            if enrolled and loop.time() >= round_due:
                round_due = loop.time() + interval
                await self._round(interval)
            elif not enrolled:
                round_due = crl_due = loop.time() + interval  # look again later: enrolment may happen meanwhile
            try:
                await asyncio.wait_for(self.stop_event.wait(), max(0.0, min(round_due, crl_due) - loop.time()))
            except TimeoutError:
                pass

    async def _round(self, interval: float) -> None:
        from gateway.documents.agency import run_trust_round

        try:
            report = await asyncio.to_thread(run_trust_round, self.runtime.service, self.runtime.config.trust_services)
            for provisional, sealed in report.counter_sealed.items():
                log.info("counter-sealed document %s as %s", provisional, sealed)
            for problem in report.problems:
                log.warning("trust round: %s (tried again in %.0f s)", problem, interval)
        except Exception:  # noqa: BLE001 - the round must never take the service down
            log.exception("trust round failed (tried again in %.0f s)", interval)

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 20)
            except TimeoutError:
                self.task.cancel()
