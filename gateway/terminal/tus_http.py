"""tus 1.0.0 over HTTP (https://tus.io/protocols/resumable-upload): core, creation, termination.

``OPTIONS /files`` (what the server supports), ``POST /files`` (create; ``Upload-Length``,
``Upload-Metadata``), ``HEAD /files/{id}`` (``Upload-Offset``), ``PATCH /files/{id}``
(``application/offset+octet-stream`` at ``Upload-Offset``), ``DELETE /files/{id}``. When the last byte
is in, the response carries ``Egw-Evidence-Id`` and ``Egw-Sha256`` (HEAD does too, from then on), so the
terminal can check that what the station stored is what it sent.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.errors import GatewayError, TerminalError
from gateway.terminal import registry
from gateway.terminal.context import context_of, error_response, terminal_of
from gateway.terminal.tus import MAX_UPLOAD_BYTES, TUS_VERSION, Running, Upload, UploadArea, UploadNotFound, parse_metadata

__all__ = ["add_tus_routes", "TUS_HEADERS"]

log = logging.getLogger("egw.terminal")
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
WRITE_BATCH = 1 << 20  # bytes handed to the writer thread at once: few thread hops, bounded memory
LOCK_PATIENCE_S = 10.0  # a PATCH whose predecessor (cut off by the client) is still draining waits this long


def _tus_error(status: int, exc: BaseException | str, hint: str | None = None) -> web.Response:
    return error_response(status, exc, hint, headers=TUS_HEADERS)


def _check_version(request: web.Request) -> web.Response | None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        return error_response(412, f"Tus-Resumable must be {TUS_VERSION}", "use a tus 1.0 client",
                              headers={"Tus-Version": TUS_VERSION, **TUS_HEADERS})
    return None


def _int_header(request: web.Request, name: str) -> int | None:
    value = request.headers.get(name, "")
    return int(value) if value.isdigit() and len(value) <= 20 else None


async def _stream_into(request: web.Request, uploads: UploadArea, upload: Upload, running: Running) -> None:
    """Append the body as it arrives, off the event loop, one batch in flight while the next is received
    (decrypting on the loop overlaps hashing and writing in the thread).

    Batches are written strictly in order, never two at once, and each exactly once: a write still running
    when the request is cancelled (the client hung up) is waited for before the rest is written, since a
    write racing the next would interleave bytes and a batch left to be written again would duplicate
    them. The digest must be of exactly the file."""
    in_flight: asyncio.Future[None] | None = None
    batch = bytearray()
    try:
        async for chunk in request.content.iter_chunked(WRITE_BATCH):
            batch += chunk
            if len(batch) >= WRITE_BATCH:
                if in_flight is not None:
                    await asyncio.shield(in_flight)
                full, batch = batch, bytearray()  # handed over before any await: never written twice
                in_flight = asyncio.ensure_future(asyncio.to_thread(uploads.append, upload, running, full))
    finally:  # what arrived before the client was cut off is kept: it resumes after those bytes
        if in_flight is not None:
            await _through_cancellation(in_flight)
        if batch:
            await _through_cancellation(asyncio.ensure_future(asyncio.to_thread(uploads.append, upload, running, batch)))


async def _through_cancellation(write: asyncio.Future[None]) -> None:
    """Wait for a write even if this task is cancelled meanwhile (then re-raise the cancellation after it)."""
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await asyncio.wait([write])
        raise


def add_tus_routes(app: web.Application) -> None:
    locks: dict[str, asyncio.Lock] = {}

    async def options(_: web.Request) -> web.Response:
        return web.Response(status=204, headers={**TUS_HEADERS, "Tus-Version": TUS_VERSION,
                                                 "Tus-Extension": "creation,termination", "Tus-Max-Size": str(MAX_UPLOAD_BYTES)})

    async def create(request: web.Request) -> web.Response:
        refused = _check_version(request)
        if refused is not None:
            return refused
        ctx, terminal = context_of(request), terminal_of(request)
        length = _int_header(request, "Upload-Length")
        if length is None:
            return _tus_error(400, "Upload-Length is missing or not a whole number", "send the file's size in Upload-Length")
        try:
            metadata = parse_metadata(request.headers.get("Upload-Metadata"))
            upload = await asyncio.to_thread(ctx.uploads.create, terminal, length, metadata)
        except TerminalError as exc:
            return _tus_error(413 if "outside" in str(exc) else 400, exc)
        except GatewayError as exc:
            return _tus_error(507, exc)
        await asyncio.to_thread(registry.audit, ctx.service, terminal, "upload_created",
                                {"upload_id": upload.id, "length": length, "filename": upload.filename})
        location = str(request.url.with_path(f"/files/{upload.id}").with_query(None))
        return web.Response(status=201, headers={**TUS_HEADERS, "Location": location, "Upload-Offset": "0"})

    async def find(request: web.Request) -> Upload:
        return await asyncio.to_thread(context_of(request).uploads.get, request.match_info["upload_id"], terminal_of(request))

    def done_headers(upload: Upload, offset: int) -> dict[str, str]:
        headers = {**TUS_HEADERS, "Upload-Offset": str(offset), "Upload-Length": str(upload.length)}
        if upload.evidence_id:
            headers["Egw-Evidence-Id"] = upload.evidence_id
        if upload.sha256:  # the terminal compares it with its own: what the station stored is what it sent
            headers["Egw-Sha256"] = upload.sha256
        return headers

    async def head(request: web.Request) -> web.Response:
        ctx = context_of(request)
        try:
            upload = await find(request)
        except UploadNotFound:
            return web.Response(status=404, headers=TUS_HEADERS)
        if upload.evidence_id is None and ctx.uploads.complete(upload):
            async with locks.setdefault(upload.id, asyncio.Lock()):  # a crash left it unstored: store it now
                upload = await find(request)
                if upload.evidence_id is None:
                    await asyncio.to_thread(ctx.uploads.finish, upload)
                    upload = await find(request)
        return web.Response(status=200, headers=done_headers(upload, ctx.uploads.offset(upload)))

    async def patch(request: web.Request) -> web.Response:
        refused = _check_version(request)
        if refused is not None:
            return refused
        if request.content_type != "application/offset+octet-stream":
            return _tus_error(415, "a PATCH body must be application/offset+octet-stream", "send the bytes as tus prescribes")
        offset = _int_header(request, "Upload-Offset")
        if offset is None:
            return _tus_error(400, "Upload-Offset is missing or not a whole number", "HEAD the upload and send from its offset")
        try:
            upload = await find(request)
        except UploadNotFound as exc:
            return _tus_error(404, exc)
        lock = locks.setdefault(upload.id, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), LOCK_PATIENCE_S)
        except TimeoutError:
            return _tus_error(423, "another PATCH of this upload is still running", "retry after it ends")
        try:
            return await _receive(request, upload, offset)
        finally:
            lock.release()

    async def _receive(request: web.Request, upload: Upload, offset: int) -> web.Response:
        ctx, terminal = context_of(request), terminal_of(request)
        uploads = ctx.uploads
        if upload.sha256 is not None:
            upload = await find(request)
            return web.Response(status=204 if offset == upload.length else 409, headers=done_headers(upload, upload.length))
        running = await asyncio.to_thread(uploads.running, upload)
        if offset != running.offset:
            return _tus_error(409, f"Upload-Offset {offset} is not where the upload stands ({running.offset})",
                              "HEAD the upload and send from its Upload-Offset")
        try:
            await _stream_into(request, uploads, upload, running)
        except TerminalError as exc:
            return _tus_error(413, exc)
        if running.offset == upload.length:
            result = await asyncio.to_thread(uploads.finish, upload)
            await asyncio.to_thread(registry.audit, ctx.service, terminal, "upload_completed",
                                    {"upload_id": upload.id, "sha256": result.sha256, "size": result.size}, result.evidence_id)
            upload.evidence_id, upload.sha256 = result.evidence_id, result.sha256
        return web.Response(status=204, headers=done_headers(upload, running.offset))

    async def delete(request: web.Request) -> web.Response:
        refused = _check_version(request)
        if refused is not None:
            return refused
        ctx, terminal = context_of(request), terminal_of(request)
        try:
            upload = await find(request)
            async with locks.setdefault(upload.id, asyncio.Lock()):
                await asyncio.to_thread(ctx.uploads.terminate, upload)
        except UploadNotFound as exc:
            return _tus_error(404, exc)
        except TerminalError as exc:
            return _tus_error(409, exc)
        locks.pop(upload.id, None)
        await asyncio.to_thread(registry.audit, ctx.service, terminal, "upload_terminated", {"upload_id": upload.id})
        return web.Response(status=204, headers=TUS_HEADERS)

    app.router.add_route("OPTIONS", "/files", options)
    app.router.add_post("/files", create)
    app.router.add_route("HEAD", "/files/{upload_id}", head)
    app.router.add_patch("/files/{upload_id}", patch)
    app.router.add_delete("/files/{upload_id}", delete)
