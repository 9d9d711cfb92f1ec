"""The content-addressed store: one-pass hashing, dedupe, sources that misbehave, a full disk."""

import hashlib
import io
import os
import subprocess
import threading
from pathlib import Path

import pytest

from gateway.errors import SourceError, StoreFullError
from gateway.evidence import store as store_mod
from gateway.evidence.store import BlobStore


def test_layout_digest_and_dedupe(tmp_path):
    store = BlobStore(tmp_path)
    data = os.urandom(3 * store_mod.CHUNK_SIZE + 12345)  # several ring buffers and a partial one
    blob = store.put_stream(io.BytesIO(data), expected_size=len(data))
    sha = hashlib.sha256(data).hexdigest()
    assert blob.sha256 == sha and blob.size == len(data) and blob.newly_stored
    assert blob.path == tmp_path / "blobs" / "sha256" / sha[:2] / sha[2:]
    assert blob.path.read_bytes() == data
    again = store.put_stream(io.BytesIO(data))
    assert not again.newly_stored and again.path == blob.path
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_empty_source(tmp_path):
    blob = BlobStore(tmp_path).put_stream(io.BytesIO(b""), expected_size=0)
    assert blob.sha256 == hashlib.sha256(b"").hexdigest() and blob.size == 0


def test_sm3_in_the_same_pass(tmp_path):
    if not store_mod.sm3_available():
        pytest.fail("this OpenSSL lacks SM3; the gateway must report that instead of silently skipping it")
    blob = BlobStore(tmp_path).put_stream(io.BytesIO(b"abc"), with_sm3=True)
    # GB/T 32905-2016 example 1: SM3("abc")
    assert blob.sm3 == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


class ShrinkingSource(io.RawIOBase):
    """Claims a size, then delivers less: a file truncated while we read it."""

    def __init__(self, data: bytes):
        self.inner = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.inner.readinto(buffer)


class VanishingSource(io.RawIOBase):
    """Fails after some bytes, like a card pulled out of the reader."""

    def __init__(self, good: int):
        self.left = good

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.left <= 0:
            raise OSError(5, "Input/output error")
        n = min(len(buffer), self.left, 1 << 20)
        buffer[:n] = b"x" * n
        self.left -= n
        return n


def test_source_that_changes_size_is_rejected_and_nothing_is_stored(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(SourceError, match="changed while it was read"):
        store.put_stream(ShrinkingSource(b"a" * 1000), expected_size=5000)
    assert not any(store.objects.glob("??/*")) and not any(store.tmp.iterdir())


def test_source_read_error_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(SourceError, match="reading the source failed after"):
        store.put_stream(VanishingSource(3 << 20))
    assert not any(store.objects.glob("??/*")) and not any(store.tmp.iterdir())


def test_symlink_is_not_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"not evidence")
    link = tmp_path / "link.mp4"
    link.symlink_to(secret)
    with pytest.raises(SourceError, match="cannot open"):
        BlobStore(tmp_path / "data").put_file(link)


def test_not_enough_space_is_detected_before_copying(tmp_path):
    store = BlobStore(tmp_path, reserve_bytes=1 << 62)
    with pytest.raises(StoreFullError, match="not enough disk"):
        store.put_stream(io.BytesIO(b"abc"), expected_size=3)
    assert not any(store.tmp.iterdir())


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 8 MiB tmpfs, so ENOSPC comes from the kernel, not from a mock."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True,
                   capture_output=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_filling_up_during_the_copy_leaves_nothing_half_written(tiny_disk):
    store = BlobStore(tiny_disk, reserve_bytes=0)
    data = os.urandom(12 << 20)  # larger than the disk; no size given, so only the write can notice
    with pytest.raises(StoreFullError, match="disk full"):
        store.put_stream(io.BytesIO(data))
    assert not any(store.objects.glob("??/*")) and not any(store.tmp.iterdir())
    small = store.put_stream(io.BytesIO(b"still works"))  # the store is usable afterwards
    assert small.path.read_bytes() == b"still works"


def test_recover_removes_leftover_partial_copies(tmp_path):
    store = BlobStore(tmp_path)
    (store.tmp / "dead.part").write_bytes(b"half")
    assert store.recover() == 1 and not any(store.tmp.iterdir())


class ThreadWatchingSource(io.RawIOBase):
    """Serves ``data`` and notes which copy threads of the store are alive while it is read."""

    def __init__(self, data: bytes):
        self.inner = io.BytesIO(data)
        self.stage_threads: set[str] = set()

    def readable(self):
        return True

    def readinto(self, buffer):
        self.stage_threads |= {t.name for t in threading.enumerate() if t.name.startswith("blob-")}
        return self.inner.readinto(buffer)


@pytest.mark.parametrize("size", [1, 52, 4096 * 3 + 77, store_mod.CHUNK_SIZE])
def test_a_small_source_is_copied_on_the_calling_thread(tmp_path, size):
    """A tiny recording must not pay for two stage threads; its bytes and digests are the same."""
    data = os.urandom(size)
    source = ThreadWatchingSource(data)
    blob = BlobStore(tmp_path).put_stream(source, expected_size=size, with_sm3=store_mod.sm3_available())
    assert source.stage_threads == set()
    assert blob.sha256 == hashlib.sha256(data).hexdigest() and blob.path.read_bytes() == data
    if store_mod.sm3_available():
        assert blob.sm3 == hashlib.new("sm3", data).hexdigest()


def test_a_large_or_unsized_source_still_hashes_and_writes_on_stage_threads(tmp_path):
    store = BlobStore(tmp_path)
    large = ThreadWatchingSource(os.urandom(store_mod.CHUNK_SIZE + 1))
    store.put_stream(large, expected_size=store_mod.CHUNK_SIZE + 1)
    unsized = ThreadWatchingSource(b"size not known in advance")
    store.put_stream(unsized)
    assert large.stage_threads == unsized.stage_threads == {"blob-hash", "blob-write"}


def test_a_small_source_that_fails_or_shrinks_leaves_nothing(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(SourceError, match="reading the source failed after 100 bytes"):
        store.put_stream(VanishingSource(100), expected_size=1000)
    with pytest.raises(SourceError, match="changed while it was read"):
        store.put_stream(ShrinkingSource(b"a" * 10), expected_size=50)
    assert not any(store.objects.glob("??/*")) and not any(store.tmp.iterdir())


def test_each_fan_out_directory_is_made_durable_before_the_first_blob_goes_in(tmp_path, monkeypatch):
    """The rename of every blob is synced in its directory; that directory's own entry in ``objects``
    is synced once per store handle, before the first blob this handle renames into it."""
    synced: list[str] = []
    real_fsync_dir = store_mod._fsync_dir
    monkeypatch.setattr(store_mod, "_fsync_dir", lambda path: (synced.append(path.name), real_fsync_dir(path)))

    def same_fan_out(n: int) -> list[bytes]:
        found: list[bytes] = []
        i = 0
        while len(found) < n:
            data = b"recording %d" % i
            if hashlib.sha256(data).hexdigest()[:2] == "00":
                found.append(data)
            i += 1
        return found

    first, second, third = same_fan_out(3)
    store = BlobStore(tmp_path)
    store.put_stream(io.BytesIO(first), expected_size=len(first))
    store.put_stream(io.BytesIO(second), expected_size=len(second))
    BlobStore(tmp_path).put_stream(io.BytesIO(third), expected_size=len(third))  # another handle: syncs it itself
    assert synced == ["sha256", "00", "00", "sha256", "00"]
    assert len(list((tmp_path / "blobs" / "sha256" / "00").iterdir())) == 3
