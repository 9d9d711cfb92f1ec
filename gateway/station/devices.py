"""Device watchers for ``egw run``: discovery plus the workflow each device runs.

Each watcher is an ``async`` function the supervisor keeps alive: it raises
when its device fails (the supervisor backs off and restarts it) and returns
only when told to stop. Blocking driver calls run in threads; work that holds
a thread for as long as a device is attached (an analyzer's receive loop, a
recorder's copy) gets a thread of its own (:func:`in_own_thread`), never one
of the event loop's shared executor: that pool has cpu_count + 4 threads, so
six analyzers on a 2-CPU station took all of it and a seventh device, the
station's counters and the disk-full alarm waited forever.

* body cameras on a USB/IP server (``usbip = "HOST:PORT"``) are found by
  polling its device list; local USB recorders (``usb = "VID:PID"``) by
  polling pyusb. Each new recorder gets a dock session: ingest, wait for
  receipts (the uploader runs alongside), release per policy, and a station
  card that says "safe to undock" only when that holds.
* rapid-test analyzers on a serial port (a path, a pyserial URL, or found by
  USB VID:PID through ``serial.tools.list_ports``) stream results into the
  rapid-test pipeline.  One that sends a message beyond the receiver's limits
  (an endless stream of frames, a giant record) is cut off: the link is
  reset through the supervisor's backoff, the refusal is logged and written
  to the custody log, and a station alarm names the analyzer and what to do
  until it delivers a result again.
* fingerprint readers and signature pads are used by signing sessions
  (``egw sign``); their watcher shows whether they are connected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.config import DeviceConfig
from gateway.errors import DeviceError, GatewayError

if TYPE_CHECKING:
    from gateway.station.context import StationContext
    from gateway.workflows.dock import DockWorkflow
    from gateway.workflows.dock_session import DockSession, RecorderReport

__all__ = ["watch_bodycams", "watch_rapidtest", "watch_presence", "in_own_thread"]

log = logging.getLogger("egw.devices")
POLL_S = 1.0
STOP_WAIT_S = 5.0  # how long a cancelled analyzer watcher waits for its thread to acknowledge and close
T = TypeVar("T")


def in_own_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``fn`` in a new (non-daemon) thread; the future settles with its outcome.

    Cancelling the future does not stop ``fn``: the caller signals it (a stop
    event) and may wait for it. A non-daemon thread, like the executor's,
    is waited for at exit rather than killed in the middle of storing evidence.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Any, failed: bool) -> None:
        if future.done():  # cancelled meanwhile: nobody waits for the outcome
            return
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def run() -> None:
        outcome: T | BaseException
        try:
            outcome, failed = fn(), False
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            outcome, failed = exc, True
        try:
            loop.call_soon_threadsafe(settle, outcome, failed)
        except RuntimeError:
            pass  # the loop has closed: the service stopped while this finished

    threading.Thread(target=run, name=name).start()
    return future


# ---- body-worn cameras ------------------------------------------------------------------

def _bodycam_urls(device: DeviceConfig) -> dict[str, str]:
    """{usb serial or busid: url} of the recorders present now."""
    from drivers.bodycam import lookup_model

    found: dict[str, str] = {}
    if device.usbip:
        from firmware_bridge.usb_transport import list_usbip_devices

        host, _, port = device.usbip.rpartition(":")
        for exported in list_usbip_devices(host, int(port)):
            if lookup_model(exported.vid, exported.pid) is not None:
                found[exported.serial or exported.busid] = f"usbip://{device.usbip}/{exported.busid}"
    if device.usb:
        import usb.core

        vid, pid = (int(x, 16) for x in device.usb.split(":"))
        for dev in usb.core.find(find_all=True, idVendor=vid, idProduct=pid) or []:
            serial = getattr(dev, "serial_number", None) or f"{dev.bus}-{dev.address}"
            found[serial] = f"usb://{device.usb}/{serial}"
    return found


async def watch_bodycams(runtime: StationContext, device: DeviceConfig) -> None:
    """New recorders on the bus are docked; recorders found already mounted (a dock interrupted by a
    kill, a crash or ``egw dock``'s Ctrl-C) are adopted — each by one :class:`DockSession` (keyed by
    serial, shared with an ``egw dock`` run inside the service)."""
    from gateway.workflows.dock import DockWorkflow, mounted_serials

    enrolled = (runtime.service.identity.directory / "platform.pem").exists()
    active: dict[str, asyncio.Task[bool]] = {}
    adopted: set[str] = set()  # serials found already mounted and taken over
    workflow = DockWorkflow(runtime.service, locator=device.volumes or "/run/egw/volumes/{serial}",
                            password=device.password, release_policy=runtime.config.release,
                            copy_slots=runtime.thread_copy_slots, platform_enrolled=enrolled)
    try:
        while not runtime.stopping.is_set():
            try:
                present = await asyncio.to_thread(_bodycam_urls, device)
            except Exception as exc:  # the server itself is down: let the supervisor back off
                raise DeviceError(f"{device.name}: cannot list recorders: {exc}") from exc
            for key, url in present.items():
                task = active.get(key)
                if task is None or task.done():
                    active[key] = asyncio.create_task(_dock_one(runtime, device, workflow, key, url), name=f"dock:{url}")
            for serial in await asyncio.to_thread(mounted_serials, device.volumes or ""):
                task = active.get(serial)
                if serial in adopted and task is not None and task.done() and not task.cancelled() \
                        and task.exception() is None and task.result() is False:
                    adopted.discard(serial)  # the adoption failed (e.g. a full disk): try again, it said "retrying"
                if serial not in present and (task is None or task.done()) and serial not in adopted:
                    adopted.add(serial)  # once per mount: a re-plug docks it normally
                    active[serial] = asyncio.create_task(
                        _dock_one(runtime, device, workflow, serial, f"volume://{serial}"), name=f"adopt:{serial}")
            await asyncio.sleep(POLL_S)
    finally:
        for task in active.values():
            task.cancel()
        await asyncio.gather(*active.values(), return_exceptions=True)


async def _dock_one(runtime: StationContext, device: DeviceConfig, workflow: DockWorkflow, key: str, source: str) -> bool:
    """Dock (or adopt) one recorder and show it on ONE card (keyed by the recorder, the same card
    across unplug and re-dock) until it is unplugged; False when it could not even be attached, so
    the caller may try again."""
    from gateway.workflows.dock_session import DockSession, ServiceDelivery, Verdict

    session, joined = DockSession.start_or_join(workflow, source, key=key, delivery=ServiceDelivery(),
                                                cancelled=runtime.stopping.is_set)
    card = _BodycamCard(runtime, device, session)
    session.listeners.append(card.on_event)
    card.show(name=f"{device.name} · {key}", state="docked", detail="reading identity", files_total=0, files_ingested=0, files_receipted=0,
              files_released=0, bytes_total=0, bytes_ingested=0, safe_to_undock=False)
    try:
        if joined:
            report = await asyncio.to_thread(session.wait)
        else:
            report = await in_own_thread(session.run, f"dock:{source}")
    except asyncio.CancelledError:
        session.cancel()
        raise
    finally:
        if card.on_event in session.listeners:
            session.listeners.remove(card.on_event)
    card.on_report(report)
    if report.verdict is Verdict.FAILED:
        runtime.metrics.errors.labels(kind="dock").inc()
        await asyncio.sleep(5)  # the recorder stays listed until re-plugged; do not hammer it
        return False
    volume = session.state.volume
    # Stay on the screen until the recorder is unplugged; then say whether it left safe.
    while not runtime.stopping.is_set() and volume is not None and volume.present():
        await asyncio.sleep(POLL_S)
    if not runtime.stopping.is_set():
        safe = report.safe_to_undock
        card.show(state="undocked" if safe else "error", safe_to_undock=False,
                  detail="undocked" if safe else report.detail if report.verdict is Verdict.ATTENTION
                  else "undocked before every recording was safe: re-dock it")
    return True


class _BodycamCard:
    """One station card per recorder, fed by its dock session's events. Keyed by the recorder
    (``bodycam-<serial>``), so an unplug and re-dock updates the same card instead of adding one;
    byte counters are this session's, never above the total."""

    def __init__(self, runtime: StationContext, device: DeviceConfig, session: DockSession) -> None:
        self.runtime, self.device, self.session = runtime, device, session
        self.card_id = f"bodycam-{session.key}"

    def show(self, **fields: Any) -> None:
        self.runtime.station.update_device(self.card_id, "bodycam", **fields)

    def on_event(self, session: DockSession, event: str, n: int) -> None:
        state = session.state
        if event == "identified":
            if state.device_id and state.device_id != self.card_id:  # the recorder's own serial differs from the bus's
                self.runtime.station.forget_device(self.card_id)
                self.card_id = state.device_id
            self.show(name=f"{self.device.name} · {state.serial}", state="offloading", officer_name=state.officer_name,
                      officer_no=state.officer_no, unit=state.unit_no, battery_percent=state.battery_percent,
                      clock_offset_s=state.clock_offset_s, detail="copying recordings", safe_to_undock=False)
        elif event == "scanned":
            self.show(files_total=len(state.recordings), bytes_total=state.bytes_total, bytes_ingested=0)
        elif event == "bytes":
            self.runtime.metrics.bytes_ingested.inc(n)
            self.show(bytes_ingested=min(session.bytes_done, state.bytes_total))
        elif event == "ingested":
            self.show(files_ingested=state.files_ingested)
        elif event == "report" and session._last is not None:
            self.on_report(session._last)

    def on_report(self, report: RecorderReport) -> None:
        self.show(state=report.verdict.card_state, safe_to_undock=report.safe_to_undock, detail=report.detail,
                  files_total=report.files_total, files_ingested=report.files_stored,
                  files_receipted=report.files_receipted, files_released=report.files_released,
                  bytes_total=report.bytes_total, bytes_ingested=report.bytes_done)


