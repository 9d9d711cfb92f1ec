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
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.config import DeviceConfig
from gateway.errors import DeviceError, GatewayError

if TYPE_CHECKING:
    from gateway.service.runtime import Runtime
    from gateway.workflows.dock import DockSession, DockWorkflow

__all__ = ["watch_bodycams", "watch_rapidtest", "watch_presence", "in_own_thread"]

log = logging.getLogger("egw.devices")
POLL_S = 1.0
_SERIAL = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what drivers.bodycam.TemplateLocator accepts as a serial
STOP_WAIT_S = 5.0  # how long a cancelled analyzer watcher waits for its thread to acknowledge and close
T = TypeVar("T")


def in_own_thread(fn: Callable[[], T], name: str) -> "asyncio.Future[T]":
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


async def watch_bodycams(runtime: "Runtime", device: DeviceConfig) -> None:
    from gateway.workflows.dock import DockWorkflow

    enrolled = (runtime.service.identity.directory / "platform.pem").exists()
    active: dict[str, asyncio.Task[None]] = {}
    adopted: set[str] = set()  # serials found already mounted and taken over
    listeners: dict[str, Any] = {}  # url -> that recorder's progress callback

    def progress(session: "DockSession", event: str, n: int) -> None:
        listener = listeners.get(session.url)
        if listener is not None:
            listener(session, event, n)

    workflow = DockWorkflow(runtime.service, locator=device.volumes or "/run/egw/volumes/{serial}",
                            password=device.password, release_policy=runtime.config.release, progress=progress,
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
                    active[key] = asyncio.create_task(_dock_one(runtime, device, workflow, url, listeners), name=f"dock:{url}")
            for serial in await asyncio.to_thread(_mounted_serials, device):
                task = active.get(serial)
                if serial in adopted and task is not None and task.done() and not task.cancelled() \
                        and task.exception() is None and task.result() is False:
                    adopted.discard(serial)  # the adoption failed (e.g. a full disk): try again, it said "retrying"
                if serial not in present and (task is None or task.done()) and serial not in adopted:
                    adopted.add(serial)  # once per mount: a re-plug docks it normally
                    active[serial] = asyncio.create_task(
                        _dock_one(runtime, device, workflow, f"volume://{serial}", listeners), name=f"adopt:{serial}")
            await asyncio.sleep(POLL_S)
    finally:
        for task in active.values():
            task.cancel()
        await asyncio.gather(*active.values(), return_exceptions=True)


async def _dock_one(runtime: "Runtime", device: DeviceConfig, workflow: "DockWorkflow", url: str,
                    listeners: dict[str, Any]) -> bool:
    """Dock (or adopt) one recorder and follow it until it is safe or unplugged; False when it could
    not even be attached, so the caller may try again."""
    station = runtime.station
    card_id = url

    def progress(session: "DockSession", event: str, n: int) -> None:
        nonlocal card_id
        if event == "identified":
            if card_id != session.device_id:
                station.forget_device(card_id)
            card_id = session.device_id
            station.update_device(card_id, "bodycam", name=f"{device.name} · {session.serial}", state="offloading",
                                  officer_name=session.officer_name, officer_no=session.officer_no, unit=session.unit_no,
                                  battery_percent=session.battery_percent, clock_offset_s=session.clock_offset_s,
                                  detail="copying recordings", safe_to_undock=False)
        elif event == "scanned":
            station.update_device(card_id, "bodycam", files_total=len(session.recordings), bytes_total=session.bytes_total)
        elif event == "bytes":
            card = station.devices.get(card_id)
            station.update_device(card_id, "bodycam", bytes_ingested=(card.bytes_ingested if card else 0) + n)
            runtime.metrics.bytes_ingested.inc(n)
        elif event == "ingested":
            station.update_device(card_id, "bodycam", files_ingested=session.files_ingested)

    listeners[url] = progress
    station.update_device(card_id, "bodycam", name=device.name, state="docked", detail="reading identity")
    try:
        if url.startswith("volume://"):
            session = await in_own_thread(lambda: workflow.adopt(url.removeprefix("volume://")), f"adopt:{url}")
        else:
            session = await in_own_thread(lambda: workflow.attach(url), f"dock:{url}")
    except Exception as exc:  # noqa: BLE001 - e.g. SQLite "disk full" is not a GatewayError: still say it
        detail = str(exc) if isinstance(exc, GatewayError) else f"unexpected {type(exc).__name__}: {exc}; retrying"
        station.update_device(card_id, "bodycam", state="error", detail=detail, safe_to_undock=False)
        runtime.metrics.errors.labels(kind="dock").inc()
        log.warning("dock %s failed: %s", url, detail, exc_info=not isinstance(exc, GatewayError))
        await asyncio.sleep(5)  # the recorder stays listed until re-plugged; do not hammer it
        return False
    # Wait for receipts (the uploader runs in the same process), releasing as they arrive; stop waiting
    # once waiting can change nothing (everything copied is safe and released, or the officer must act).
    while not runtime.stopping.is_set():
        try:
            await asyncio.to_thread(workflow.release, session)
            summary = await asyncio.to_thread(workflow.summary, session)
        except Exception as exc:  # noqa: BLE001 - a failed release round (full disk…) is retried, not fatal
            log.warning("dock %s: release check failed (%s: %s); retrying", url, type(exc).__name__, exc)
            station.update_device(card_id, "bodycam", safe_to_undock=False, detail=f"waiting: {exc}")
            await asyncio.sleep(5)
            continue
        rows = summary["recordings"]
        receipted = sum(1 for r in rows if r["state"] in ("receipted", "released"))
        released = sum(1 for r in rows if r["released"])
        safe = summary["safe_to_undock"]
        state, detail = _verdict(summary)
        station.update_device(card_id, "bodycam", state=state, safe_to_undock=safe,
                              files_receipted=receipted, files_released=released, detail=detail)
        settled = workflow.release_policy != "receipt" or not workflow.platform_enrolled or all(
            r["released"] for r in rows if r["safe"])
        if state in ("safe", "attention") and settled:
            break
        if session.volume is not None and not session.volume.present():
            station.update_device(card_id, "bodycam", state="undocked" if safe else "error", safe_to_undock=False,
                                  detail="undocked" if safe else detail if state == "attention"
                                  else "undocked before every recording was safe: re-dock it")
            return True
        await asyncio.sleep(POLL_S)
    # Stay on the screen until the recorder is unplugged.
    while not runtime.stopping.is_set() and session.volume is not None and session.volume.present():
        await asyncio.sleep(POLL_S)
    station.remove_device(card_id)
    return True


def _verdict(summary: dict[str, Any]) -> tuple[str, str]:
    """(card state, what the officer reads). "attention" when waiting will not make the recorder safe:
    something on it was not copied, or changed after it was copied; the text says what to do."""
    rows = summary["recordings"]
    if summary["safe_to_undock"]:
        return "safe", "every recording is safe"
    problems = list(summary["attention"])
    failed = [r for r in rows if not r["evidence_id"]]
    if failed:
        problems.append(f"{len(failed)} recording{'s' if len(failed) > 1 else ''} could not be copied (e.g. "
                        f"{failed[0]['device_path']}: {failed[0]['error'] or 'not ingested'}); re-dock the recorder "
                        "to copy again.")
    problems += [f"{r['device_path']}: {r['error']}" for r in rows if r["changed_on_device"]][:1]
    waiting = sum(1 for r in rows if r["evidence_id"] and not r["safe"] and not r["changed_on_device"])
    if waiting or not problems:
        return "waiting-for-receipts", " ".join(["waiting for platform receipts" + (f" ({waiting} to go)" if waiting else ""),
                                                  *problems])
    copied = "Every recording it copied is safe." if any(r["safe"] for r in rows) else ""
    return "attention", " ".join([*problems, copied]).strip()


def _mounted_serials(device: DeviceConfig) -> list[str]:
    """Serials whose volume is mounted under the locator template (``…/{serial}`` as the last part).
    Other directories there (a mount in progress, ``.<serial>.mounting``; anything whose name could
    not be a serial) are not recorders."""
    template = device.volumes or ""
    if not template.endswith("/{serial}"):
        return []
    root = template[: -len("/{serial}")]
    try:
        return sorted(entry.name for entry in os.scandir(root) if _SERIAL.fullmatch(entry.name)
                      and entry.is_dir(follow_symlinks=False) and any(os.scandir(entry.path)))
    except OSError:
        return []


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


async def watch_rapidtest(runtime: "Runtime", device: DeviceConfig) -> None:
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


async def _refused(runtime: "Runtime", device: DeviceConfig, card_id: str, url: str, exc: Exception) -> None:
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

async def watch_presence(runtime: "Runtime", device: DeviceConfig) -> None:
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
