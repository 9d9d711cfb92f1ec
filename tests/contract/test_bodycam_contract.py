"""Body-worn camera contract (drivers.bodycam.BodyCamera and its volume), once, over every backend.

Backends: ``bodycam[loopback]`` (the simulated recorder in memory through
``LoopbackUsbDevice``) and ``bodycam[usbip]`` (the same recorder exported by a USB/IP
server on 127.0.0.1 and opened with ``BodyCamera.open("usbip://…")``; it leaves the bus
when it switches to mass storage, as the ``egw simulate bodycam`` server does), plus
``bodycam[real]`` when ``EGW_CONTRACT_BODYCAM_URL`` names a docked recorder (``usb://…``,
``usbip://…``; ``EGW_CONTRACT_BODYCAM_PASSWORD``, default the model's; its volume is found
by the ``EGW_CONTRACT_BODYCAM_VOLUMES`` template, e.g. ``/media/egw/{serial}``, else through
``/dev/disk/by-id`` and ``/proc/mounts``). The real recorder is switched to mass storage by
the volume test: re-plug it afterwards.

Backends this family cannot have:

* pty / TCP (``socket://``): the recorder speaks vendor SCSI inside USB Bulk-Only
  Transport; there is no serial interface, and the driver takes a ``UsbDevice``, never a
  pyserial URL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import pytest

from drivers.bodycam import (
    BodyCamera,
    BodyCamError,
    CommandRejected,
    DeviceGone,
    DeviceLocked,
    LinuxMountLocator,
    RecorderVolume,
    RecordingName,
    VolumeFile,
    VolumeLocator,
    VolumeNotFound,
    WrongPassword,
    open_storage,
)
from firmware_bridge import bodycam_usb as f9
from firmware_bridge.usb import LoopbackUsbDevice
from firmware_bridge.usbip_server import UsbIpServer
from simulators.bodycam import BodyCamFaults, BodyCamSimulator
from tests.contract.backends import (
    REAL,
    backend_params,
    real_url,
    refuse_on_real,
    simulated_only,
)

FAMILY = "bodycam"
BUSID = "1-1"
# Small, short recordings: the contract is about the driver, not about encoding video.
PACED = {"frame_size": (320, 180), "fps": 5.0, "video_seconds": 1.0}


class BodyCamBackend:
    """One backend: plugs a simulated recorder into it (or names the docked one) and opens the driver."""

    def __init__(self, name: str, volumes: Path) -> None:
        self.name = name
        self.volumes = volumes
        self.sim: BodyCamSimulator | None = None
        self._server: UsbIpServer | None = None
        self._cameras: list[BodyCamera] = []
        self.password: str | None = os.environ.get("EGW_CONTRACT_BODYCAM_PASSWORD") if name == REAL else None

    def start(self, **options: Any) -> BodyCamSimulator | None:
        """Plug in a recorder simulated with ``options``; None on the real backend."""
        refuse_on_real(self.name, options)
        if self.name == REAL:
            return None
        self.sim = sim = BodyCamSimulator(**{**PACED, "volumes_dir": self.volumes, **options})
        self.password = options.get("password")
        if self.name == "usbip":
            sim.prepare()
            self._server = server = UsbIpServer()
            server.add_device(BUSID, sim)
            server.start()
        return sim

    def connect(self, **kwargs: Any) -> BodyCamera:
        """Open the driver on the recorder (closed when the test ends)."""
        kwargs.setdefault("password", self.password)
        if self.name == "loopback":
            assert self.sim is not None
            camera = BodyCamera(LoopbackUsbDevice(self.sim, self.sim.serial), **kwargs)
        else:
            camera = BodyCamera.open(self._server.url(BUSID) if self._server else real_url(FAMILY) or "", **kwargs)
        self._cameras.append(camera)
        return camera

    def switch(self, camera: BodyCamera) -> str:
        """Switch to mass storage; on USB/IP the recorder leaves the bus, as a real one does."""
        if self.sim is not None:
            server = self._server

            def mounted(serial: str) -> None:
                switched.append(serial)
                if server is not None:  # called inside the USB request: leave the bus from another thread
                    threading.Thread(target=_forget, args=(server, BUSID), daemon=True).start()

            switched: list[str] = []
            self.sim.on_mass_storage = mounted
            serial = camera.switch_to_mass_storage()
            assert switched == [serial]
            return serial
        return camera.switch_to_mass_storage()

    @property
    def locator(self) -> VolumeLocator | str:
        """Where the recorder's volume appears."""
        if self.name != REAL:
            return str(self.volumes / "{serial}")
        template = os.environ.get("EGW_CONTRACT_BODYCAM_VOLUMES")
        return template if template else LinuxMountLocator()

    def replug(self) -> None:
        """Pull the recorder's cable and plug it back."""
        assert self.sim is not None
        self.sim.replug()
        if self._server is not None:
            _forget(self._server, BUSID)
            self._server.add_device(BUSID, self.sim)

    def close(self) -> None:
        for camera in self._cameras:
            camera.close()
        if self._server is not None:
            self._server.stop()
        if self.sim is not None:
            self.sim.close()


