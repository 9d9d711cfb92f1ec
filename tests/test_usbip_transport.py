"""USB/IP end to end on loopback: our server, our client, pyusb on top, and the Debian usbip tool."""

from __future__ import annotations

import errno
import hashlib
import resource
import shutil
import socket
import subprocess
import threading
import time

import pytest
import usb.core

from firmware_bridge.errors import (
    TransportClosed,
    TransportError,
    TransportTimeout,
    UsbError,
    UsbStall,
)
from firmware_bridge.transports import UsbIpUrl, UsbUrl, map_usb_error, parse_url
from firmware_bridge.usb import EndpointSpec, InterfaceSpec, SetupPacket, UsbDeviceBase
from firmware_bridge.usb_transport import (
    UsbIpBackend,
    list_usbip_devices,
    open_usb_device,
)
from firmware_bridge.usbip_client import UsbIpClient
from firmware_bridge.usbip_server import UsbIpServer

pytestmark = pytest.mark.timeout(60)


class EchoDevice(UsbDeviceBase):
    """Bulk OUT 0x02 echoes reversed on bulk IN 0x81; interrupt IN 0x83 yields queued reports."""

    serial = "7654321"
    product = "echo"
    interface_specs = (
        InterfaceSpec(0xFF, 0x01, 0x02, (EndpointSpec(0x81, 2, 512), EndpointSpec(0x02, 2, 512),
                                         EndpointSpec(0x83, 3, 8, 1))),
    )

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.bulk: list[bytes] = []
        self.reports: list[bytes] = []
        self.stream = 0  # bytes left of a synthetic bulk IN stream (throughput)
        self.calls_in_flight = 0
        self.max_concurrency = 0

    def class_control(self, setup: SetupPacket, data: bytes) -> bytes:
        if setup.request == 0x01 and setup.is_in:  # vendor: version
            return b"\x01\x02"[: setup.length]
        if setup.request == 0x02:  # vendor: raises a bug
            raise RuntimeError("model bug")
        return super().class_control(setup, data)

    def bulk_out(self, endpoint: int, data: bytes) -> None:
        self.bulk.append(data[::-1])

    def bulk_in(self, endpoint: int, length: int) -> bytes | None:
        if self.stream:
            n = min(length, self.stream)
            self.stream -= n
            return bytes(n)
        if self.bulk and self.bulk[0] == b"!babble":
            self.bulk.pop(0)
            return bytes(length + 1)
        return self.bulk.pop(0) if self.bulk else None

    def interrupt_in(self, endpoint: int, length: int) -> bytes | None:
        with self.lock:
            return self.reports.pop(0) if self.reports else None


@pytest.fixture
def server():
    with UsbIpServer() as srv:
        yield srv


@pytest.fixture
def echo(server: UsbIpServer) -> EchoDevice:
    model = EchoDevice()
    server.add_device("1-1", model)
    return model


def test_url_parsing() -> None:
    target = parse_url("usbip://127.0.0.1:3241/1-1")
    assert isinstance(target, UsbIpUrl) and (target.port, target.busid) == (3241, "1-1")
    default = parse_url("usbip://localhost/2-1")
    assert isinstance(default, UsbIpUrl) and default.port == 3240
    usb_target = parse_url("usb://1209:0001/1234567")
    assert isinstance(usb_target, UsbUrl)
    assert (usb_target.vendor_id, usb_target.product_id, usb_target.serial) == (0x1209, 1, "1234567")
    with pytest.raises(ValueError, match=r"usbip://HOST:PORT\[/BUSID\]"):
        parse_url("usbip://127.0.0.1:3240/a b")


def test_listing_shows_ids_serial_and_interfaces(server: UsbIpServer, echo: EchoDevice) -> None:
    class Pad(UsbDeviceBase):
        vendor_id, product_id, serial = 0x056A, 0x00A3, "PAD-9"
        interface_specs = (InterfaceSpec(0x03, 0, 0, (EndpointSpec(0x81, 3, 64, 1),)),)

    server.add_device("1-2", Pad())
    found = {d.busid: d for d in list_usbip_devices(*server.address)}
    assert set(found) == {"1-1", "1-2"}
    assert (found["1-1"].vid, found["1-1"].pid, found["1-1"].serial) == (0x1209, 0x0001, "7654321")
    assert found["1-1"].interfaces == ((0xFF, 1, 2),) and found["1-1"].speed == 3
    assert (found["1-2"].vid, found["1-2"].serial, found["1-2"].interfaces) == (0x056A, "PAD-9", ((3, 0, 0),))


