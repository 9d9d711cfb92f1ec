"""protos/direct_io: O_DIRECT streaming with reused aligned buffers, on real files.

The appender's contract is what the platform relies on: whatever sequence of appends and flushes,
the bytes it reports as written are exactly the bytes on the file, in order, and after a flush the
file holds the whole stream. The reader returns exactly the bytes of any range, aligned or not."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.direct_io import ALIGN, DirectAppender, DirectReader, open_direct

# /work is ext4 (O_DIRECT works); tmpfs would test only the fallback, which has its own test below
_chunks = st.lists(st.binary(min_size=0, max_size=3 * ALIGN + 7), max_size=25)


def _direct_dir(tmp_path: Path) -> Path:
    probe = tmp_path / "probe"
    fd, direct = open_direct(probe, os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    probe.unlink()
    assert direct, "these tests need a file system with O_DIRECT"
    return tmp_path


@settings(max_examples=60, deadline=None)
@given(prefix=st.binary(max_size=2 * ALIGN + 5), chunks=_chunks, buffer_blocks=st.integers(1, 3))
def test_every_appended_chunk_is_on_the_file_when_append_returns(tmp_path_factory: pytest.TempPathFactory, prefix: bytes,
                                                                 chunks: list[bytes], buffer_blocks: int) -> None:
    """Any prefix (a resumed partial), any chunk sizes, buffers smaller or larger than a chunk."""
    path = _direct_dir(tmp_path_factory.mktemp("app")) / "partial"
    path.write_bytes(prefix)
    fd, direct = open_direct(path, os.O_RDWR)
    appender = DirectAppender(fd, len(prefix), direct=direct, buffer_size=buffer_blocks * ALIGN)
    stream = bytearray(prefix)
    try:
        assert appender.direct
        for data in chunks:
            appender.append(data)
            stream += data
            assert appender.offset == len(stream)
            assert path.read_bytes() == bytes(stream)
    finally:
        appender.close()
        os.close(fd)


def test_aligned_chunks_never_touch_the_page_cache_path(tmp_path: Path) -> None:
    """1 MiB chunks from an aligned offset: every write is O_DIRECT (no tail left to write buffered)."""
    path = _direct_dir(tmp_path) / "partial"
    fd, direct = open_direct(path, os.O_RDWR | os.O_CREAT)
    appender = DirectAppender(fd, 0, direct=direct)
    try:
        for _ in range(3):
            appender.append(os.urandom(1024 * 1024))
            assert appender._fill == 0  # nothing carried: the next write starts aligned
        assert appender.direct and os.fstat(fd).st_size == 3 * 1024 * 1024
    finally:
        appender.close()
        os.close(fd)


def test_appender_on_a_full_disk_raises_and_keeps_its_offset(tmp_path: Path) -> None:
    """ENOSPC from the kernel (a real /dev/full) reaches the caller, which cuts the file back."""
    fd = os.open("/dev/full", os.O_WRONLY)
    appender = DirectAppender(fd, 0, direct=False, buffer_size=ALIGN)
    try:
        with pytest.raises(OSError) as caught:
            appender.append(b"y" * ALIGN)
        assert caught.value.errno == errno.ENOSPC
    finally:
        appender.close()
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 5 * ALIGN), ranges=st.lists(st.tuples(st.integers(0, 6 * ALIGN), st.integers(0, 2 * ALIGN + 3)),
                                                        min_size=1, max_size=10))
def test_reader_returns_exactly_the_range(tmp_path_factory: pytest.TempPathFactory, size: int,
                                          ranges: list[tuple[int, int]]) -> None:
    path = _direct_dir(tmp_path_factory.mktemp("rd")) / "blob"
    content = os.urandom(size)
    path.write_bytes(content)
    with DirectReader(path, 2 * ALIGN + 3) as reader:
        assert reader.direct
        for offset, length in ranges:
            assert bytes(reader.read_at(offset, length)) == content[offset:offset + length]


def test_reader_keeps_the_previous_chunk_while_reading_ahead(tmp_path: Path) -> None:
    path = _direct_dir(tmp_path) / "blob"
    content = os.urandom(3 * ALIGN)
    path.write_bytes(content)
    with DirectReader(path, ALIGN, buffers=2) as reader:
        first = reader.read_at(0, ALIGN)
        second = reader.read_at(ALIGN, ALIGN)
        assert bytes(first) == content[:ALIGN] and bytes(second) == content[ALIGN:2 * ALIGN]
        with pytest.raises(ValueError, match="exceeds this reader's chunk size"):
            reader.read_at(0, 2 * ALIGN)


def test_without_o_direct_the_same_buffers_work(tmp_path: Path) -> None:
    """Where O_DIRECT is off (EGW_DIRECT_IO=0, or a file system that refuses it: older tmpfs), reads and
    appends go through the page cache with the same buffers and the same results."""
    path = tmp_path / "blob"
    try:
        fd, direct = open_direct(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, direct=False)
        assert not direct
        appender = DirectAppender(fd, 0, direct=direct, buffer_size=ALIGN)
        data = os.urandom(ALIGN + 11)
        appender.append(data[:7])
        appender.append(data[7:])
        appender.close()
        os.close(fd)
        assert data == path.read_bytes()
        with DirectReader(path, 64, direct=False) as reader:
            assert not reader.direct
            assert bytes(reader.read_at(ALIGN + 1, 64)) == data[ALIGN + 1:ALIGN + 65]
    finally:
        path.unlink(missing_ok=True)