# ---- rapid-test analyzers -----------------------------------------------------------------

def _serial_url(device: DeviceConfig) -> str | None:
    if device.port:
        if "://" in device.port or os.path.exists(device.port):
            return device.port
        return None
    if device.usb:
        from serial.tools import list_ports

        vid, pid = (int(x, 16) for x in device.usb.split(":"))
        for port in list_ports.comports():
            if port.vid == vid and port.pid == pid:
                return str(port.device)
    return None


async def watch_rapidtest(runtime: StationContext, device: DeviceConfig) -> None:
    from drivers.rapidtest import RapidTestAnalyzer, RapidTestError, RapidTestOverflow
    from gateway.workflows.rapidtest import RapidTestPipeline

    card_id = f"rapidtest:{device.name}"
    url = _serial_url(device)
    if url is None:
        runtime.station.update_device(card_id, "rapidtest", name=device.name, state="undocked",
                                      detail=f"{device.port or device.usb} is not present (unplugged, or a wrong path)")
        await asyncio.sleep(POLL_S)
        raise DeviceError(f"{device.name}: port {device.port or device.usb} is not present")
    pipeline = RapidTestPipeline(runtime.service, inspector_id=runtime.config.inspector_id, site=runtime.config.site,
                                 publishers=[lambda r: runtime.station.add_result({**_result_row(r.document), "evidence_id": r.evidence_id,
                                                                                   "delivery": "signed, queued"}),
                                             *runtime.result_publishers])
    stop = threading.Event()

    def aborted(reason: str, transcript: bytes) -> None:
        # Mostly link trouble (a stall, an EOT mid-message) that the instrument recovers from by sending the
        # message again. A malformed record is different: the receiver still ACKs the rest of that message, so
        # the instrument believes it delivered; this warning is then the only trace. Say it once per abort.
        log.warning("rapid-test analyzer %s: an incomplete message was discarded: %s", device.name, reason,
                    extra={"fields": {"device": device.name, "bytes": len(transcript)}})

    def serve() -> None:
        with RapidTestAnalyzer(url, baudrate=device.baud, on_abort=aborted) as analyzer:
            runtime.station.update_device(card_id, "rapidtest", name=device.name, state="docked", detail=f"listening on {url}")
            while not stop.is_set():
                for result in analyzer.results(timeout=0.5):
                    pipeline.record(result)
                    if card_id in runtime.station.alarms:
                        log.info("rapid-test analyzer %s delivers again; alarm cleared", device.name)
                        runtime.station.set_alarm(card_id, None)
                    runtime.device_recovered(card_id)
                    if stop.is_set():
                        analyzer.acknowledge()
                        return

    done = in_own_thread(serve, f"rapidtest:{device.name}")
    try:
        await asyncio.shield(done)
    except RapidTestOverflow as exc:
        await _refused(runtime, device, card_id, url, exc)
        raise DeviceError(f"{device.name}: {exc}") from exc
    except RapidTestError as exc:
        runtime.station.update_device(card_id, "rapidtest", name=device.name, state="error", detail=str(exc))
        raise DeviceError(f"{device.name}: {exc}") from exc
    except asyncio.CancelledError:
        stop.set()  # the loop acknowledges what it stored and closes the port within ~0.5 s
        await asyncio.wait([done], timeout=STOP_WAIT_S)
        if done.done() and not done.cancelled():
            done.exception()  # retrieved: a failure while stopping is no news
        raise


