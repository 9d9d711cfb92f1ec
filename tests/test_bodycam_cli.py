"""``egw simulate bodycam``: argument handling and the serve loop.

The USB/IP server is built in parallel (firmware_bridge.usbip_server); until it
lands here the serve loop runs against ``HostedDevices``, a stand-in with the
same four methods that hands the models to in-process loopback handles.
"""

import os
import queue
import re
import threading
import time

import pytest

from drivers.bodycam import BodyCamera, open_storage
from firmware_bridge.usb import LoopbackUsbDevice
from gateway.commands.simulate import SIMULATORS
from simulators.bodycam import cli


class HostedDevices:
    """Stand-in for UsbIpServer: add_device / remove_device / start / stop / address."""

    def __init__(self):
        self.devices = {}
        self.address = ("127.0.0.1", 3240)
        self.started = self.stopped = False
        self.lock = threading.Lock()

    def add_device(self, busid, model):
        with self.lock:
            assert busid not in self.devices, f"{busid} added twice"
            self.devices[busid] = model

    def remove_device(self, busid):
        with self.lock:
            del self.devices[busid]

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_registered_as_simulator():
    assert SIMULATORS["bodycam"] == "simulators.bodycam.cli"


def test_build_recorders(tmp_path):
    args = cli.build_parser().parse_args(["--count", "3", "--small", "--drift", "10", "--serial-base", "2000001",
                                          "--hostile-names", "--slow", "5000"])
    recorders = cli.build_recorders(args, tmp_path)
    try:
        assert [b for b, _ in recorders] == ["1-1", "1-2", "1-3"]
        assert [s.serial for _, s in recorders] == ["2000001", "2000002", "2000003"]
        assert [s.info.user_no for _, s in recorders] == ["100001", "100002", "100003"]
        assert [s.describe()["drift_s"] for _, s in recorders] == ["+10", "+20", "+30"]
        assert all(s.frame_size == (320, 180) and s.faults.hostile_names and s.faults.slow_bytes_per_s == 5000
                   for _, s in recorders)
    finally:
        for _, sim in recorders:
            sim.close()
    with pytest.raises(ValueError):
        cli.build_recorders(cli.build_parser().parse_args(["--serial-base", "9999999", "--count", "2"]), tmp_path)


def test_serve_loop_announces_mounts_and_obeys_commands(tmp_path):
    args = cli.build_parser().parse_args(["--count", "2", "--small", "--recordings", "2", "--minutes", "0.02",
                                          "--volumes", str(tmp_path / "vol"), "--drift", "47"])
    server = HostedDevices()
    lines: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    r, w = os.pipe()
    commands, writer = os.fdopen(r, "r"), os.fdopen(w, "w")
    result = []
    thread = threading.Thread(target=lambda: result.append(cli.serve(args, server, stop, commands, lines.put)), daemon=True)
    thread.start()
    try:
        assert lines.get(timeout=30) == "usbip://127.0.0.1:3240"
        first, second = lines.get(timeout=5), lines.get(timeout=5)
        assert re.fullmatch(r"1-1 serial=1000001 police=100001 password=000000 volume=\S+/1000001 drift=\+47", first)
        assert second.startswith("1-2 serial=1000002 ") and second.endswith("drift=+94")
        assert server.started

        cam = BodyCamera(LoopbackUsbDevice(server.devices["1-1"], "1000001"))
        assert abs(cam.device_time().offset.total_seconds() - 47) < 2
        cam.switch_to_mass_storage()
        assert lines.get(timeout=5) == f"mounted 1-1 1000001 {tmp_path / 'vol' / '1000001'}"
        _wait(lambda: "1-1" not in server.devices)  # dropped off the bus
        with open_storage(str(tmp_path / "vol" / "{serial}"), "1000001", timeout=5) as volume:
            assert len(volume.scan().recordings) == 2

        def command(text):
            writer.write(text + "\n")
            writer.flush()
            return lines.get(timeout=5)

        assert command("unplug 1-1") == "ok unplug 1-1"
        assert not (tmp_path / "vol" / "1000001").exists()
        assert command("replug 1-1") == "ok replug 1-1"
        assert BodyCamera(LoopbackUsbDevice(server.devices["1-1"], "1000001")).battery() == 95
        assert command("halt 1-2 0x81") == "ok halt 1-2"
        assert command("frobnicate 1-2").startswith("error")
        assert command("unplug 9-9").startswith("error unknown recorder")
        writer.write("quit\n")
        writer.flush()
        thread.join(10)
        assert result == [0] and server.stopped
    finally:
        stop.set()
        writer.close()
        thread.join(10)
    assert not thread.is_alive()


def test_server_url_accepts_tuple_or_text():
    class S:
        address = ("127.0.0.1", 40123)
    assert cli.server_url(S) == "usbip://127.0.0.1:40123"
    S.address = "127.0.0.1:40123"
    assert cli.server_url(S) == "usbip://127.0.0.1:40123"
