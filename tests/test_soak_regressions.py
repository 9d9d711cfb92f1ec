"""Regression tests for what the long-run soak (bench/soak.py) found, one per bug, each with real parts:
our USB/IP server and client on loopback, the simulated recorder, the driver on a real directory.

* a recorder whose files were all released could not mount again (no staging directory);
* a device that failed configuration after its USB/IP import kept the import open, so every
  retry met "busy (imported by another host)";
* every dock leaked the volume's directory handles (on the deleted, yanked volume).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from drivers.bodycam import BodyCamera, DeviceGone, open_storage
from firmware_bridge.errors import UsbStall
from firmware_bridge.usb import InterfaceSpec, LoopbackUsbDevice, SetupPacket, UsbDeviceBase
from firmware_bridge.usb_transport import open_usb_device
from firmware_bridge.usbip_server import UsbIpServer
from simulators.bodycam import BodyCamSimulator

pytestmark = pytest.mark.timeout(60)

GET_CONFIGURATION = 0x08


class FlakyConfigDevice(UsbDeviceBase):
    """Stalls GET_CONFIGURATION the first ``failures`` times: configuration fails after the import."""

    serial = "5550001"
    product = "flaky"
    interface_specs = (InterfaceSpec(0xFF, 0x00, 0x00, ()),)

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.lock = threading.Lock()

    def standard_control(self, setup: SetupPacket, data: bytes) -> bytes:
        if setup.request == GET_CONFIGURATION:
            with self.lock:
                if self.failures > 0:
                    self.failures -= 1
                    raise UsbStall("not ready to be configured yet")
        return super().standard_control(setup, data)


def test_failed_configuration_closes_the_import_so_a_retry_succeeds() -> None:
    with UsbIpServer() as server:
        server.add_device("1-1", FlakyConfigDevice(failures=2))
        url = server.url("1-1")
        kept = []  # a supervisor keeps the last error (and with it the traceback's frames) around
        for _ in range(2):
            with pytest.raises(UsbStall) as failed:  # the failure itself, never "busy (imported by another host)"
                open_usb_device(url, timeout_ms=2000)
            kept.append(failed.value)
        with open_usb_device(url, timeout_ms=2000) as device:
            assert device.ctrl_transfer(0x80, GET_CONFIGURATION, 0, 0, 1) in (b"\x00", b"\x01")
        with open_usb_device(url, timeout_ms=2000):  # and released again on close
            pass


def _recorder(tmp_path: Path, recordings: int = 2) -> BodyCamSimulator:
    return BodyCamSimulator("1000001", frame_size=(320, 180), fps=5.0, video_seconds=0.5, recordings=recordings,
                            volumes_dir=tmp_path / "volumes", media_dir=tmp_path / "media")


def _dock(sim: BodyCamSimulator) -> None:
    BodyCamera(LoopbackUsbDevice(sim, sim.serial)).switch_to_mass_storage()


def test_a_recorder_emptied_by_release_mounts_again_and_new_recordings_dock(tmp_path: Path) -> None:
    sim = _recorder(tmp_path)
    try:
        _dock(sim)
        with open_storage(str(tmp_path / "volumes" / "{serial}"), sim.serial, timeout=5) as volume:
            for item in volume.scan().recordings:
                volume.delete(item)  # what the gateway's release does once receipted
        sim.replug()
        assert sim.files == []
        _dock(sim)  # used to fail: the staging directory was only made for the first file
        with open_storage(str(tmp_path / "volumes" / "{serial}"), sim.serial, timeout=5) as volume:
            assert volume.scan().recordings == []
        sim.unplug()
        with pytest.raises(ValueError):
            sim.record(0)
        added = sim.record(3)
        sim.replug()
        _dock(sim)
        with open_storage(str(tmp_path / "volumes" / "{serial}"), sim.serial, timeout=5) as volume:
            assert sorted(item.device_path for item in volume.scan().recordings) == sorted(added)
        with pytest.raises(ValueError, match="docked"):
            sim.record(1)  # a docked recorder does not record
    finally:
        sim.close()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _fds_on(path_part: str) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if path_part in target:
            found.append(target)
    return found


def test_a_dock_followed_until_unplugged_leaves_no_handle_on_the_yanked_volume(tmp_path: Path) -> None:
    """What a dock does (scan, read every file, delete the first, follow the recorder with present())
    without ever calling close(): once the recorder is unplugged, nothing of its volume stays open."""
    sim = _recorder(tmp_path, recordings=4)
    try:
        before = _open_fds()
        for _ in range(3):  # three docks of the same recorder, as in the soak
            _dock(sim)
            volume = open_storage(str(tmp_path / "volumes" / "{serial}"), sim.serial, timeout=5)
            scan = volume.scan()
            for item in scan.recordings:
                with volume.open(item) as reader:
                    for _chunk in reader.chunks():
                        pass
            if scan.recordings:
                volume.delete(scan.recordings[0])
            assert volume.present()
            sim.unplug()
            assert not volume.present()
            assert not volume.present()  # and it stays gone
            assert _fds_on(str(tmp_path / "volumes")) == []
            with pytest.raises(DeviceGone):
                volume.scan()
            sim.record(1)
            sim.replug()
            held = volume  # still referenced, as a dock session keeps it: the handle is closed anyway
        assert held is not None
        assert _open_fds() - before == set()
    finally:
        sim.close()
