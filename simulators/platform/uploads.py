"""Partial uploads on the reference platform: where a half-received blob lives, how its committed offset
survives a kill or a reboot, and how chunks are written and hashed on the way to ``DIR/blobs``.

A mixin of :class:`simulators.platform.server.IngestServicer` (which checks who is calling and what the
upload claims before any of this runs); see that module's docstring for the design.

Bounded resources: a gateway may run ``max_uploads_per_gateway`` uploads at once (RESOURCE_EXHAUSTED
beyond); a stream that sends nothing for ``idle_timeout_s`` is cancelled (its committed part stays); an
idle partial holds no thread, only its digest state; and the sweeper deletes partials untouched for
``partial_ttl_s``. Without these, 300 uploads that each sent one byte held 300 threads and 300 files forever.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from protos.direct_io import DirectAppender, open_direct
from protos.egw.v1 import ingest_pb2
from protos.upload_wire import ChunkView
from simulators.platform.index import Index

__all__ = ["SYNC_EVERY", "Hasher", "PartialUploads", "UploadLimits", "boot_id"]

SYNC_EVERY = 64 * 1024 * 1024
CHUNK_STAGING = 2 * 1024 * 1024  # one gateway chunk (gateway.uplink.uploader.CHUNK_SIZE) per O_DIRECT write


@dataclass(frozen=True)
class UploadLimits:
    """What one platform grants its uploads; options of ``egw simulate platform``."""

    max_uploads_per_gateway: int = 4
    idle_timeout_s: float = 120.0     # no chunk for this long: the stream is cancelled
    partial_ttl_s: float = 7 * 86400  # a partial untouched this long is deleted by the sweeper


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class Hasher:
    """SHA-256 on its own thread, fed the very bytes objects that are written."""

    def __init__(self, offset: int = 0, initial: Any = None) -> None:
        self.h = initial or hashlib.sha256()
        self.offset = offset  # bytes fed so far (not necessarily digested yet)
        self.inbox: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=16)
        self.thread = threading.Thread(target=self._run, name="platform-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            data = self.inbox.get()
            if data is None:
                return
            self.h.update(data)

    def feed(self, data: bytes | memoryview) -> None:
        self.inbox.put(data)
        self.offset += len(data)

    def finish(self) -> str:
        self.inbox.put(None)
        self.thread.join()
        return self.h.hexdigest()

    def stop(self) -> None:
        self.inbox.put(None)

    def park(self) -> tuple[int, Any]:
        """End the thread and keep only (offset, digest state): an idle partial must not hold a thread."""
        self.inbox.put(None)
        self.thread.join()
        return self.offset, self.h


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartialUploads:
    """Partials under ``partial_root``, their digest states, and receiving an upload into them."""

    data_dir: Path
    index: Index
    reserve_bytes: int
    blobs: Path
    limits: UploadLimits

    def _init_partials(self, data_dir: Path) -> None:
        self.partial_root = data_dir / "partial"
        self.partial_root.mkdir(parents=True, exist_ok=True)
        self.boot = boot_id()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._states: dict[tuple[str, str], tuple[int, Any]] = {}  # (offset, hashlib state) of idle partials
        self._active: dict[str, int] = {}  # uploads in progress per gateway
        self._streams: dict[int, tuple[grpc.ServicerContext, list[float]]] = {}  # id → (context, [last activity])
        self._mutex = threading.Lock()
        self.swept = 0

    def _partial_path(self, gateway_id: str, sha: str) -> Path:
        return self.partial_root / gateway_id / sha

    def _recover_partial(self, gateway_id: str, sha: str) -> int:
        """Committed offset of a partial: its length, cut back to the synced offset after a reboot."""
        path = self._partial_path(gateway_id, sha)
        try:
            length = path.stat().st_size
        except FileNotFoundError:
            return 0
        row = self.index.partial(gateway_id, sha)
        if row is not None and row.boot_id != self.boot and length > row.synced_offset:
            os.truncate(path, row.synced_offset)
            self._drop_state((gateway_id, sha))
            return row.synced_offset
        return length

    def _drop_state(self, key: tuple[str, str]) -> None:
        with self._mutex:
            self._states.pop(key, None)

    def _hasher_at(self, key: tuple[str, str], path: Path, offset: int) -> Hasher:
        """The running digest of the first ``offset`` bytes; re-read from disk after a restart."""
        with self._mutex:
            cached = self._states.pop(key, None)
        if cached is not None and cached[0] == offset:
            return Hasher(offset, cached[1])
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            remaining = offset
            while remaining:
                block = fh.read(min(remaining, 4 * 1024 * 1024))
                if not block:
                    break
                h.update(block)
                remaining -= len(block)
        return Hasher(offset, h)

    def _park(self, key: tuple[str, str], hasher: Hasher) -> None:
        state = hasher.park()
        with self._mutex:
            self._states[key] = state

    # ---- limits -------------------------------------------------------------------------
    def _admit(self, gateway_id: str, context: grpc.ServicerContext) -> None:
        """Count one more upload of ``gateway_id``, or abort with RESOURCE_EXHAUSTED past the limit."""
        limit = self.limits.max_uploads_per_gateway
        with self._mutex:
            running = self._active.get(gateway_id, 0)
            if running < limit:
                self._active[gateway_id] = running + 1
                return
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"gateway {gateway_id} already has {running} uploads in progress, the most this platform accepts at once "
                      f"({limit}); retry when one has finished")

    def _release(self, gateway_id: str) -> None:
        with self._mutex:
            left = self._active.get(gateway_id, 1) - 1
            if left > 0:
                self._active[gateway_id] = left
            else:
                self._active.pop(gateway_id, None)

    def _watch(self, context: grpc.ServicerContext) -> list[float]:
        """Register a stream for the idle check; the caller stores ``time.monotonic()`` into the list on activity."""
        activity = [time.monotonic()]
        with self._mutex:
            self._streams[id(activity)] = (context, activity)
        return activity

    def _unwatch(self, activity: list[float]) -> None:
        with self._mutex:
            self._streams.pop(id(activity), None)

    def cancel_idle_streams(self) -> int:
        """Cancel every upload stream idle for longer than the limit (its committed part stays); how many."""
        deadline = time.monotonic() - self.limits.idle_timeout_s
        with self._mutex:
            idle = [(key, ctx) for key, (ctx, activity) in self._streams.items() if activity[0] < deadline]
            for key, _ in idle:
                self._streams.pop(key, None)
        for _, ctx in idle:
            print(f"platform: cancelled an upload stream idle for over {self.limits.idle_timeout_s:g} s "
                  f"(peer {ctx.peer()})", file=sys.stderr, flush=True)
            ctx.cancel()
        return len(idle)

    def sweep_partials(self) -> int:
        """Delete partial uploads untouched for longer than the TTL and not being uploaded now; how many."""
        cutoff = time.time() - self.limits.partial_ttl_s
        removed = 0
        for path in self.partial_root.glob("*/*"):
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            key = (path.parent.name, path.name)
            with self._mutex:
                lock = self._locks.setdefault(key, threading.Lock())
            if not lock.acquire(blocking=False):
                continue  # being uploaded right now
            try:
                path.unlink(missing_ok=True)
                with self.index.tx() as db:
                    self.index.drop_partial(db, *key)
                with self._mutex:
                    self._states.pop(key, None)
                    self._locks.pop(key, None)
                removed += 1
            finally:
                lock.release()
        self.swept += removed
        return removed

    def _receive(self, gateway_id: str, header: ingest_pb2.UploadHeader,
                 requests: Iterator[ingest_pb2.UploadRequest | ChunkView], context: grpc.ServicerContext) -> bool:
        """Receive chunks; True when the blob is complete, verified and stored."""
        sha, size = header.sha256, header.size
        key = (gateway_id, sha)
        path = self._partial_path(gateway_id, sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        committed = self._recover_partial(gateway_id, sha)
        self._check_resumable(header, committed, context)
        if committed == 0 and not path.exists():
            self.index.save_partial(gateway_id, sha, size, 0, self.boot)
        fd, direct = open_direct(path, os.O_RDWR | os.O_CREAT, 0o600)
        hasher: Hasher | None = self._hasher_at(key, path, committed)
        completed = False
        try:
            assert hasher is not None
            committed, completed = self._write_chunks(fd, direct, gateway_id, header, requests, committed, hasher, context)
            if not completed:
                os.fdatasync(fd)
                self.index.save_partial(gateway_id, sha, size, committed, self.boot)
                self._park(key, hasher)
                hasher = None
                return False
            digest = hasher.finish()
            hasher = None
            if digest != sha:
                os.close(fd)
                fd = -1
                self._discard_mismatch(gateway_id, header, digest, context)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            self._store_blob(path, gateway_id, sha, size)
            return True
        except BaseException:
            # a broken stream or a rejection: what is written stays committed (its length), the digest state is kept
            if hasher is not None and not completed:
                self._park(key, hasher)
            raise
        finally:
            if fd >= 0:
                os.close(fd)

    def _check_resumable(self, header: ingest_pb2.UploadHeader, committed: int, context: grpc.ServicerContext) -> None:
        """The upload starts at the committed offset, and the rest fits with the reserve left free."""
        sha, size = header.sha256, header.size
        if header.start_offset != committed:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"offset gap: the platform has committed {committed} bytes of {sha} but the upload starts at "
                          f"{header.start_offset}; call QueryUpload and resume at the committed offset")
        free = shutil.disk_usage(self.data_dir).free
        if size - committed + self.reserve_bytes > free:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"platform storage full: {free} bytes free, {size - committed} needed plus {self.reserve_bytes} reserve; "
                          "retry later (the operator must free space); the committed part is kept")

    def _write_chunks(self, fd: int, direct: bool, gateway_id: str, header: ingest_pb2.UploadHeader,
                      requests: Iterator[ingest_pb2.UploadRequest | ChunkView], committed: int, hasher: Hasher,
                      context: grpc.ServicerContext) -> tuple[int, bool]:
        """Write and hash the chunks in order, syncing every ``SYNC_EVERY`` bytes; (committed offset, complete).

        Chunks are written through an aligned staging buffer, with ``O_DIRECT`` where the file system
        takes it (``protos.direct_io``: page-cache writes were the platform's largest cost in a dock), on a
        writer thread of this upload's own, so that receiving the next chunk overlaps writing this one."""
        activity = self._watch(context)
        appender = DirectAppender(fd, committed, direct=direct, buffer_size=CHUNK_STAGING)
        writer = _ChunkWriter(appender, hasher, lambda synced: self.index.save_partial(
            gateway_id, header.sha256, header.size, synced, self.boot))
        try:
            received = self._read_stream(writer, header, requests, context, activity)
        finally:
            committed, error = writer.finish()  # what was received is on the file (or cut back) before we go on
            appender.close()
            self._unwatch(activity)
        if error is not None:
            _abort_on_write_error(error, header.sha256, committed, context)
        return committed, received == header.size

    def _read_stream(self, writer: _ChunkWriter, header: ingest_pb2.UploadHeader,
                     requests: Iterator[ingest_pb2.UploadRequest | ChunkView], context: grpc.ServicerContext,
                     activity: list[float]) -> int:
        """Check each chunk and hand it to the writer; how many bytes of the content were received."""
        size = header.size
        received = writer.committed  # all of it when the item is empty or every byte was already committed
        for request in requests:
            activity[0] = time.monotonic()
            if isinstance(request, ChunkView):
                chunk = request  # the fast path: data is a view into the received message
            elif request.WhichOneof("part") == "chunk":
                chunk = ChunkView(request.chunk.offset, memoryview(request.chunk.data))
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only the first Upload message may be a header")
            if chunk.offset != received:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"offset gap: chunk at {chunk.offset} but {received} bytes are committed; "
                              "call QueryUpload and resume at the committed offset")
            data = chunk.data
            if received + len(data) > size:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"size mismatch: chunk at {chunk.offset} with {len(data)} bytes runs past the declared size {size}")
            if not writer.put(data):
                break  # the writer failed: said by the caller once what was written is known
            received += len(data)
            if received == size:
                break
        return received

    def _discard_mismatch(self, gateway_id: str, header: ingest_pb2.UploadHeader, digest: str,
                          context: grpc.ServicerContext) -> None:
        """The bytes do not hash to the declared digest: the partial goes, the client starts again at 0."""
        sha, size = header.sha256, header.size
        self._partial_path(gateway_id, sha).unlink(missing_ok=True)
        with self.index.tx() as db:
            self.index.drop_partial(db, gateway_id, sha)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"digest mismatch: the {size} bytes received hash to {digest}, not {sha}; the partial upload "
                      "was discarded — re-send from offset 0 (QueryUpload now answers 0)")

    def _store_blob(self, path: Path, gateway_id: str, sha: str, size: int) -> None:
        """Rename the verified, fsynced partial into ``DIR/blobs`` and only then index it."""
        final = self.blobs / sha[:2] / sha[2:]
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            path.unlink()  # stored once already: these verified bytes only proved possession
        else:
            os.replace(path, final)
        _fsync_dir(final.parent)
        with self.index.tx() as db:
            db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?)", (sha, size, time.time()))
            self.index.drop_partial(db, gateway_id, sha)


