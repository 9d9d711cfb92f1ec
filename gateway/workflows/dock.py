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
fresh re-hash of the device's copy; every deletion is a custody event, even
one that a kill interrupted before it was recorded (a write-ahead intent is
committed before each round of deletions and finished at the next dock). A
device copy that no longer matches what was ingested is kept, and the
recorder is not safe to undock (the newer bytes are not evidence yet).

A hostile recorder: entries the driver refuses (links, special files, names
it will not use) are never opened, followed or deleted; each is reported
(the first ``MAX_HOSTILE_EVENTS`` one by one in custody with the name's raw
bytes, the rest counted). When what was refused may hold recordings (a
refused name, a listing cut at the driver's entry limit, a directory nested
too deep), the session carries an ``attention`` message naming the recorder,
the limit and what the officer must do, and the recorder is not safe to
undock; its other recordings are still ingested, receipted and released.
Officer and unit names that are not GBK are read with U+FFFD (see
``firmware_bridge.bodycam_usb.decode_zfy_info``); the raw ZFY_INFO bytes go
into the ``docked`` custody event and every manifest.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.bodycam import (
    BodyCamera,
    BodyCamError,
    HostileEntry,
    RecorderVolume,
    VolumeFile,
    VolumeScan,
    open_storage,
)
from gateway.errors import DeviceError, GatewayError
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.media import probe_image, probe_video, thumbnail_jpeg
from gateway.evidence.state import EvidenceRow, EvidenceState, ReleaseIntent
from gateway.evidence.store import StoredBlob

__all__ = ["DockWorkflow", "DockState", "DockedRecording", "DockCancelled", "RELEASE_POLICIES", "mounted_serials"]

log = logging.getLogger("egw.dock")
RELEASE_POLICIES = ("receipt", "ingest", "never")
MAX_HOSTILE_EVENTS = 50  # refused entries recorded (and shown) one by one; the rest are counted
_KEPT = {"receipt": "Nothing was deleted from the recorder that the platform has not receipted.",
         "ingest": "Nothing was deleted from the recorder that is not stored and signed here.",
         "never": "Nothing was deleted from the recorder."}
_HAND_OVER = "Do not put this recorder back into service: hand it to the evidence administrator to copy the rest on a workstation."
_KIND_BY_MEDIA = {"video": "video", "audio": "audio", "photo": "photo"}
_SERIAL = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what drivers.bodycam.TemplateLocator accepts as a serial
UNPLUG_SETTLE_S = 0.3  # a yanked volume reads short for a moment before it disappears


class DockCancelled(GatewayError):
    """The officer pressed Ctrl-C (or the service asked the dock to stop): nothing half-done is kept
    as evidence; what was stored stays stored."""


def mounted_serials(template: str) -> list[str]:
    """Serials whose volume is mounted under the locator template (``…/{serial}`` as the last part).

    Shared by ``egw run`` and ``egw dock`` so both adopt exactly the same recorders. Other
    directories there (a mount in progress, ``.<serial>.mounting``; anything whose name could not
    be a serial; an empty directory) are not recorders."""
    if not template.endswith("/{serial}"):
        return []
    root = template[: -len("/{serial}")]
    try:
        return sorted(entry.name for entry in os.scandir(root) if _SERIAL.fullmatch(entry.name)
                      and entry.is_dir(follow_symlinks=False) and any(os.scandir(entry.path)))
    except OSError:
        return []


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
    changed_on_device: bool = False  # the device copy no longer matches the evidence: kept, not safe
    unplugged: bool = False  # the volume went away before this recording could be released


@dataclass
class DockState:
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
    hostile: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_HOSTILE_EVENTS refused entries
    hostile_total: int = 0
    files_ingested: int = 0  # recordings that are evidence now (counted, not recounted per file: 10 000s of them)
    attention: list[str] = field(default_factory=list)  # what keeps the recorder from being safe besides receipts
    zfy_info_hex: str = ""  # ZFY_INFO exactly as the recorder sent it
    zfy_lossy: tuple[str, ...] = ()  # name fields that were not GBK (read with U+FFFD)
    error: str | None = None
    volume: RecorderVolume | None = None
    reading: Any = None  # the DeviceClockReading taken before the sync (None for an adopted volume)
    id_code: str = ""
    adopted: bool = False  # found already mounted (e.g. after egw run was killed mid-dock)
    listener: Progress | None = None  # this recorder's progress (the dock session that owns it)
    cancelled: Callable[[], bool] = lambda: False  # asked between copies and during each copy

    @property
    def bytes_total(self) -> int:
        return sum(r.size for r in self.recordings)