def test_descriptors_bulk_round_trip_and_stall(server: UsbIpServer, echo: EchoDevice) -> None:
    with open_usb_device(server.url("1-1"), timeout_ms=2000) as dev:
        assert (dev.idVendor, dev.idProduct, dev.serial_number) == (0x1209, 0x0001, "7654321")
        desc = dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18)
        assert desc == echo.device_descriptor()
        config = dev.ctrl_transfer(0x80, 6, 0x0200, 0, 255)
        assert config == echo.configuration_descriptor()
        assert dev.ctrl_transfer(0xC0, 0x01, 0, 0, 2) == b"\x01\x02"
        for size in (1, 511, 512, 513, 4096, 100_000):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            assert dev.write(0x02, payload) == size
            assert dev.read(0x81, size) == payload[::-1]
        with pytest.raises(UsbStall, match="stalled"):
            dev.ctrl_transfer(0xC0, 0x42, 0, 0, 4)
        assert dev.ctrl_transfer(0xC0, 0x01, 0, 0, 2) == b"\x01\x02"  # still alive after the stall
        with pytest.raises(UsbError, match="EPROTO"):
            dev.ctrl_transfer(0xC0, 0x02, 0, 0, 1)
        dev.write(0x02, b"!babble"[::-1])
        with pytest.raises(UsbError, match="EOVERFLOW"):
            dev.read(0x81, 16)


def test_interrupt_nak_then_data_without_spinning(server: UsbIpServer, echo: EchoDevice) -> None:
    with open_usb_device(server.url("1-1")) as dev:
        threading.Timer(0.6, lambda: echo.reports.append(b"\x01pen\x00\x00\x00\x00")).start()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        assert dev.read(0x83, 8, timeout=5000) == b"\x01pen\x00\x00\x00\x00"
        waited = time.monotonic() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        assert waited >= 0.55
        assert cpu < 0.5 * waited, f"NAK polling burned {cpu:.2f} s CPU in {waited:.2f} s"


def test_timeout_unlinks_and_loses_nothing(server: UsbIpServer, echo: EchoDevice) -> None:
    with open_usb_device(server.url("1-1")) as dev:
        with pytest.raises(TransportTimeout, match="timed out"):
            dev.read(0x83, 8, timeout=100)
        echo.reports.append(b"report-1")
        # the cancelled URB must not have swallowed the report
        assert dev.read(0x83, 8, timeout=2000) == b"report-1"


def test_interrupt_pending_does_not_block_other_endpoints(server: UsbIpServer, echo: EchoDevice) -> None:
    with open_usb_device(server.url("1-1")) as dev:
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(dev.read(0x83, 8, timeout=5000)))
        reader.start()
        time.sleep(0.1)
        for _ in range(20):
            assert dev.ctrl_transfer(0xC0, 0x01, 0, 0, 2) == b"\x01\x02"
            dev.write(0x02, b"abc")
            assert dev.read(0x81, 16) == b"cba"
        echo.reports.append(b"late")
        reader.join(timeout=5)
        assert got == [b"late"]


def test_unplug_mid_transfer_then_replug(server: UsbIpServer, echo: EchoDevice) -> None:
    dev = open_usb_device(server.url("1-1"))
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            dev.read(0x83, 8, timeout=10_000)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)
    server.remove_device("1-1")
    thread.join(timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], TransportClosed), errors
    assert "unplugged" in str(errors[0])
    with pytest.raises(TransportClosed):
        dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18)
    dev.close()
    with pytest.raises(TransportError, match="exports no device '1-1'"):
        open_usb_device(server.url("1-1"))
    fresh = EchoDevice()
    server.add_device("1-1", fresh)
    with open_usb_device(server.url("1-1")) as again:
        fresh.reports.append(b"back")
        assert again.read(0x83, 8) == b"back"


def test_busy_device_refuses_second_import(server: UsbIpServer, echo: EchoDevice) -> None:
    host, port = server.address
    with UsbIpClient.open(host, port, "1-1"):
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="busy"):
            UsbIpClient.open(host, port, "1-1", busy_wait_s=0.2)
        assert 0.15 < time.monotonic() - t0 < 2
    for _ in range(20):  # released on close, however quickly the next importer comes
        with UsbIpClient.open(host, port, "1-1") as client:
            assert client.control(0x80, 6, 0x0100, 0, 18) == echo.device_descriptor()


def test_server_down_names_host_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}.*start the simulator"):
        open_usb_device(f"usbip://127.0.0.1:{port}/1-1")
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        list_usbip_devices("127.0.0.1", port)


def test_server_stop_closes_importers(echo: EchoDevice, server: UsbIpServer) -> None:
    dev = open_usb_device(server.url("1-1"))
    server.stop()
    with pytest.raises(TransportClosed):
        dev.read(0x83, 8, timeout=2000)
    dev.close()


