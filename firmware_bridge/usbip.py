"""USB/IP wire protocol (Linux ``Documentation/usb/usbip_protocol.rst``), sans-IO.

One ``UsbIpConnection`` per TCP connection, in the role of the ``SERVER``
(exports devices: receives requests and commands, sends replies and returns)
or the ``CLIENT`` (imports devices). h11-style: ``receive_data(bytes)``,
``next_event()`` returning an event or ``NEED_DATA``, ``send(event) -> bytes``.
No sockets, threads or clocks here; ``usbip_server`` and ``usbip_client`` own
those. We write this codec ourselves rather than reuse the PyPI ``usbip``
package, whose framing reads straight from sockets, has no length limits and
silently turns a truncated payload into ``b""``.

All integers are big-endian; the 8-byte USB setup packet inside CMD_SUBMIT
keeps USB's little-endian layout (``firmware_bridge.usb.SetupPacket``).

Operation phase (8-byte common header)::

    +---------+------+--------+
    | version | code | status |      version 0x0111
    |   u16   | u16  |  u32   |      OP_REQ_DEVLIST 0x8005  OP_REP_DEVLIST 0x0005
    +---------+------+--------+      OP_REQ_IMPORT  0x8003  OP_REP_IMPORT  0x0003

    OP_REQ_IMPORT   = common + busid[32]
    OP_REP_DEVLIST  = common + ndev u32 + ndev x (device + bNumInterfaces x interface)
    OP_REP_IMPORT   = common + device            (device only when status == 0)

    device (312 bytes)
    +-----------+----------+--------+--------+-------+------+------+-----+
    | path[256] | busid[32]| busnum | devnum | speed | idVendor | idProduct |
    |           |          |  u32   |  u32   |  u32  |   u16    |    u16    |
    +-----------+----------+--------+--------+-------+----------+-----------+
    | bcdDevice | bDeviceClass | SubClass | Protocol | bConfigurationValue |
    |    u16    |      u8      |    u8    |    u8    |         u8          |
    +-----------+--------------+----------+----------+---------------------+
    | bNumConfigurations u8 | bNumInterfaces u8 |
    +-----------------------+-------------------+

    interface (4 bytes): bInterfaceClass, bInterfaceSubClass, bInterfaceProtocol, 0

URB phase (48-byte headers; a 20-byte basic header + 28 command bytes)::

    basic: command u32 | seqnum u32 | devid u32 | direction u32 (0 out, 1 in) | ep u32

    CMD_SUBMIT (1): basic | transfer_flags u32 | transfer_buffer_length u32
                    | start_frame s32 | number_of_packets s32 | interval s32
                    | setup[8]  -> then transfer_buffer_length OUT bytes,
                    then number_of_packets x iso descriptor (ISO only)
    RET_SUBMIT (3): basic | status s32 | actual_length u32 | start_frame s32
                    | number_of_packets s32 | error_count s32 | pad[8]
                    -> then actual_length IN bytes, then iso descriptors
    CMD_UNLINK (2): basic | unlink_seqnum u32 | pad[24]
    RET_UNLINK (4): basic | status s32 (-104 ECONNRESET: cancelled; 0: too late) | pad[24]

    iso descriptor (16 bytes): offset u32 | length u32 | actual_length u32 | status s32

``number_of_packets`` is ``0xffffffff`` (the doc) or ``0`` (older kernels)
for non-ISO transfers; we send ``0xffffffff`` and accept both.

A RET_SUBMIT does not say whether data follows (the server sets direction to
0), so the CLIENT role remembers each submitted seqnum's direction and length,
as the kernel's vhci driver does.

The messages (events), constants and their wire layout live in
:mod:`firmware_bridge.usbip_messages`; this module re-exports them, so
``from firmware_bridge.usbip import SubmitCommand`` is the way to import.

egw extension (harmless to other peers): our server puts the device's serial
number at the end of the informational ``path`` field,
``/sys/devices/egw-usbip/<busid>/serial:<percent-encoded serial>``, because the
device list has no serial field; ``serial_from_path`` reads it back.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from firmware_bridge.errors import FrameError, LengthError, LocalProtocolError, ProtocolError
from firmware_bridge.sansio import NEED_DATA, Codec, NeedData
from firmware_bridge.usbip_messages import (
    _COMMON,
    _DEVICE,
    _INTERFACE,
    _ISO,
    _RET,
    _SUBMIT,
    _U32,
    _UNLINK,
    CMD_SUBMIT,
    CMD_UNLINK,
    DIR_IN,
    DIR_OUT,
    ECONNRESET,
    ENODEV,
    ENOENT,
    EOVERFLOW,
    EPIPE,
    EPROTO,
    ETIMEDOUT,
    HEADER_LEN,
    MAX_DEVICES,
    MAX_ISO_PACKETS,
    MAX_TRANSFER_LENGTH,
    NO_ISO,
    OP_REP_DEVLIST,
    OP_REP_IMPORT,
    OP_REQ_DEVLIST,
    OP_REQ_IMPORT,
    RET_SUBMIT,
    RET_UNLINK,
    ST_DEV_BUSY,
    ST_DEV_ERR,
    ST_ERROR,
    ST_NA,
    ST_NODEV,
    ST_OK,
    USBIP_VERSION,
    ConnectionClosed,
    DevlistReply,
    DevlistRequest,
    Event,
    ImportReply,
    ImportRequest,
    IsoPacket,
    Role,
    SubmitCommand,
    SubmitReturn,
    UnlinkCommand,
    UnlinkReturn,
    UsbIpDevice,
    _cstring,
    _decode_device,
    _decode_iso,
    _encode_cstring,
    _encode_device,
    _encode_submit,
    _iso_count,
    _iso_fields,
    _pack,
    _replace_interfaces,
    _signed,
    path_with_serial,
    serial_from_path,
    status_text,
)

__all__ = [
    "USBIP_VERSION", "OP_REQ_DEVLIST", "OP_REP_DEVLIST", "OP_REQ_IMPORT", "OP_REP_IMPORT",
    "CMD_SUBMIT", "CMD_UNLINK", "RET_SUBMIT", "RET_UNLINK", "DIR_OUT", "DIR_IN",
    "ST_OK", "ST_NA", "ST_DEV_BUSY", "ST_DEV_ERR", "ST_NODEV", "ST_ERROR",
    "EPIPE", "ENODEV", "ECONNRESET", "ETIMEDOUT", "EOVERFLOW", "EPROTO", "ENOENT",
    "MAX_TRANSFER_LENGTH", "MAX_ISO_PACKETS", "MAX_DEVICES", "NO_ISO",
    "Role", "NEED_DATA", "NeedData", "UsbIpDevice", "IsoPacket",
    "DevlistRequest", "DevlistReply", "ImportRequest", "ImportReply",
    "SubmitCommand", "SubmitReturn", "UnlinkCommand", "UnlinkReturn", "ConnectionClosed",
    "Event", "UsbIpConnection", "path_with_serial", "serial_from_path", "status_text",
]


@dataclass
class _Pending:
    """What the CLIENT role remembers about a submitted URB."""

    direction: int
    length: int
    unlinked_by: int | None = None


class _State(enum.Enum):
    OP = "op"  # operation phase: DEVLIST / IMPORT
    IMPORTING = "importing"  # CLIENT sent OP_REQ_IMPORT / SERVER received it
    URB = "urb"  # device imported: URBs flow
    CLOSED = "closed"


@dataclass
class UsbIpConnection:
    """One USB/IP connection's framing, for either end.

    Raises ``ProtocolError`` subclasses for anything the peer gets wrong (and
    keeps raising it: the stream cannot be resynchronised), and
    ``LocalProtocolError`` when asked to send something out of order.
    """

    role: Role
    max_transfer_length: int = MAX_TRANSFER_LENGTH
    _buffer: bytearray = field(default_factory=bytearray)
    _state: _State = _State.OP
    _expect_reply: int | None = None  # CLIENT: OP code whose reply is awaited
    _pending: dict[int, _Pending] = field(default_factory=dict)  # CLIENT: seqnum -> URB
    _unlinks: dict[int, int] = field(default_factory=dict)  # CLIENT: unlink seqnum -> target
    _eof: bool = False
    _error: ProtocolError | None = None
    # CLIENT, while an OP_REP_DEVLIST arrives: (devices sized so far, bytes they span). A list of
    # 4,096 devices arriving in TCP-sized pieces was re-decoded from the start on every piece
    # (18 s of CPU for 1.3 MB; found by bench/fuzz.py), so only the new bytes are looked at now.
    _devlist_scan: tuple[int, int] | None = None

    # ---- state ---------------------------------------------------------------
    @property
    def imported(self) -> bool:
        """True once an import succeeded: the connection carries URBs."""
        return self._state is _State.URB

    @property
    def pending_seqnums(self) -> frozenset[int]:
        """CLIENT: seqnums submitted and not yet returned or unlinked."""
        return frozenset(self._pending)

    # ---- receiving -----------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means the peer closed the connection."""
        if self._eof and data:
            raise LocalProtocolError("receive_data after end of stream")
        if not data:
            self._eof = True
        else:
            self._buffer += data

    def next_event(self) -> Event | NeedData:
        if self._error is not None:
            raise self._error
        try:
            event = self._parse()
        except ProtocolError as exc:
            self._error = exc
            raise
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:  # belt and braces
            self._error = FrameError(f"malformed USB/IP frame: {exc}")
            raise self._error from exc
        if isinstance(event, NeedData) and self._eof:
            if self._buffer:
                self._error = LengthError(
                    f"connection closed in the middle of a USB/IP frame ({len(self._buffer)} bytes pending)"
                )
                raise self._error
            self._state = _State.CLOSED
            return ConnectionClosed()
        return event

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        return chunk

    def _parse(self) -> Event | NeedData:
        if self._state is _State.CLOSED:
            return NEED_DATA
        if self._state is _State.URB:
            return self._parse_urb()
        if self.role is Role.SERVER:
            return self._parse_op_request()
        return self._parse_op_reply()

    def _parse_common(self, expected: set[int]) -> tuple[int, int]:
        version, code, status = _COMMON.unpack_from(self._buffer)
        if version != USBIP_VERSION:
            raise FrameError(
                f"USB/IP version 0x{version:04x} is not supported (we speak 0x{USBIP_VERSION:04x}); "
                "is the peer a USB/IP implementation?"
            )
        if code not in expected:
            raise FrameError(
                f"unexpected USB/IP operation code 0x{code:04x} (expected "
                + " or ".join(f"0x{c:04x}" for c in sorted(expected)) + ")"
            )
        return code, status

    def _parse_op_request(self) -> Event | NeedData:
        if self._state is not _State.OP or len(self._buffer) < _COMMON.size:
            return NEED_DATA  # after OP_REQ_IMPORT, nothing until we reply
        code, _status = self._parse_common({OP_REQ_DEVLIST, OP_REQ_IMPORT})
        if code == OP_REQ_DEVLIST:
            self._take(_COMMON.size)
            return DevlistRequest()
        if len(self._buffer) < _COMMON.size + 32:
            return NEED_DATA
        raw = self._take(_COMMON.size + 32)[_COMMON.size:]
        self._state = _State.IMPORTING
        return ImportRequest(_cstring(raw, "busid", strict=True))

    def _parse_op_reply(self) -> Event | NeedData:
        if self._expect_reply is None:
            if self._buffer:
                raise FrameError("the server sent data before any request")
            return NEED_DATA
        if len(self._buffer) < _COMMON.size:
            return NEED_DATA
        expected = OP_REP_DEVLIST if self._expect_reply == OP_REQ_DEVLIST else OP_REP_IMPORT
        _code, status = self._parse_common({expected})
        if expected == OP_REP_IMPORT:
            if status != ST_OK:
                self._take(_COMMON.size)
                self._expect_reply = None
                self._state = _State.OP
                return ImportReply(status)
            if len(self._buffer) < _COMMON.size + _DEVICE.size:
                return NEED_DATA
            raw = self._take(_COMMON.size + _DEVICE.size)[_COMMON.size:]
            self._expect_reply = None
            self._state = _State.URB
            return ImportReply(ST_OK, _decode_device(raw))
        # Device list: parse without consuming until the whole reply is here.
        if status != ST_OK:
            self._take(_COMMON.size)
            self._expect_reply = None
            return DevlistReply((), status)
        if len(self._buffer) < _COMMON.size + 4:
            return NEED_DATA
        (count,) = _U32.unpack_from(self._buffer, _COMMON.size)
        if count > MAX_DEVICES:
            raise LengthError(f"device list announces {count} devices; we accept at most {MAX_DEVICES}")
        # First find where the reply ends, reading only each device's bNumInterfaces (its last
        # byte) and remembering how far we got; decode once the whole reply is here.
        sized, end = self._devlist_scan or (0, _COMMON.size + 4)
        while sized < count:
            if len(self._buffer) < end + _DEVICE.size:
                self._devlist_scan = (sized, end)
                return NEED_DATA
            end += _DEVICE.size + self._buffer[end + _DEVICE.size - 1] * _INTERFACE.size
            sized += 1
        if len(self._buffer) < end:
            self._devlist_scan = (sized, end)
            return NEED_DATA
        self._devlist_scan = None
        offset = _COMMON.size + 4
        devices = []
        for _ in range(count):
            dev = _decode_device(bytes(self._buffer[offset:offset + _DEVICE.size]))
            offset += _DEVICE.size
            need = dev.num_interfaces * _INTERFACE.size
            interfaces = tuple(
                _INTERFACE.unpack_from(self._buffer, offset + i * _INTERFACE.size) for i in range(dev.num_interfaces)
            )
            offset += need
            devices.append(_replace_interfaces(dev, interfaces))
        self._take(offset)
        self._expect_reply = None
        return DevlistReply(tuple(devices))

    def _parse_urb(self) -> Event | NeedData:
        if len(self._buffer) < HEADER_LEN:
            return NEED_DATA
        (command,) = _U32.unpack_from(self._buffer)
        wanted = (CMD_SUBMIT, CMD_UNLINK) if self.role is Role.SERVER else (RET_SUBMIT, RET_UNLINK)
        if command not in wanted:
            raise FrameError(
                f"unknown or misdirected USB/IP command 0x{command:08x} for the {self.role.value} side "
                f"(expected {wanted[0]} or {wanted[1]}); the stream is out of sync"
            )
        if command == CMD_SUBMIT:
            return self._parse_cmd_submit()
        if command == CMD_UNLINK:
            _c, seqnum, devid, direction, ep, target = _UNLINK.unpack_from(self._buffer)
            self._take(HEADER_LEN)
            return UnlinkCommand(seqnum, target, devid, direction, ep)
        if command == RET_SUBMIT:
            return self._parse_ret_submit()
        _c, seqnum, devid, direction, ep, status = _UNLINK.unpack_from(self._buffer)
        status = status - (1 << 32) if status & 0x80000000 else status
        target = self._unlinks.pop(seqnum, None)
        if target is None:
            raise FrameError(f"RET_UNLINK for seqnum {seqnum}, which we never sent as CMD_UNLINK")
        self._pending.pop(target, None)
        self._take(HEADER_LEN)
        return UnlinkReturn(seqnum, status, devid, direction, ep)

    def _parse_cmd_submit(self) -> Event | NeedData:
        (_c, seqnum, devid, direction, ep, flags, length, start, npk, interval,
         setup) = _SUBMIT.unpack_from(self._buffer)
        if direction not in (DIR_OUT, DIR_IN):
            raise FrameError(f"CMD_SUBMIT seqnum {seqnum} has direction {direction}; only 0 (out) and 1 (in) exist")
        if ep > 15:
            raise FrameError(f"CMD_SUBMIT seqnum {seqnum} names endpoint {ep}; USB endpoints are 0-15")
        if length > self.max_transfer_length:
            raise LengthError(
                f"CMD_SUBMIT seqnum {seqnum} asks for {length} bytes; the limit is {self.max_transfer_length}"
            )
        n_iso = _iso_count(npk, f"CMD_SUBMIT seqnum {seqnum}")
        data_len = length if direction == DIR_OUT else 0
        total = HEADER_LEN + data_len + n_iso * _ISO.size
        if len(self._buffer) < total:
            return NEED_DATA
        frame = self._take(total)
        data = frame[HEADER_LEN:HEADER_LEN + data_len]
        iso = _decode_iso(frame, HEADER_LEN + data_len, n_iso)
        signed_start = start - (1 << 32) if start & 0x80000000 else start
        signed_interval = interval - (1 << 32) if interval & 0x80000000 else interval
        return SubmitCommand(
            seqnum=seqnum, devid=devid, direction=direction, endpoint=ep, transfer_length=length,
            setup=setup, data=data, transfer_flags=flags, start_frame=signed_start,
            number_of_packets=npk, interval=signed_interval, iso_packets=iso,
        )

    def _parse_ret_submit(self) -> Event | NeedData:
        (_c, seqnum, devid, direction, ep, status, actual, start, npk,
         errors) = _RET.unpack_from(self._buffer)
        pending = self._pending.get(seqnum)
        if pending is None:
            raise FrameError(f"RET_SUBMIT for seqnum {seqnum}, which is not outstanding; the stream is out of sync")
        npk_u = npk & 0xFFFFFFFF
        n_iso = _iso_count(npk_u, f"RET_SUBMIT seqnum {seqnum}")
        data_len = 0
        if pending.direction == DIR_IN:
            if actual > pending.length:
                raise LengthError(
                    f"RET_SUBMIT seqnum {seqnum} returns {actual} bytes for a {pending.length}-byte request"
                )
            data_len = actual
        total = HEADER_LEN + data_len + n_iso * _ISO.size
        if len(self._buffer) < total:
            return NEED_DATA
        frame = self._take(total)
        # If we had unlinked it, the server completed it first; its RET_UNLINK (status 0) follows.
        del self._pending[seqnum]
        return SubmitReturn(
            seqnum=seqnum, status=status, actual_length=actual,
            data=frame[HEADER_LEN:HEADER_LEN + data_len], devid=devid, direction=direction, endpoint=ep,
            start_frame=start, number_of_packets=npk_u, error_count=errors,
            iso_packets=_decode_iso(frame, HEADER_LEN + data_len, n_iso),
        )

    # ---- sending -------------------------------------------------------------
    def send(self, event: Event) -> bytes:
        if self._state is _State.CLOSED:
            raise LocalProtocolError("the USB/IP connection is closed")
        if self.role is Role.CLIENT:
            return self._send_client(event)
        return self._send_server(event)

    def _send_client(self, event: Event) -> bytes:
        if isinstance(event, (DevlistRequest, ImportRequest)):
            if self._state is not _State.OP or self._expect_reply is not None:
                raise LocalProtocolError("a USB/IP operation request is only allowed before an import")
            if isinstance(event, DevlistRequest):
                self._expect_reply = OP_REQ_DEVLIST
                return _COMMON.pack(USBIP_VERSION, OP_REQ_DEVLIST, 0)
            self._expect_reply = OP_REQ_IMPORT
            self._state = _State.IMPORTING
            return _COMMON.pack(USBIP_VERSION, OP_REQ_IMPORT, 0) + _encode_cstring(event.busid, 32, "busid")
        if self._state is not _State.URB:
            raise LocalProtocolError(f"{type(event).__name__} before the device was imported")
        if isinstance(event, SubmitCommand):
            if event.seqnum in self._pending or event.seqnum in self._unlinks:
                raise LocalProtocolError(f"seqnum {event.seqnum} is already outstanding")
            frame = _encode_submit(event, self.max_transfer_length)
            self._pending[event.seqnum] = _Pending(event.direction, event.transfer_length)
            return frame
        if isinstance(event, UnlinkCommand):
            if event.seqnum in self._pending or event.seqnum in self._unlinks:
                raise LocalProtocolError(f"seqnum {event.seqnum} is already outstanding")
            target = self._pending.get(event.unlink_seqnum)
            if target is not None:
                target.unlinked_by = event.seqnum
            self._unlinks[event.seqnum] = event.unlink_seqnum
            return _pack(_UNLINK, CMD_UNLINK, event.seqnum, event.devid, event.direction, event.endpoint,
                         event.unlink_seqnum)
        raise LocalProtocolError(f"a USB/IP client does not send {type(event).__name__}")

    def _send_server(self, event: Event) -> bytes:
        if isinstance(event, DevlistReply):
            if self._state is not _State.OP:
                raise LocalProtocolError("OP_REP_DEVLIST only answers OP_REQ_DEVLIST")
            out = [_COMMON.pack(USBIP_VERSION, OP_REP_DEVLIST, event.status)]
            if event.status == ST_OK:
                out.append(_U32.pack(len(event.devices)))
                for dev in event.devices:
                    out.append(_encode_device(dev, len(dev.interfaces)))
                    for cls, sub, proto in dev.interfaces:
                        out.append(_pack(_INTERFACE, cls, sub, proto))
            return b"".join(out)
        if isinstance(event, ImportReply):
            if self._state is not _State.IMPORTING:
                raise LocalProtocolError("OP_REP_IMPORT only answers OP_REQ_IMPORT")
            head = _COMMON.pack(USBIP_VERSION, OP_REP_IMPORT, event.status)
            if event.status != ST_OK:
                self._state = _State.CLOSED
                return head
            if event.device is None:
                raise LocalProtocolError("a successful OP_REP_IMPORT must describe the device")
            self._state = _State.URB
            nif = event.device.num_interfaces or len(event.device.interfaces)
            return head + _encode_device(event.device, nif)
        if self._state is not _State.URB:
            raise LocalProtocolError(f"{type(event).__name__} before the device was imported")
        if isinstance(event, SubmitReturn):
            if len(event.data) not in (0, event.actual_length) or len(event.data) > self.max_transfer_length:
                raise LocalProtocolError(
                    f"RET_SUBMIT seqnum {event.seqnum}: {len(event.data)} data bytes but actual_length "
                    f"{event.actual_length}"
                )
            frame = _pack(
                _RET, RET_SUBMIT, event.seqnum, event.devid, event.direction, event.endpoint, event.status,
                event.actual_length, event.start_frame, _signed(event.number_of_packets), event.error_count,
            )
            return frame + event.data + b"".join(_pack(_ISO, *_iso_fields(p)) for p in event.iso_packets)
        if isinstance(event, UnlinkReturn):
            return _pack(_UNLINK, RET_UNLINK, event.seqnum, event.devid, event.direction, event.endpoint,
                         event.status & 0xFFFFFFFF)
        raise LocalProtocolError(f"a USB/IP server does not send {type(event).__name__}")


if TYPE_CHECKING:
    def _is_a_codec(codec: UsbIpConnection) -> Codec[Event, Event]:
        return codec  # mypy proves the codec keeps the shared sans-IO shape
