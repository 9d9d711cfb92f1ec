"""Content-addressed blob store with a pipelined one-pass copy.

Layout: ``DATA_DIR/blobs/sha256/ab/cdef…`` (first two hex digits as the
directory, the other 62 as the file name) and ``DATA_DIR/blobs/tmp/`` for
copies in progress. A blob becomes visible only by ``rename`` after its bytes
and its directory entry are on disk, so a kill -9 leaves either nothing or a
complete blob (plus a temp file that ``recover()`` removes).

Why a pipeline: a plain read → hash → write loop on one thread reaches about
half of what SHA-256 alone can do on this class of machine. Reading (the
caller's thread), hashing and writing each run in their own thread over a
small ring of reusable buffers; hashlib and os.write release the GIL on
large buffers, so the three stages overlap. The hash is computed over the
very buffers that are written — exactly the bytes stored.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from gateway.errors import SourceError, StoreError, StoreFullError
from gateway.evidence.private_files import DIR_MODE, FILE_MODE, private_dir
from protos import direct_io
from protos.direct_io import ALIGN, DirectReader, open_direct, set_direct

__all__ = ["BlobStore", "StoredBlob", "ProgressCallback", "sm3_available", "sha256_file"]

# Small buffers that stay in the CPU's L2 cache (2 MiB per core here) between the read that fills
# them and the hash and write that consume them: 4 MiB buffers made every stage stream from RAM and
# measured 0.22-0.51 of openssl's SHA-256 rate against 0.63-0.84 with 512 KiB (bench/ingest.py,
# same runs, load 6-9 on 2 cores). Per-chunk queue overhead is negligible at this size.
CHUNK_SIZE = 512 * 1024
RING_BUFFERS = 8  # 4 MiB in flight at most, whatever the file size
# O_DIRECT for the temp copy: the disk DMAs from our (page-aligned) buffers instead of the kernel copying
# them into the page cache and flushing them later: 0.07 instead of 0.23 CPU s/GB for the write stage
# measured here, CPU the hash stage then has. Durability is unchanged: fsync (device cache flush and
# metadata) still comes before the rename. Where the file system refuses it, or a read comes back short
# and misaligns the offset, the copy carries on with ordinary buffered writes. EGW_STORE_DIRECT_IO=0 turns it off.
DIRECT_IO = os.environ.get("EGW_STORE_DIRECT_IO", "1") != "0" and direct_io.DIRECT_IO
DIRECT_ALIGN = ALIGN  # offsets and lengths of O_DIRECT writes: a multiple of any logical block size
WRITEBACK_EVERY = 32 * 1024 * 1024  # start writeback as we go so the final fsync is short
DEFAULT_RESERVE = 64 * 1024 * 1024  # keep this much free for the database and logs

ProgressCallback = Callable[[int], None]


class Readable(Protocol):
    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...


def sha256_file(path: Path) -> tuple[str, int]:
    """Streaming SHA-256 and size of a file (bounded memory, whatever its size)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sm3_available() -> bool:
    return "sm3" in hashlib.algorithms_available


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    sm3: str | None
    path: Path
    newly_stored: bool


