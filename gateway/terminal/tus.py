"""Resumable uploads from terminals, tus 1.0 (core + creation + termination), so stock clients work.

Bytes are hashed as they arrive and appended to ``DATA_DIR/blobs/tmp/terminal-uploads/<id>.data``, on the
store's own file system; the upload's description sits beside it (``<id>.json``, written by rename). The
offset is the data file's length: what survived a crash is what the client resumes from (HEAD). The
running digest lives in memory; after a restart it is rebuilt by reading the file once (bounded memory).

On the last byte the digest is written into ``<id>.json`` first, then the file becomes the blob by rename
and the item is committed (manifest, custody, queue) in one transaction, then the evidence id is written
back. A kill anywhere in between is finished at the next start or at the next HEAD; the evidence store's
(device, source, digest) uniqueness makes a repeat commit return the same item: stored exactly once.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import StoreError, StoreFullError, TerminalError
from gateway.evidence.evidence_service import EvidenceService, IngestResult
from gateway.evidence.manifest import ManifestInput, guess_media_type
from gateway.evidence.store import CHUNK_SIZE
from gateway.evidence.terminals import TerminalRecord
from protos.files import write_atomically

__all__ = ["TUS_VERSION", "Running", "Upload", "UploadArea", "UploadNotFound", "OffsetMismatch", "parse_metadata", "MAX_UPLOAD_BYTES"]

TUS_VERSION = "1.0.0"
MAX_UPLOAD_BYTES = 64 << 30
MAX_METADATA_CHARS = 4096


class UploadNotFound(TerminalError):
    """No such upload for this terminal (another terminal's upload is "not found" too)."""


class OffsetMismatch(TerminalError):
    """The PATCH's Upload-Offset is not where the upload stands."""


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (value optional)."""
    if not header:
        return {}
    if len(header) > MAX_METADATA_CHARS:
        raise TerminalError(f"Upload-Metadata is longer than {MAX_METADATA_CHARS} characters", "send less metadata")
    out: dict[str, str] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        if not key:
            raise TerminalError("Upload-Metadata has an empty key", "send `key base64value` pairs separated by commas")
        try:
            out[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8") if value.strip() else ""
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise TerminalError(f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text",
                                "encode each value with base64") from exc
    return out


@dataclass
class Upload:
    id: str
    terminal_id: str
    officer_id: str
    length: int
    metadata: dict[str, str]
    created_at: float
    sha256: str | None = None
    sm3: str | None = None
    evidence_id: str | None = None

    @property
    def filename(self) -> str:
        name = self.metadata.get("filename") or self.metadata.get("name") or "upload.bin"
        return name.replace("/", "_").replace("\\", "_")[:200]


@dataclass
class Running:
    """The digest of the first ``offset`` bytes of an upload's data file."""

    offset: int
    sha256: Any
    sm3: Any | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(value).encode("utf-8"), 0o600)