def _forget(server: UsbIpServer, busid: str) -> None:
    try:
        server.remove_device(busid)
    except KeyError:
        pass  # already off the bus


@pytest.fixture(params=backend_params(FAMILY, ["loopback", "usbip"]))
def device(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BodyCamBackend]:
    backend = BodyCamBackend(request.param, tmp_path / "volumes")
    try:
        yield backend
    finally:
        backend.close()


def test_info(device: BodyCamBackend) -> None:
    sim = device.start() if device.name == REAL else device.start(serial="2000001", user_no="200001", battery=64)
    cam = device.connect()
    info = cam.info()
    assert info.serial_consistent and info.serial == info.usb_serial
    assert 0 <= info.battery_percent <= 100 and info.storage.free_mib <= info.storage.total_mib
    assert cam.test_unit_ready()
    if sim is not None:
        assert info.id_code == "EGW01"
        assert info.zfy == f9.ZfyInfo("2000001", "200001", "张三", "330100000000", "杭州市市场监督管理局")
        assert info.serial == "2000001" and info.battery_percent == 64
        assert info.resolution == (320, 180) and info.storage.file_count == 4
        assert cam.scsi_inquiry().product == "BodyCam 2000001"


def test_device_time_gives_the_clock_offset_and_sync_time_removes_it(device: BodyCamBackend) -> None:
    sim = device.start() if device.name == REAL else device.start(drift_seconds=47)
    cam = device.connect()
    reading = cam.device_time()
    assert reading.round_trip < timedelta(seconds=1)
    sync = cam.sync_time()
    assert abs(sync.after.offset.total_seconds()) < 2
    assert abs(cam.device_time().offset.total_seconds()) < 2
    if sim is not None:
        assert abs(reading.offset.total_seconds() - 47) < 2 and abs(sync.before.offset.total_seconds() - 47) < 2
        assert sim.zone_minutes == 480
        # a recording time stamped by the drifting clock maps back to true UTC
        device_local = datetime(2026, 1, 1, 8, 0, 47)
        assert reading.to_host_utc(device_local) - datetime(2026, 1, 1, 0, 0, tzinfo=UTC) < timedelta(seconds=2)


def test_sync_to_an_explicit_time_and_zone(device: BodyCamBackend) -> None:
    fixed = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
    sim = device.start(clock=lambda: fixed)
    assert sim is not None
    cam = device.connect()
    sync = cam.sync_time(now=fixed + timedelta(hours=1), zone_minutes=-300)
    assert sync.set_to == datetime(2026, 6, 1, 8, 0, 0)
    assert sim.device_time() == datetime(2026, 6, 1, 8, 0, 0) and sim.zone_minutes == -300
    with pytest.raises(BodyCamError):
        cam.sync_time(now=datetime(2026, 1, 1))  # naive: ambiguous


@pytest.mark.parametrize("layout", [f9.ZFY_LAYOUT_94, f9.ZFY_LAYOUT_89], ids=["layout94", "layout89"])
def test_officer_binding_round_trips_in_gbk(device: BodyCamBackend, layout: f9.ZfyLayout) -> None:
    sim = device.start(layout=layout)
    assert sim is not None
    cam = device.connect(layout=layout)
    assert cam.model.layout is layout
    stored = cam.write_info(user_no="330001", user_name="欧阳娜娜", unit_no="330106000000", unit_name="西湖区市场监管所")
    assert stored == f9.ZfyInfo(sim.serial, "330001", "欧阳娜娜", "330106000000", "西湖区市场监管所")
    assert sim.info == stored and cam.zfy_info() == stored
    with pytest.raises(BodyCamError, match="GBK"):
        cam.write_info(user_name="🙂")
    with pytest.raises(CommandRejected, match="refused the data"):
        cam.write_info(f9.ZfyInfo("7654321", "330001"))  # the product serial cannot be rewritten