Progress = Callable[[DockState, str, int], None]  # (session, event, bytes)


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
    def _emit(self, session: DockState, event: str, n: int) -> None:
        self.progress(session, event, n)
        if session.listener is not None:
            session.listener(session, event, n)

    def attach(self, url: str, session: DockState | None = None) -> DockState:
        session = session or DockState(url=url)
        try:
            self._identify(session)
            volume = open_storage(self.locator, session.serial, timeout=self.volume_timeout)
        except BodyCamError as exc:
            session.error = str(exc)
            raise DeviceError(f"recorder at {url}: {exc}") from exc
        session.volume = volume
        self._ingest_volume(session, volume)
        return session

    def adopt(self, serial: str, session: DockState | None = None) -> DockState:
        """A recorder already in mass-storage mode (its dock was interrupted, e.g. egw run was killed):
        ingest its volume with the identity and clock offset recorded when it was docked."""
        session = session or DockState(url=f"volume://{serial}")
        session.serial, session.device_id, session.adopted = serial, f"bodycam-{serial}", True
        docked = self.service.custody.last_docked(serial)
        if docked is not None:
            session.officer_no = docked.get("officer_no") or ""
            session.zfy_info_hex = docked.get("zfy_info_hex") or ""
            session.zfy_lossy = tuple(docked.get("zfy_lossy_fields") or ())
            session.clock_offset_s = docked.get("clock_offset_s")
            session.device_time, session.gateway_time = docked.get("device_time"), docked.get("gateway_time")
        try:
            volume = open_storage(self.locator, serial, timeout=1.0)
        except BodyCamError as exc:
            raise DeviceError(f"mounted volume of recorder {serial}: {exc}") from exc
        session.volume = volume
        self.service.record_event(None, "volume-adopted", {"device_id": session.device_id, "serial": serial})
        self._emit(session, "identified", 0)
        self._ingest_volume(session, volume)
        return session

    def _identify(self, session: DockState) -> None:
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
            session.zfy_info_hex, session.zfy_lossy = info.zfy.raw.hex(), info.zfy.lossy
            camera.switch_to_mass_storage()
        docked: dict[str, Any] = {
            "device_id": session.device_id, "serial": session.serial, "officer_no": session.officer_no,
            "clock_offset_s": session.clock_offset_s, "device_time": session.device_time, "gateway_time": session.gateway_time,
            "zfy_info_hex": session.zfy_info_hex,
        }
        if session.zfy_lossy:
            docked["zfy_lossy_fields"] = list(session.zfy_lossy)
            log.warning("recorder %s sent %s that are not GBK: read with U+FFFD, raw bytes recorded",
                        session.serial, " and ".join(session.zfy_lossy))
        self.service.record_event(None, "docked", docked)
        self._emit(session, "identified", 0)

    def _ingest_volume(self, session: DockState, volume: RecorderVolume) -> None:
        self._finish_interrupted_releases(session, volume)
        scan = volume.scan()
        self._report_hostile(session, volume, scan)
        ordered = sorted(scan.recordings, key=lambda f: (not f.recording.important, f.recording.start, f.parts))  # type: ignore[union-attr]  # scan.recordings: parsed names only
        for item in [*ordered, *scan.unparsed]:
            session.recordings.append(DockedRecording(item.device_path, item.size,
                                                      bool(item.recording and item.recording.important), item))
        self._emit(session, "scanned", 0)
        for recording in session.recordings:
            if session.cancelled():
                raise DockCancelled(f"recorder {session.serial}: dock interrupted")
            try:
                with self.copy_slots:
                    self._ingest_one(session, volume, recording)
                session.files_ingested += 1
            except DockCancelled:
                raise
            except (BodyCamError, GatewayError) as exc:
                recording.error = str(exc)
                log.warning("recording %s of %s not ingested: %s", recording.device_path, session.serial, exc)
                if not volume.present():
                    session.error = f"recorder {session.serial} disconnected: {exc}"
                    raise DeviceError(session.error) from exc
            self._emit(session, "ingested", 0)
        self.service.sign_tree_head()

    def _report_hostile(self, session: DockState, volume: RecorderVolume, scan: VolumeScan) -> None:
        """Record what the driver refused (bounded: a recorder may list 100 000 such entries) and say
        what keeps the recorder from being safe when a refused entry may hold recordings."""
        session.hostile_total = scan.hostile_total
        for hostile in scan.hostile[:MAX_HOSTILE_EVENTS]:
            row = _hostile_row(hostile)
            session.hostile.append(row)
            self.service.record_event(None, "hostile-entry", {"device_id": session.device_id, **row})
        if scan.hostile_total > len(session.hostile):
            by_kind = dict(scan.hostile_counts)
            for row in session.hostile:
                by_kind[row["kind"]] -= 1
            self.service.record_event(None, "hostile-entries-not-listed", {
                "device_id": session.device_id, "count": scan.hostile_total - len(session.hostile),
                "by_kind": {kind: n for kind, n in by_kind.items() if n}})
        who, hand_over = f"recorder {session.serial}", f"{_KEPT[self.release_policy]} {_HAND_OVER}"
        for cut in (h for h in scan.hostile if h.kind == "too_many"):
            session.attention.append(
                f"{who}: its volume lists more entries than the limit of {volume.max_entries}; the gateway stopped "
                f"listing at {cut.display}, so recordings past the limit were not copied. {hand_over}")
        deep = scan.hostile_counts.get("too_deep", 0)
        if deep:
            example = next((h.display for h in scan.hostile if h.kind == "too_deep"), "")
            session.attention.append(
                f"{who}: {deep} director{'y' if deep == 1 else 'ies'} nested deeper than {volume.max_depth} levels "
                f"(e.g. {example}) were not listed; files in them were not copied. {hand_over}")
        refused = scan.hostile_counts.get("name", 0)
        if refused:
            first = next((h for h in scan.hostile if h.kind == "name"), None)
            example = f" (e.g. {first.display[:80]}: {first.reason})" if first is not None else ""
            session.attention.append(
                f"{who}: {refused} entr{'y' if refused == 1 else 'ies'} with names the gateway will not use{example} "
                f"were not copied and are still on the recorder. {hand_over}")

    def _manifest_input(self, session: DockState, item: VolumeFile) -> ManifestInput:
        name = item.recording
        captured_device = captured = None
        if name is not None:
            captured_device = name.start.isoformat()
            if session.reading is not None:
                captured = session.reading.to_host_utc(name.start).timestamp()
            elif session.clock_offset_s is not None:  # adopted volume: the offset measured at the earlier dock
                local = name.start.replace(tzinfo=UTC) - timedelta(minutes=480)
                captured = local.timestamp() - session.clock_offset_s
        return ManifestInput(
            source_path=item.device_path,
            kind=_KIND_BY_MEDIA.get(name.media_kind, "document") if name else None,
            device_id=session.device_id, officer_id=session.officer_no, unit=session.unit_no,
            captured_at_device=captured_device, clock_offset_s=session.clock_offset_s, captured_at=captured,
            important=bool(name and name.important),
            extra={"device": {"serial": session.serial, "id_code": session.id_code, "officer_name": session.officer_name,
                              "adopted_volume": session.adopted, "zfy_info_hex": session.zfy_info_hex,
                              **({"zfy_lossy_fields": list(session.zfy_lossy)} if session.zfy_lossy else {})},
                   "clock": {"device_time": session.device_time, "gateway_time": session.gateway_time,
                             "offset_s": session.clock_offset_s}},
        )

    def _ingest_one(self, session: DockState, volume: RecorderVolume, recording: DockedRecording) -> None:
        item = recording.item
        mtime = item.mtime_ns / 1e9
        known = self.service.state.find_unchanged(session.device_id, item.device_path, item.size, mtime)
        if known is not None:
            # Re-docking after an interruption: what is already evidence is confirmed by its digest, not copied again.
            device_sha256, read = self._device_digest(volume, item)
            if read == item.size and device_sha256 == known.sha256:
                recording.evidence_id, recording.sha256, recording.copied = known.id, known.sha256, False
                self._emit(session, "bytes", item.size)
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
                progress=lambda n: self._copied(session, n),
                enrich=lambda blob, mi: self._enrich(blob, mi, recording),
            )
        recording.evidence_id, recording.sha256, recording.copied = result.evidence_id, result.sha256, not result.duplicate

    def _copied(self, session: DockState, n: int) -> None:
        """Progress of one copy; also where an interrupted dock stops mid-file (the store drops the
        partial copy: nothing half-read becomes evidence)."""
        if session.cancelled():
            raise DockCancelled(f"recorder {session.serial}: dock interrupted")
        self._emit(session, "bytes", n)

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
    def _device_digest(volume: RecorderVolume, item: VolumeFile) -> tuple[str, int]:
        """SHA-256 of the device's copy and how many bytes were read."""
        digest, total = hashlib.sha256(), 0
        with volume.open(item) as reader:
            # 512 KiB fits in L2 between read and hash (see gateway.evidence.store); an anonymous mmap is
            # page-aligned, and the kernel copies into it faster than into a bytearray: 0.69 against 0.74
            # CPU s per GiB read and hashed from the page cache, measured here. Unmapped with its last reference.
            view = memoryview(mmap.mmap(-1, 512 << 10))
            while n := reader.readinto(view):
                digest.update(view[:n])
                total += n
        return digest.hexdigest(), total

    # ---- release -------------------------------------------------------------
    def safe(self, session: DockState, recording: DockedRecording, state: str | None = None) -> bool:
        """Is the recording safe, i.e. can the officer walk away? Receipted by the platform
        (or, with no platform enrolled, stored, hashed and signed here)."""
        if recording.evidence_id is None or recording.changed_on_device:
            return False
        if not self.platform_enrolled:
            return True
        state = state or self.service.state.get(recording.evidence_id).state
        return state in (EvidenceState.RECEIPTED, EvidenceState.RELEASED)

    def may_delete(self, recording: DockedRecording) -> bool:
        """The release policy: never before a verified receipt unless the policy says "ingest"."""
        if recording.evidence_id is None or self.release_policy == "never":
            return False
        if self.release_policy == "ingest":
            return True
        return self.service.state.get(recording.evidence_id).state == EvidenceState.RECEIPTED

    def release(self, session: DockState) -> int:
        """Release every recording the policy allows now; how many were released."""
        released = self.release_many(session, session.recordings)
        if released:
            self.service.sign_tree_head()
        return released

    def release_many(self, session: DockState, recordings: list[DockedRecording]) -> int:
        """Delete from the recorder each recording the policy allows and whose fresh re-hash equals the
        evidence; how many were deleted. A copy that changed is kept (it is not evidence yet); a volume
        that went away is "unplugged", never "changed" (a yanked volume reads short or empty).

        Crash-safe: the intents of the whole round are committed first (one transaction), then each file
        is deleted and its ``released-from-device`` committed. A kill in between is finished at the
        recorder's next dock (:meth:`_finish_interrupted_releases`), so no deletion goes unrecorded."""
        verified: list[tuple[DockedRecording, EvidenceRow, str]] = []
        for recording in recordings:
            try:
                checked = self._verified_for_release(session, recording)
            except Exception as exc:  # noqa: BLE001 - a failed release (full disk…) keeps the file: said, not fatal
                self._release_failed(session, recording, exc)
                continue
            if checked is not None:
                verified.append((recording, *checked))
        volume = session.volume
        if not verified or volume is None:
            return 0
        details = {row.id: self._release_details(session, recording, fresh) for recording, row, fresh in verified}
        try:
            self.service.state.add_release_intents([ReleaseIntent(row.id, session.device_id, recording.device_path, details[row.id])
                                         for recording, row, _ in verified])
        except Exception as exc:  # noqa: BLE001 - nothing is deleted that the log could not record
            for recording, _, _ in verified:
                self._release_failed(session, recording, exc)
            return 0
        released = 0
        for recording, row, _ in verified:
            try:
                released += self._delete_and_record(session, volume, recording, row, details[row.id])
            except Exception as exc:  # noqa: BLE001 - its intent stays: the next dock finds out what happened
                self._release_failed(session, recording, exc)
        return released

    @staticmethod
    def _release_failed(session: DockState, recording: DockedRecording, exc: Exception) -> None:
        recording.error = f"not released: {type(exc).__name__}: {exc}"
        log.warning("recorder %s: releasing %s failed: %s", session.serial, recording.device_path, exc)

    def _verified_for_release(self, session: DockState, recording: DockedRecording) -> tuple[EvidenceRow, str] | None:
        """(row, fresh device digest) when this recording may be deleted now, else None (reason on the recording)."""
        volume = session.volume
        if (volume is None or recording.released or recording.changed_on_device or recording.evidence_id is None
                or not self.may_delete(recording)):
            return None
        row = self.service.state.get(recording.evidence_id)
        if not volume.present():
            self._unplugged(session, recording)
            return None
        try:
            fresh, read = self._device_digest(volume, recording.item)
        except BodyCamError as exc:
            if not self._still_present(volume):
                self._unplugged(session, recording)
                return None
            recording.error = f"not released: {exc}"
            return None
        if fresh != row.sha256 and (read != row.size or not volume.present()) and not self._still_present(volume):
            self._unplugged(session, recording)
            return None
        if fresh != row.sha256:
            recording.changed_on_device = True
            recording.error = (f"device copy changed since ingest (now {fresh[:12]}…, evidence {row.sha256[:12]}…): "
                               "kept on the recorder; re-dock it later to copy the new version")
            self.service.record_event(row.id, "release-refused", {"reason": "digest mismatch", "device_sha256": fresh})
            return None
        return row, fresh

    def _release_details(self, session: DockState, recording: DockedRecording, fresh: str) -> dict[str, Any]:
        return {"device_id": session.device_id, "device_path": recording.device_path, "device_sha256": fresh,
                "policy": self.release_policy}

    def _delete_and_record(self, session: DockState, volume: RecorderVolume, recording: DockedRecording,
                           row: EvidenceRow, details: dict[str, Any]) -> bool:
        try:
            volume.delete(recording.item)
        except BodyCamError as exc:
            if not self._still_present(volume):
                return self._unplugged(session, recording)  # deleted or not, the next dock finds out
            self.service.state.drop_release_intent(row.id)
            recording.error = f"not released: {exc}"
            return False
        self.service.record_release(row.id, {**details, "at": datetime.now(UTC).isoformat()})
        recording.released, recording.error = True, None
        return True

    def _finish_interrupted_releases(self, session: DockState, volume: RecorderVolume) -> None:
        """Deletions from this recorder that a kill interrupted before they were recorded: a file that is
        gone was deleted by that release (its intent was committed after the re-hash matched, just before
        the deletion), so its ``released-from-device`` is recorded now, saying so; a file still there was
        never deleted, and is decided again like any other."""
        finished = 0
        for intent in self.service.state.release_intents_for(session.device_id):
            try:
                still_there = volume.holds(intent.device_path)
            except BodyCamError as exc:
                log.warning("recorder %s: cannot tell whether %s was deleted (%s); asking again at the next dock",
                            session.serial, intent.device_path, exc)
                continue
            if still_there:
                self.service.state.drop_release_intent(intent.evidence_id)
                continue
            self.service.record_release(intent.evidence_id, {
                **intent.details, "at": datetime.now(UTC).isoformat(), "interrupted": True,
                "release_started_at": datetime.fromtimestamp(intent.started_at, UTC).isoformat()})
            finished += 1
        if finished:
            log.warning("recorder %s: %d deletion(s) interrupted at an earlier dock were found done and are now "
                        "recorded", session.serial, finished)

    @staticmethod
    def _still_present(volume: RecorderVolume) -> bool:
        """Present after a moment: a cable pulled mid-read first shortens the files, then the volume goes."""
        if not volume.present():
            return False
        time.sleep(UNPLUG_SETTLE_S)
        return volume.present()

    @staticmethod
    def _unplugged(session: DockState, recording: DockedRecording) -> bool:
        recording.unplugged = True
        recording.error = "not released: the recorder was unplugged; it keeps this recording, re-dock it to release it"
        return False


def _hostile_row(hostile: HostileEntry) -> dict[str, Any]:
    """A refused entry for custody and the report: printable name, the name's exact bytes, why."""
    row: dict[str, Any] = {"name": hostile.display, "name_hex": hostile.raw_name.hex(), "kind": hostile.kind,
                           "reason": hostile.reason}
    if hostile.link_target is not None:
        row["link_target_hex"] = hostile.link_target.hex()
    return row
