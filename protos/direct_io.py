"""Streaming large files past the page cache (``O_DIRECT``), shared by the gateway and the reference platform.

Why: a recording is written once and read once more (to upload it), so keeping it in the page cache buys
nothing, and on a virtual machine it is expensive. Here, touching page-cache pages the guest had given
back to the host costs about 2.3 CPU s per GB (measured: a 2 GB ``dd`` into a new file took 4.7 s of
system time after the machine had been idle for 20 s, 0.46 s right after a previous run); the copy
itself is 0.1 s/GB. With ``O_DIRECT`` the disk DMAs to and from our own page-aligned buffers, which are
allocated once and reused, so that cost disappears (``bench/dock.py`` profiled it as the largest single
item on both sides of a dock).

Rules of ``O_DIRECT`` on Linux: buffer address, file offset and length are multiples of the logical block
size (``ALIGN`` covers every disk in use). A read at the end of the file may come back short. Where a
file system refuses the flag (tmpfs answers EINVAL) everything here falls back to ordinary I/O with the
same buffers, so callers never need a second code path. Durability is unchanged: ``O_DIRECT`` does not
flush the device cache; callers still ``fdatasync`` where they did before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import mmap
import os
from pathlib import Path

__all__ = ["ALIGN", "DIRECT_IO", "DirectAppender", "DirectReader", "align_down", "open_direct", "set_direct"]

ALIGN = 4096  # offsets, lengths and buffer addresses: a multiple of any logical block size in use
# EGW_DIRECT_IO=0 turns it off everywhere (EGW_STORE_DIRECT_IO=0, the older name, still works for the store).
DIRECT_IO = os.environ.get("EGW_DIRECT_IO", "1") != "0" and hasattr(os, "O_DIRECT")


def align_down(value: int) -> int:
    return value - value % ALIGN


def open_direct(path: Path | str, flags: int, mode: int = 0o600, *, direct: bool = DIRECT_IO) -> tuple[int, bool]:
    """``os.open`` with ``O_DIRECT`` where the file system takes it; returns (fd, direct).

    With ``O_CREAT | O_EXCL``, Linux may create the file before refusing the flag: the second attempt
    then opens without ``O_EXCL`` (the name was ours a moment ago)."""
    flags |= getattr(os, "O_CLOEXEC", 0)
    if direct:
        try:
            return os.open(path, flags | os.O_DIRECT, mode), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no O_DIRECT on this file system; anything else is real
                raise
            if flags & os.O_EXCL:
                flags &= ~os.O_EXCL
    return os.open(path, flags, mode), False


def set_direct(fd: int, on: bool) -> None:
    """Switch ``O_DIRECT`` on an open file (an unaligned tail goes through the page cache)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (flags | os.O_DIRECT) if on else (flags & ~os.O_DIRECT))


