"""Device links by URL: one parser (every scheme, good and bad), streams that keep the first byte, and the
configuration taking exactly what each simulator prints."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.rapidtest import RapidTestAnalyzer, RapidTestPortError
from firmware_bridge.errors import TransportError, TransportUrlError
from firmware_bridge.transports import (
    LoopUrl,
    Rfc2217Url,
    SerialPath,
    SocketUrl,
    UsbIpUrl,
    UsbUrl,
    open_transport,
    parse_url,
)
from firmware_bridge.usb_transport import open_usb_device
from gateway.config import load_config
from tests.conftest import spawn_egw
from tests.uplink_support import stop_process

ENQ, ACK = b"\x05", b"\x06"
SPEAK_FIRST_ROUNDS = 100

# ---- the parser ------------------------------------------------------------------------------

GOOD = [
    ("/dev/ttyUSB0", SerialPath("/dev/ttyUSB0")),
    ("/dev/pts/7", SerialPath("/dev/pts/7")),
    ("COM3", SerialPath("COM3")),
    ("socket://127.0.0.1:7001", SocketUrl("127.0.0.1", 7001)),
    ("socket://localhost:1/", SocketUrl("localhost", 1)),
    ("socket://[::1]:65535", SocketUrl("::1", 65535)),
    ("SOCKET://analyzer.lab:7001", SocketUrl("analyzer.lab", 7001)),
    ("rfc2217://10.0.0.5:2217", Rfc2217Url("10.0.0.5", 2217)),
    ("rfc2217://10.0.0.5:2217?poll_modem", Rfc2217Url("10.0.0.5", 2217, "poll_modem")),
    ("loop://", LoopUrl()),
    ("usbip://127.0.0.1:38129", UsbIpUrl("127.0.0.1", 38129)),
    ("usbip://127.0.0.1:45411/1-1", UsbIpUrl("127.0.0.1", 45411, "1-1")),
    ("usbip://dock/2-1.3", UsbIpUrl("dock", 3240, "2-1.3")),
    ("usbip://dock:3240/serial:1000001", UsbIpUrl("dock", 3240, None, "1000001")),
    ("usbip://dock:3240/1-2/serial:1000002", UsbIpUrl("dock", 3240, "1-2", "1000002")),
    ("usb://1209:0001", UsbUrl(0x1209, 0x0001)),
    ("usb://056a:00A8/ABC-1", UsbUrl(0x056A, 0x00A8, "ABC-1")),
]

BAD = [
    ("", "empty device URL"),
    ("   ", "empty device URL"),
    ("/dev/tty\x00S0", "NUL"),
    ("socket://localhost", "missing port; expected socket://HOST:PORT"),
    ("socket://localhost:", "missing port; expected socket://HOST:PORT"),
    ("socket://:7001", "missing or malformed host; expected socket://HOST:PORT"),
    ("socket://host:0", "port '0' is not a number from 1 to 65535"),
    ("socket://host:70000", "port '70000' is not a number from 1 to 65535"),
    ("socket://host:port", "port 'port' is not a number"),
    ("socket://host:7001/x", "unexpected '/x' after the port; expected socket://HOST:PORT"),
    ("socket://host:7001?logging=debug", "unexpected '?logging=debug' after the port"),
    ("rfc2217://host", "missing port; expected rfc2217://HOST:PORT"),
    ("loop://x", "loop:// takes no address"),
    ("usbip://", "missing or malformed host; expected usbip://HOST:PORT[/BUSID]"),
    ("usbip://h:99999/1-1", "port '99999' is not a number from 1 to 65535"),
    ("usbip://h:3240/a b", "'a b' is neither a bus id (1-1) nor serial:SERIAL"),
    ("usbip://h:3240/1-1/1-2", "'1-2' is neither a bus id"),
    ("usbip://h:3240?x", "unexpected '?x' after the port"),
    ("usb://", "'' is not VID:PID in hex; expected usb://VID:PID[/SERIAL]"),
    ("usb://zz:0001", "'zz:0001' is not VID:PID in hex; expected usb://VID:PID[/SERIAL]"),
    ("usb://12345:0001", "is not VID:PID in hex"),
    ("usb://1209", "'1209' is not VID:PID in hex"),
    ("usb://1209:0001/", "the serial after the / is empty"),
    ("spy://socket://x:1", "unknown scheme 'spy'; expected a device path"),
    ("http://host:80", "unknown scheme 'http'"),
    ("://x", "unknown scheme ''"),
]


@pytest.mark.parametrize(("url", "expected"), GOOD, ids=[u for u, _ in GOOD])
def test_good_urls_parse_and_print_back(url: str, expected: object) -> None:
    parsed = parse_url(url)
    assert parsed == expected
    assert parse_url(str(parsed)) == parsed  # the canonical form parses to the same target


@pytest.mark.parametrize(("url", "message"), BAD, ids=[repr(u) for u, _ in BAD])
def test_bad_urls_say_in_one_line_what_form_is_expected(url: str, message: str) -> None:
    with pytest.raises(TransportUrlError) as info:
        parse_url(url)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert isinstance(info.value, ValueError)  # bad input, as callers validating input expect


_PIECES = st.sampled_from(["socket", "rfc2217", "loop", "usbip", "usb", "SOCKET", "", "x", "://", ":", "/", "[", "]",
                           "?", "#", "1-1", "serial:", "1209", "0001", "65535", "65536", "0", "::1", "\x00", "\n", " "])


@given(st.one_of(st.text(), st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=10).map("".join)))
def test_any_string_parses_or_raises_the_one_url_error(text: str) -> None:
    try:
        parsed = parse_url(text)
    except TransportUrlError as exc:
        assert "\n" not in str(exc)
        return
    assert parse_url(str(parsed)) == parsed


def test_open_refuses_usb_urls_and_unreachable_streams_with_our_errors() -> None:
    with pytest.raises(TransportUrlError, match="is a USB device URL, not a byte stream"):
        open_transport("usbip://127.0.0.1:3240/1-1")
    with pytest.raises(TransportUrlError, match="socket://localhost': missing port"):
        open_transport("socket://localhost")
    with pytest.raises(TransportUrlError, match="is not a USB device URL"):
        open_usb_device("socket://127.0.0.1:7001")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(TransportError, match=f"cannot open socket://127.0.0.1:{port}") as info:
        open_transport(f"socket://127.0.0.1:{port}")
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(TransportError, match="cannot open /nonexistent/ttyX"):
        open_transport("/nonexistent/ttyX")
    with pytest.raises(RapidTestPortError, match="missing port; expected socket://HOST:PORT"):
        RapidTestAnalyzer("socket://localhost")


def test_loop_streams_bytes_back() -> None:
    stream = open_transport("loop://", timeout=1)
    try:
        stream.write(b"abc")
        assert stream.read(3) == b"abc"
    finally:
        stream.close()


# ---- a device that speaks first ------------------------------------------------------------------


class EnqOnConnect:
    """An ASTM instrument written apart from the project: ENQ the instant a TCP connection opens, then
    it waits for the host's ACK (or for the host to hang up)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.answers: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, name="enq-on-connect", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(SPEAK_FIRST_ROUNDS):
            conn, _addr = self.listener.accept()
            with conn:
                conn.sendall(ENQ)
                conn.settimeout(30)
                try:
                    self.answers.append(conn.recv(1))  # b"" when the host hung up without answering
                    while conn.recv(64):  # the host hangs up first: closing here could race its next read
                        pass
                except OSError:
                    self.answers.append(b"")

    def close(self) -> None:
        self.thread.join(timeout=60)
        self.listener.close()


