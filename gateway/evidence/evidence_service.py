"""The evidence service: the one place that turns bytes into evidence.

``ingest_*`` stores the bytes (one pass, hashed), builds and signs the
manifest, and commits the evidence row, its custody event and its move to the
upload queue in ONE transaction. A kill -9 before the commit leaves at most an
unreferenced blob (harmless, content-addressed); a re-run finds the blob,
commits the row, and never creates a second item for the same source.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import SourceError
from gateway.evidence import identity as identity_mod
from gateway.evidence.custody import CustodyLog, TreeHead
from gateway.evidence.ids import uuid7
from gateway.evidence.manifest import ManifestInput, build_manifest, sign_manifest
from gateway.evidence.outbox import attach_outbox
from gateway.evidence.state import EvidenceRow, EvidenceState, State
from gateway.evidence.store import DEFAULT_RESERVE, BlobStore, ProgressCallback, Readable, StoredBlob

__all__ = ["EvidenceService", "IngestResult", "TransitionHook", "path_as_data"]

# Called inside the transaction of every state change: (db, evidence row after the change, custody details).
TransitionHook = Callable[[sqlite3.Connection, EvidenceRow, dict[str, Any]], None]
# Called once the bytes are stored and before the manifest is signed: may add derived artefacts / metadata to the item.
Enricher = Callable[[StoredBlob, ManifestInput], None]


def path_as_data(path: str | bytes | os.PathLike[str]) -> str:
    """A file name from a device or the command line, as text that is safe to store.

    Undecodable bytes become ``\\xNN`` escapes so SQLite and JSON accept them;
    the result is data for the manifest, never a path to open.
    """
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class IngestResult:
    evidence_id: str
    sha256: str
    size: int
    duplicate: bool  # True: this source was already evidence; nothing new was created
    state: str


class EvidenceService:
    """``read_only=True``: a handle for commands that only look (status, export, custody verify): the
    database is opened read-only and nothing in the store is created or removed, so it is safe beside
    the data directory's writer. Otherwise the caller is (or works for) the writer: the process that holds
    ``writer.lock`` (see ``gateway.evidence.writer_lock``, which also removes leftover temporary copies
    when it is taken: opening a service never deletes anything)."""

    def __init__(self, data_dir: Path, *, reserve_bytes: int = DEFAULT_RESERVE, with_sm3: bool = False,
                 read_only: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.read_only = read_only
        self.identity = identity_mod.load_identity(self.data_dir)
        self.state = State(self.data_dir, read_only=read_only)
        self.store = BlobStore(self.data_dir, reserve_bytes=reserve_bytes, read_only=read_only)
        self.custody = CustodyLog(self.state, self.identity)
        self.with_sm3 = with_sm3
        self.transition_hooks: list[TransitionHook] = []
        if not read_only:
            attach_outbox(self)  # evidence/<id> messages, whatever command changes the state

    def close(self) -> None:
        self.state.close()

    def __enter__(self) -> EvidenceService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- ingest ------------------------------------------------------------
    def ingest_file(self, path: Path, item: ManifestInput, *, priority: int = 0, progress: ProgressCallback | None = None,
                    enrich: Enricher | None = None) -> IngestResult:
        """Ingest a regular file (no symlink followed at its last component)."""
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise SourceError(f"cannot read {path_as_data(path)}: {exc.strerror}") from exc
        known = self.state.find_unchanged(item.device_id, item.source_path, st.st_size, st.st_mtime)
        if known is not None and self.store.hash_file(path) == known.sha256:
            # Re-docking or re-running after an interruption: confirmed by digest, not copied again.
            return IngestResult(known.id, known.sha256, known.size, True, known.state)
        blob = self.store.put_file(path, with_sm3=self.with_sm3, progress=progress)
        return self._commit(blob, item, priority, source_mtime=st.st_mtime, enrich=enrich)

    def ingest_stream(
        self, stream: Readable, item: ManifestInput, *, expected_size: int | None = None, priority: int = 0,
        source_mtime: float | None = None, progress: ProgressCallback | None = None, enrich: Enricher | None = None,
    ) -> IngestResult:
        blob = self.store.put_stream(stream, expected_size=expected_size, with_sm3=self.with_sm3, progress=progress)
        return self._commit(blob, item, priority, source_mtime=source_mtime, enrich=enrich)

    def ingest_staged(self, staged: Path, item: ManifestInput, *, sha256: str, sm3: str | None, size: int,
                      priority: int = 0) -> IngestResult:
        """Ingest bytes a receiver already wrote and hashed in the store's temporary area (a terminal's
        upload): the file becomes the blob by rename, so a 200 MB upload is not copied a second time.
        Called again after a crash (the file already gone into the store) it commits from the blob."""
        if staged.exists():
            blob = self.store.adopt(staged, sha256, sm3, size)
        elif self.store.exists(sha256):
            blob = StoredBlob(sha256, size, sm3, self.store.path_for(sha256), newly_stored=False)
        else:
            raise SourceError(f"staged upload {staged.name} is neither in the temporary area nor in the store",
                              "the upload must be sent again")
        return self._commit(blob, item, priority, source_mtime=None)

    def ingest_bytes(self, data: bytes, item: ManifestInput, *, priority: int = 0) -> IngestResult:
        return self.ingest_stream(io.BytesIO(data), item, expected_size=len(data), priority=priority)

    def store_artefact(self, data: bytes) -> StoredBlob:
        """Store a derived artefact (thumbnail, rendered image): content-addressed, named in a manifest."""
        return self.store.put_stream(io.BytesIO(data), expected_size=len(data))

    def _commit(self, blob: StoredBlob, item: ManifestInput, priority: int, source_mtime: float | None,
                enrich: Enricher | None = None) -> IngestResult:
        existing = self.state.find_by_source(item.device_id, item.source_path, blob.sha256)
        if existing is not None:
            return IngestResult(existing.id, existing.sha256, existing.size, True, existing.state)
        if enrich is not None:
            enrich(blob, item)
        evidence_id = str(uuid7())
        manifest = build_manifest(
            item, evidence_id=evidence_id, sha256=blob.sha256, sm3=blob.sm3, size=blob.size,
            gateway_id=self.identity.gateway_id,
        )
        envelope = sign_manifest(manifest, self.identity.private_key)
        manifest_sha = hashlib.sha256(envelope.payload).hexdigest()
        with self.state.transaction() as db:
            # Checked again under the write lock: two threads of one process (two delegated ingests of the
            # same file, two docks) may both have passed the check above with the same bytes.
            raced = self.state.find_by_source(item.device_id, item.source_path, blob.sha256)
            if raced is not None:
                return IngestResult(raced.id, raced.sha256, raced.size, True, raced.state)
            self.state.insert_evidence({
                "id": evidence_id, "sha256": blob.sha256, "sm3": blob.sm3, "size": blob.size,
                "kind": manifest["kind"], "media_type": manifest["media_type"], "device_id": item.device_id,
                "officer_id": item.officer_id, "source_path": item.source_path, "source_mtime": source_mtime,
                "priority": priority, "state": EvidenceState.INGESTED.value, "manifest": envelope.to_bytes(),
            })
            self.custody.append(db, "ingested", evidence_id, {
                "sha256": blob.sha256, "size": blob.size, "manifest_sha256": manifest_sha,
                "source_path": item.source_path, "device_id": item.device_id,
            })
            self._run_hooks(db, evidence_id, {"event": "ingested"})
            self.state.transition(evidence_id, EvidenceState.QUEUED)
            self._run_hooks(db, evidence_id, {"event": EvidenceState.QUEUED.value})
        return IngestResult(evidence_id, blob.sha256, blob.size, False, EvidenceState.QUEUED.value)

    # ---- state changes -----------------------------------------------------
    def transition(self, evidence_id: str, to_state: str, *, custody_event: str | None = None,
                   details: dict[str, Any] | None = None, **fields: Any) -> None:
        """Change state, optionally with a custody event, in one durable transaction."""
        with self.state.transaction() as db:
            self._transition(db, evidence_id, to_state, custody_event, details or {}, **fields)

    def _transition(self, db: sqlite3.Connection, evidence_id: str, to_state: str, custody_event: str | None,
                    details: dict[str, Any], **fields: Any) -> None:
        to_state = str(to_state)  # an EvidenceState goes on as its plain value (hooks put it in JSON and protobuf)
        self.state.transition(evidence_id, to_state, **fields)
        if custody_event:
            self.custody.append(db, custody_event, evidence_id, details)
        self._run_hooks(db, evidence_id, {"event": custody_event or to_state, **details})

    def record_release(self, evidence_id: str, details: dict[str, Any]) -> None:
        """``released-from-device`` (and the RELEASED state once receipted) and the end of the deletion's
        write-ahead intent (``State.add_release_intents``), in one transaction: see the dock workflow."""
        with self.state.transaction() as db:
            if self.state.get(evidence_id).state == EvidenceState.RECEIPTED:
                self._transition(db, evidence_id, EvidenceState.RELEASED, "released-from-device", details)
            else:
                self.custody.append(db, "released-from-device", evidence_id, details)
            self.state.drop_release_intent(evidence_id)

    def record_event(self, evidence_id: str | None, event: str, details: dict[str, Any]) -> int:
        with self.state.transaction() as db:
            return self.custody.append(db, event, evidence_id, details)

    def _run_hooks(self, db: sqlite3.Connection, evidence_id: str, details: dict[str, Any]) -> None:
        if not self.transition_hooks:
            return
        row = self.state.get(evidence_id)
        for hook in self.transition_hooks:
            hook(db, row, details)

    def sign_tree_head(self) -> TreeHead:
        return self.custody.sign_tree_head()

    # ---- reporting ---------------------------------------------------------
    def status(self) -> dict[str, Any]:
        counts = self.state.counts_by_state()
        stored, free = self.store.usage()
        oldest = self.state.oldest_unreceipted()
        return {
            "gateway_id": self.identity.gateway_id,
            "enrolled": self.identity.enrolled,
            "data_dir": str(self.data_dir),
            "counts": counts,
            "total": sum(counts.values()),
            "disk": {"blob_bytes": stored, "free_bytes": free},
            "custody_entries": self.custody.size,
            "oldest_unreceipted": None if oldest is None else {
                "evidence_id": oldest.id, "state": oldest.state, "age_s": round(max(0.0, time.time() - oldest.created_at), 1),
                "source_path": oldest.source_path, "last_error": oldest.last_error,
            },
        }