def _aligned_size(size: int) -> int:
    return max(ALIGN, -(-size // ALIGN) * ALIGN)


class DirectReader:
    """Reads ranges of one file into reused page-aligned buffers, ``O_DIRECT`` where possible.

    ``read_at`` returns a view into one of ``buffers`` buffers, valid until that buffer comes round
    again: with two, a caller may read one chunk ahead while it still uses the previous one, or run two
    reads at once from two threads (each call takes the next buffer atomically)."""

    def __init__(self, path: Path | str, chunk_size: int, *, buffers: int = 2, direct: bool = DIRECT_IO) -> None:
        self.fd, self.direct = open_direct(path, os.O_RDONLY, direct=direct)
        # room for a chunk that starts mid-block: one block before it and the rounding after it
        self._size = _aligned_size(chunk_size) + ALIGN
        self._buffers = [mmap.mmap(-1, self._size) for _ in range(max(1, buffers))]
        self._turns = itertools.count()  # next() of a C iterator is atomic: two threads never share a buffer

    def read_at(self, offset: int, length: int) -> memoryview:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
        if length > self._size - ALIGN:
            raise ValueError(f"read of {length} bytes exceeds this reader's chunk size {self._size - ALIGN}")
        buffer = self._buffers[next(self._turns) % len(self._buffers)]
        start = align_down(offset) if self.direct else offset
        skip = offset - start
        want = _aligned_size(skip + length) if self.direct else length
        got = self._pread_full(buffer, want, start)
        return memoryview(buffer)[skip:max(skip, min(got, skip + length))]

    def _pread_full(self, buffer: mmap.mmap, want: int, start: int) -> int:
        got = 0
        while got < want:
            try:
                n = os.preadv(self.fd, [memoryview(buffer)[got:want]], start + got)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self.direct = False  # the file system took the flag at open but not for this read
                set_direct(self.fd, False)
                continue
            if n == 0:
                break
            got += n
            if self.direct and got % ALIGN:
                break  # a short direct read ends only at the end of the file
        return got

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for buffer in self._buffers:
            _close_quietly(buffer)

    def __enter__(self) -> DirectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DirectAppender:
    """Appends a stream of byte strings to a file at ``offset``, each on the file when ``append`` returns.

    Bytes pass through one page-aligned staging buffer that always starts at an aligned file offset:
    the aligned part goes out with ``O_DIRECT``, an unaligned tail through the page cache. The tail
    stays at the front of the buffer and is written again, aligned, with what follows (identical
    bytes), so a stream of 1 MiB chunks is written entirely with ``O_DIRECT`` and any other stream
    stays correct. The cost of staging is one copy between two buffers that stay in memory."""

    def __init__(self, fd: int, offset: int, *, direct: bool, buffer_size: int = 1024 * 1024) -> None:
        """``fd`` is open for reading and writing (a partial block before ``offset`` is read back)."""
        self.fd = fd
        self.direct = direct
        self._buffer = mmap.mmap(-1, _aligned_size(buffer_size) + ALIGN)  # a chunk plus a carried tail
        self._base = align_down(offset) if direct else offset  # file offset of the buffer's first byte
        self._fill = offset - self._base
        if self._fill:
            with memoryview(self._buffer) as view:
                want = ALIGN if direct else self._fill  # a direct read is whole blocks; it comes back short at the end
                if os.preadv(fd, [view[:want]], self._base) < self._fill:
                    raise OSError(errno.EIO, f"the file is shorter than its committed offset {offset}")

    @property
    def offset(self) -> int:
        """Bytes of the stream on the file."""
        return self._base + self._fill

    def append(self, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset``. On an error, part of it may be on the file: cut back to the old offset."""
        view = memoryview(data).cast("B")
        room = len(self._buffer)
        while view:
            n = min(len(view), room - self._fill)
            self._buffer[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            self._write_staged()

    def _write_staged(self) -> None:
        aligned = align_down(self._fill) if self.direct else self._fill
        if aligned:
            try:
                self._pwrite(0, aligned)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self.direct = False  # taken at open, refused for this write: the page cache from now on
                set_direct(self.fd, False)
                self._pwrite(0, self._fill)
                aligned = self._fill
        tail = self._fill - aligned
        if tail:
            set_direct(self.fd, False)
            try:
                self._pwrite(aligned, self._fill)
            finally:
                set_direct(self.fd, True)
        self._buffer.move(0, aligned, tail)
        self._base += aligned
        self._fill = tail

    def _pwrite(self, start: int, end: int) -> None:
        """Bytes ``start:end`` of the buffer to the file at the matching offset."""
        with memoryview(self._buffer) as view:  # released at once, even when an error's traceback lives on
            while start < end:
                start += os.pwrite(self.fd, view[start:end], self._base + start)

    def close(self) -> None:
        """Release the buffer (the caller owns ``fd``)."""
        _close_quietly(self._buffer)


def _close_quietly(buffer: mmap.mmap) -> None:
    """Unmap now, unless a view the caller still holds pins it (then it goes with the last view)."""
    with contextlib.suppress(BufferError):
        buffer.close()