def _poll_once(analyzer: RapidTestAnalyzer) -> None:
    """Let the driver read, and answer, for one short poll."""
    for _result in analyzer.results(timeout=0.05):
        pass


def test_the_driver_hears_an_instruments_first_byte_over_tcp_every_time() -> None:
    instrument = EnqOnConnect()
    try:
        for round_ in range(SPEAK_FIRST_ROUNDS):
            with RapidTestAnalyzer(instrument.url) as analyzer:
                while len(instrument.answers) <= round_:  # ends: the instrument gives up 30 s after a lost ENQ
                    _poll_once(analyzer)
    finally:
        instrument.close()
    assert instrument.answers == [ACK] * SPEAK_FIRST_ROUNDS


@pytest.fixture
def raw_pty() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)


def test_the_driver_hears_what_a_pty_device_wrote_before_it_opened_every_time(raw_pty: tuple[int, str]) -> None:
    master, path = raw_pty
    for _round in range(SPEAK_FIRST_ROUNDS):
        os.write(master, ENQ)  # the device speaks before the host has the port open
        with RapidTestAnalyzer(path) as analyzer:
            answer = b""
            for _poll in range(200):
                _poll_once(analyzer)
                if select.select([master], [], [], 0)[0]:
                    answer = os.read(master, 1)
                    break
        assert answer == ACK, f"round {_round}: the ENQ written before open was lost"


