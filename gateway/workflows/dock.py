"""The dock: an officer plugs in a recorder and walks away knowing every recording is safe.

On attach: read identity, **measure the clock offset before syncing** (both
clocks go into every manifest of the session), sync the clock, switch to
mass storage and find the volume by serial. Then ingest every recording,
officer-flagged ones first: one-pass copy + SHA-256 into the store, size
check, media metadata and a thumbnail (a recording OpenCV cannot decode is
kept and flagged, never dropped), signed manifest, custody event, upload
queue. A re-dock after an interruption does not copy again what is already
evidence (same device, path, size, mtime — confirmed by digest).

Release policy (``receipt`` by default): a recording is deleted from the
recorder only after the platform's verified receipt for a digest equal to a
fresh re-hash of the device's copy; every deletion is a custody event.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from drivers.bodycam import (
    BodyCamera,
    BodyCamError,
    RecorderVolume,
    VolumeFile,
    open_storage,
)
from gateway.errors import DeviceError, GatewayError
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.media import probe_image, probe_video, thumbnail_jpeg
from gateway.evidence.service import EvidenceService
from gateway.evidence.store import StoredBlob

__all__ = ["DockWorkflow", "DockSession", "DockedRecording", "RELEASE_POLICIES"]

log = logging.getLogger("egw.dock")
RELEASE_POLICIES = ("receipt", "ingest", "never")
_KIND_BY_MEDIA = {"video": "video", "audio": "audio", "photo": "photo"}


@dataclass
class DockedRecording:
    device_path: str
    size: int
    important: bool
    item: VolumeFile
    evidence_id: str | None = None
    sha256: str | None = None
    copied: bool = False  # False when an earlier dock already ingested it
    problems: list[str] = field(default_factory=list)
    released: bool = False
    error: str | None = None


@dataclass
class DockSession:
    url: str
    serial: str = ""
    device_id: str = ""
    officer_no: str = ""
    officer_name: str = ""
    unit_no: str = ""
    battery_percent: int | None = None
    clock_offset_s: float | None = None
    device_time: str | None = None
    gateway_time: str | None = None
    recordings: list[DockedRecording] = field(default_factory=list)
    hostile: list[str] = field(default_factory=list)
    error: str | None = None
    volume: RecorderVolume | None = None
    reading: Any = None  # the DeviceClockReading taken before the sync (None for an adopted volume)
    id_code: str = ""
    adopted: bool = False  # found already mounted (e.g. after egw run was killed mid-dock)

    @property
    def bytes_total(self) -> int:
        return sum(r.size for r in self.recordings)


Progress = Callable[[DockSession, str, int], None]  # (session, event, bytes)


class DockWorkflow:
    def __init__(self, service: EvidenceService, *, locator: str, password: str = "000000",
                 release_policy: str = "receipt", volume_timeout: float = 30.0,
                 progress: Progress | None = None, copy_slots: threading.Semaphore | None = None,
                 platform_enrolled: bool = True) -> None:
        if release_policy not in RELEASE_POLICIES:
            raise GatewayError(f"unknown release policy {release_policy!r}", "use receipt, ingest or never")
        self.service = service
        self.locator = locator
        self.password = password
        self.release_policy = release_policy
        self.volume_timeout = volume_timeout
        self.progress = progress or (lambda session, event, n: None)
        self.copy_slots = copy_slots or threading.Semaphore(2)
        self.platform_enrolled = platform_enrolled

    # ---- attach: identity, clock, mass storage, ingest ---------------------------
    def attach(self, url: str) -> DockSession:
        session = DockSession(url=url)
        try:
            self._identify(session)
            volume = open_storage(self.locator, session.serial, timeout=self.volume_timeout)
        except BodyCamError as exc:
            session.error = str(exc)
            raise DeviceError(f"recorder at {url}: {exc}") from exc
        session.volume = volume
        self._ingest_volume(session, volume)
        return session

    def adopt(self, serial: str) -> DockSession:
        """A recorder already in mass-storage mode (its dock was interrupted, e.g. egw run was killed):
        ingest its volume with the identity and clock offset recorded when it was docked."""
        session = DockSession(url=f"volume://{serial}", serial=serial, device_id=f"bodycam-{serial}", adopted=True)
        row = self.service.state.db.execute(
            "SELECT entry FROM custody WHERE event = 'docked' AND entry LIKE ? ORDER BY seq DESC LIMIT 1",
            (f'%"serial":"{serial}"%',)).fetchone()
        if row is not None:
            import json

            docked = json.loads(bytes(row[0]))
            session.officer_no = docked.get("officer_no") or ""
            session.clock_offset_s = docked.get("clock_offset_s")
            session.device_time, session.gateway_time = docked.get("device_time"), docked.get("gateway_time")
        try:
            volume = open_storage(self.locator, serial, timeout=1.0)
        except BodyCamError as exc:
            raise DeviceError(f"mounted volume of recorder {serial}: {exc}") from exc
        session.volume = volume
        self.service.record_event(None, "volume-adopted", {"device_id": session.device_id, "serial": serial})
        self.progress(session, "identified", 0)
        self._ingest_volume(session, volume)
        return session

    def _identify(self, session: DockSession) -> None:
        with BodyCamera.open(session.url, password=self.password) as camera:
            info = camera.info()
            reading = camera.device_time()  # before syncing: this is the drift the recordings carry
            camera.sync_time()
            session.serial = info.zfy.serial or (info.usb_serial or "")
            session.device_id = f"bodycam-{session.serial}"
            session.officer_no = info.zfy.user_no
            session.officer_name = info.zfy.user_name
            session.unit_no = info.zfy.unit_no
            session.battery_percent = info.battery_percent
            session.clock_offset_s = round(reading.offset.total_seconds(), 3)
            session.device_time = reading.device_time.isoformat()
            session.gateway_time = reading.host_utc.isoformat()
            session.reading = reading
            session.id_code = info.id_code
            camera.switch_to_mass_storage()
        self.service.record_event(None, "docked", {
            "device_id": session.device_id, "serial": session.serial, "officer_no": session.officer_no,
            "clock_offset_s": session.clock_offset_s, "device_time": session.device_time, "gateway_time": session.gateway_time,
        })
        self.progress(session, "identified", 0)

    def _ingest_volume(self, session: DockSession, volume: RecorderVolume) -> None:
        scan = volume.scan()
        session.hostile = [h.display for h in scan.hostile]
        for hostile in scan.hostile:
            self.service.record_event(None, "hostile-entry", {"device_id": session.device_id, "name": hostile.display,
                                                              "reason": hostile.reason})
        ordered = sorted(scan.recordings, key=lambda f: (not f.recording.important, f.recording.start, f.parts))  # type: ignore[union-attr]
        for item in [*ordered, *scan.unparsed]:
            session.recordings.append(DockedRecording(item.device_path, item.size,
                                                      bool(item.recording and item.recording.important), item))
        self.progress(session, "scanned", 0)
        for recording in session.recordings:
            try:
                with self.copy_slots:
                    self._ingest_one(session, volume, recording)
            except (BodyCamError, GatewayError) as exc:
                recording.error = str(exc)
                log.warning("recording %s of %s not ingested: %s", recording.device_path, session.serial, exc)
                if not volume.present():
                    session.error = f"recorder {session.serial} disconnected: {exc}"
                    raise DeviceError(session.error) from exc
            self.progress(session, "ingested", 0)
        self.service.sign_tree_head()

    def _manifest_input(self, session: DockSession, item: VolumeFile) -> ManifestInput:
        name = item.recording
        captured_device = captured = None
        if name is not None:
            captured_device = name.start.isoformat()
            if session.reading is not None:
                captured = session.reading.to_host_utc(name.start).timestamp()
            elif session.clock_offset_s is not None:  # adopted volume: the offset measured at the earlier dock
                local = name.start.replace(tzinfo=timezone.utc) - timedelta(minutes=480)
                captured = local.timestamp() - session.clock_offset_s
        return ManifestInput(
            source_path=item.device_path,
            kind=_KIND_BY_MEDIA.get(name.media_kind, "document") if name else None,
            device_id=session.device_id, officer_id=session.officer_no, unit=session.unit_no,
            captured_at_device=captured_device, clock_offset_s=session.clock_offset_s, captured_at=captured,
            important=bool(name and name.important),
            extra={"device": {"serial": session.serial, "id_code": session.id_code, "officer_name": session.officer_name,
                              "adopted_volume": session.adopted},
                   "clock": {"device_time": session.device_time, "gateway_time": session.gateway_time,
                             "offset_s": session.clock_offset_s}},
        )

    def _ingest_one(self, session: DockSession, volume: RecorderVolume, recording: DockedRecording) -> None:
        item = recording.item
        mtime = item.mtime_ns / 1e9
        known = self.service.state.find_unchanged(session.device_id, item.device_path, item.size, mtime)
        if known is not None and self._device_digest(volume, item) == known.sha256:
            recording.evidence_id, recording.sha256, recording.copied = known.id, known.sha256, False
            self.progress(session, "bytes", item.size)
            return
        container = volume.check_container(item)
        manifest_input = self._manifest_input(session, item)
        manifest_input.extra["container"] = {"status": container.status, "detail": container.detail}
        if container.status == "truncated":
            recording.problems.append(f"container truncated: {container.detail}")
        with volume.open(item) as reader:
            result = self.service.ingest_stream(
                reader, manifest_input, expected_size=item.size, source_mtime=mtime,
                priority=1 if recording.important else 0,
                progress=lambda n: self.progress(session, "bytes", n),
                enrich=lambda blob, mi: self._enrich(blob, mi, recording),
            )
        recording.evidence_id, recording.sha256, recording.copied = result.evidence_id, result.sha256, not result.duplicate

    def _enrich(self, blob: StoredBlob, item: ManifestInput, recording: DockedRecording) -> None:
        """Media metadata and a thumbnail from the stored copy, into the signed manifest."""
        kind = item.kind
        if kind not in ("video", "photo"):
            return
        info = probe_video(blob.path) if kind == "video" else probe_image(blob.path)
        item.extra["media"] = info
        recording.problems.extend(info.get("problems", []))
        jpeg = thumbnail_jpeg(blob.path, is_video=kind == "video") if info.get("decodable") else None
        if jpeg:
            thumb = self.service.store_artefact(jpeg)
            item.derived.append({"kind": "thumbnail", "media_type": "image/jpeg", "sha256": thumb.sha256, "size": thumb.size})

    @staticmethod
    def _device_digest(volume: RecorderVolume, item: VolumeFile) -> str:
        digest = hashlib.sha256()
        with volume.open(item) as reader:
            buffer = bytearray(512 << 10)  # fits in L2 between read and hash (see gateway.evidence.store)
            while n := reader.readinto(buffer):
                digest.update(memoryview(buffer)[:n])
        return digest.hexdigest()

    # ---- release -------------------------------------------------------------
    def safe(self, session: DockSession, recording: DockedRecording) -> bool:
        """Is the recording safe, i.e. can the officer walk away? Receipted by the platform
        (or, with no platform enrolled, stored, hashed and signed here)."""
        if recording.evidence_id is None:
            return False
        if not self.platform_enrolled:
            return True
        return self.service.state.get(recording.evidence_id).state in ("receipted", "released")

    def may_delete(self, recording: DockedRecording) -> bool:
        """The release policy: never before a verified receipt unless the policy says "ingest"."""
        if recording.evidence_id is None or self.release_policy == "never":
            return False
        if self.release_policy == "ingest":
            return True
        return self.service.state.get(recording.evidence_id).state == "receipted"

    def release(self, session: DockSession) -> int:
        """Delete what the policy allows; returns how many recordings were released now."""
        if self.release_policy == "never" or session.volume is None:
            return 0
        released = 0
        for recording in session.recordings:
            if recording.released or not self.may_delete(recording):
                continue
            row = self.service.state.get(recording.evidence_id)  # type: ignore[arg-type]
            try:
                fresh = self._device_digest(session.volume, recording.item)
            except BodyCamError as exc:  # unplugged before release: nothing deleted, the next dock releases it
                recording.error = f"not released: {exc}"
                continue
            if fresh != row.sha256:
                recording.error = f"device copy changed since ingest (now {fresh[:12]}…, evidence {row.sha256[:12]}…): kept"
                self.service.record_event(row.id, "release-refused", {"reason": "digest mismatch", "device_sha256": fresh})
                continue
            try:
                session.volume.delete(recording.item)
            except BodyCamError as exc:
                recording.error = f"not released: {exc}"
                continue
            details = {"device_id": session.device_id, "device_path": recording.device_path, "device_sha256": fresh,
                       "policy": self.release_policy, "at": datetime.now(timezone.utc).isoformat()}
            if row.state == "receipted":
                self.service.transition(row.id, "released", custody_event="released-from-device", details=details)
            else:
                self.service.record_event(row.id, "released-from-device", details)
            recording.released = True
            released += 1
        self.service.sign_tree_head()
        return released

    def summary(self, session: DockSession) -> dict[str, Any]:
        rows = []
        for r in session.recordings:
            state = self.service.state.get(r.evidence_id).state if r.evidence_id else "not ingested"
            rows.append({"device_path": r.device_path, "size": r.size, "important": r.important, "evidence_id": r.evidence_id,
                         "sha256": r.sha256, "state": state, "copied": r.copied, "released": r.released,
                         "safe": self.safe(session, r), "problems": r.problems, "error": r.error})
        return {"url": session.url, "serial": session.serial, "officer_no": session.officer_no,
                "officer_name": session.officer_name, "clock_offset_s": session.clock_offset_s,
                "battery_percent": session.battery_percent, "hostile_entries": session.hostile,
                "error": session.error, "recordings": rows,
                "safe_to_undock": bool(rows) and all(r["safe"] for r in rows) and session.error is None}
