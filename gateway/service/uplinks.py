"""Uplink components for ``egw run``: the gRPC uploader (and, once configured, the MQTT link)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.service.runtime import Runtime

__all__ = ["UploaderComponent"]

log = logging.getLogger("egw.uplink")


class UploaderComponent:
    """Runs the uploader continuously; without enrolment it stays idle and says why (once)."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from gateway.uplink.link import load_link
        from gateway.uplink.uploader import UploadSettings, Uploader

        config = self.runtime.config
        try:
            link = load_link(config.data_dir, config.platform_address)
        except GatewayError as exc:
            log.warning("uploads are off: %s (%s)", exc, exc.hint)
            self.runtime.station.set_alarm("uplink", f"Not delivering to a platform: {exc}")
            return
        settings = UploadSettings.from_env(concurrency=config.parallel_uploads,
                                           bandwidth=config.bandwidth_bytes_per_s or None)

        def outcome(result: object) -> None:
            sent = getattr(result, "bytes_sent", 0) or 0
            if sent:
                self.runtime.metrics.uploaded_bytes.inc(sent)

        uploader = Uploader(config.data_dir, settings, link=link, on_outcome=outcome)
        self.task = asyncio.create_task(uploader.run(self.stop_event), name="uploader")

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 8.0)
            except asyncio.TimeoutError:
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