async def _refused(runtime: StationContext, device: DeviceConfig, card_id: str, url: str, exc: Exception) -> None:
    """A message beyond the limits: the operator must hear of it, and the custody log must say it happened."""
    alarm = (f"Rapid-test analyzer '{device.name}' ({url}) sent a message too large to accept; it was refused and "
             "the connection reset. That result was NOT recorded (a working analyzer still holds it). Check the "
             "analyzer's firmware, output settings and cable; if this repeats, re-run or delete that test on the "
             "analyzer. This alarm clears when the analyzer delivers a result again.")
    log.error("rapid-test analyzer %s: message refused, link reset: %s", device.name, exc,
              extra={"fields": {"device": device.name, "port": url}})
    runtime.metrics.errors.labels(kind="device-protocol").inc()
    runtime.station.set_alarm(card_id, alarm)
    runtime.station.update_device(card_id, "rapidtest", name=device.name, state="error",
                                  detail=f"message refused (too large); link reset: {exc}")
    try:
        await asyncio.to_thread(runtime.service.record_event, None, "device-message-refused",
                                {"device": device.name, "kind": "rapidtest", "port": url, "reason": str(exc)})
    except GatewayError as err:  # e.g. the disk is full: the alarm and the log still say it
        log.error("could not write the refusal to the custody log: %s", err)


