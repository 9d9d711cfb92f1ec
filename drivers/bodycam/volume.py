"""A recorder's mounted volume, read-only: the walker, the reader, the container check.

The volume is walked by directory file descriptors: nothing is joined into a path, nothing
is followed (``O_NOFOLLOW``), special files are never opened; names are checked by
``names.unsafe_name_reason`` first. A file that changes while it is read is an error, never
a silently different copy."""

import contextlib
import errno
import functools
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from .errors import (
    BodyCamError,
    DeviceGone,
    HostileEntryError,
    RecordingChanged,
)
from .models import SIMULATOR_MODEL, BodyCamModel
from .names import RecordingName, display_name, parse_recording_name, unsafe_name_reason


@dataclass(frozen=True)
class VolumeFile:
    """A regular file on the volume. ``parts`` are validated names, never a joined host path."""

    parts: tuple[str, ...]
    size: int
    mtime_ns: int
    dev: int
    ino: int
    recording: RecordingName | None
    parse_error: str | None = None

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def device_path(self) -> str:
        """The path as the recorder names it (``DCIM/20260101/…``), for manifests."""
        return "/".join(self.parts)

    @property
    def parsed(self) -> bool:
        return self.recording is not None


@dataclass(frozen=True)
class HostileEntry:
    """An entry reported and never opened or followed: a bad name, a link, a special file."""

    parent: tuple[str, ...]
    raw_name: bytes  # the name's bytes as the filesystem gave them
    reason: str
    kind: str  # name | symlink | special | too_deep | too_many
    link_target: bytes | None = None

    @property
    def display(self) -> str:
        return "/".join((*self.parent, display_name(os.fsdecode(self.raw_name))))


@dataclass(frozen=True)
class VolumeScan:
    recordings: list[VolumeFile] = field(default_factory=list)  # parsed names
    unparsed: list[VolumeFile] = field(default_factory=list)  # regular files whose names do not parse: kept
    hostile: list[HostileEntry] = field(default_factory=list)  # the first ``max_hostile_listed``, and any cut
    hostile_counts: dict[str, int] = field(default_factory=dict)  # every refused entry, by kind

    @property
    def hostile_total(self) -> int:
        return sum(self.hostile_counts.values())

    @property
    def files(self) -> list[VolumeFile]:
        return self.recordings + self.unparsed


@dataclass(frozen=True)
class ContainerCheck:
    status: str  # ok | truncated | unknown
    detail: str


_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


_T = TypeVar("_T")


