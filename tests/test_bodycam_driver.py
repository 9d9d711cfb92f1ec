"""The BodyCamera driver's faults and its volume's defences, against the simulated recorder in-process
(LoopbackUsbDevice): stalls, yanks, hostile names, changing files.

What every backend must do (info, clock, officer binding, password lockout, the switch to mass
storage) is the contract in tests/contract/test_bodycam_contract.py, run over loopback and USB/IP.
"""

import os
import stat
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from drivers import bodycam as bc
from drivers.bodycam import BodyCamera, BodyCamModel
from firmware_bridge import bodycam_usb as f9
from firmware_bridge.errors import UsbStall
from firmware_bridge.usb import LoopbackUsbDevice
from simulators.bodycam import EP_IN, EP_OUT, BodyCamFaults, BodyCamSimulator


def connect(sim, **kwargs):
    """The one place the transport is chosen: loopback (the contract suite runs usbip:// too)."""
    return BodyCamera(LoopbackUsbDevice(sim, sim.serial), **kwargs)


@pytest.fixture
def make(tmp_path):
    made = []

    def factory(**kwargs):
        kwargs.setdefault("frame_size", (320, 180))
        kwargs.setdefault("fps", 5.0)
        kwargs.setdefault("video_seconds", 1.0)
        kwargs.setdefault("volumes_dir", tmp_path / "volumes")
        kwargs.setdefault("media_dir", tmp_path / f"media{len(made)}")
        sim = BodyCamSimulator(**kwargs)
        made.append(sim)
        return sim, connect(sim, **_driver_kwargs(kwargs))

    yield factory
    for sim in made:
        sim.close()


def _driver_kwargs(kwargs):
    out = {}
    if "password" in kwargs:
        out["password"] = kwargs["password"]
    return out


def test_locked_fault_and_unknown_function(make):
    sim, cam = make(faults=BodyCamFaults(locked=True))
    with pytest.raises(bc.DeviceLocked):
        cam.device_time()
    sim.replug()  # the fault flag means "locked at plug-in": it stays a recorder that starts locked
    sim.faults.locked = False
    sim.replug()
    data, csw = cam._command(bytes([0xF9, 0x7F]) + b"000000" + bytes(8), True, 4)
    assert csw.status == 1
    with pytest.raises(bc.CommandRejected, match="does not support"):
        cam._raise_failure(f9.Function.GET_ID_CODE, None)


def test_set_password(make):
    sim, cam = make()
    cam.set_password("a1b2c3")
    assert sim.password == "a1b2c3" and cam.password == "a1b2c3"
    assert cam.battery() == 87
    with pytest.raises(bc.WrongPassword):
        connect(sim).battery()
    with pytest.raises(bc.BodyCamError):
        cam.set_password("short")


def _switch(sim, cam, tmp_path, timeout=2.0):
    events = []
    sim.on_mass_storage = events.append
    serial = cam.switch_to_mass_storage()
    assert events == [sim.serial] and serial == sim.serial
    return bc.open_storage(str(tmp_path / "volumes" / "{serial}"), serial, timeout=timeout)


