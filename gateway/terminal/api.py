"""The terminal's JSON API under ``/api/v1`` (described in ``docs/terminal-api.json``).

Every call is a custody event (``terminal-request``) under the calling terminal's officer, except the
live results stream's keep-alives: opening the stream is one event, not each message.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

from gateway.errors import ConfigError, NotFoundError, TerminalError
from gateway.evidence import terminals as repo
from gateway.evidence.manifest import ManifestInput
from gateway.terminal import registry
from gateway.terminal.context import TerminalContext, context_of, error_response, terminal_of
from gateway.terminal.signing import SessionBusy, SigningJob, parse_request

__all__ = ["add_api_routes", "CASE_NO", "MAX_STRIP_PHOTO_BYTES"]

CASE_NO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EVIDENCE_ID = re.compile(r"^[0-9a-f-]{36}$")
MAX_STRIP_PHOTO_BYTES = 25 << 20
RECENT_LIMIT = 50
HEARTBEAT_S = 15.0


async def _audit(request: web.Request, action: str, details: dict[str, Any] | None = None, evidence_id: str | None = None) -> None:
    await asyncio.to_thread(registry.audit, context_of(request).service, terminal_of(request), action, details, evidence_id)


def _terminal_json(terminal: repo.TerminalRecord) -> dict[str, Any]:
    return {"terminal_id": terminal.id, "officer_id": terminal.officer_id, "label": terminal.label,
            "paired_at": terminal.paired_at, "certificate_sha256": terminal.cert_sha256, "not_after": terminal.not_after}


def _recent_evidence(ctx: TerminalContext, officer_id: str, limit: int) -> list[dict[str, Any]]:
    return [{"evidence_id": row.id, "kind": row.kind, "device_id": row.device_id, "source_path": row.source_path,
             "size": row.size, "state": row.state, "created_at": row.created_at}
            for row in ctx.service.state.list_evidence(officer_id=officer_id, limit=limit)]


def _station_view(ctx: TerminalContext, officer_id: str) -> dict[str, Any]:
    snapshot = ctx.station.snapshot()
    devices = [{"device_id": d["device_id"], "kind": d["kind"], "name": d["name"], "state": d["state"],
                "officer_no": d["officer_no"], "safe_to_undock": d["safe_to_undock"], "files_total": d["files_total"],
                "files_ingested": d["files_ingested"], "detail": d["detail"]} for d in snapshot["devices"]]
    return {"gateway_id": snapshot["gateway_id"], "devices": devices, "queues": snapshot["counts"],
            "alarms": snapshot["alarms"], "my_recent_evidence": _recent_evidence(ctx, officer_id, 20), "at": snapshot["at"]}


def _case_json(items: list[repo.CaseItem], case_no: str, states: dict[str, str]) -> dict[str, Any]:
    return {"case_no": case_no, "items": [{"evidence_id": i.evidence_id, "officer_id": i.officer_id, "terminal_id": i.terminal_id,
                                            "added_at": i.added_at, "state": states.get(i.evidence_id, "unknown")} for i in items]}


def _read_case(ctx: TerminalContext, case_no: str) -> dict[str, Any]:
    with ctx.service.state.lock:
        items = repo.case_items(ctx.service.state.db, case_no)
    return _case_json(items, case_no, ctx.service.state.states_of([i.evidence_id for i in items]))


def _add_to_case(ctx: TerminalContext, terminal: repo.TerminalRecord, case_no: str, evidence_ids: list[str]) -> dict[str, Any]:
    now = time.time()
    known = ctx.service.state.states_of(evidence_ids)
    missing = [e for e in evidence_ids if e not in known]
    if missing:
        raise NotFoundError(f"no evidence {', '.join(missing)} at this station", "use ids from GET /api/v1/evidence or an upload")
    with ctx.service.state.transaction() as db:
        for evidence_id in evidence_ids:
            if repo.add_case_item(db, repo.CaseItem(case_no, evidence_id, terminal.officer_id, terminal.id, now)):
                ctx.service.custody.append(db, "case-item-added", evidence_id, {
                    "case_no": case_no, "officer_id": terminal.officer_id, "terminal_id": terminal.id})
    return _read_case(ctx, case_no)


def _read_strip(ctx: TerminalContext, terminal: repo.TerminalRecord, photo: bytes, media_type: str, sample_id: str | None) -> dict[str, Any]:
    """The photo is evidence first; the reading (or why there is none) is returned and, when read, stored as a result."""
    from drivers.strip_reader import StripReader, StripReadError

    stored = ctx.service.ingest_bytes(photo, ManifestInput(
        source_path=f"terminal/{terminal.id}/strip-{int(time.time() * 1000)}.{'png' if media_type == 'image/png' else 'jpg'}",
        kind="photo", media_type=media_type, device_id=terminal.id, officer_id=terminal.officer_id), priority=2)
    try:
        reading = StripReader().read_file(ctx.service.store.path_for(stored.sha256))
    except StripReadError as exc:
        return {"ok": False, "error": str(exc), "photo_evidence_id": stored.evidence_id, "reading": None, "evidence_id": None}
    document = {"v": "egw.strip-reading/1", "sample_id": sample_id, "inspector_id": terminal.officer_id,
                "photo": {"evidence_id": stored.evidence_id, "sha256": stored.sha256}, "reading": reading.to_json()}
    result = ctx.service.ingest_bytes(json.dumps(document, indent=2, sort_keys=True).encode(), ManifestInput(
        source_path=f"strip/{stored.sha256}/reading.json", kind="result", media_type="application/vnd.egw.strip-reading+json",
        device_id=terminal.id, officer_id=terminal.officer_id, extra={"strip": document["reading"], "photo": document["photo"]}),
        priority=2)
    return {"ok": True, "error": None, "photo_evidence_id": stored.evidence_id, "reading": reading.to_json(),
            "evidence_id": result.evidence_id}


def add_api_routes(app: web.Application) -> None:
    async def me(request: web.Request) -> web.Response:
        await _audit(request, "me")
        return web.json_response(_terminal_json(terminal_of(request)))

    async def station(request: web.Request) -> web.Response:
        await _audit(request, "station")
        view = await asyncio.to_thread(_station_view, context_of(request), terminal_of(request).officer_id)
        return web.json_response(view)

    async def evidence(request: web.Request) -> web.Response:
        raw = request.query.get("limit", str(RECENT_LIMIT))
        if not raw.isdigit() or not 1 <= int(raw) <= 500:
            return error_response(400, f"limit {raw!r} is not a whole number from 1 to 500", "ask for 1-500 items")
        await _audit(request, "evidence")
        items = await asyncio.to_thread(_recent_evidence, context_of(request), terminal_of(request).officer_id, int(raw))
        return web.json_response({"items": items})

    def case_no_of(request: web.Request) -> str | None:
        case_no = request.match_info["case_no"]
        return case_no if CASE_NO.match(case_no) else None

    async def get_case(request: web.Request) -> web.Response:
        case_no = case_no_of(request)
        if case_no is None:
            return error_response(400, "a case number is 1-64 letters, digits, '.', '_' or '-'", "check the case number")
        await _audit(request, "case_read", {"case_no": case_no})
        return web.json_response(await asyncio.to_thread(_read_case, context_of(request), case_no))

    async def add_items(request: web.Request) -> web.Response:
        case_no = case_no_of(request)
        if case_no is None:
            return error_response(400, "a case number is 1-64 letters, digits, '.', '_' or '-'", "check the case number")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "the body is not JSON", 'send {"evidence_ids": ["…"]}')
        ids = body.get("evidence_ids") if isinstance(body, dict) else None
        if (not isinstance(ids, list) or not 1 <= len(ids) <= 200
                or not all(isinstance(i, str) and EVIDENCE_ID.match(i) for i in ids)):
            return error_response(400, "evidence_ids must be a list of 1-200 evidence ids", 'send {"evidence_ids": ["…"]}')
        try:
            case = await asyncio.to_thread(_add_to_case, context_of(request), terminal_of(request), case_no, list(dict.fromkeys(ids)))
        except NotFoundError as exc:
            return error_response(404, exc)
        await _audit(request, "case_items_added", {"case_no": case_no, "evidence_ids": ids})
        return web.json_response(case, status=201)

    async def results(request: web.Request) -> web.StreamResponse:
        ctx = context_of(request)
        await _audit(request, "results_stream")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        queue = ctx.station.subscribe()
        try:
            await response.write(b"event: results\ndata: " + json.dumps(ctx.station.snapshot()["results"], default=str).encode() + b"\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                if event.get("type") == "records":
                    await response.write(b"event: results\ndata: " + json.dumps(event["results"], default=str).encode() + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            ctx.station.unsubscribe(queue)
        return response

    async def read_strip(request: web.Request) -> web.Response:
        media_type = request.content_type
        if media_type not in ("image/jpeg", "image/png"):
            return error_response(415, f"a strip photo must be image/jpeg or image/png, not {media_type!r}", "send the photo's bytes")
        if request.content_length is not None and request.content_length > MAX_STRIP_PHOTO_BYTES:
            return error_response(413, f"a strip photo is at most {MAX_STRIP_PHOTO_BYTES >> 20} MB", "send a smaller photo")
        photo = await request.read()
        if not photo:
            return error_response(400, "the photo is empty", "send the photo's bytes")
        sample = request.query.get("sample_id")
        try:
            result = await asyncio.to_thread(_read_strip, context_of(request), terminal_of(request), photo, media_type, sample)
        except TerminalError as exc:
            return error_response(400, exc)
        await _audit(request, "strip_read", {"ok": result["ok"], "photo_evidence_id": result["photo_evidence_id"]},
                     result["evidence_id"])
        return web.json_response(result, status=201)

    async def start_signing(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            await _audit(request, "signing_session_refused", {"error": "the body is not JSON"})
            return error_response(400, "the body is not JSON", "send the session request as JSON (docs/terminal.md)")
        terminal = terminal_of(request)
        sessions = context_of(request).signing
        try:
            checked = parse_request(body, CASE_NO, EVIDENCE_ID)
            job = await asyncio.to_thread(sessions.start, terminal, checked, asyncio.get_running_loop())
        except (ConfigError, SessionBusy) as exc:
            await _audit(request, "signing_session_refused", {"error": str(exc)})
            return error_response(409, exc)
        except NotFoundError as exc:
            await _audit(request, "signing_session_refused", {"error": str(exc)})
            return error_response(404, exc)
        except TerminalError as exc:
            await _audit(request, "signing_session_refused", {"error": str(exc)})
            return error_response(400, exc)
        return web.json_response(job.as_json(), status=202, headers={"Location": f"/api/v1/signing-sessions/{job.id}"})

    def session_of(request: web.Request) -> SigningJob:
        return context_of(request).signing.find(request.match_info["session_id"], terminal_of(request).officer_id)

    async def found_session(request: web.Request) -> SigningJob | web.Response:
        """This terminal's officer's session, or the 404 (audited) to answer instead."""
        try:
            return session_of(request)
        except NotFoundError as exc:
            await _audit(request, "signing_session_read_refused", {"session_id": request.match_info["session_id"][:64]})
            return error_response(404, exc)

    async def get_signing(request: web.Request) -> web.Response:
        job = await found_session(request)
        if isinstance(job, web.Response):
            return job
        await _audit(request, "signing_session_read", {"session_id": job.id})
        return web.json_response(job.as_json())

    async def signing_events(request: web.Request) -> web.StreamResponse:
        job = await found_session(request)
        if isinstance(job, web.Response):
            return job
        await _audit(request, "signing_session_stream", {"session_id": job.id})
        sessions = context_of(request).signing
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        sent = -1
        try:
            while True:
                wakeup = sessions.wakeup  # taken before reading the version: a change in between wakes us at once
                if job.version != sent:
                    sent = job.version
                    await response.write(b"event: session\ndata: " + json.dumps(job.as_json(), ensure_ascii=False).encode() + b"\n\n")
                    if job.finished:
                        break
                try:
                    await asyncio.wait_for(wakeup.wait(), HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    app.router.add_get("/api/v1/me", me)
    app.router.add_get("/api/v1/station", station)
    app.router.add_get("/api/v1/evidence", evidence)
    app.router.add_get("/api/v1/cases/{case_no}", get_case)
    app.router.add_post("/api/v1/cases/{case_no}/items", add_items)
    app.router.add_get("/api/v1/results/events", results)
    app.router.add_post("/api/v1/strips/read", read_strip)
    app.router.add_post("/api/v1/signing-sessions", start_signing)
    app.router.add_get("/api/v1/signing-sessions/{session_id}", get_signing)
    app.router.add_get("/api/v1/signing-sessions/{session_id}/events", signing_events)