class _ChunkWriter:
    """One upload's chunks written and hashed in order on a thread of its own.

    Why a thread: the handler thread receiving chunks used to write each one before asking gRPC for the
    next, so the network waited for the disk and the disk for the network; bench/upload.py's like-for-like
    raw-TLS reference writes on a thread of its own, and so does this now. The invariant is kept: a byte is
    fed to the hash only once it is on the file, and ``committed`` (the partial's length, what QueryUpload
    answers) is exactly what was hashed; a failed write cuts the file back to it. At most ``DEPTH`` received
    chunks wait, so memory stays bounded."""

    DEPTH = 4

    def __init__(self, appender: DirectAppender, hasher: Hasher, on_synced: Callable[[int], None]) -> None:
        self.appender = appender
        self.hasher = hasher
        self.on_synced = on_synced
        self.committed = appender.offset
        self.error: OSError | None = None
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=self.DEPTH)
        self._thread = threading.Thread(target=self._run, name="platform-write", daemon=True)
        self._thread.start()

    def put(self, data: bytes | memoryview) -> bool:
        """Queue a chunk; False once a write has failed (nothing more is taken)."""
        if self.error is not None:
            return False
        self._queue.put(data)
        return True

    def finish(self) -> tuple[int, OSError | None]:
        """Write what was queued, stop; (committed offset, the write error if one happened)."""
        self._queue.put(None)
        self._thread.join()
        return self.committed, self.error

    def _run(self) -> None:
        synced = self.committed
        while (data := self._queue.get()) is not None:
            if self.error is not None:
                continue  # drain: nothing after a failed write goes on the file
            try:
                self.appender.append(data)
            except OSError as exc:
                os.ftruncate(self.appender.fd, self.committed)  # the committed offset stays exactly what was hashed
                self.error = exc
                continue
            self.hasher.feed(data)
            self.committed += len(data)
            if self.committed - synced >= SYNC_EVERY:
                os.fdatasync(self.appender.fd)
                synced = self.committed
                self.on_synced(synced)


def _abort_on_write_error(exc: OSError, sha: str, committed: int, context: grpc.ServicerContext) -> None:
    if exc.errno == errno.ENOSPC:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"platform storage full while writing {sha} at {committed}; retry later "
                      "(the operator must free space); the committed part is kept")
    context.abort(grpc.StatusCode.INTERNAL,
                  f"platform storage error writing {sha} at {committed}: {exc.strerror}; retry later")