def test_unparsed_files_are_kept(make, tmp_path):
    sim, cam = make(recordings=1)
    sim.prepare()
    for name in ("DCIM/notes.txt", "DCIM/20260101/1234567_000001_20261399000000_0001.avi", ".Trashes/x"):
        (sim.media_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (sim.media_dir / name).write_bytes(b"x")
        sim.files.append(name)
    with _switch(sim, cam, tmp_path) as volume:
        scan = volume.scan()
    assert len(scan.recordings) == 1
    assert sorted(f.device_path for f in scan.unparsed) == sorted(sim.files[1:])
    bad_date = next(f for f in scan.unparsed if f.name.startswith("1234567"))
    assert "calendar" in bad_date.parse_error


def test_hostile_entries_reported_never_followed(make, tmp_path):
    sim, cam = make(faults=BodyCamFaults(hostile_names=True))
    with _switch(sim, cam, tmp_path) as volume:
        done = []
        t = threading.Thread(target=lambda: done.append(volume.scan()), daemon=True)
        t.start()
        t.join(10)  # a FIFO opened naively would block forever
        assert done, "scan hung (FIFO opened?)"
        scan = done[0]
        reported = {"/".join((*h.parent, os.fsdecode(h.raw_name))) for h in scan.hostile}
        assert reported == set(sim.hostile_entries) and scan.hostile_total == len(sim.hostile_entries)
        assert len(scan.recordings) == 4 and not scan.unparsed  # the planted entries are in neither list
        kinds = {h.kind for h in scan.hostile}
        assert kinds == {"symlink", "name", "special"}
        link = next(h for h in scan.hostile if h.link_target == b"/etc/passwd")
        assert "not followed" in link.reason
        # the relative links really lead out of the volume to the bait: a host that followed them would read it
        file_bait, dir_bait = sim.outside_files
        assert not file_bait.is_relative_to(volume.root) and not dir_bait.is_relative_to(volume.root)
        assert (volume.root / next(p for p in sim.hostile_entries if p.endswith("_9003.avi"))).read_bytes() == file_bait.read_bytes()
        assert (volume.root / "DCIM" / "20991231" / dir_bait.name).read_bytes() == dir_bait.read_bytes()
        assert any("\\x1b" in h.display for h in scan.hostile)  # printable rendering for operators
        # a listing entry naming the link cannot be opened through it
        st = os.lstat(volume.root / "DCIM" / "escape")
        fake = bc.VolumeFile(("DCIM", "escape", "etc", "passwd"), 1, 0, st.st_dev, st.st_ino, None)
        with pytest.raises(bc.HostileEntryError):
            volume.open(fake)
        for parts in (("..", "x"), ("DCIM", "/etc/passwd"), ("C:evil",), ("a\nb",)):
            with pytest.raises(bc.HostileEntryError):
                volume.open(bc.VolumeFile(parts, 1, 0, 0, 0, None))
    assert Path("/etc/passwd").stat().st_size > 0  # the simulator's yank never touched the link target


def test_truncated_video_is_listed_and_flagged(make, tmp_path):
    sim, cam = make(faults=BodyCamFaults(truncated_video=True))
    with _switch(sim, cam, tmp_path) as volume:
        scan = volume.scan()
        item = next(f for f in scan.recordings if f.device_path == sim.truncated_file)
        check = volume.check_container(item)
        assert check.status == "truncated" and "RIFF declares" in check.detail
        with volume.open(item) as fh:
            assert len(b"".join(fh.chunks())) == item.size  # readable as it is: it is still evidence


def test_unplug_mid_read_raises_device_gone(make, tmp_path):
    sim, cam = make(recordings=1, fill_mb=1)
    with _switch(sim, cam, tmp_path) as volume:
        big = max(volume.scan().recordings, key=lambda f: f.size)
        with volume.open(big) as fh:
            assert len(fh.read(100_000)) == 100_000
            sim.unplug()  # "unplugged after 100 000 bytes of file transfer"
            with pytest.raises(bc.DeviceGone, match="went away mid-read"):
                while fh.read(65536):
                    pass
        assert not volume.present()
        with pytest.raises(bc.DeviceGone):
            volume.scan()
    # the recorder's own copy survived the yank: after a re-plug the file is whole again
    sim.replug()
    cam2 = connect(sim)
    with _switch(sim, cam2, tmp_path) as volume:
        again = max(volume.scan().recordings, key=lambda f: f.size)
        assert again.size == big.size == 1_000_000
        assert again.mtime_ns == big.mtime_ns  # unchanged by the yank: a re-dock recognises what it copied


def test_changing_file_detected(make, tmp_path):
    sim, cam = make(faults=BodyCamFaults(changing_file=True))
    with _switch(sim, cam, tmp_path) as volume:
        item = next(f for f in volume.scan().recordings if f.device_path == sim.changing_file)
        with volume.open(item) as fh:
            fh.read(10)
            deadline = time.monotonic() + 10
            while os.stat(volume.root / item.device_path).st_size == item.size:  # the recorder writes on
                assert time.monotonic() < deadline, "the changing-file fault never changed the file"
                time.sleep(0.01)
            with pytest.raises(bc.RecordingChanged, match="changed while being read"):
                while fh.read(4096):
                    pass


def test_stalled_endpoint(make):
    sim, cam = make()
    sim.halt(EP_IN)  # one stall in the data phase: cleared with CLEAR_FEATURE(HALT), command retried
    assert cam.battery() == 87
    sim.halt(EP_OUT)  # one stall on the CBW: cleared, CBW sent again
    assert cam.zfy_info().serial == sim.serial
    assert not sim.halted
    sim.faults.stall_endpoint = EP_IN  # wedged
    with pytest.raises(bc.EndpointStalled, match="stays stalled"):
        cam.battery()


def test_device_gone_mid_command(make):
    sim, cam = make(faults=BodyCamFaults(unplug_after_usb_bytes=31 + 10))
    with pytest.raises(bc.DeviceGone, match="went away mid-command"):
        cam.zfy_info()  # the CBW passes, the 95-byte data phase does not
    with pytest.raises(bc.DeviceGone):
        cam.battery()


def test_slow_device(make):
    sim, cam = make(faults=BodyCamFaults(slow_bytes_per_s=1000))
    t0 = time.monotonic()
    cam.battery()  # 31 + 2 + 13 bytes at 1000 B/s
    assert time.monotonic() - t0 >= 0.04


def test_invalid_cbw_stalls_then_reset_recovers(make):
    sim, cam = make()
    dev = cam.device
    with pytest.raises(UsbStall):
        dev.write(0x02, b"garbage that is not a CBW.....!")
    with pytest.raises(UsbStall):
        dev.read(0x81, 13)
    cam._reset_recovery()
    assert cam.battery() == 87


def test_unsupported_device_and_table(make):
    sim, _ = make()
    sim.product_id = 0x0042
    with pytest.raises(bc.UnsupportedDevice, match="register_model"):
        connect(sim)
    entry = BodyCamModel(0x1209, 0x0042, "some real model", layout=f9.ZFY_LAYOUT_89)
    bc.register_model(entry)
    try:
        assert bc.lookup_model(0x1209, 0x0042) is entry
    finally:
        bc.DEVICE_TABLE.pop((0x1209, 0x0042))


def test_linux_mount_locator(tmp_path):
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (tmp_path / "sdb1").write_bytes(b"")
    os.symlink(tmp_path / "sdb1", by_id / "usb-EGW_BodyCam_4000001-0:0-part1")
    os.symlink(tmp_path / "sdc", by_id / "usb-Other_Disk_999-0:0")
    mount_point = tmp_path / "media" / "REC 4000001"
    mount_point.mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\n{tmp_path}/sdb1 {str(mount_point).replace(' ', chr(92) + '040')} vfat ro 0 0\n")
    loc = bc.LinuxMountLocator(str(by_id), str(mounts))
    assert loc.locate("4000001") == mount_point
    assert loc.locate("4000002") is None
    with bc.open_storage(loc, "4000001", timeout=0.1) as volume:
        assert volume.scan().files == []


def test_template_locator_refuses_unsafe_serial(tmp_path):
    with pytest.raises(bc.HostileEntryError):
        bc.TemplateLocator(str(tmp_path / "{serial}")).locate("../etc")
    os.symlink("/", tmp_path / "5000001")
    assert bc.TemplateLocator(str(tmp_path / "{serial}")).locate("5000001") is None  # a link is not a volume


def test_volume_root_symlink_refused(tmp_path):
    os.symlink("/", tmp_path / "vol")
    with pytest.raises(bc.HostileEntryError):
        bc.RecorderVolume(tmp_path / "vol", "1")


def test_mp4_container(make, tmp_path):
    sim, cam = make(video_container="mp4", recordings=1)
    with _switch(sim, cam, tmp_path) as volume:
        item = volume.scan().recordings[0]
        assert item.recording.ext == "mp4"
        assert volume.check_container(item).status == "ok"
        assert stat.S_ISREG(os.stat(volume.root / item.device_path).st_mode)


def test_readinto(make, tmp_path):
    sim, cam = make(recordings=1, fill_mb=2)
    with _switch(sim, cam, tmp_path) as volume:
        big = max(volume.scan().recordings, key=lambda f: f.size)
        buffer = bytearray(1 << 16)
        with volume.open(big) as fh:
            got = bytearray()
            while count := fh.readinto(buffer):
                got += buffer[:count]
        assert bytes(got) == (sim.media_dir / big.device_path).read_bytes()


def test_timed_unplug(make, tmp_path):
    sim, cam = make(recordings=1, faults=BodyCamFaults(unplug_after_mount_seconds=0.2))
    with _switch(sim, cam, tmp_path) as volume:
        item = volume.scan().recordings[0]
        deadline = time.monotonic() + 10
        while (volume.present() or sim.mounted) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not volume.present() and not sim.mounted
        with pytest.raises(bc.DeviceGone):
            volume.open(item)


def test_eject_is_clean(make, tmp_path):
    sim, cam = make(recordings=1)
    with _switch(sim, cam, tmp_path) as volume:
        item = volume.scan().recordings[0]
        with volume.open(item) as fh:
            sim.eject()  # a reader holding the file keeps what it was promised
            assert len(b"".join(fh.chunks())) == item.size
    assert not (tmp_path / "volumes" / sim.serial).exists()
    with pytest.raises(bc.DeviceGone):
        connect(sim).battery()


def test_delete_after_receipt_survives_replug(make, tmp_path):
    sim, cam = make(recordings=3)
    with _switch(sim, cam, tmp_path) as volume:
        first, second, third = volume.scan().recordings
        volume.delete(first)
        changed = bc.VolumeFile(second.parts, second.size + 1, second.mtime_ns, second.dev, second.ino, second.recording)
        with pytest.raises(bc.RecordingChanged):
            volume.delete(changed)
        with pytest.raises(bc.DeviceGone):
            volume.delete(first)
        assert [f.device_path for f in volume.scan().recordings] == [second.device_path, third.device_path]
    sim.eject()
    sim.replug()
    assert cam.device is not None and len(sim.files) == 2
    cam2 = connect(sim)
    assert cam2.storage().file_count == 2


def test_mass_storage_refused_without_a_host_volume(make):
    sim, cam = make(volumes_dir=None)
    with pytest.raises(bc.CommandRejected, match="MSC_FAILED") as info:
        cam.switch_to_mass_storage()
    assert info.value.iret is f9.IRet.MSC_FAILED and sim.attached


def test_listing_stops_at_the_entry_limit_without_reading_the_rest(tmp_path):
    """A recorder listing far more entries than the limit costs memory for the limit, not for what it
    lists: the flood directory is read only that far, the cut is reported once, and what was listed
    before it (the real recordings) is kept."""
    import tracemalloc

    root = tmp_path / "vol"
    (root / "DCIM" / "20260101").mkdir(parents=True)
    (root / "DCIM" / "20260101" / "1000001_100001_20260101080000_0001.wav").write_bytes(b"RIFF")
    flood = root / "MISC"
    flood.mkdir()
    (flood / "seed").write_bytes(b"x")
    for i in range(20_000):  # 20 000 names of 199 bytes: 4 MB as Python strings
        os.link(flood / "seed", flood / f"{i:06d}{'F' * 193}")
    with bc.RecorderVolume(root, "1000001", max_entries=50) as volume:
        tracemalloc.start()
        try:
            scan = volume.scan()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 500_000, f"listing used {peak} bytes: it read the whole flood directory"
    cut = [h for h in scan.hostile if h.kind == "too_many"]
    assert len(cut) == 1 and cut[0].display == "MISC" and "limit of 50" in cut[0].reason
    assert [f.device_path for f in scan.recordings] == ["DCIM/20260101/1000001_100001_20260101080000_0001.wav"]
    assert len(scan.unparsed) == 50 - 4  # DCIM, the day, the recording, MISC: then 46 flood names


def test_refused_entries_are_all_counted_but_only_the_first_are_kept(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    for i in range(10):
        (root / f"{i:02d}{'L' * 230}").write_bytes(b"x")  # over MAX_NAME_BYTES: refused
    with bc.RecorderVolume(root, "1000001", max_hostile_listed=3, max_entries=8) as volume:
        scan = volume.scan()
    assert [h.kind for h in scan.hostile] == ["name", "name", "name", "too_many"]  # the cut is always kept
    assert scan.hostile_counts == {"name": 8, "too_many": 1} and scan.hostile_total == 9
