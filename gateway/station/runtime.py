"""The station service: everything ``egw run`` keeps running on one event loop.

Blocking work (file copies, device I/O) runs in threads; the loop only
coordinates. SIGTERM/SIGINT stop the service gracefully (in-flight work is
given up to ``STOP_GRACE_S`` to finish, state is flushed) and exit 0; SIGHUP
reloads the device list from the config file.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import DeviceConfig, GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.evidence import writer_lock
from gateway.evidence.evidence_service import EvidenceService
from gateway.station.context import Component
from gateway.station.control import ControlServer
from gateway.station.delivery import MqttComponent, UploaderComponent
from gateway.station.live_state import Station
from gateway.station.metrics import Metrics
from gateway.station.supervisor import Backoff, Supervisor

if TYPE_CHECKING:
    from gateway.station.records import RecordFeed
    from gateway.terminal.server import TerminalServer

__all__ = ["Runtime", "Component", "DEVICE_WATCHERS", "STOP_GRACE_S"]

log = logging.getLogger("egw.run")
STOP_GRACE_S = 8.0


# kind -> factory(station context, device config) returning the coroutine that watches/serves that device entry
DeviceWatcherFactory = Callable[["Runtime", DeviceConfig], Awaitable[None]]
DEVICE_WATCHERS: dict[str, str] = {
    "bodycam": "gateway.station.devices:watch_bodycams",
    "rapidtest": "gateway.station.devices:watch_rapidtest",
    "fingerprint": "gateway.station.devices:watch_presence",
    "signpad": "gateway.station.devices:watch_presence",
}


def _split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def _hold_data_dir(data_dir: Path) -> writer_lock.WriterLock:
    """Take the data directory's writer lock as the service: wait for a command that is writing (it says
    so in the log), refuse to be a second `egw run` on the same directory."""

    def refuse_second_service(holder: writer_lock.Holder) -> bool:
        if holder.service:
            raise writer_lock.WriterBusyError(f"{holder.describe()} already serves {data_dir}",
                                              "stop that service first, or give this one another data_dir")
        return False

    lock = writer_lock.acquire(data_dir, service=True, command="egw run", give_way=refuse_second_service,
                               on_wait=lambda h: log.warning("waiting for %s to finish with %s…", h.describe(), data_dir))
    assert lock is not None
    return lock


def _start_memory_debug() -> None:
    """Debug only: with ``EGW_DEBUG_TRACEMALLOC=path`` set, a daemon thread appends to ``path`` every
    ``EGW_DEBUG_TRACEMALLOC_EVERY`` seconds (default 60) the RSS, the threads, the Python object types and
    the allocation sites that grew since a warm-up, so a slow creep in a soak can be told apart: Python
    objects piling up (a leak) or the allocator keeping freed memory (RSS grows, the sites do not)."""
    path = os.environ.get("EGW_DEBUG_TRACEMALLOC")
    if not path:
        return
    from gateway.station.memory_debug import dump_forever

    every = float(os.environ.get("EGW_DEBUG_TRACEMALLOC_EVERY", "60"))
    threading.Thread(target=dump_forever, args=(Path(path), every), daemon=True, name="egw-memdebug").start()


class Runtime:
    def __init__(self, config: GatewayConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.writer_lock = _hold_data_dir(config.data_dir)  # before anything opens the store: one writer
        self.service = EvidenceService(config.data_dir, reserve_bytes=config.reserve_mb << 20, with_sm3=config.sm3)
        self.station = Station(self.service.identity.gateway_id)
        self.metrics = Metrics()
        self.supervisor = Supervisor(on_error=self._device_failed)
        self.components: list[Component] = []
        self.result_publishers: list[Callable[[Any], None]] = []  # rapid-test results, e.g. to MQTT
        self.stopping = asyncio.Event()
        self.thread_copy_slots = threading.Semaphore(config.parallel_copies)  # shared by every recorder's copies
        self.screen_url = ""
        self.metrics_url = ""
        self.terminal: TerminalServer | None = None
        self._reload_requested = False
        self.control: ControlServer | None = None

    # ---- lifecycle -------------------------------------------------------------
    async def run(self, ready: Callable[[dict[str, Any]], None] | None = None) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        _start_memory_debug()
        await self._start_outputs()
        self.control = ControlServer(self.config.data_dir, self.service)
        self.control.start()
        from gateway.station.trust import TrustComponent

        self.components[:0] = [MqttComponent(self), UploaderComponent(self), TrustComponent(self)]
        for component in self.components:
            await component.start()
        self._start_devices(self.config.devices)
        refresher = asyncio.create_task(self._refresh_counts(), name="counts")
        info = {"gateway_id": self.station.gateway_id, "screen": self.screen_url, "metrics": self.metrics_url,
                "devices": [d.name for d in self.config.devices]}
        if self.terminal is not None:
            info |= {"terminal_api": self.terminal.api_url, "terminal_pairing": self.terminal.pairing_url}
        log.info("egw running", extra={"fields": info})
        if ready:
            ready(info)
        await self._serve_until_stopped()
        log.info("stopping: finishing work in flight")
        refresher.cancel()
        await self._stop_everything()
        return 0

    async def _serve_until_stopped(self) -> None:
        """Wake every half second for a SIGHUP reload until SIGTERM/SIGINT. One task waits for the stop
        signal the whole time: a new one per wake-up was never cancelled by the timeout and stayed
        parked on the event for the life of the service, two more every second (issue 13's soak:
        ~0.75 KiB each, the top growing allocation site, an idle station's RSS +7.6 MB/h)."""
        stopped = asyncio.create_task(self.stopping.wait(), name="stop-signal")
        while not stopped.done():
            await asyncio.wait([stopped], timeout=0.5)
            if self._reload_requested:
                self._reload_requested = False
                await self.reload_devices()

    async def _start_outputs(self) -> None:
        """Metrics, the terminal API and the station screen. A listen address another program holds is an
        operator's configuration problem: said in one line naming the key, with everything started so far stopped."""
        try:
            if self.config.metrics_listen:
                where = ("[metrics] listen", self.config.metrics_listen)
                host, port = _split_host_port(self.config.metrics_listen)
                bound = self.metrics.serve(host, port, self.config.hostnames)
                self.metrics_url = f"http://{host}:{bound}/metrics"
            if self.config.terminal_listen:
                from gateway.terminal.server import TerminalServer

                where = ("[terminal] listen", self.config.terminal_listen)
                pairing = self.config.terminal_pairing_listen or f"{_split_host_port(self.config.terminal_listen)[0]}:0"
                self.terminal = TerminalServer(self.service, self.station, api_listen=_split_host_port(self.config.terminal_listen),
                                               pairing_listen=_split_host_port(pairing), server_names=self.config.terminal_names,
                                               announce=self.config.terminal_announce,
                                               signing_devices=lambda: self.config.devices)  # as reloaded by SIGHUP
                await self.terminal.start()
            if self.config.screen_listen:
                from gateway.web.screen import ScreenServer

                where = ("[screen] listen", self.config.screen_listen)
                host, port = _split_host_port(self.config.screen_listen)
                self.screen = ScreenServer(self.station, host, port, self.config.hostnames,
                                           pairing=self.terminal.pairing_offer if self.terminal else None, service=self.service)
                self.screen_url = await self.screen.start()
                from gateway.workflows.delivery import SCREEN_URL_FILE

                (self.config.data_dir / SCREEN_URL_FILE).write_text(self.screen_url + "\n", encoding="utf-8")  # delivery links
        except OSError as exc:
            self.metrics.stop()
            if self.terminal is not None:
                await self.terminal.stop()
            self.service.close()
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigError(f"cannot listen on {where[1]} ({where[0]} in {self.config_path or 'the configuration'}): {reason}",
                              f"stop the program using it (`ss -ltnp 'sport = :{where[1].rpartition(':')[2]}'` names it), "
                              f"or set {where[0]} to a free port, or to \"\" to turn it off") from exc

    async def _stop_everything(self) -> None:
        async def stop_all() -> None:
            if self.control is not None:
                await asyncio.to_thread(self.control.stop, STOP_GRACE_S / 2)  # commands run for clients first
            await self.supervisor.stop_all()
            for component in reversed(self.components):
                await component.stop()

        try:
            await asyncio.wait_for(stop_all(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("some work did not stop within %.0f s; it resumes at the next start", STOP_GRACE_S)
        if self.config.screen_listen:
            await self.screen.stop()
        if self.terminal is not None:
            await self.terminal.stop()
        self.metrics.stop()
        self.service.sign_tree_head()
        self.service.close()
        writer_lock.release(self.writer_lock)

    # ---- devices ---------------------------------------------------------------
    def _start_devices(self, devices: tuple[DeviceConfig, ...]) -> None:
        import importlib

        for device in devices:
            target = DEVICE_WATCHERS.get(device.kind)
            if target is None:
                raise ConfigError(f"device {device.name!r}: this build has no workflow for {device.kind!r} devices",
                                  "remove the entry or upgrade egw")
            module_name, _, function = target.partition(":")
            factory: DeviceWatcherFactory = getattr(importlib.import_module(module_name), function)
            # A serial analyzer or pad is cheap to retry (a stat, an open, a loopback/LAN connect) and an
            # officer who re-plugs one expects it back within seconds: cap its backoff at 5 s, not 30.
            backoff = Backoff(maximum=5.0) if device.kind != "bodycam" else Backoff()
            self.supervisor.start(f"{device.kind}:{device.name}", functools.partial(factory, self, device), backoff)

    def _device_failed(self, name: str, exc: BaseException) -> None:
        """Count the failure and show it on the device's card with when it is tried again."""
        self.metrics.errors.labels(kind="device").inc()
        self.metrics.device_failures.labels(device=name).inc()
        unit = self.supervisor.units.get(name)
        if unit is None:
            return
        self.metrics.device_retry_in.labels(device=name).set(round(unit.retry_in, 1))
        card = self.station.devices.get(name)  # rapid-test and presence cards are named like their unit
        if card is not None:
            self.station.update_device(name, card.kind, failures=unit.failures, retry_in_s=round(unit.retry_in, 1),
                                       detail=f"{card.detail} (attempt {unit.failures} failed; "
                                              f"next in {unit.retry_in:.1f} s)")

    def device_recovered(self, name: str) -> None:
        """A device delivered again: clear its failure count (card and metrics)."""
        self.metrics.device_retry_in.labels(device=name).set(0)
        card = self.station.devices.get(name)
        if card is not None and (card.failures or card.retry_in_s is not None):
            self.station.update_device(name, card.kind, failures=0, retry_in_s=None)

    def _request_reload(self) -> None:
        self._reload_requested = True

    async def reload_devices(self) -> None:
        if self.config_path is None:
            return
        try:
            fresh = load_config(self.config_path, data_dir_override=self.config.data_dir)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        old = {f"{d.kind}:{d.name}": d for d in self.config.devices}
        new = {f"{d.kind}:{d.name}": d for d in fresh.devices}
        for name in old.keys() - new.keys() | {n for n in old.keys() & new.keys() if old[n] != new[n]}:
            await self.supervisor.stop(name)
        self.config = GatewayConfig(**{**self.config.__dict__, "devices": fresh.devices})
        self._start_devices(tuple(d for n, d in new.items() if n not in self.supervisor.units))
        log.info("SIGHUP: device list reloaded", extra={"fields": {"devices": sorted(new)}})

    # ---- periodic --------------------------------------------------------------
    def _wire_records(self, wake: asyncio.Event) -> RecordFeed:
        """The screen's results and signing rows come from the state database; a commit touching one of
        them (in this process) wakes the refresher at once, other processes' commits within a second."""
        from gateway.station.records import RECORD_MEDIA_TYPES, RecordFeed

        loop = asyncio.get_running_loop()

        def poke() -> None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has closed: the service is stopping
                pass

        def on_transition(_db: Any, row: Any, _details: dict[str, Any]) -> None:
            if row.media_type in RECORD_MEDIA_TYPES:
                poke()

        self.service.transition_hooks.append(on_transition)
        self.station.record_hints.append(poke)
        return RecordFeed(self.service)

    async def _refresh_counts(self) -> None:
        wake = asyncio.Event()
        feed = self._wire_records(wake)
        while True:
            wake.clear()
            try:
                self.station.set_records(*await asyncio.to_thread(feed.refresh))
                status = await asyncio.to_thread(self.service.status)
                self.station.set_counts(status["counts"])
                for state, n in status["counts"].items():
                    self.metrics.items_by_state.labels(state=state).set(n)
                pending = sum(status["counts"][s] for s in ("ingested", "queued", "uploading"))
                self.metrics.queue_depth.set(pending)
                oldest = status["oldest_unreceipted"]
                self.metrics.queue_oldest_age.set(oldest["age_s"] if oldest else 0)
                self.metrics.devices.clear()
                for card in self.station.snapshot()["devices"]:
                    if card["state"] != "undocked":
                        self.metrics.devices.labels(kind=card["kind"]).inc()
                self.station.set_alarm("disk", None if status["disk"]["free_bytes"] > (self.config.reserve_mb << 20)
                                       else f"Disk nearly full ({status['disk']['free_bytes'] >> 20} MB free): ingest stopped, data stays on the devices")
            except Exception:  # noqa: BLE001 - the refresher must never take the service down
                log.exception("status refresh failed")
            try:
                await asyncio.wait_for(wake.wait(), 1.0)
            except TimeoutError:
                pass


