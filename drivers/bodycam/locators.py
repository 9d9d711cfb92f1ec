"""Finding a recorder's mass-storage volume once it has switched over (by its serial).

A locator answers "where is the volume of recorder <serial> mounted now?"; ``open_storage``
polls one until the volume appears. The serial comes from the device, so it is checked
before it is put into a path."""

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from .errors import (
    HostileEntryError,
    VolumeNotFound,
)
from .models import SIMULATOR_MODEL, BodyCamModel
from .volume import RecorderVolume


@runtime_checkable
class VolumeLocator(Protocol):
    def locate(self, serial: str) -> Path | None:
        """The mounted volume of the recorder with this serial, or None while it is not there."""
        ...


@dataclass(frozen=True)
class TemplateLocator:
    """``/run/egw/volumes/{serial}`` style: for simulators and udev rules that mount by serial."""

    template: str

    def describe(self, serial: str) -> str:
        return f"a directory at {self.template.format(serial=serial)} (from the template {self.template})"

    def locate(self, serial: str) -> Path | None:
        if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", serial):
            raise HostileEntryError(f"recorder serial {serial!r} is not safe to put in a path")
        path = Path(self.template.format(serial=serial))
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return path if stat.S_ISDIR(st.st_mode) else None


@dataclass(frozen=True)
class LinuxMountLocator:
    """The kernel's view: ``/dev/disk/by-id/usb-<vendor>_<model>_<serial>-0:0[-partN]`` → device
    node → mount point in ``/proc/mounts``. Paths are parameters so tests use real files."""

    by_id_dir: str = "/dev/disk/by-id"
    mounts_file: str = "/proc/mounts"

    def describe(self, serial: str) -> str:
        return f"a mount in {self.mounts_file} of a disk {self.by_id_dir}/usb-*_{serial}-*"

    def locate(self, serial: str) -> Path | None:
        try:
            names = sorted(os.listdir(self.by_id_dir))
        except OSError:
            return None
        nodes: list[str] = []
        for name in names:
            if name.startswith("usb-") and f"_{serial}-" in name:
                nodes.append(os.path.realpath(os.path.join(self.by_id_dir, name)))
        if not nodes:
            return None
        try:
            with open(self.mounts_file, encoding="utf-8", errors="surrogateescape") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return None
        for line in lines:
            parts = line.split()
            if len(parts) < 2:
                continue
            device = _unescape_mount(parts[0])
            if os.path.realpath(device) in nodes or device in nodes:
                return Path(_unescape_mount(parts[1]))
        return None


def _unescape_mount(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _describe(locator: VolumeLocator, serial: str) -> str:
    """Where a locator looks, in words (a locator of our own has ``describe``; any other is named by its class)."""
    describe = getattr(locator, "describe", None)
    return str(describe(serial)) if callable(describe) else type(locator).__name__


def open_storage(locator: VolumeLocator | str, serial: str, timeout: float = 30.0,
                 model: BodyCamModel = SIMULATOR_MODEL, poll: float = 0.05) -> "RecorderVolume":
    """Wait up to ``timeout`` seconds for the recorder's volume, then open it read-only."""
    loc: VolumeLocator = TemplateLocator(locator) if isinstance(locator, str) else locator
    deadline = time.monotonic() + timeout
    while True:
        path = loc.locate(serial)
        if path is not None:
            return RecorderVolume(path, serial, model=model)
        if time.monotonic() >= deadline:
            raise VolumeNotFound(f"the volume of recorder {serial} did not appear within {timeout:g} s "
                                 f"(looked for {_describe(loc, serial)}); check the recorder switched to mass storage "
                                 "and where it is mounted")
        time.sleep(poll)
