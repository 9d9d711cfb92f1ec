"""USB/IP codec: golden vectors from the kernel's usbip_protocol.rst, byte-by-byte feeding, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import FrameError, LengthError, LocalProtocolError, ProtocolError
from firmware_bridge.usbip import (
    MAX_TRANSFER_LENGTH, NEED_DATA, NO_ISO, ConnectionClosed, DevlistReply, DevlistRequest, ImportReply,
    ImportRequest, IsoPacket, Role, SubmitCommand, SubmitReturn, UnlinkCommand, UnlinkReturn, UsbIpConnection,
    UsbIpDevice, path_with_serial, serial_from_path,
)

# ---- golden vectors, written out field by field from Documentation/usb/usbip_protocol.rst ----

DEVLIST_REQUEST = bytes.fromhex("0111" "8005" "00000000")
IMPORT_REQUEST_1_1 = bytes.fromhex("0111" "8003" "00000000") + b"1-1" + bytes(29)

# CMD_SUBMIT: GET_DESCRIPTOR(DEVICE, 18 bytes) on endpoint 0, seqnum 1, devid = busnum 1 << 16 | devnum 2
CMD_SUBMIT_GET_DEVICE_DESCRIPTOR = bytes.fromhex(
    "00000001"  # command CMD_SUBMIT
    "00000001"  # seqnum
    "00010002"  # devid
    "00000001"  # direction IN
    "00000000"  # ep 0
    "00000000"  # transfer_flags
    "00000012"  # transfer_buffer_length 18
    "00000000"  # start_frame
    "ffffffff"  # number_of_packets: not ISO
    "00000000"  # interval
    "80 06 0001 0000 1200"  # setup, little-endian: IN|standard|device, GET_DESCRIPTOR, wValue 0x0100, wLength 18
)

# The kernel document's own wire capture (HID interrupt IN and OUT).
DOC_CMD_INTR_IN = bytes.fromhex(
    "00000001 00000d05 0001000f 00000001 00000001 00000200 00000040 ffffffff 00000000 00000004 00000000 00000000"
)
DOC_OUT_DATA = bytes.fromhex("ffffffff860008a784ce5ae2123763") + bytes(49)
DOC_CMD_INTR_OUT = bytes.fromhex(
    "00000001 00000d06 0001000f 00000000 00000001 00000000 00000040 ffffffff 00000000 00000004 00000000 00000000"
) + DOC_OUT_DATA
DOC_RET_INTR_OUT = bytes.fromhex(
    "00000003 00000d06 00000000 00000000 00000000 00000000 00000040 ffffffff 00000000 00000000 00000000 00000000"
)
DOC_IN_DATA = bytes.fromhex("ffffffff860011a784ce5ae2123763612891b102010000040000") + bytes(38)
DOC_RET_INTR_IN = bytes.fromhex(
    "00000003 00000d05 00000000 00000000 00000000 00000000 00000040 ffffffff 00000000 00000000 00000000 00000000"
) + DOC_IN_DATA


def _device_block(busid: bytes, path: bytes) -> bytes:
    """312 bytes at the offsets of the OP_REP_DEVLIST table (0x0C.. relative to the reply)."""
    return (
        path.ljust(256, b"\0")  # path
        + busid.ljust(32, b"\0")  # 0x10C busid
        + bytes.fromhex("00000001")  # 0x12C busnum
        + bytes.fromhex("00000002")  # 0x130 devnum
        + bytes.fromhex("00000003")  # 0x134 speed: high
        + bytes.fromhex("1209")  # 0x138 idVendor
        + bytes.fromhex("0001")  # 0x13A idProduct
        + bytes.fromhex("0100")  # 0x13C bcdDevice
        + bytes.fromhex("00 00 00")  # 0x13E class, subclass, protocol
        + bytes.fromhex("01")  # 0x141 bConfigurationValue
        + bytes.fromhex("01")  # 0x142 bNumConfigurations
        + bytes.fromhex("01")  # 0x143 bNumInterfaces
    )


PATH = b"/sys/devices/egw-usbip/1-1/serial:1234567"
DEVLIST_REPLY = (
    bytes.fromhex("0111 0005 00000000 00000001")
    + _device_block(b"1-1", PATH)
    + bytes.fromhex("08 06 50 00")  # 0x144: mass storage, SCSI, bulk-only, pad
)
IMPORT_REPLY = bytes.fromhex("0111 0003 00000000") + _device_block(b"1-1", PATH)
DEVICE = UsbIpDevice(
    path=PATH.decode(), busid="1-1", busnum=1, devnum=2, speed=3, vendor_id=0x1209, product_id=0x0001,
    bcd_device=0x0100, configuration_value=1, num_configurations=1, num_interfaces=1, interfaces=((8, 6, 0x50),),
)
CMD_UNLINK = bytes.fromhex("00000002 00000005 00010002 00000000 00000000 00000004") + bytes(24)
RET_UNLINK_RESET = bytes.fromhex("00000004 00000005 00000000 00000000 00000000 ffffff98") + bytes(24)


def feed(conn: UsbIpConnection, data: bytes, *, bytewise: bool = False) -> list[object]:
    events: list[object] = []
    chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        if not chunk:
            continue  # b"" would mean end of stream
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
    return events


def imported(role: Role) -> UsbIpConnection:
    """A connection already past a successful import (URB phase)."""
    conn = UsbIpConnection(role)
    if role is Role.CLIENT:
        conn.send(ImportRequest("1-1"))
        assert feed(conn, IMPORT_REPLY) == [ImportReply(0, DEVICE.__class__(**{**DEVICE.__dict__, "interfaces": ()}))]
    else:
        assert feed(conn, IMPORT_REQUEST_1_1) == [ImportRequest("1-1")]
        conn.send(ImportReply(0, DEVICE))
    assert conn.imported
    return conn


# ---- operation phase ---------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True])
def test_devlist_request_golden(bytewise: bool) -> None:
    assert UsbIpConnection(Role.CLIENT).send(DevlistRequest()) == DEVLIST_REQUEST
    assert feed(UsbIpConnection(Role.SERVER), DEVLIST_REQUEST, bytewise=bytewise) == [DevlistRequest()]


@pytest.mark.parametrize("bytewise", [False, True])
def test_import_request_golden(bytewise: bool) -> None:
    assert UsbIpConnection(Role.CLIENT).send(ImportRequest("1-1")) == IMPORT_REQUEST_1_1
    assert feed(UsbIpConnection(Role.SERVER), IMPORT_REQUEST_1_1, bytewise=bytewise) == [ImportRequest("1-1")]


@pytest.mark.parametrize("bytewise", [False, True])
def test_devlist_reply_golden(bytewise: bool) -> None:
    server = UsbIpConnection(Role.SERVER)
    feed(server, DEVLIST_REQUEST)
    assert server.send(DevlistReply((DEVICE,))) == DEVLIST_REPLY
    client = UsbIpConnection(Role.CLIENT)
    client.send(DevlistRequest())
    assert feed(client, DEVLIST_REPLY, bytewise=bytewise) == [DevlistReply((DEVICE,))]


def test_empty_devlist_reply_ends_after_count() -> None:
    server = UsbIpConnection(Role.SERVER)
    feed(server, DEVLIST_REQUEST)
    assert server.send(DevlistReply(())) == bytes.fromhex("0111 0005 00000000 00000000")


@pytest.mark.parametrize("bytewise", [False, True])
def test_import_reply_golden_and_refusal(bytewise: bool) -> None:
    client = UsbIpConnection(Role.CLIENT)
    client.send(ImportRequest("1-1"))
    (reply,) = feed(client, IMPORT_REPLY, bytewise=bytewise)
    assert isinstance(reply, ImportReply) and reply.status == 0 and reply.device is not None
    assert (reply.device.vendor_id, reply.device.product_id, reply.device.num_interfaces) == (0x1209, 1, 1)
    assert reply.device.devid == 0x00010002 and client.imported

    refused = UsbIpConnection(Role.CLIENT)
    refused.send(ImportRequest("9-9"))
    assert feed(refused, bytes.fromhex("0111 0003 00000002")) == [ImportReply(2)]
    assert not refused.imported

    server = UsbIpConnection(Role.SERVER)
    feed(server, IMPORT_REQUEST_1_1)
    assert server.send(ImportReply(0, DEVICE)) == IMPORT_REPLY


def test_serial_rides_in_the_path() -> None:
    assert path_with_serial("1-1", "1234567") == PATH.decode()
    assert serial_from_path(PATH.decode()) == "1234567"
    assert serial_from_path(path_with_serial("2-1", "a/b c")) == "a/b c"
    assert serial_from_path("/sys/devices/pci0000:00/0000:00:1d.1/usb3/3-2") is None
    assert path_with_serial("1-1", "x" * 300) == "/sys/devices/egw-usbip/1-1"  # does not fit: left out


# ---- URB phase ---------------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True])
def test_cmd_submit_get_descriptor_golden(bytewise: bool) -> None:
    client = imported(Role.CLIENT)
    cmd = SubmitCommand(1, 0x00010002, 1, 0, 18, bytes.fromhex("8006000100001200"))
    assert client.send(cmd) == CMD_SUBMIT_GET_DEVICE_DESCRIPTOR
    assert feed(imported(Role.SERVER), CMD_SUBMIT_GET_DEVICE_DESCRIPTOR, bytewise=bytewise) == [cmd]


def test_kernel_doc_capture_decodes_and_reencodes() -> None:
    server = imported(Role.SERVER)
    cmd_in, cmd_out = feed(server, DOC_CMD_INTR_IN + DOC_CMD_INTR_OUT)
    assert isinstance(cmd_in, SubmitCommand) and isinstance(cmd_out, SubmitCommand)
    assert (cmd_in.seqnum, cmd_in.devid, cmd_in.direction, cmd_in.endpoint) == (0xD05, 0x0001000F, 1, 1)
    assert (cmd_in.transfer_flags, cmd_in.transfer_length, cmd_in.start_frame, cmd_in.interval) == (0x200, 64, -1, 4)
    assert cmd_in.iso_packets == () and cmd_in.data == b""
    assert cmd_out.direction == 0 and cmd_out.data == DOC_OUT_DATA
    ret_out = SubmitReturn(0xD06, 0, 64, start_frame=-1, number_of_packets=0)
    ret_in = SubmitReturn(0xD05, 0, 64, DOC_IN_DATA, start_frame=-1, number_of_packets=0)
    assert server.send(ret_out) == DOC_RET_INTR_OUT
    assert server.send(ret_in) == DOC_RET_INTR_IN

    client = imported(Role.CLIENT)
    assert client.send(cmd_in) == DOC_CMD_INTR_IN and client.send(cmd_out) == DOC_CMD_INTR_OUT
    got = feed(client, DOC_RET_INTR_OUT + DOC_RET_INTR_IN, bytewise=True)
    assert [(r.seqnum, r.actual_length, r.data) for r in got] == [(0xD06, 64, b""), (0xD05, 64, DOC_IN_DATA)]
    assert client.pending_seqnums == frozenset()


def test_unlink_golden() -> None:
    client = imported(Role.CLIENT)
    client.send(SubmitCommand(4, 0x00010002, 1, 1, 64))
    assert client.send(UnlinkCommand(5, 4, 0x00010002)) == CMD_UNLINK
    assert feed(imported(Role.SERVER), CMD_UNLINK) == [UnlinkCommand(5, 4, 0x00010002)]
    assert imported(Role.SERVER).send(UnlinkReturn(5, -104)) == RET_UNLINK_RESET
    assert feed(client, RET_UNLINK_RESET) == [UnlinkReturn(5, -104)]
    assert client.pending_seqnums == frozenset()  # cancelled: no RET_SUBMIT will come


def test_iso_descriptors_follow_the_data() -> None:
    client, server = imported(Role.CLIENT), imported(Role.SERVER)
    cmd = SubmitCommand(7, 1, 0, 2, 6, data=b"abcdef", number_of_packets=2,
                        iso_packets=(IsoPacket(0, 3), IsoPacket(3, 3)))
    assert feed(server, client.send(cmd)) == [cmd]


def test_eof_cases() -> None:
    server = UsbIpConnection(Role.SERVER)
    server.receive_data(b"")
    assert server.next_event() == ConnectionClosed()
    truncated = imported(Role.SERVER)
    truncated.receive_data(CMD_SUBMIT_GET_DEVICE_DESCRIPTOR[:20])
    assert truncated.next_event() is NEED_DATA
    truncated.receive_data(b"")
    with pytest.raises(LengthError, match="middle of a USB/IP frame"):
        truncated.next_event()


# ---- rejects -----------------------------------------------------------------------------


def _expect(role_conn: UsbIpConnection, data: bytes, exc: type[ProtocolError], match: str) -> None:
    role_conn.receive_data(data)
    with pytest.raises(exc, match=match):
        role_conn.next_event()
    with pytest.raises(exc):  # sticky: the stream cannot be resynchronised
        role_conn.next_event()


def test_rejects_wrong_version_and_codes() -> None:
    _expect(UsbIpConnection(Role.SERVER), bytes.fromhex("0106 8005 00000000"), FrameError, "version 0x0106")
    _expect(UsbIpConnection(Role.SERVER), bytes.fromhex("0111 8007 00000000"), FrameError, "operation code")
    _expect(UsbIpConnection(Role.SERVER), b"GET / HTTP/1.1\r\n", FrameError, "version")
    _expect(imported(Role.SERVER), bytes.fromhex("00000005") + bytes(44), FrameError, "unknown")
    _expect(imported(Role.SERVER), bytes.fromhex("00000003") + bytes(44), FrameError, "misdirected")
    bad_dir = bytearray(CMD_SUBMIT_GET_DEVICE_DESCRIPTOR)
    bad_dir[15] = 2
    _expect(imported(Role.SERVER), bytes(bad_dir), FrameError, "direction")
    bad_ep = bytearray(CMD_SUBMIT_GET_DEVICE_DESCRIPTOR)
    bad_ep[19] = 16
    _expect(imported(Role.SERVER), bytes(bad_ep), FrameError, "endpoint")
    _expect(imported(Role.CLIENT), DOC_RET_INTR_IN, FrameError, "not outstanding")
    _expect(UsbIpConnection(Role.CLIENT), DEVLIST_REPLY, FrameError, "before any request")
    # trailing garbage after a valid request is still garbage
    server = UsbIpConnection(Role.SERVER)
    assert feed(server, DEVLIST_REQUEST) == [DevlistRequest()]
    _expect(server, b"\xde\xad\xbe\xef" * 4, FrameError, "version")


def test_rejects_absurd_lengths_from_the_header_alone() -> None:
    huge_out = bytearray(DOC_CMD_INTR_OUT[:48])
    huge_out[24:28] = (MAX_TRANSFER_LENGTH + 1).to_bytes(4, "big")
    _expect(imported(Role.SERVER), bytes(huge_out), LengthError, "limit")
    huge_in = bytearray(CMD_SUBMIT_GET_DEVICE_DESCRIPTOR)
    huge_in[24:28] = b"\xff\xff\xff\xff"
    _expect(imported(Role.SERVER), bytes(huge_in), LengthError, "limit")
    many_iso = bytearray(DOC_CMD_INTR_IN)
    many_iso[32:36] = (5000).to_bytes(4, "big")
    _expect(imported(Role.SERVER), bytes(many_iso), LengthError, "ISO packets")
    client = imported(Role.CLIENT)
    client.send(SubmitCommand(0xD05, 1, 1, 1, 16))  # asked for 16, the doc's return carries 64
    _expect(client, DOC_RET_INTR_IN, LengthError, "64 bytes for a 16-byte request")
    lister = UsbIpConnection(Role.CLIENT)
    lister.send(DevlistRequest())
    _expect(lister, bytes.fromhex("0111 0005 00000000 ffffffff"), LengthError, "devices")


def test_local_misuse_is_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError, match="busid"):
        UsbIpConnection(Role.CLIENT).send(ImportRequest("x" * 40))
    with pytest.raises(LocalProtocolError, match="before the device was imported"):
        UsbIpConnection(Role.CLIENT).send(SubmitCommand(1, 1, 1, 0, 8))
    client = imported(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="exactly transfer_length"):
        client.send(SubmitCommand(1, 1, 0, 2, 8, data=b"abc"))
    client.send(SubmitCommand(1, 1, 1, 1, 8))
    with pytest.raises(LocalProtocolError, match="already outstanding"):
        client.send(SubmitCommand(1, 1, 1, 1, 8))
    with pytest.raises(LocalProtocolError, match="limit"):
        client.send(SubmitCommand(2, 1, 1, 1, MAX_TRANSFER_LENGTH + 1))


# ---- properties ----------------------------------------------------------------------------

u32 = st.integers(0, 0xFFFFFFFF)
s32 = st.integers(-(2**31), 2**31 - 1)


@st.composite
def submits(draw: st.DrawFn) -> SubmitCommand:
    direction = draw(st.sampled_from([0, 1]))
    data = draw(st.binary(max_size=300)) if direction == 0 else b""
    length = len(data) if direction == 0 else draw(st.integers(0, 4096))
    return SubmitCommand(
        seqnum=draw(u32), devid=draw(u32), direction=direction, endpoint=draw(st.integers(0, 15)),
        transfer_length=length, setup=draw(st.binary(min_size=8, max_size=8)), data=data,
        transfer_flags=draw(u32), start_frame=draw(s32), number_of_packets=NO_ISO, interval=draw(s32),
    )


@given(st.lists(submits(), max_size=5, unique_by=lambda c: c.seqnum), st.data())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_submit_and_return_round_trip(cmds: list[SubmitCommand], data: st.DataObject) -> None:
    client, server = imported(Role.CLIENT), imported(Role.SERVER)
    wire = b"".join(client.send(c) for c in cmds)
    assert feed(server, wire) == cmds
    returns = []
    for c in cmds:
        payload = data.draw(st.binary(max_size=c.transfer_length)) if c.direction == 1 else b""
        returns.append(SubmitReturn(c.seqnum, data.draw(s32), len(payload) if c.direction else c.transfer_length,
                                    payload, error_count=data.draw(s32)))
    back = b"".join(server.send(r) for r in returns)
    split = data.draw(st.integers(0, len(back)))
    got = feed(client, back[:split]) + feed(client, back[split:])
    assert got == returns


def _any_bytes_decode_or_raise(conn: UsbIpConnection, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            if not chunk:
                continue  # b"" would mean end of stream
            conn.receive_data(chunk)
            for _ in range(10_000):
                if conn.next_event() is NEED_DATA:
                    break
            else:
                raise AssertionError("next_event never asked for more data")
        conn.receive_data(b"")
        conn.next_event()
    except ProtocolError:
        pass


@given(st.lists(st.binary(max_size=200), max_size=8), st.sampled_from(["op", "urb", "client-op", "client-urb"]))
@settings(max_examples=400)
def test_any_bytes_decode_or_raise_protocol_error(chunks: list[bytes], where: str) -> None:
    if where == "op":
        conn = UsbIpConnection(Role.SERVER)
    elif where == "urb":
        conn = imported(Role.SERVER)
    elif where == "client-op":
        conn = UsbIpConnection(Role.CLIENT)
        conn.send(DevlistRequest())
    else:
        conn = imported(Role.CLIENT)
        for seq in range(4):
            conn.send(SubmitCommand(seq, 1, seq % 2, 1, 64, data=bytes(64) if seq % 2 == 0 else b""))
    _any_bytes_decode_or_raise(conn, chunks)


@given(st.binary(min_size=48, max_size=48), st.binary(max_size=100))
@settings(max_examples=300)
def test_header_shaped_garbage_in_urb_phase(header: bytes, tail: bytes) -> None:
    for command in (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"):
        _any_bytes_decode_or_raise(imported(Role.SERVER), [command + header[4:], tail])
    client = imported(Role.CLIENT)
    client.send(SubmitCommand(int.from_bytes(header[4:8], "big"), 1, 1, 1, 512))
    _any_bytes_decode_or_raise(client, [b"\x00\x00\x00\x03" + header[4:], tail])