def _result_row(document: dict[str, Any]) -> dict[str, Any]:
    return {"sample_id": document["sample"]["id"], "sample_description": document["sample"]["description"],
            "item_code": document["item"]["code"], "item_name": document["item"]["name"], "value": document["value"],
            "unit": document["unit"], "judgement": document["judgement"], "tested_at": document["tested_at_instrument_clock"],
            "at": document["received_at"]}


# ---- devices used by signing sessions ------------------------------------------------------

async def watch_presence(runtime: StationContext, device: DeviceConfig) -> None:
    card_id = f"{device.kind}:{device.name}"
    while not runtime.stopping.is_set():
        present = await asyncio.to_thread(_present, device)
        runtime.station.update_device(card_id, device.kind, name=device.name, state="docked" if present else "undocked",
                                      detail="ready for signing sessions (egw sign)" if present else "not connected")
        await asyncio.sleep(5 * POLL_S)


def _present(device: DeviceConfig) -> bool:
    if device.port:
        if device.port.startswith("socket://"):
            import socket

            host, _, port = device.port.removeprefix("socket://").rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return True
            except OSError:
                return False
        return "://" in device.port or os.path.exists(device.port)
    if device.usbip:
        from firmware_bridge.usb_transport import list_usbip_devices

        host, _, port = device.usbip.rpartition(":")
        try:
            return bool(list_usbip_devices(host, int(port)))
        except Exception:  # noqa: BLE001 - presence only
            return False
    return _serial_url(device) is not None