def test_socket_stream_counts_waiting_bytes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stream = open_transport(f"socket://127.0.0.1:{listener.getsockname()[1]}", timeout=5)
        conn, _ = listener.accept()
        try:
            conn.sendall(b"0123456789")
            assert stream.read(1) == b"0"
            while stream.in_waiting < 9:  # bytes still in flight on loopback
                pass
            assert stream.in_waiting == 9 and stream.read(9) == b"123456789"
        finally:
            conn.close()
            stream.close()


# ---- the configuration takes what the simulators print -----------------------------------------------


def _first_line(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = spawn_egw("simulate", *args, stdin=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, line


def _config(tmp_path: Path, kind: str, key: str, value: str, extra: str = "") -> Path:
    path = tmp_path / f"{kind}.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n[[devices]]\nkind = "{kind}"\nname = "{kind}"\n'
                    f'{key} = "{value}"\n{extra}', encoding="utf-8")
    return path


def test_old_usbip_host_port_form_still_loads(tmp_path: Path) -> None:
    device = load_config(_config(tmp_path, "bodycam", "usbip", "127.0.0.1:3240")).devices[0]
    assert (device.usbip, device.usbip_busid, device.usbip_url) == ("127.0.0.1:3240", None, "usbip://127.0.0.1:3240")


@pytest.mark.parametrize(("kind", "key", "value", "message"), [
    ("bodycam", "usbip", "127.0.0.1", "is not HOST:PORT"),
    ("bodycam", "usbip", "usbip://h:1/a b", "is not HOST:PORT or usbip://HOST:PORT[/BUSID]"),
    ("bodycam", "usbip", "127.0.0.1:3240/1-1", "is not HOST:PORT or usbip://"),
    ("rapidtest", "port", "socket://localhost", "devices[0].port: 'socket://localhost': missing port"),
    ("rapidtest", "port", "usb://0403:6001", "is a USB URL; put it in usb = or usbip ="),
    ("rapidtest", "usb", "usb://zz", "is not VID:PID in hex"),
])
def test_config_refuses_bad_urls_naming_the_key(tmp_path: Path, kind: str, key: str, value: str, message: str) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?")):
        load_config(_config(tmp_path, kind, key, value))


def test_bodycam_simulator_url_configures_the_dock(tmp_path: Path) -> None:
    from drivers.bodycam import BodyCamera
    from gateway.station.devices import _bodycam_urls

    proc, line = _first_line("bodycam", "--listen", "127.0.0.1:0", "--volumes", str(tmp_path / "v"), "--small")
    try:
        device = load_config(_config(tmp_path, "bodycam", "usbip", line)).devices[0]
        assert device.usbip_url == line
        (serial, url), = _bodycam_urls(device).items()
        with BodyCamera.open(url, password=device.password) as camera:
            assert camera.usb_serial == serial == "1000001"
        with BodyCamera.open(line, password=device.password) as camera:  # the only recorder: no bus id needed
            assert camera.usb_serial == "1000001"
    finally:
        stop_process(proc)


def test_signpad_simulator_url_configures_the_pad(tmp_path: Path) -> None:
    from drivers.signpad import SignaturePad
    from gateway.station.devices import _present

    proc, line = _first_line("signpad", "--listen", "127.0.0.1:0")
    try:
        device = load_config(_config(tmp_path, "signpad", "usbip", line)).devices[0]
        assert device.usbip_url == line and device.usbip_busid == "1-1"
        assert _present(device)
        assert device.usbip_url is not None
        with SignaturePad.open(device.usbip_url) as pad:
            assert pad.capability.tablet_max_x > 0
    finally:
        stop_process(proc)


@pytest.mark.parametrize("link", [(), ("--tcp", "0")], ids=["pty", "tcp"])
def test_rapidtest_simulator_url_configures_the_analyzer(tmp_path: Path, link: tuple[str, ...]) -> None:
    from gateway.station.devices import _serial_url

    proc, line = _first_line("rapidtest", "--tests", "3", "--interval", "0.1", *link)
    try:
        device = load_config(_config(tmp_path, "rapidtest", "port", line)).devices[0]
        url = _serial_url(device)
        assert url == line
        with RapidTestAnalyzer(url) as analyzer:
            first = next(iter(analyzer.results(timeout=30)), None)
            assert first is not None and first.item_code, "the simulator's result never arrived"
    finally:
        stop_process(proc)


@pytest.mark.parametrize("link", [(), ("--tcp", "0")], ids=["pty", "tcp"])
def test_fingerprint_simulator_url_configures_the_reader(tmp_path: Path, link: tuple[str, ...]) -> None:
    from drivers.fingerprint import FingerprintReader
    from gateway.station.devices import _present

    proc, line = _first_line("fingerprint", "--baud", "0", *link)
    try:
        device = load_config(_config(tmp_path, "fingerprint", "port", line)).devices[0]
        assert device.port == line and _present(device)
        with FingerprintReader(line) as reader:  # verifies the password: a full round trip
            assert reader.template_count() >= 0
    finally:
        stop_process(proc)


class _Writable:
    """The ``write`` a PortManager expects, on a socket."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        self.conn.sendall(data)


class Rfc2217Bridge:
    """A COM-port server (RFC 2217) in front of a port, as a terminal server fronts a real one:
    pyserial's own server side (``PortManager``) speaks the Telnet options. The port is a loop:// (a
    pty has no modem lines for the server to report)."""

    def __init__(self) -> None:
        import serial
        import serial.rfc2217

        self.port = serial.serial_for_url("loop://", timeout=0.05)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"rfc2217://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop = threading.Event()
        self._manager_class = serial.rfc2217.PortManager
        self.thread = threading.Thread(target=self._serve, name="rfc2217-bridge", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _addr = self.listener.accept()
        conn.settimeout(0.05)
        manager = self._manager_class(self.port, _Writable(conn))
        with conn:
            while not self.stop.is_set():
                try:
                    incoming = conn.recv(1024)
                    if not incoming:
                        return
                    self.port.write(b"".join(manager.filter(incoming)))
                except TimeoutError:
                    pass
                data = self.port.read(self.port.in_waiting or 1)
                if data:
                    conn.sendall(b"".join(manager.escape(data)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.listener.close()
        self.port.close()


def test_rfc2217_stream_keeps_what_the_device_sent_before_open() -> None:
    bridge = Rfc2217Bridge()
    try:
        bridge.port.write(ENQ)  # the device has spoken before the host connects
        stream = open_transport(bridge.url, timeout=5)
        try:
            assert stream.read(1) == ENQ
            stream.write(ACK)
            assert stream.read(1) == ACK  # the loop behind the server sends it back
        finally:
            stream.close()
    finally:
        bridge.close()


@given(key=st.sampled_from(["port", "usb", "usbip"]),
       value=st.one_of(st.text(), st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=10).map("".join)))
def test_config_takes_any_endpoint_string_or_says_what_is_wrong(key: str, value: str) -> None:
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    kind = "signpad" if key == "usbip" else "rapidtest"
    try:
        config = parse_config({"data_dir": "/tmp/egw-unused", "devices": [{"kind": kind, key: value}]})
    except ConfigError as exc:
        assert "devices[0]" in str(exc)
        return
    device = config.devices[0]
    if key == "usbip":  # stored as HOST:PORT, which the runtime splits at its last colon
        host, _, port = device.usbip.rpartition(":") if device.usbip else ("", "", "")
        assert host and port.isdigit() and parse_url(device.usbip_url or "") is not None