def test_garbage_client_does_not_hurt_the_server(server: UsbIpServer, echo: EchoDevice) -> None:
    with socket.create_connection(server.address, timeout=5) as raw:
        raw.sendall(b"\x01\x11\x80\x03" + b"\x00" * 4 + b"1-1".ljust(32, b"\0"))  # import...
        assert raw.recv(8)[:4] == b"\x01\x11\x00\x03"
        raw.sendall(b"\xff" * 48)  # ...then nonsense
        raw.settimeout(5)
        while raw.recv(4096):
            pass  # the server closes the connection
    with open_usb_device(server.url("1-1")) as dev:  # and frees the device
        assert dev.idVendor == 0x1209


def test_pyusb_find_through_the_usbip_backend(server: UsbIpServer, echo: EchoDevice) -> None:
    backend = UsbIpBackend(*server.address)
    dev = usb.core.find(backend=backend, idVendor=0x1209, idProduct=0x0001)
    assert dev is not None and dev.serial_number == "7654321" and dev.product == "echo"
    dev.set_configuration()
    intf = dev.get_active_configuration()[(0, 0)]
    assert intf.bInterfaceClass == 0xFF and [ep.bEndpointAddress for ep in intf] == [0x81, 0x02, 0x83]
    dev.write(0x02, b"pyusb")
    assert bytes(dev.read(0x81, 64)) == b"bsuyp"
    with pytest.raises(usb.core.USBError) as stalled:
        dev.ctrl_transfer(0xC0, 0x42, 0, 0, 4)
    assert stalled.value.errno == 32
    with pytest.raises(usb.core.USBTimeoutError):
        dev.read(0x83, 8, timeout=50)
    usb.util.dispose_resources(dev)
    assert usb.core.find(backend=backend, idVendor=0x1234) is None


def test_throughput_bulk_in_64k_urbs(server: UsbIpServer, echo: EchoDevice) -> None:
    total, urb = 64 * 1024 * 1024, 64 * 1024
    echo.stream = total
    digest = hashlib.sha256()
    with open_usb_device(server.url("1-1")) as dev:
        t0 = time.perf_counter()
        got = 0
        while got < total:
            chunk = dev.read(0x81, urb)
            digest.update(chunk)
            got += len(chunk)
        elapsed = time.perf_counter() - t0
    assert got == total and digest.hexdigest() == hashlib.sha256(bytes(total)).hexdigest()
    print(f"\nUSB/IP bulk IN: {total / elapsed / 1e6:.0f} MB/s ({total // urb} URBs of {urb} bytes, {elapsed:.2f} s)")
    assert elapsed < 30


def test_debian_usbip_tool_lists_our_devices(server: UsbIpServer, echo: EchoDevice) -> None:
    class Camera(UsbDeviceBase):
        interface_specs = (InterfaceSpec(0x08, 0x06, 0x50, (EndpointSpec(0x81, 2, 512), EndpointSpec(0x02, 2, 512))),)

    server.add_device("2-1", Camera())
    tool = shutil.which("usbip") or shutil.which("usbip", path="/usr/sbin:/sbin:/usr/bin")
    assert tool, "the Debian `usbip` tool is missing: install it (apt-get install -y usbip); .ci/run does this"
    proc = subprocess.run([tool, "--tcp-port", str(server.address[1]), "list", "-r", "127.0.0.1"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "1-1:" in out and "(1209:0001)" in out and "(ff/01/02)" in out
    assert "2-1:" in out and "Mass Storage / SCSI / Bulk-Only (08/06/50)" in out
    assert "serial:7654321" in out


def test_usb_url_without_hardware_is_a_clear_transport_error() -> None:
    with pytest.raises(TransportError, match=r"usb://1209:00ee/NOPE: (no USB device 1209:00ee|pyusb found no libusb)"):
        open_usb_device("usb://1209:00ee/NOPE")


@pytest.mark.parametrize(
    ("exc", "expected", "words"),
    [
        (usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT), TransportTimeout, "timed out"),
        (usb.core.USBError("Pipe error", -9, errno.EPIPE), UsbStall, "stalled"),
        (usb.core.USBError("No such device (it may have been disconnected)", -4, errno.ENODEV), TransportClosed,
         "disappeared"),
        (usb.core.USBError("Access denied (insufficient permissions)", -3, errno.EACCES), UsbError, "udev"),
        (usb.core.USBError("Other error", -99, errno.EIO), UsbError, "Other error"),
    ],
)
def test_libusb_errors_map_to_our_tree(exc: usb.core.USBError, expected: type, words: str) -> None:
    """The errors pyusb's libusb1 backend raises (its code/errno pairs) become ours, for usb:// devices."""
    got = map_usb_error(exc, "usb://1209:0001", "read from endpoint 0x81")
    assert type(got) is expected and words in str(got) and "usb://1209:0001" in str(got)