class UploadArea:
    """The uploads in progress of one data directory. Blocking calls: run them off the event loop."""

    def __init__(self, service: EvidenceService) -> None:
        self.service = service
        self.directory = service.store.tmp / "terminal-uploads"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._running: dict[str, Running] = {}

    def _data(self, upload_id: str) -> Path:
        return self.directory / f"{upload_id}.data"

    def _meta(self, upload_id: str) -> Path:
        return self.directory / f"{upload_id}.json"

    # ---- lifecycle -----------------------------------------------------------
    def create(self, terminal: TerminalRecord, length: int, metadata: dict[str, str]) -> Upload:
        if not 0 <= length <= MAX_UPLOAD_BYTES:
            raise TerminalError(f"Upload-Length {length} is outside 0..{MAX_UPLOAD_BYTES}", "split the file or check the length")
        self.service.store.check_space(length)
        upload = Upload(uuid.uuid4().hex, terminal.id, terminal.officer_id, length, metadata, time.time())
        fd = os.open(self._data(upload.id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.close(fd)
        _write_json_atomically(self._meta(upload.id), asdict(upload))
        return upload

    def get(self, upload_id: str, terminal: TerminalRecord | None) -> Upload:
        """The upload, if it belongs to ``terminal`` (None: any, for the station itself)."""
        if not upload_id.isalnum() or len(upload_id) != 32:
            raise UploadNotFound(f"no upload {upload_id!r}")
        try:
            upload = Upload(**json.loads(self._meta(upload_id).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UploadNotFound(f"no upload {upload_id!r}", "create it again with POST") from None
        if terminal is not None and upload.terminal_id != terminal.id:
            raise UploadNotFound(f"no upload {upload_id!r}", "create it again with POST")
        return upload

    def offset(self, upload: Upload) -> int:
        if upload.sha256 is not None:
            return upload.length
        try:
            return self._data(upload.id).stat().st_size
        except FileNotFoundError:
            return 0

    def terminate(self, upload: Upload) -> None:
        if upload.evidence_id is None and upload.sha256 is not None:
            raise TerminalError("the upload is complete and being stored; it cannot be terminated", "leave it to finish")
        self._running.pop(upload.id, None)
        self._data(upload.id).unlink(missing_ok=True)
        self._meta(upload.id).unlink(missing_ok=True)

    # ---- receiving -------------------------------------------------------------
    def running(self, upload: Upload) -> Running:
        """The digest so far; rebuilt from the file when it was lost (a restart) or is behind the file."""
        on_disk = self.offset(upload)
        known = self._running.get(upload.id)
        if known is not None and known.offset == on_disk:
            return known
        fresh = Running(0, hashlib.sha256(), hashlib.new("sm3") if self.service.with_sm3 else None)
        with open(self._data(upload.id), "rb") as fh:
            buffer = bytearray(CHUNK_SIZE)
            while n := fh.readinto(buffer):
                self._update(fresh, memoryview(buffer)[:n])
        self._running[upload.id] = fresh
        return fresh

    @staticmethod
    def _update(running: Running, view: memoryview) -> None:
        running.sha256.update(view)
        if running.sm3 is not None:
            running.sm3.update(view)
        running.offset += len(view)

    def append(self, upload: Upload, running: Running, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at the end of the upload and fold it into the digest: exactly the bytes on disk."""
        if running.offset + len(data) > upload.length:
            raise TerminalError(f"the PATCH goes past Upload-Length ({upload.length} bytes)", "send only the declared bytes")
        view = memoryview(data)
        try:
            fd = os.open(self._data(upload.id), os.O_WRONLY | os.O_APPEND)
            try:
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
            finally:
                os.close(fd)
        except OSError as exc:
            # What reached the file is kept and the digest is rebuilt from it on the next PATCH (the in-memory
            # one no longer matches the file's length), so the client resumes from HEAD's offset.
            if exc.errno == errno.ENOSPC:
                raise StoreFullError(f"disk full while receiving upload {upload.id}",
                                     "free disk space in the data directory; the terminal resumes where it stopped") from exc
            raise StoreError(f"writing upload {upload.id} failed: {exc.strerror}") from exc
        self._update(running, view)

    def complete(self, upload: Upload) -> bool:
        return upload.sha256 is not None or self.offset(upload) == upload.length

    def finish(self, upload: Upload) -> IngestResult:
        """Store the complete upload as evidence (idempotent; see the module docstring for the order)."""
        if upload.sha256 is None:
            running = self.running(upload)
            if running.offset != upload.length:
                raise TerminalError(f"upload {upload.id} has {running.offset} of {upload.length} bytes", "send the rest first")
            upload.sha256 = running.sha256.hexdigest()
            upload.sm3 = running.sm3.hexdigest() if running.sm3 is not None else None
            _write_json_atomically(self._meta(upload.id), asdict(upload))
        assert upload.sha256 is not None
        media_type = upload.metadata.get("filetype") or guess_media_type(upload.filename)
        item = ManifestInput(source_path=f"terminal/{upload.id}/{upload.filename}", media_type=media_type,
                             device_id=upload.terminal_id, officer_id=upload.officer_id,
                             extra={"terminal": {"terminal_id": upload.terminal_id, "upload_id": upload.id, "protocol": "tus/1.0.0"}})
        result = self.service.ingest_staged(self._data(upload.id), item, sha256=upload.sha256, sm3=upload.sm3, size=upload.length)
        if upload.evidence_id != result.evidence_id:
            upload.evidence_id = result.evidence_id
            _write_json_atomically(self._meta(upload.id), asdict(upload))
        self._running.pop(upload.id, None)
        return result

    def finish_pending(self) -> list[IngestResult]:
        """At start: store every upload whose last byte arrived before a crash."""
        done = []
        for meta in sorted(self.directory.glob("*.json")):
            upload = self.get(meta.stem, None)
            if upload.evidence_id is None and self.complete(upload):
                done.append(self.finish(upload))
        return done

    def forget_finished(self, older_than_s: float = 7 * 86400) -> None:
        """Descriptions of stored uploads are kept a week (a client's late HEAD still learns the evidence id)."""
        cutoff = time.time() - older_than_s
        for meta in self.directory.glob("*.json"):
            upload = self.get(meta.stem, None)
            if upload.evidence_id is not None and upload.created_at < cutoff:
                meta.unlink(missing_ok=True)
