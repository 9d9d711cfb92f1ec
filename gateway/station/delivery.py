"""Uplink components for ``egw run``: the gRPC uploader (and, once configured, the MQTT link)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.station.context import StationContext
    from gateway.uplink.mqtt_link import MqttLink
    from gateway.workflows.rapidtest import RecordedResult
    from protos.egw.v1 import events_pb2

__all__ = ["UploaderComponent"]

log = logging.getLogger("egw.uplink")


def _check_transport(enrolled_insecure: bool, config_insecure: bool) -> None:
    """Plaintext to the platform only when both the enrolment AND this station's config say so.

    Why: the transport is fixed at enrolment (``egw enroll --insecure``); a data directory
    enrolled that way and then deployed under a config that does not ask for plaintext would
    otherwise send evidence unencrypted without anyone having chosen it there. The reverse
    (config insecure, enrolment with TLS) keeps TLS: a config can never switch verification off.
    """
    from gateway.errors import ConfigError

    if enrolled_insecure and not config_insecure:
        raise ConfigError("this gateway was enrolled without TLS (egw enroll --insecure), but the config does not "
                          "allow plaintext to the platform",
                          "re-enrol with TLS (egw enroll without --insecure), or, for a local experiment only, "
                          "set insecure = true under [platform]")
    if config_insecure and not enrolled_insecure:
        log.warning("platform.insecure = true is ignored: this gateway was enrolled with mutual TLS and keeps using it")


class UploaderComponent:
    """Runs the uploader continuously; without enrolment it stays idle and says why (once)."""

    def __init__(self, runtime: StationContext) -> None:
        self.runtime = runtime
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from gateway.uplink.link import load_link
        from gateway.uplink.uploader import Uploader, UploadSettings

        config = self.runtime.config
        try:
            link = load_link(config.data_dir, config.platform_address)
            _check_transport(link.insecure, config.platform_insecure)
        except GatewayError as exc:
            log.warning("uploads are off: %s (%s)", exc, exc.hint)
            self.runtime.station.set_alarm("uplink", f"Not delivering to a platform: {exc}")
            return
        settings = UploadSettings.from_env(concurrency=config.parallel_uploads,
                                           bandwidth=config.bandwidth_bytes_per_s or None)

        def outcome(result: object) -> None:
            from gateway.workflows.dock_session import transitions

            transitions.upload_outcome(result)  # a dock waiting for this receipt releases the recording now
            sent = getattr(result, "bytes_sent", 0) or 0
            if sent:
                self.runtime.metrics.uploaded_bytes.inc(sent)
            if getattr(result, "status", "") == "failed":
                # The item stays queued and is tried again later; without this line the reason was only in
                # state.db (last_error), and a stalled uplink was silent in the service log.
                log.warning("upload of %s failed after %d attempt(s): %s (tried again later)",
                            getattr(result, "evidence_id", "?"), getattr(result, "attempts", 0), getattr(result, "error", "?"))

        self.task = asyncio.create_task(self._supervise(lambda: Uploader(config.data_dir, settings, link=link, on_outcome=outcome)),
                                        name="uploader")

    async def _supervise(self, make_uploader: Callable[[], Any]) -> None:
        """Run the uploader until stopped; if it dies (e.g. a full disk refuses its first database write),
        say so and start a fresh one. Without this one failure stopped every delivery until a restart,
        silently (found by bench/faults.py: egw run restarted while the data disk was full)."""
        delay = 1.0
        while not self.stop_event.is_set():
            try:
                await make_uploader().run(self.stop_event)
                if self.stop_event.is_set():
                    return
                raise RuntimeError("the uploader ended on its own")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the uplink must outlive any one failure
                log.error("the uploader stopped (%s: %s); restarting it in %.0f s", type(exc).__name__, exc, delay)
                self.runtime.station.set_alarm("uplink", f"Uploads interrupted: {exc}; retrying")
                try:
                    await asyncio.wait_for(self.stop_event.wait(), delay)
                except TimeoutError:
                    pass
                self.runtime.station.set_alarm("uplink", None)  # set again if the next one fails too
                delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 8.0)
            except TimeoutError:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)


class MqttComponent:
    """The MQTT link inside ``egw run``: it delivers the durable outbox (evidence state changes and
    signed results, queued by the evidence service and the rapid-test workflow in their own
    transactions, whatever command made them), publishes device states, and answers verified
    commands from the platform."""

    DEVICE_STATE_MIN_INTERVAL_S = 1.0

    def __init__(self, runtime: StationContext) -> None:
        self.runtime = runtime
        self.link: MqttLink | None = None
        self._last_device_publish: dict[str, tuple[float, str, bool]] = {}

    async def start(self) -> None:
        config = self.runtime.config
        if not config.mqtt_url:
            return
        from gateway.uplink.mqtt_config import LinkConfig
        from gateway.uplink.mqtt_link import MqttLink

        # No wiring of evidence or result messages here: the service queues them itself (so
        # `egw sync --once --mqtt URL` delivers the same messages after any standalone command).
        link = MqttLink(config.data_dir, LinkConfig(config.mqtt_url, allow_plaintext_password=config.mqtt_allow_plaintext_password),
                        evidence_service=self.runtime.service)
        await asyncio.to_thread(link.start)
        self.link = link
        self.runtime.station.listeners.append(self._device_event)

    def _device_event(self, event: dict[str, object]) -> None:
        import time

        if event.get("type") != "device" or self.link is None:
            return
        card = event["device"]
        assert isinstance(card, dict)
        key = str(card["device_id"])
        if "://" in key:
            return  # a placeholder until the device's identity is read; its real card follows
        now = time.monotonic()
        last = self._last_device_publish.get(key)
        signature = (str(card["state"]), bool(card["safe_to_undock"]))
        if last and last[1:] == signature and now - last[0] < self.DEVICE_STATE_MIN_INTERVAL_S:
            return  # progress ticks: at most one per second per device; state changes always go out
        self._last_device_publish[key] = (now, *signature)
        self.link.put_device_state(device_message(card))

    async def stop(self) -> None:
        if self.link is not None:
            await asyncio.to_thread(self.link.stop)


def _int(value: object) -> int:
    """``int()`` of a card field: the card is loosely typed (``object``), its numbers are JSON numbers."""
    if isinstance(value, (int, float, str)):
        return int(value)
    raise TypeError(f"a device card field is not a number: {value!r}")


def device_message(card: dict[str, object]) -> events_pb2.DeviceState:
    from google.protobuf.timestamp_pb2 import Timestamp

    from protos.egw.v1 import events_pb2

    at = Timestamp()
    updated = card.get("updated") or 0
    if not isinstance(updated, (int, float, str)):
        raise TypeError(f"a device card's update time is not a number: {updated!r}")
    at.FromSeconds(int(float(updated)))
    return events_pb2.DeviceState(
        device_id=str(card["device_id"]).replace("/", "_").replace("+", "_").replace("#", "_"), kind=str(card["kind"]), state=str(card["state"]),
        battery_percent=_int(card.get("battery_percent") or 0), files_total=_int(card.get("files_total") or 0),
        files_done=_int(card.get("files_receipted") or 0), bytes_total=_int(card.get("bytes_total") or 0),
        bytes_done=_int(card.get("bytes_ingested") or 0), officer_id=str(card.get("officer_no") or ""),
        detail=str(card.get("detail") or ""), at=at, safe_to_undock=bool(card.get("safe_to_undock")),
    )


def result_message(recorded: RecordedResult) -> events_pb2.RapidTestResult:
    """The MQTT form of a recorded rapid-test result (for callers holding a ``RecordedResult``)."""
    from gateway.workflows.rapidtest import result_message as build

    return build(recorded.evidence_id, recorded.document, recorded.envelope)