class _Stage(threading.Thread):
    """A pipeline stage: applies ``work`` to each (buffer, length) until told to stop."""

    def __init__(self, name: str, work: Callable[[memoryview], None], release: Callable[[int], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.inbox: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self.work = work
        self.release = release
        self.error: BaseException | None = None
        self.buffers: list[bytearray | mmap.mmap] = []

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            index, length = item
            try:
                if self.error is None:
                    self.work(memoryview(self.buffers[index])[:length])
            except BaseException as exc:  # reported to the reader, which stops the copy
                self.error = exc
            finally:
                self.release(index)


class BlobStore:
    def __init__(self, data_dir: Path, reserve_bytes: int = DEFAULT_RESERVE, *, read_only: bool = False) -> None:
        self.root = data_dir / "blobs"
        self.objects = self.root / "sha256"
        self.tmp = self.root / "tmp"
        self.reserve_bytes = reserve_bytes
        self.read_only = read_only
        self._durable_dirs: set[Path] = set()  # fan-out directories whose entry this handle has synced
        self._dirs_lock = threading.Lock()
        if not read_only:
            for directory in (self.root, self.objects, self.tmp):
                private_dir(directory)

    # ---- lookup -------------------------------------------------------
    def path_for(self, sha256_hex: str) -> Path:
        if len(sha256_hex) != 64 or any(c not in "0123456789abcdef" for c in sha256_hex):
            raise StoreError(f"not a lowercase hex SHA-256: {sha256_hex!r}")
        return self.objects / sha256_hex[:2] / sha256_hex[2:]

    def exists(self, sha256_hex: str) -> bool:
        return self.path_for(sha256_hex).is_file()

    def open(self, sha256_hex: str) -> BinaryIO:
        try:
            return open(self.path_for(sha256_hex), "rb")
        except FileNotFoundError as exc:
            raise StoreError(f"blob {sha256_hex} is missing from the store", "restore the data directory from backup") from exc

    def reader(self, sha256_hex: str, chunk_size: int) -> DirectReader:
        """Chunked reads of a blob into two reused buffers, past the page cache where the file system allows.

        The upload reads every blob once, long after it was written (with ``O_DIRECT``, so it is not
        cached): through the page cache each read would fill pages nobody reads again, which on this
        kind of virtual machine cost more CPU than the upload's TLS (``protos.direct_io``)."""
        try:
            return DirectReader(self.path_for(sha256_hex), chunk_size)
        except FileNotFoundError as exc:
            raise StoreError(f"blob {sha256_hex} is missing from the store", "restore the data directory from backup") from exc

    def recover(self) -> int:
        """Delete copies left half-done by a crash; returns how many were removed.

        Only the holder of the data directory's writer lock may call this, once, when it takes the lock
        (``gateway.evidence.writer_lock``): a ``.part`` file may be another live process's copy."""
        if self.read_only:
            raise StoreError("a read-only handle on the store must not remove anything")
        removed = 0
        for leftover in self.tmp.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def usage(self) -> tuple[int, int]:
        """(bytes in blobs, bytes free on the store's file system)."""
        total = 0
        for p in self.objects.glob("??/*"):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                continue
        return total, shutil.disk_usage(self.root if self.root.exists() else self.root.parent).free

    def check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.root).free
        if needed + self.reserve_bytes > free:
            raise StoreFullError(
                f"not enough disk for {needed} bytes: {free} free in {self.root}, {self.reserve_bytes} kept in reserve"
            )

    def hash_file(self, path: Path) -> str:
        """SHA-256 of a source without storing it (to confirm an earlier copy)."""
        digest = hashlib.sha256()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise SourceError(f"cannot open {path!s}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb", buffering=0) as src:
            buffer = bytearray(CHUNK_SIZE)
            while n := src.readinto(buffer):
                digest.update(memoryview(buffer)[:n])
        return digest.hexdigest()

    # ---- writing ------------------------------------------------------
    def put_file(self, path: Path, with_sm3: bool = False, progress: ProgressCallback | None = None) -> StoredBlob:
        """Copy a regular file without following a symlink at its last component."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise SourceError(f"cannot open {path!s}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb", buffering=0) as src:
            st = os.fstat(fd)
            if not _is_regular(st.st_mode):
                raise SourceError(f"{path!s} is not a regular file")
            return self.put_stream(src, expected_size=st.st_size, with_sm3=with_sm3, progress=progress)

    def put_stream(
        self,
        src: Readable,
        expected_size: int | None = None,
        with_sm3: bool = False,
        progress: ProgressCallback | None = None,
    ) -> StoredBlob:
        """One pass: read, hash (SHA-256, optionally SM3) and write; publish by rename.

        ``expected_size``, when given, is checked before (free space) and after
        (the source must not have grown or shrunk while read).
        """
        if self.read_only:
            raise StoreError("this is a read-only handle on the store", "write through the data directory's writer")
        if expected_size is not None:
            self.check_space(expected_size)
        if with_sm3 and not sm3_available():
            raise StoreError("SM3 was requested but this OpenSSL has no SM3", "install an OpenSSL build with SM3 or turn SM3 off")
        tmp_path = self.tmp / f"{uuid.uuid4().hex}.part"
        fd, direct = _open_temp(tmp_path)
        small = expected_size is not None and expected_size <= CHUNK_SIZE
        try:
            sha, sm3, size = self._pipeline(src, fd, with_sm3, progress, direct, inline=small)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp_path.unlink(missing_ok=True)
            raise
        os.close(fd)
        if expected_size is not None and size != expected_size:
            tmp_path.unlink(missing_ok=True)
            raise SourceError(f"source changed while it was read: expected {expected_size} bytes, read {size}")
        return self._publish(tmp_path, sha, sm3, size)

    def adopt(self, staged: Path, sha: str, sm3: str | None, size: int) -> StoredBlob:
        """Publish a file a receiver wrote and hashed itself in ``self.tmp`` (a terminal upload), by rename:
        stored once, never copied again. The caller vouches for ``sha``/``size`` (it hashed the very bytes
        it wrote); the file is flushed to disk here before it becomes visible."""
        if self.read_only:
            raise StoreError("this is a read-only handle on the store", "write through the data directory's writer")
        if staged.stat().st_size != size:
            raise StoreError(f"staged file {staged} has {staged.stat().st_size} bytes, not the {size} received")
        with open(staged, "rb+") as fh:
            os.fsync(fh.fileno())
        return self._publish(staged, sha, sm3, size)

    def _publish(self, tmp_path: Path, sha: str, sm3: str | None, size: int) -> StoredBlob:
        final = self.path_for(sha)
        if final.is_file() and final.stat().st_size == size:
            tmp_path.unlink(missing_ok=True)  # identical content is stored once
            return StoredBlob(sha, size, sm3, final, newly_stored=False)
        self._make_durable_dir(final.parent)
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
        return StoredBlob(sha, size, sm3, final, newly_stored=True)

    def _make_durable_dir(self, directory: Path) -> None:
        """Create a fan-out directory under ``objects`` and sync its entry before a blob is renamed into it.

        Once per directory and handle, not once per blob: the sync of ``objects`` after every publish was
        5 % of a tiny recording's dock (py-spy). A handle that has not synced a directory yet syncs it
        itself, so whoever created it, its entry is on disk before any blob this handle puts there."""
        if directory in self._durable_dirs:
            return
        with self._dirs_lock:
            if directory not in self._durable_dirs:
                directory.mkdir(mode=DIR_MODE, exist_ok=True)
                _fsync_dir(self.objects)
                self._durable_dirs.add(directory)

    def _pipeline(self, src: Readable, fd: int, with_sm3: bool, progress: ProgressCallback | None,
                  direct: bool = False, *, inline: bool = False) -> tuple[str, str | None, int]:
        """Read, hash and write ``src`` into ``fd``; (sha256, sm3, size).

        Large sources go through a ring of buffers with the hash and the write on a thread each, so
        reading, hashing and writing overlap. ``inline`` (a source known to fit one buffer) does the
        same three steps on the calling thread: for a tiny recording, starting and joining the two
        stage threads cost more than its copy (py-spy: 13 % of a dock of 3,000 tiny recordings)."""
        sha = hashlib.sha256()
        sm3 = hashlib.new("sm3") if with_sm3 else None
        # anonymous mmaps: page-aligned, as O_DIRECT wants; freed with the last reference
        buffers: list[bytearray | mmap.mmap] = [mmap.mmap(-1, CHUNK_SIZE) if direct else bytearray(CHUNK_SIZE)
                                                for _ in range(1 if inline else RING_BUFFERS)]
        written = [0, 0]  # bytes written, bytes handed to writeback
        direct_on = [direct]

        def buffered_from_now() -> None:
            direct_on[0] = False
            set_direct(fd, False)

        def write(view: memoryview) -> None:
            if direct_on[0] and (written[0] % DIRECT_ALIGN or len(view) % DIRECT_ALIGN):
                buffered_from_now()  # a short read or the tail: the rest of the file goes through the page cache
            while view:
                try:
                    n = os.write(fd, view)
                except OSError as exc:
                    if exc.errno == errno.EINVAL and direct_on[0]:
                        buffered_from_now()  # this file system takes O_DIRECT at open but not for this write
                        continue
                    if exc.errno == 28:  # ENOSPC
                        raise StoreFullError(f"disk full while writing to {self.tmp}") from exc
                    raise StoreError(f"write to the store failed: {exc.strerror}") from exc
                view = view[n:]
                written[0] += n
            if written[0] - written[1] >= WRITEBACK_EVERY:
                _start_writeback(fd, written[1], written[0] - written[1])
                written[1] = written[0]

        def digest(view: memoryview) -> None:
            sha.update(view)
            if sm3 is not None:
                sm3.update(view)

        def result(size: int) -> tuple[str, str | None, int]:
            return sha.hexdigest(), (sm3.hexdigest() if sm3 is not None else None), size

        if inline:
            view = memoryview(buffers[0])  # an mmap is a buffer, not a bytearray
            size = 0
            while n := _read_source(src, view, size):
                digest(view[:n])
                write(view[:n])
                size += n
                if progress is not None:
                    progress(n)
            return result(size)

        free: queue.Queue[int] = queue.Queue()
        pending = [0] * RING_BUFFERS
        lock = threading.Lock()

        def release(index: int) -> None:
            with lock:
                pending[index] -= 1
                done = pending[index] == 0
            if done:
                free.put(index)

        stages = [_Stage("blob-hash", digest, release), _Stage("blob-write", write, release)]
        for stage in stages:
            stage.buffers = buffers
            stage.start()
        for i in range(RING_BUFFERS):
            free.put(i)
        size = 0
        try:
            while True:
                index = free.get()
                failed = next((s.error for s in stages if s.error is not None), None)
                if failed is not None:
                    raise failed
                n = _read_source(src, memoryview(buffers[index]), size)  # an mmap is a buffer, not a bytearray
                if not n:
                    free.put(index)
                    break
                size += n
                with lock:
                    pending[index] = len(stages)
                for stage in stages:
                    stage.inbox.put((index, n))
                if progress is not None:
                    progress(n)
        finally:
            for stage in stages:
                stage.inbox.put(None)
            for stage in stages:
                stage.join()
        failed = next((s.error for s in stages if s.error is not None), None)
        if failed is not None:
            raise failed
        return result(size)


def _read_source(src: Readable, view: memoryview, done: int) -> int:
    """One read into ``view``; 0 at the end. ``done``: bytes read so far, for the error message."""
    try:
        return src.readinto(view) or 0
    except OSError as exc:
        raise SourceError(f"reading the source failed after {done} bytes: {exc.strerror or exc}") from exc


def _open_temp(path: Path) -> tuple[int, bool]:
    """Create the temp copy, with O_DIRECT where allowed; returns (fd, direct)."""
    return open_direct(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE, direct=DIRECT_IO)


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux sync_file_range(SYNC_FILE_RANGE_WRITE): queue dirty pages for writeback
    without waiting, so disk writes overlap the copy instead of piling up for fsync.
    Not a durability point (fsync is); absent elsewhere, the copy just syncs at the end."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    except (OSError, AttributeError):
        return None

    def start(fd: int, offset: int, length: int) -> None:
        fn(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; errors surface at fsync

    return start


_SYNC_FILE_RANGE = _load_sync_file_range()


def _start_writeback(fd: int, offset: int, length: int) -> None:
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
