"""What every terminal request handler sees: the station's parts, the terminal that is calling, how to refuse."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.errors import GatewayError
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.terminals import TerminalRecord
from gateway.station.live_state import Station
from gateway.terminal.ca import TerminalCA
from gateway.terminal.signing import SigningSessions
from gateway.terminal.tus import UploadArea

__all__ = ["TERMINAL", "TerminalContext", "error_response", "terminal_of", "context_of"]


@dataclass
class TerminalContext:
    service: EvidenceService
    station: Station
    ca: TerminalCA
    uploads: UploadArea
    signing: SigningSessions
    api_url: str = ""
    pairing_url: str = ""


TERMINAL = web.AppKey("terminal_context", TerminalContext)


def error_response(status: int, exc: BaseException | str, hint: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """Every refusal: JSON ``{"error", "hint"}`` (what was wrong, what to do), never a traceback."""
    message = str(exc)
    if hint is None and isinstance(exc, GatewayError):
        hint = exc.hint
    return web.json_response({"error": message, "hint": hint or "see the error"}, status=status, headers=headers)


def terminal_of(request: web.Request) -> TerminalRecord:
    found = request.get("terminal")
    assert isinstance(found, TerminalRecord), "the authentication middleware runs first"
    return found


def context_of(request: web.Request) -> TerminalContext:
    return request.app[TERMINAL]


