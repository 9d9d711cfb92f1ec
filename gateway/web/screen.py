"""Serves the station screen: ``/`` (the page, rendered with the station as it is), ``/screen`` (the
same, below the header: what the page swaps in on a change), ``/station.js`` and ``/station.css``,
``/api/state`` (snapshot JSON), ``/events`` (server-sent events, one per change), ``/healthz``;
when mobile terminals are served, ``/pairing`` (a QR code with a fresh one-time pairing code; only to a
browser on the station itself: whoever can read a code can pair a terminal); and
``/delivery/<evidence id>/<token>``: a delivered document's one-time link (gateway/workflows/delivery.py;
the PDF once, then 410; 404 for a token of another document).

aiohttp because it is a small, well-kept asyncio server that lives on the
service's own event loop: no second process, no framework.

Language: ``?lang=zh_CN|en`` chooses it and a cookie remembers it; without either the page is in
Simplified Chinese (the officers' language). The browser's Accept-Language is deliberately not
followed: a kiosk's browser is often left in English, the station's officers are not.

Security: a strict Content-Security-Policy (scripts and styles only from this origin, nothing inline,
no framing) on every response, errors included, so text from a device (names, details) can at worst
be shown, never run. Only ``Host:`` values that name this station are answered (``421`` otherwise,
see ``gateway.web.hosts``): a page elsewhere cannot read the station through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.i18n import LANGUAGES, normalise_language, use_language
from gateway.station.live_state import Station
from gateway.web.hosts import MISDIRECTED_STATUS, HostPolicy
from gateway.web.render import render_page, render_screen

if TYPE_CHECKING:
    from gateway.evidence.evidence_service import EvidenceService

log = logging.getLogger("egw.screen")

__all__ = ["build_app", "ScreenServer", "CSP", "LANGUAGE_COOKIE"]

HEARTBEAT_S = 15.0
LANGUAGE_COOKIE = "egw_lang"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
STATIC = {"station.js": "text/javascript", "station.css": "text/css"}
# A fresh one-time pairing offer for a mobile terminal (gateway.terminal.server.TerminalServer.pairing_offer).
PairingOffer = Callable[..., dict[str, str]]


def chosen_language(request: web.Request) -> str:
    """``?lang=`` first, then the cookie, else the default (Simplified Chinese)."""
    asked = request.query.get("lang") or request.cookies.get(LANGUAGE_COOKIE)
    return normalise_language(asked)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _arrived_on(request: web.Request) -> tuple[str | None, int]:
    """The local address and port this request's connection came in on."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) > 1:
        return str(sockname[0]), int(sockname[1])
    return None, 0


def _host_guard(policy: HostPolicy) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        address, port = _arrived_on(request)
        if not policy.allows(request.headers.get("Host"), address):
            return web.Response(status=MISDIRECTED_STATUS, text=policy.refusal(request.headers.get("Host"), port))
        return await handler(request)
    return guard


async def _security_headers(_: web.Request, response: web.StreamResponse) -> None:
    """Every response, HTML or not, errors and the event stream included, carries the same policy."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _delivery_route(app: web.Application, service: EvidenceService) -> None:
    """``GET /delivery/{evidence_id}/{token}``: the sealed PDF once per link (docs/delivery.md)."""
    from gateway.errors import GatewayError
    from gateway.i18n import _
    from gateway.workflows.delivery import LinkRefused, open_link

    async def delivery(request: web.Request) -> web.Response:
        evidence_id, token = request.match_info["evidence_id"], request.match_info["token"]
        client = request.remote or "?"
        with use_language(chosen_language(request)):
            try:
                data, name = await asyncio.to_thread(open_link, service, evidence_id, token, client)
            except LinkRefused as refused:
                log.warning("delivery link for %s refused to %s: %s", evidence_id, client, refused)
                text = (_("This link has already been used or has expired. Ask the officer for a new one.") if refused.status == 410
                        else _("There is no such document link."))
                return web.Response(status=refused.status, text=text, charset="utf-8", headers=SECURITY_HEADERS)
            except GatewayError as exc:
                log.error("delivery link for %s not served: %s", evidence_id, exc)
                return web.Response(status=500, text=_("The document cannot be served; ask the officer."), charset="utf-8",
                                    headers=SECURITY_HEADERS)
        log.info("delivery link for %s used by %s", evidence_id, client)
        return web.Response(body=data, content_type="application/pdf", headers={
            **SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})

    app.router.add_get("/delivery/{evidence_id}/{token}", delivery)


def build_app(station: Station, policy: HostPolicy | None = None, pairing: PairingOffer | None = None,
              service: EvidenceService | None = None) -> web.Application:
    app = web.Application(middlewares=[_host_guard(policy or HostPolicy("127.0.0.1"))])
    app.on_response_prepare.append(_security_headers)
    if service is not None:
        _delivery_route(app, service)
    static = {name: resources.files("gateway.web").joinpath(name).read_bytes() for name in STATIC}

    async def index(request: web.Request) -> web.Response:
        language = chosen_language(request)
        with use_language(language):
            page = render_page(station.snapshot())
        response = web.Response(text=page, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)
        if request.query.get("lang") in LANGUAGES:
            response.set_cookie(LANGUAGE_COOKIE, language, max_age=365 * 86400, samesite="Strict", httponly=True)
        return response

    async def screen(request: web.Request) -> web.Response:
        with use_language(chosen_language(request)):
            fragment = render_screen(station.snapshot())
        return web.Response(text=fragment, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)

    def serve_static(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            return web.Response(body=static[name], content_type=STATIC[name], charset="utf-8", headers=SECURITY_HEADERS)
        return handler

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
                except TimeoutError:
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
    app.router.add_get("/screen", screen)
    for name in STATIC:
        app.router.add_get(f"/{name}", serve_static(name))
    app.router.add_get("/api/state", state)
    app.router.add_get("/events", events)
    app.router.add_get("/healthz", health)
    if pairing is not None:
        from gateway.terminal.pairing_page import render_pairing_page

        async def pairing_page(request: web.Request) -> web.Response:
            if not _is_loopback(request.remote):  # a code is for whoever stands at the station, not for the LAN
                return web.Response(status=403, text="The pairing code is shown only on the station's own screen.\n",
                                    headers=SECURITY_HEADERS)
            offer = await asyncio.to_thread(pairing)  # each view issues a new code; the old ones simply expire
            with use_language(chosen_language(request)):
                page = render_pairing_page(offer)
            return web.Response(text=page, content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)

        app.router.add_get("/pairing", pairing_page)
    return app


def _is_loopback(remote: str | None) -> bool:
    import ipaddress

    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


class ScreenServer:
    """Runs the app on the current loop; ``url`` is known after ``start()``."""

    def __init__(self, station: Station, host: str = "127.0.0.1", port: int = 8080, hostnames: Iterable[str] = (),
                 pairing: PairingOffer | None = None, service: EvidenceService | None = None) -> None:
        self.station, self.host, self.port, self.pairing, self.service = station, host, port, pairing, service
        self.policy = HostPolicy(host, hostnames)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self.runner = web.AppRunner(build_app(self.station, self.policy, self.pairing, self.service), access_log=None,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        server = site._server  # noqa: SLF001 - the bound port when 0 was asked for
        port = server.sockets[0].getsockname()[1] if isinstance(server, asyncio.Server) and server.sockets else self.port
        self.url = f"http://{self.host}:{port}/"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
