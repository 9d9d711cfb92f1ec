"""The terminal listeners on the ``egw run`` loop: the mutual-TLS API and the server-TLS pairing port.

Two ports because they trust differently: the API requires a client certificate from the station's
terminal CA at the handshake (``ssl.CERT_REQUIRED``); the pairing port cannot (the terminal has no
certificate yet) and serves nothing but ``POST /pair``, which needs a one-time code from the station
screen. Revocation is enforced at the connection: right after the handshake, before any HTTP byte is
read, the certificate is looked up among the paired terminals and the connection aborted unless it is
paired and not revoked; each request checks again, so a keep-alive connection opened before a
revocation does not outlive it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from gateway.errors import GatewayError, TerminalError
from gateway.evidence.evidence_service import EvidenceService
from gateway.station.live_state import Station
from gateway.terminal import registry
from gateway.terminal.announce import Announcer
from gateway.terminal.api import add_api_routes
from gateway.terminal.ca import TerminalCA
from gateway.terminal.context import TERMINAL, TerminalContext, error_response
from gateway.terminal.mobile import add_mobile_routes
from gateway.terminal.signing import DevicesSource, SigningSessions
from gateway.terminal.tus import UploadArea
from gateway.terminal.tus_http import add_tus_routes

__all__ = ["TerminalServer", "build_api_app", "build_pairing_app", "pairing_payload"]

log = logging.getLogger("egw.terminal")
MAX_PAIRING_BODY = 64 * 1024
REFUSALS_PER_WINDOW = 5  # refused pairing attempts one peer may make per window before it is told to wait
REFUSAL_WINDOW_S = 60.0


class _RefusalLimiter:
    """Refused pairings per peer address: a guesser gets 5 tries a minute (80-bit codes make guessing hopeless
    anyway; this keeps a flood from filling the log and the CPU with certificate signing)."""

    def __init__(self) -> None:
        self.refusals: dict[str, list[float]] = {}

    def blocked_for(self, peer: str, now: float) -> float:
        recent = [t for t in self.refusals.get(peer, []) if now - t < REFUSAL_WINDOW_S]
        self.refusals[peer] = recent
        return REFUSAL_WINDOW_S - (now - recent[0]) if len(recent) >= REFUSALS_PER_WINDOW else 0.0

    def refused(self, peer: str, now: float) -> None:
        if len(self.refusals) > 10_000:  # bounded whatever the number of peers
            self.refusals.clear()
        self.refusals.setdefault(peer, []).append(now)


def _peer_certificate(transport: asyncio.BaseTransport | None) -> bytes | None:
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    return ssl_object.getpeercert(binary_form=True)


class _AdmitPairedTerminals(asyncio.Protocol):
    """Wraps aiohttp's per-connection handler: after the TLS handshake, admit only a paired, unrevoked
    terminal; anything else is aborted before the handler (and HTTP) ever sees the connection."""

    def __init__(self, inner: asyncio.Protocol, admit: Callable[[bytes | None], object]) -> None:
        self.inner, self.admit, self.admitted = inner, admit, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        try:
            self.admit(_peer_certificate(transport))
        except (TerminalError, ValueError) as exc:
            log.warning("terminal connection refused: %s", exc)
            transport.abort()  # type: ignore[attr-defined]
            return
        self.admitted = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Any  # aiohttp's Middleware protocol; @web.middleware functions satisfy it at run time


def _authenticating(ctx: TerminalContext) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            request["terminal"] = registry.authenticate(ctx.service, _peer_certificate(request.transport))
        except TerminalError as exc:
            return error_response(403, exc)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except TerminalError as exc:
            return error_response(400, exc)
        except GatewayError as exc:
            log.warning("terminal request %s %s failed: %s", request.method, request.path, exc)
            return error_response(503, exc)
    return middleware


def openapi_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(resources.files("gateway.terminal").joinpath("terminal-api.json").read_text(encoding="utf-8"))
    return document


def build_api_app(ctx: TerminalContext) -> web.Application:
    app = web.Application(middlewares=[_authenticating(ctx)], client_max_size=32 << 20)
    app[TERMINAL] = ctx
    spec = openapi_document()

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/openapi.json", openapi)
    add_tus_routes(app)
    add_api_routes(app)
    add_mobile_routes(app)
    return app


def build_pairing_app(ctx: TerminalContext) -> web.Application:
    app = web.Application(client_max_size=MAX_PAIRING_BODY)
    app[TERMINAL] = ctx
    limiter = _RefusalLimiter()

    async def pair(request: web.Request) -> web.Response:
        peer, now = request.remote or "?", time.monotonic()
        wait = limiter.blocked_for(peer, now)
        if wait > 0:
            return error_response(429, "too many refused pairing attempts from this address",
                                  f"wait {wait:.0f} s, then scan a fresh code from the station screen",
                                  headers={"Retry-After": str(int(wait) + 1)})
        answer = await _pair(request)
        if answer.status in (400, 403):
            limiter.refused(peer, now)
        return answer

    async def _pair(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "the pairing request is not JSON", "send {code, csr, officer_id, label}")
        if not isinstance(body, dict) or not isinstance(body.get("code"), str) or not isinstance(body.get("csr"), str):
            return error_response(400, "the pairing request needs a code and a csr (both strings)", "send {code, csr, officer_id, label}")
        label = body.get("label")
        officer = body.get("officer_id")
        try:
            record, pem = await asyncio.to_thread(
                registry.pair, ctx.service, ctx.ca, code=body["code"], csr_pem=body["csr"].encode("utf-8", "replace"),
                officer_id=officer if isinstance(officer, str) else None, label=label if isinstance(label, str) else None)
        except TerminalError as exc:
            status = 403 if str(exc) == registry.REFUSED_PAIRING else 400
            return error_response(status, exc)
        log.info("terminal paired", extra={"fields": {"terminal_id": record.id, "officer_id": record.officer_id}})
        return web.json_response({"terminal_id": record.id, "officer_id": record.officer_id, "certificate": pem.decode("ascii"),
                                  "ca": ctx.ca.ca_path.read_text(encoding="ascii"), "api_url": ctx.api_url}, status=201)

    app.router.add_post("/pair", pair)
    return app


class TerminalServer:
    """Both listeners; ``api_url``/``pairing_url`` are known after ``start()``."""

    def __init__(self, service: EvidenceService, station: Station, *, api_listen: tuple[str, int],
                 pairing_listen: tuple[str, int], server_names: tuple[str, ...] = (), announce: bool = False,
                 signing_devices: DevicesSource = tuple) -> None:
        hosts = tuple(h for h in (api_listen[0], pairing_listen[0]) if h not in ("", "0.0.0.0", "::"))
        self.ctx = TerminalContext(service, station, TerminalCA(service.data_dir, service.identity.gateway_id,
                                                                (*hosts, *server_names)), UploadArea(service),
                                   SigningSessions(service, signing_devices))
        self.api_listen, self.pairing_listen = api_listen, pairing_listen
        self.runners: list[web.AppRunner] = []
        self.servers: list[asyncio.Server] = []
        self.announce = announce
        self.announcer: Announcer | None = None

    @property
    def api_url(self) -> str:
        return self.ctx.api_url

    @property
    def pairing_url(self) -> str:
        return self.ctx.pairing_url

    async def start(self) -> None:
        finished = await asyncio.to_thread(self.ctx.uploads.finish_pending)
        for result in finished:
            log.info("terminal upload stored after a restart", extra={"fields": {"evidence_id": result.evidence_id}})
        api_port = await self._serve(build_api_app(self.ctx), self.api_listen, self.ctx.ca.api_context(), gate=True)
        pairing_port = await self._serve(build_pairing_app(self.ctx), self.pairing_listen, self.ctx.ca.pairing_context(), gate=False)
        self.ctx.api_url = f"https://{_url_host(self.api_listen[0])}:{api_port}/"
        self.ctx.pairing_url = f"https://{_url_host(self.pairing_listen[0])}:{pairing_port}/"
        if self.announce:
            self.announcer = Announcer(self.ctx.service.identity.gateway_id, self.api_listen[0], api_port, pairing_port,
                                       self.ctx.ca.station_fingerprint)
            await self.announcer.start()

    async def _serve(self, app: web.Application, listen: tuple[str, int], context: ssl.SSLContext, *, gate: bool) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True)
        await runner.setup()
        self.runners.append(runner)
        handler_factory = runner.server
        assert handler_factory is not None
        service = self.ctx.service

        def protocol() -> asyncio.Protocol:
            inner = handler_factory()
            return _AdmitPairedTerminals(inner, lambda der: registry.authenticate(service, der)) if gate else inner

        server = await asyncio.get_running_loop().create_server(protocol, listen[0], listen[1], ssl=context,
                                                                ssl_handshake_timeout=15)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.announcer is not None:
            await self.announcer.stop()
        for server in self.servers:
            server.close()
        for runner in self.runners:
            await runner.cleanup()

    def pairing_offer(self, *, officer_id: str | None = None, issued_by: str = "station screen") -> dict[str, str]:
        """A fresh one-time code and everything a terminal needs to pair (what the QR code carries)."""
        code = registry.offer_pairing(self.ctx.service, officer_id=officer_id, issued_by=issued_by)
        return pairing_payload(self.ctx.pairing_url, code, self.ctx.ca.station_fingerprint, self.ctx.service.identity.gateway_id)


def pairing_payload(pairing_url: str, code: str, fingerprint: str, gateway_id: str) -> dict[str, str]:
    from urllib.parse import urlencode

    uri = "egw-pair:?" + urlencode({"url": pairing_url, "code": code, "sha256": fingerprint, "gw": gateway_id})
    return {"uri": uri, "code": code, "pairing_url": pairing_url, "station_sha256": fingerprint, "gateway_id": gateway_id}


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