def _holding_lock(method: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(method)
    def locked(self: "RecorderVolume", *args: object, **kwargs: object) -> _T:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class RecorderVolume:
    """A recorder's mounted volume, read-only, walked by directory file descriptors.

    Every name is checked before use and only ever passed as a single
    component relative to an already-open directory (``dir_fd``), opened with
    ``O_NOFOLLOW``; symlinks and special files are reported, not touched.
    """

    def __init__(self, root: Path | str, serial: str, model: BodyCamModel = SIMULATOR_MODEL,
                 max_depth: int = 8, max_entries: int = 100_000, max_hostile_listed: int = 1000) -> None:
        self.root = Path(root)
        self.serial = serial
        self.model = model
        self.max_depth = max_depth
        self.max_entries = max_entries
        self.max_hostile_listed = max_hostile_listed  # refused entries kept one by one; all are counted
        # Held while the root handle is in use and when it is closed: present() may close it from the
        # thread following the recorder while another lists or releases, and a closed descriptor's
        # number is soon another file's.
        self._lock = threading.RLock()
        self._fd = -1
        try:
            self._fd = os.open(self.root, _OPEN_DIR)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and self.root.is_symlink()):
                raise HostileEntryError(f"volume root {self.root} is a symbolic link; refusing to follow it") from exc
            raise DeviceGone(f"volume of recorder {serial} at {self.root} cannot be opened: {exc}") from exc

    @_holding_lock
    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        # A dropped volume must not keep its (deleted) directory open for the process's life.
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finaliser (possibly at interpreter exit) must not raise
            pass

    def __enter__(self) -> "RecorderVolume":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @_holding_lock
    def present(self) -> bool:
        """Still mounted where it was found (same directory)?

        Once the answer is no it stays no (a re-plugged recorder mounts a new directory), so the
        handle on the old one is closed right here: a dock follows its recorder with ``present()``
        until it is gone and may never call ``close()``, and every handle left open pins a deleted
        directory (one per dock, for the life of the service)."""
        if self._fd < 0:
            return False
        try:
            now = os.lstat(self.root)
            mine = os.fstat(self._fd)
        except OSError:
            self.close()
            return False
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            self.close()
            return False
        return True

    def _root_fd(self) -> int:
        if self._fd < 0:
            raise DeviceGone(f"volume of recorder {self.serial} at {self.root} is gone (or closed); re-plug it")
        return self._fd

    @_holding_lock
    def scan(self) -> VolumeScan:
        """Every entry, classified: recordings, unparsed regular files, hostile entries."""
        result = VolumeScan()
        root = self._root_fd()
        try:
            self._walk(root, (), 0, result, [0])
        except OSError as exc:
            raise DeviceGone(f"volume of recorder {self.serial} vanished while listing it ({exc})") from exc
        if not self.present():
            raise DeviceGone(f"volume of recorder {self.serial} vanished while listing it")
        result.recordings.sort(key=lambda f: f.parts)
        result.unparsed.sort(key=lambda f: f.parts)
        return result

    def _walk(self, dir_fd: int, parent: tuple[str, ...], depth: int, out: VolumeScan, counter: list[int]) -> bool:
        """List one directory into ``out``; False once the entry limit stopped the walk.

        ``counter`` counts names *read*, not names processed: a directory reads at most what is
        left of ``max_entries``, so a recorder that lists millions of entries (or names far longer
        than ours) costs at most ``max_entries`` names of memory, never what it advertises.
        """
        left = self.max_entries - counter[0]
        names: list[str] = []
        overflow = False
        with os.scandir(dir_fd) as it:
            for entry in it:
                if len(names) >= left:
                    overflow = True
                    break
                names.append(entry.name)
        counter[0] += len(names)
        names.sort()
        for name in names:
            if not self._visit(dir_fd, parent, depth, name, out, counter):
                return False
        if overflow:
            where = display_name("/".join(parent)) if parent else "the volume root"
            self._refuse(out, HostileEntry(
                parent[:-1], os.fsencode(parent[-1]) if parent else b".",
                f"{where} holds more entries than the limit of {self.max_entries} for a whole volume; "
                "listing stopped there", "too_many"))
            return False
        return True

    def _visit(self, dir_fd: int, parent: tuple[str, ...], depth: int, name: str, out: VolumeScan,
               counter: list[int]) -> bool:
        """Classify one entry (recursing into a directory); False once the entry limit was reached."""
        raw = os.fsencode(name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return True  # vanished between listing and stat; the final presence check decides
        reason = unsafe_name_reason(name)
        if stat.S_ISLNK(st.st_mode):
            try:
                target: bytes | None = os.readlink(raw, dir_fd=dir_fd)
            except OSError:
                target = None
            self._refuse(out, HostileEntry(parent, raw, "symbolic link (not followed)" + (f"; {reason}" if reason else ""),
                                            "symlink", target))
            return True
        if reason is not None:
            self._refuse(out, HostileEntry(parent, raw, reason, "name"))
            return True
        if stat.S_ISDIR(st.st_mode):
            if depth + 1 > self.max_depth:
                self._refuse(out, HostileEntry(parent, raw, f"directory nested deeper than {self.max_depth}", "too_deep"))
                return True
            try:
                child = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    self._refuse(out, HostileEntry(parent, raw, "became a symbolic link", "symlink"))
                    return True
                raise
            try:
                return self._walk(child, (*parent, name), depth + 1, out, counter)
            finally:
                os.close(child)
        if not stat.S_ISREG(st.st_mode):
            self._refuse(out, HostileEntry(parent, raw, f"special file ({_kind(st.st_mode)}), not opened", "special"))
            return True
        parsed = parse_recording_name(name, self.model.name_pattern)
        entry = VolumeFile(parts=(*parent, name), size=st.st_size, mtime_ns=st.st_mtime_ns, dev=st.st_dev,
                           ino=st.st_ino, recording=parsed if isinstance(parsed, RecordingName) else None,
                           parse_error=parsed if isinstance(parsed, str) else None)
        (out.recordings if entry.parsed else out.unparsed).append(entry)
        return True

    def _refuse(self, out: VolumeScan, entry: HostileEntry) -> None:
        """Count every refused entry; keep the first ``max_hostile_listed`` (and a cut, always), so a
        volume of 100 000 bad names costs counters, not 100 000 records."""
        out.hostile_counts[entry.kind] = out.hostile_counts.get(entry.kind, 0) + 1
        if len(out.hostile) < self.max_hostile_listed or entry.kind == "too_many":
            out.hostile.append(entry)

    @_holding_lock
    def open(self, item: VolumeFile) -> "RecordingReader":
        """Open a listed file read-only, without following links, checking it is the file listed."""
        try:
            with self._parent_dir(item.parts, "open") as parent:
                file_fd = os.open(item.parts[-1], _OPEN_FILE, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HostileEntryError(f"{display_name(item.device_path)} is a symbolic link; not followed") from exc
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EIO, errno.ENODEV):
                raise DeviceGone(f"{item.device_path} is no longer on recorder {self.serial}'s volume ({exc})") from exc
            raise BodyCamError(f"cannot open {item.device_path}: {exc}") from exc
        st = os.fstat(file_fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(file_fd)
            raise HostileEntryError(f"{item.device_path} is now a {_kind(st.st_mode)}, not a regular file; not read")
        if (st.st_dev, st.st_ino) != (item.dev, item.ino):
            os.close(file_fd)
            raise RecordingChanged(f"{item.device_path} was replaced since it was listed; scan the volume again")
        os.set_blocking(file_fd, True)
        return RecordingReader(file_fd, item, st, self)

    @_holding_lock
    def delete(self, item: VolumeFile) -> None:
        """Remove one recording from the recorder: the dock's "release", the only write this
        class makes. Call it only after the platform's receipt for this exact file verified.
        Refuses when the entry is no longer the file listed (inode, size, mtime)."""
        try:
            with self._parent_dir(item.parts, "delete") as parent:
                st = os.stat(item.parts[-1], dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise HostileEntryError(f"{item.device_path} is now a {_kind(st.st_mode)}; not deleted")
                if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (item.dev, item.ino, item.size, item.mtime_ns):
                    raise RecordingChanged(f"{item.device_path} changed since it was listed; not deleted")
                os.unlink(item.parts[-1], dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise BodyCamError(f"recorder {self.serial} does not let the host delete {item.device_path} ({exc}); "
                                   "leave the file on the device") from exc
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EIO, errno.ENODEV):
                raise DeviceGone(f"{item.device_path} is no longer on recorder {self.serial}'s volume ({exc})") from exc
            raise BodyCamError(f"cannot delete {item.device_path}: {exc}") from exc

    @_holding_lock
    def holds(self, device_path: str) -> bool:
        """Whether a regular file is at ``device_path`` (as ``VolumeFile.device_path`` names it) now.

        For the dock's recovery of a deletion that a kill interrupted: False only when the path is
        cleanly absent from a volume that is still there; anything unclear raises BodyCamError."""
        parts = tuple(device_path.split("/"))
        try:
            with self._parent_dir(parts, "look up") as parent:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENOENT and self.present():
                return False
            raise BodyCamError(f"cannot tell whether {display_name(device_path)} is on recorder {self.serial}: {exc}") from exc
        return stat.S_ISREG(st.st_mode)

    @contextlib.contextmanager
    def _parent_dir(self, parts: tuple[str, ...], doing: str) -> Iterator[int]:
        """The directory holding ``parts[-1]``, reached from the volume's root one checked name at a time and
        never through a link (each level opened by descriptor); closed again on leaving."""
        for part in parts:
            reason = unsafe_name_reason(part)
            if reason is not None:
                raise HostileEntryError(f"refusing to {doing} {display_name('/'.join(parts))}: {reason}")
        fd = self._root_fd()
        opened: list[int] = []
        try:
            for part in parts[:-1]:
                try:
                    fd = os.open(part, _OPEN_DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                        raise HostileEntryError(f"{display_name('/'.join(parts))} goes through a symbolic link; "
                                                "not followed") from exc
                    raise
                opened.append(fd)
            yield fd
        finally:
            for d in opened:
                os.close(d)

    def check_container(self, item: VolumeFile) -> ContainerCheck:
        """Cheap structural check of the container (RIFF size, JPEG end marker, MP4 boxes).
        Truncated media is still evidence: this informs, it does not filter."""
        with self.open(item) as fh:
            size = fh.size
            head = os.pread(fh.fileno(), 12, 0)
            if head[:4] == b"RIFF" and len(head) >= 8:
                declared = struct.unpack("<I", head[4:8])[0] + 8
                if declared > size:
                    return ContainerCheck("truncated", f"RIFF declares {declared} bytes, file has {size}")
                return ContainerCheck("ok", f"RIFF {head[8:12].decode('latin-1')} complete ({declared} bytes)")
            if head[:2] == b"\xff\xd8":
                tail = os.pread(fh.fileno(), 2, max(0, size - 2))
                return ContainerCheck("ok", "JPEG ends with EOI") if tail == b"\xff\xd9" else \
                    ContainerCheck("truncated", "JPEG has no end-of-image marker")
            if head[4:8] == b"ftyp":
                offset = 0
                while offset < size:
                    box = os.pread(fh.fileno(), 16, offset)
                    if len(box) < 8:
                        return ContainerCheck("truncated", f"MP4 box header cut at {offset}")
                    length = struct.unpack(">I", box[:4])[0]
                    if length == 1 and len(box) >= 16:
                        length = struct.unpack(">Q", box[8:16])[0]
                    elif length == 0:
                        length = size - offset
                    if length < 8 or offset + length > size:
                        return ContainerCheck("truncated", f"MP4 box at {offset} runs past the end of the file")
                    offset += length
                return ContainerCheck("ok", "MP4 boxes complete")
            return ContainerCheck("unknown", "not a RIFF, JPEG or MP4 container")


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"


class RecordingReader:
    """A read-only handle on one recording that notices the device going away or the file changing.

    It promises exactly the size seen at open: reaching EOF early means the
    volume went away (``DeviceGone``); a different size or mtime at the end
    means the file changed under us (``RecordingChanged``). Callers hash what
    ``read`` returns and discard it if either error is raised.
    """

    def __init__(self, fd: int, item: VolumeFile, st: os.stat_result, volume: RecorderVolume) -> None:
        self._fd = fd
        self.item = item
        self.size = st.st_size
        self._mtime_ns = st.st_mtime_ns
        self._volume = volume
        self.position = 0

    def fileno(self) -> int:
        return self._fd

    def read(self, n: int = 1 << 20) -> bytes:
        """Up to ``n`` bytes; ``b""`` only at the promised end (after checking the file did not change)."""
        if self._fd < 0:
            raise ValueError("read from a closed recording")
        remaining = self.size - self.position
        if remaining <= 0:
            self._check_unchanged()
            return b""
        try:
            data = os.read(self._fd, min(n, remaining))
        except OSError as exc:
            raise self._io_error(exc) from exc
        if not data:
            raise self._short_read_error()
        self.position += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Like ``read`` but into a caller's buffer, without an extra copy (for hashing at speed)."""
        if self._fd < 0:
            raise ValueError("read from a closed recording")
        remaining = self.size - self.position
        if remaining <= 0:
            self._check_unchanged()
            return 0
        view = memoryview(buffer).cast("B")[: min(len(buffer), remaining)]
        try:
            count = os.readv(self._fd, [view])
        except OSError as exc:
            raise self._io_error(exc) from exc
        if count == 0:
            raise self._short_read_error()
        self.position += count
        return count

    def _io_error(self, exc: OSError) -> BodyCamError:
        return DeviceGone(f"reading {self.item.device_path} failed at byte {self.position} ({exc}); "
                          "the recorder was probably unplugged")

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        while True:
            data = self.read(size)
            if not data:
                return
            yield data

    def _short_read_error(self) -> BodyCamError:
        try:
            now = os.fstat(self._fd)
        except OSError:
            now = None
        if now is not None and now.st_size < self.size and self._volume.present() and now.st_size > 0:
            return RecordingChanged(f"{self.item.device_path} shrank from {self.size} to {now.st_size} bytes while being read")
        return DeviceGone(f"{self.item.device_path} ended at byte {self.position} of {self.size}: "
                          f"the volume of recorder {self._volume.serial} went away mid-read; re-plug and copy again")

    def _check_unchanged(self) -> None:
        now = os.fstat(self._fd)
        if now.st_size != self.size or now.st_mtime_ns != self._mtime_ns:
            raise RecordingChanged(
                f"{self.item.device_path} changed while being read (size {self.size} → {now.st_size}); "
                "the recorder may still be writing it: copy it again later")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RecordingReader":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
