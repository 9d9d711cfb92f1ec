"""The recorder's storage: recordings generated into a private staging directory (the recorder's own flash)
and served as a mass-storage volume under ``<volumes>/<serial>`` while docked.

A mixin of :class:`simulators.bodycam.device.BodyCamSimulator` (which owns the USB side and the lock these
methods run under). The volume is populated in ``<volumes>/.<serial>.mounting`` and renamed into place, so a
host never sees a half populated volume; faults that damage files on "unplug" first give the staging copy a
fresh inode, so the recorder's own copy survives a yank. See the device module's docstring for the faults.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .media import (
    RecordingSpec,
    recording_name,
    write_audio,
    write_fill,
    write_photo,
    write_tiny_audio,
    write_video,
)

if TYPE_CHECKING:
    from firmware_bridge.bodycam_usb import ZfyInfo

    from .device import BodyCamFaults

__all__ = ["FLOOD_DIR", "FLOOD_NAME_BYTES", "RecorderStorage", "default_plan"]

FLOOD_DIR = "MISC"
FLOOD_NAME_BYTES = 255  # the longest name Linux allows; the driver's limit is 200


def default_plan(count: int, end: datetime, video_seconds: float, fill_mb: float = 0) -> list[RecordingSpec]:
    """``count`` recordings ending before ``end`` (device local time): video, video, audio, photo, …;
    every third one flagged important; plus one fill file of ``fill_mb`` MB if asked."""
    kinds = ["video", "video", "audio", "photo"]
    plan = []
    start = end.replace(microsecond=0) - timedelta(seconds=count * (video_seconds + 90) + 60)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        seconds = video_seconds if kind != "photo" else 0.0
        plan.append(RecordingSpec(kind=kind, start=start, seconds=seconds, important=(i % 3 == 2)))
        start += timedelta(seconds=video_seconds + 90)
    if fill_mb > 0:
        plan.append(RecordingSpec(kind="fill", start=start, size_bytes=int(fill_mb * 1_000_000)))
    return plan


def _tiny_plan(count: int, before: datetime) -> list[RecordingSpec]:
    """``count`` tiny audio recordings, one a minute, ending before ``before`` (so over ~count/1440 day
    directories); sequence numbers wrap at 9999 as the name pattern allows, the start times keep names unique."""
    first = before.replace(microsecond=0) - timedelta(minutes=count + 1)
    return [RecordingSpec(kind="tiny", start=first + timedelta(minutes=i), seconds=0.0) for i in range(count)]



class RecorderStorage:
    """Staging, mounting, unplugging and cleaning up the recorder's files."""

    serial: str
    info: ZfyInfo
    faults: BodyCamFaults
    frame_size: tuple[int, int]
    fps: float
    video_seconds: float
    video_container: str
    media_dir: Path
    volumes_dir: Path | None
    on_mass_storage: Callable[[str], None] | None
    files: list[str]
    truncated_file: str | None
    changing_file: str | None
    hostile_entries: list[str]
    outside_files: list[Path]
    attached: bool
    mounted: bool
    _lock: threading.RLock
    _own_media: bool
    _plan: list[RecordingSpec] | None
    _plan_count: int
    _fill_mb: float
    _tiny: int
    _prepared: bool
    _next_seq: int
    _grower: threading.Thread | None
    _grower_stop: threading.Event
    _yank_timer: threading.Timer | None

    def _init_storage(self, media_dir: str | os.PathLike[str] | None, volumes_dir: str | os.PathLike[str] | None,
                      recordings: int | Sequence[RecordingSpec], fill_mb: float, tiny_recordings: int) -> None:
        """The staging directory (a private temporary one unless given) and what will be recorded into it."""
        self._own_media = media_dir is None
        self.media_dir = Path(media_dir) if media_dir is not None else Path(tempfile.mkdtemp(prefix=f"egw-bodycam-{self.serial}-"))
        self.volumes_dir = Path(volumes_dir) if volumes_dir is not None else None
        self._plan = list(recordings) if not isinstance(recordings, int) else None
        self._plan_count = recordings if isinstance(recordings, int) else 0
        self._fill_mb = fill_mb
        self._tiny = tiny_recordings
        self.files: list[str] = []  # recorder-relative names, POSIX separators
        self.truncated_file: str | None = None
        self.changing_file: str | None = None
        self.hostile_entries: list[str] = []
        self.outside_files: list[Path] = []
        self._prepared = False
        self._next_seq = 0  # sequence number of the newest recording (``record`` continues from it)
        self._grower: threading.Thread | None = None
        self._grower_stop = threading.Event()
        self._yank_timer: threading.Timer | None = None

    def device_time(self) -> datetime:
        raise NotImplementedError

    def unplug(self) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        """Generate the recordings into the staging directory (idempotent; slow for big media)."""
        with self._lock:
            if self._prepared:
                return
            plan = self._plan if self._plan is not None else default_plan(
                self._plan_count, self.device_time(), self.video_seconds, self._fill_mb)
            if self.video_container == "mp4":
                plan = [RecordingSpec("video_mp4", s.start, s.seconds, s.important) if s.kind == "video" else s for s in plan]
            plan = _tiny_plan(self._tiny, min((s.start for s in plan), default=self.device_time())) + plan
            for seq, spec in enumerate(plan, start=1):
                name = recording_name(self.info.serial, self.info.user_no or "000000", spec, (seq - 1) % 9999 + 1)
                path = self.media_dir / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if spec.kind in ("video", "video_mp4"):
                    write_video(path, spec.start, spec.seconds, self.frame_size, self.fps, self.info.user_no,
                                self.info.serial, "avi" if spec.kind == "video" else "mp4")
                elif spec.kind == "audio":
                    write_audio(path, spec.seconds)
                elif spec.kind == "photo":
                    write_photo(path, spec.start, self.frame_size, self.info.user_no, self.info.serial)
                elif spec.kind == "fill":
                    write_fill(path, spec.size_bytes, seed=int(self.info.serial) + seq)
                elif spec.kind == "tiny":
                    write_tiny_audio(path, int(self.info.serial) * 1_000_000 + seq)
                else:
                    raise ValueError(f"unknown recording kind {spec.kind!r}")
                self.files.append(name)
            videos = [n for n, s in zip(self.files, plan) if s.kind in ("video", "video_mp4")]
            if self.faults.truncated_video and videos:
                self.truncated_file = videos[0]
                path = self.media_dir / videos[0]
                os.truncate(path, max(1, path.stat().st_size * 6 // 10))
            if self.faults.changing_file and videos:
                self.changing_file = videos[-1]
            self._next_seq = (len(plan) - 1) % 9999 + 1 if plan else 0
            self._prepared = True

    def record(self, count: int = 1) -> list[str]:
        """The officer records ``count`` more files while undocked (photo, audio, photo, …; a few KiB each),
        so the next dock has something new to copy, as after a real shift. Refused while mounted: a
        docked recorder does not record. Returns the new recorder-relative names."""
        if count < 1:
            raise ValueError("record needs a count of at least 1")
        with self._lock:
            if self.mounted:
                raise ValueError(f"recorder {self.serial} is docked (mounted); unplug it before recording")
            self.prepare()
            now = self.device_time()
            added = []
            for i in range(count):
                kind = "photo" if i % 2 == 0 else "audio"
                spec = RecordingSpec(kind=kind, start=now - timedelta(seconds=count - i), seconds=0.5)
                self._next_seq = self._next_seq % 9999 + 1
                name = recording_name(self.info.serial, self.info.user_no or "000000", spec, self._next_seq)
                path = self.media_dir / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if kind == "photo":
                    write_photo(path, spec.start, self.frame_size, self.info.user_no, self.info.serial)
                else:
                    write_audio(path, spec.seconds)
                self.files.append(name)
                added.append(name)
            return added


    @property
    def volume_path(self) -> Path | None:
        return self.volumes_dir / self.serial if self.volumes_dir is not None else None

    def _mount(self) -> None:
        """Drop off the bus and expose the recordings under <volumes>/<serial>, atomically."""
        assert self.volumes_dir is not None and self.volume_path is not None
        self.prepare()
        self.attached = False
        self.volumes_dir.mkdir(parents=True, exist_ok=True)
        staging = self.volumes_dir / f".{self.serial}.mounting"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()  # here, not per file: a recorder whose files were all released still mounts (empty)
        for name in self.files:
            src, dst = self.media_dir / name, staging / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        if self.faults.hostile_names:
            self._plant_hostile(staging)
        if self.faults.flood_entries:
            self._plant_flood(staging / FLOOD_DIR, self.faults.flood_entries)
        if self.volume_path.exists() or self.volume_path.is_symlink():
            shutil.rmtree(self.volume_path, ignore_errors=True)
        os.replace(staging, self.volume_path)
        self.mounted = True
        if self.changing_file is not None:
            self._grower_stop.clear()
            target = self.volume_path / self.changing_file
            self._detach_inode(self.changing_file)
            self._grower = threading.Thread(target=self._grow, args=(target,), name=f"bodycam-{self.serial}-grow", daemon=True)
            self._grower.start()
        delay = self.faults.unplug_after_mount_seconds
        if delay is not None:
            self._yank_timer = threading.Timer(delay, self.unplug)
            self._yank_timer.daemon = True
            self._yank_timer.start()
        if self.on_mass_storage is not None:
            self.on_mass_storage(self.serial)

    def _plant_hostile(self, root: Path) -> None:
        day = root / "DCIM" / self.device_time().strftime("%Y%m%d")
        day.mkdir(parents=True, exist_ok=True)
        stamp = self.device_time().strftime("%Y%m%d%H%M%S")
        planted: list[str] = []

        def rel(p: Path) -> str:
            return p.relative_to(root).as_posix()

        link = day / f"{self.serial}_{self.info.user_no}_{stamp}_9001.avi"
        os.symlink("/etc/passwd", link)
        planted.append(rel(link))
        escape = root / "DCIM" / "escape"
        os.symlink("/", escape, target_is_directory=True)
        planted.append(rel(escape))
        for name in ("evil\x1b[2J\n.avi", "C:\\Windows\\evil.avi", "..\\..\\etc\\passwd.avi", "A" * 246 + ".avi"):
            path = day / name
            path.write_bytes(b"hostile")
            planted.append(rel(path))
        raw = os.fsencode(str(day)) + b"/" + b"\xff\xfe_bad_utf8.avi"
        with open(raw, "wb") as fh:
            fh.write(b"hostile")
        planted.append(rel(day) + "/" + os.fsdecode(b"\xff\xfe_bad_utf8.avi"))
        fifo = day / f"{self.serial}_{self.info.user_no}_{stamp}_9002.avi"
        os.mkfifo(fifo)
        planted.append(rel(fifo))
        planted += self._plant_escapes(root, day, stamp)
        self.hostile_entries = planted

    def _plant_escapes(self, root: Path, day: Path, stamp: str) -> list[str]:
        """Relative links out of the volume into bait files (``outside_path``), and a second name for a
        real recording: a host that follows links would copy the bait as evidence, or delete it."""
        assert self.volume_path is not None
        bait = self.outside_path
        assert bait is not None
        shutil.rmtree(bait, ignore_errors=True)
        (bait / "DCIM").mkdir(parents=True)
        prefix = f"{self.serial}_{self.info.user_no}_"
        file_bait = bait / f"{prefix}{stamp}_9003.avi"
        dir_bait = bait / "DCIM" / f"{prefix}20991231120000_9004.avi"
        for target in (file_bait, dir_bait):
            target.write_bytes(b"outside the volume: must never be read " + os.urandom(4096))
        self.outside_files = [file_bait, dir_bait]
        mounted_day = self.volume_path / day.relative_to(root)
        planted = []
        link = day / file_bait.name  # DCIM/<day>/…_9003.avi -> ../../../.outside-<serial>/…_9003.avi
        os.symlink(os.path.relpath(file_bait, mounted_day), link)
        planted.append(link)
        link = root / "DCIM" / "20991231"  # a "day directory" that is a link to the bait directory
        os.symlink(os.path.relpath(bait / "DCIM", self.volume_path / "DCIM"), link, target_is_directory=True)
        planted.append(link)
        real = next((name for name in self.files if name.startswith("DCIM/")), None)
        if real is not None:  # a second name for a real recording: copied once, by its real name
            link = day / f"{prefix}{stamp}_9005{Path(real).suffix}"
            os.symlink(os.path.relpath(self.volume_path / real, mounted_day), link)
            planted.append(link)
        return [p.relative_to(root).as_posix() for p in planted]

    @property
    def outside_path(self) -> Path | None:
        """Where ``hostile_names`` keeps bait files: next to the volume, outside it."""
        return self.volumes_dir / f".outside-{self.serial}" if self.volumes_dir is not None else None

    def _plant_flood(self, directory: Path, count: int) -> None:
        """``count`` entries with 255-byte names, made one at a time (never a list in memory): every
        50 000th is an empty file, the others hard links to it (a file system caps links per inode)."""
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            seed = b""
            for i in range(count):
                name = f"{i:010d}_".encode() + b"F" * (FLOOD_NAME_BYTES - 11)
                if i % 50_000 == 0:
                    seed = name
                    os.close(os.open(seed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd))
                    continue
                os.link(seed, name, src_dir_fd=fd, dst_dir_fd=fd)
        finally:
            os.close(fd)

    def _sync_deletions(self) -> None:
        """Recordings the host deleted from the volume are gone from the recorder too."""
        assert self.volume_path is not None
        kept = []
        for name in self.files:
            if os.path.lexists(self.volume_path / name):
                kept.append(name)
                continue
            try:
                os.unlink(self.media_dir / name)
            except FileNotFoundError:
                pass
        self.files = kept  # one pass: a recorder may hold tens of thousands of files

    def _detach_inode(self, name: str) -> None:
        """Give the staging copy its own inode so damage done to the volume copy stays there (with the
        same modification time: a recorder's files do not change by being unplugged)."""
        src = self.media_dir / name
        tmp = src.with_name(src.name + ".detach")
        shutil.copy2(src, tmp)
        os.replace(tmp, src)

    def _grow(self, target: Path) -> None:
        chunk = b"\0" * 4096
        while not self._grower_stop.wait(0.02):
            try:
                fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            except OSError:
                return
            try:
                os.write(fd, chunk)
            finally:
                os.close(fd)

    def _stop_grower(self) -> None:
        self._grower_stop.set()
        if self._grower is not None:
            self._grower.join(timeout=5)
            self._grower = None

    def _yank(self) -> None:
        timer, self._yank_timer = self._yank_timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        self._stop_grower()
        self.attached = False
        if self.mounted and self.volume_path is not None and self.volume_path.is_dir():
            self._sync_deletions()
            for dirpath, _dirs, names in os.walk(self.volume_path, followlinks=False):
                for name in names:
                    path = os.path.join(dirpath, name)
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    rel = os.path.relpath(path, self.volume_path)
                    staged = self.media_dir / rel
                    try:
                        if staged.exists() and os.stat(staged).st_ino == st.st_ino:
                            self._detach_inode(rel)
                    except OSError:
                        pass
                    os.truncate(path, 0)
            gone = self.volume_path.with_name(f".{self.serial}.yanked")
            shutil.rmtree(gone, ignore_errors=True)
            os.replace(self.volume_path, gone)
            shutil.rmtree(gone, ignore_errors=True)
        self.mounted = False