def test_switch_to_mass_storage_then_the_volume(device: BodyCamBackend) -> None:
    sim = device.start() if device.name == REAL else device.start(serial="3000001", user_no="300001", recordings=5)
    cam = device.connect()
    if sim is not None:
        with pytest.raises(VolumeNotFound, match="did not appear"):
            cam.open_storage(device.locator, timeout=0.1)
    serial = device.switch(cam)
    with open_storage(device.locator, serial, timeout=5 if sim is not None else 60) as volume:
        check_volume(volume, serial)
        if sim is not None:
            check_against_simulator(volume, sim)
    with pytest.raises(DeviceGone):
        cam.battery()  # the vendor handle is gone with the switch
    if sim is not None:
        assert not sim.attached


def recordings(volume: RecorderVolume) -> list[tuple[VolumeFile, RecordingName]]:
    """The scan's recordings with their parsed names (a recording is a file whose name parsed)."""
    found = []
    for item in volume.scan().recordings:
        assert item.recording is not None
        found.append((item, item.recording))
    return found


def check_volume(volume: RecorderVolume, serial: str) -> None:
    """What any recorder's volume must give: recordings named for this recorder, each readable whole."""
    assert not volume.scan().hostile
    for item, name in recordings(volume):
        assert name.serial == serial
        with volume.open(item) as fh:
            assert sum(len(chunk) for chunk in fh.chunks(1 << 16)) == item.size


def check_against_simulator(volume: RecorderVolume, sim: BodyCamSimulator) -> None:
    """The volume holds exactly the recordings the simulator made, byte for byte."""
    scan = volume.scan()
    assert not scan.unparsed and [f.device_path for f in scan.recordings] == sorted(sim.files)
    named = recordings(volume)
    assert sorted(name.media_kind for _, name in named) == sorted(["video", "video", "audio", "photo", "video"])
    assert sum(name.important for _, name in named) == 1
    for item, name in named:
        assert name.user_no == "300001"
        assert item.parts[0] == "DCIM" and item.parts[1] == name.start.strftime("%Y%m%d")
        with volume.open(item) as fh:
            assert b"".join(fh.chunks(4096)) == (sim.media_dir / item.device_path).read_bytes()
        assert volume.check_container(item).status == "ok"
    video = next(item for item, name in named if name.ext == "avi")
    cap = cv2.VideoCapture(str(volume.root / video.device_path))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (180, 320, 3)
    osd = frame[6:20, 6:200]  # the burned-in overlay: white text on a black box, top left
    assert (osd.max(axis=2) < 60).mean() > 0.3 and (osd.min(axis=2) > 150).mean() > 0.03


def test_wrong_password_five_times_locks_until_replug(device: BodyCamBackend) -> None:
    """One handle at a time: a USB/IP device is imported by one host only, as a docked recorder is."""
    simulated_only(device.name, "five wrong passwords lock a real recorder")
    sim = device.start(password="135790")
    assert sim is not None
    with device.connect(password="000000") as bad:
        for _ in range(4):
            with pytest.raises(WrongPassword, match="rejected the password"):
                bad.battery()
    with device.connect() as cam:
        cam.battery()  # a right password resets the count
    with device.connect(password="000000") as bad:
        for _ in range(4):
            with pytest.raises(WrongPassword):
                bad.zfy_info()
        with pytest.raises(WrongPassword):
            bad.set_password("999999")  # OUT function: reported through CSW + sense
        with pytest.raises(DeviceLocked):
            bad.info()
    with device.connect() as cam, pytest.raises(DeviceLocked, match="re-plug|plug it back"):
        cam.battery()  # locked: even the right password fails
    device.replug()
    assert device.connect().battery() == 87


def test_a_recorder_locked_at_plug_in_refuses_every_function(device: BodyCamBackend) -> None:
    sim = device.start(faults=BodyCamFaults(locked=True))
    assert sim is not None
    cam = device.connect()
    with pytest.raises(DeviceLocked):
        cam.device_time()
    with pytest.raises(DeviceLocked):
        cam.info()
    device.replug()  # the fault means "locked at plug-in": a re-plug keeps it locked
    with pytest.raises(DeviceLocked):
        device.connect().battery()
