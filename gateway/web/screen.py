"""Serves the station screen: ``/`` (the page), ``/api/state`` (snapshot JSON),
``/events`` (server-sent events, one per change) and ``/healthz``.

aiohttp because it is a small, well-kept asyncio server that lives on the
service's own event loop: no second process, no framework.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources

from aiohttp import web

from gateway.service.station import Station

__all__ = ["build_app", "ScreenServer"]

HEARTBEAT_S = 15.0


def build_app(station: Station) -> web.Application:
    app = web.Application()
    page = resources.files("gateway.web").joinpath("station.html").read_text(encoding="utf-8")

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"})

    async def state(_: web.Request) -> web.Response:
        return web.json_response(station.snapshot(), dumps=lambda v: json.dumps(v, default=str))

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        queue = station.subscribe()
        try:
            await response.write(b"event: snapshot\ndata: " + json.dumps(station.snapshot(), default=str).encode() + b"\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                await response.write(b"event: update\ndata: " + json.dumps(event, default=str).encode() + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            station.unsubscribe(queue)
        return response

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "gateway_id": station.gateway_id})

    app.router.add_get("/", index)
    app.router.add_get("/api/state", state)
    app.router.add_get("/events", events)
    app.router.add_get("/healthz", health)
    return app


class ScreenServer:
    """Runs the app on the current loop; ``url`` is known after ``start()``."""

    def __init__(self, station: Station, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.station, self.host, self.port = station, host, port
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self.runner = web.AppRunner(build_app(self.station), access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        server = site._server  # noqa: SLF001 - the bound port when 0 was asked for
        port = server.sockets[0].getsockname()[1] if server and server.sockets else self.port  # type: ignore[union-attr]
        self.url = f"http://{self.host}:{port}/"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
