"""The O_DIRECT write path of the blob store and its fallbacks keep every byte (tuning must never cost evidence)."""

import fcntl
import hashlib
import io
import os

import pytest

import gateway.evidence.store as store_mod
from gateway.evidence.store import BlobStore


class OddReads:
    """A source whose reads come back short and unaligned, as a USB volume or a pipe may do."""

    def __init__(self, data: bytes, step: int) -> None:
        self.inner = io.BytesIO(data)
        self.step = step

    def readinto(self, buffer):
        view = memoryview(buffer)[: self.step]
        return self.inner.readinto(view)


@pytest.mark.parametrize("step", [4096, 12345, store_mod.CHUNK_SIZE])
def test_aligned_unaligned_and_tail_writes_store_exactly_the_bytes(tmp_path, step):
    data = os.urandom(2 * store_mod.CHUNK_SIZE + 3 * 4096 + 77)
    blob = BlobStore(tmp_path).put_stream(OddReads(data, step), expected_size=len(data))
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.path.read_bytes() == data and blob.size == len(data)


def test_direct_io_switched_off_stores_the_same(tmp_path, monkeypatch):
    data = os.urandom(store_mod.CHUNK_SIZE + 999)
    monkeypatch.setattr(store_mod, "DIRECT_IO", False)
    blob = BlobStore(tmp_path).put_stream(io.BytesIO(data))
    assert blob.path.read_bytes() == data


def test_temp_copy_is_opened_direct_where_the_file_system_allows(tmp_path):
    fd, direct = store_mod._open_temp(tmp_path / "x.part")
    try:
        # refused by the file system → buffered, never an error; what it reports is what the fd has
        assert bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT) == direct
        assert direct <= store_mod.DIRECT_IO
    finally:
        os.close(fd)
