"""USB/IP messages, sans-IO: constants, the events a ``UsbIpConnection`` reads and writes, and their wire layout.

Split from :mod:`firmware_bridge.usbip` (the connection state machine, where
the protocol is described with diagrams) so each module stays readable: this
one answers "what is on the wire", that one "what may come next".  Import the
public names from :mod:`firmware_bridge.usbip`, which re-exports them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

from firmware_bridge.errors import FrameError, LengthError, LocalProtocolError

USBIP_VERSION: Final = 0x0111
OP_REQ_DEVLIST: Final = 0x8005
OP_REP_DEVLIST: Final = 0x0005
OP_REQ_IMPORT: Final = 0x8003
OP_REP_IMPORT: Final = 0x0003
CMD_SUBMIT: Final = 1
CMD_UNLINK: Final = 2
RET_SUBMIT: Final = 3
RET_UNLINK: Final = 4
DIR_OUT: Final = 0
DIR_IN: Final = 1

# OP_REP_* status words (tools/usb/usbip/src/usbip_network.h)
ST_OK, ST_NA, ST_DEV_BUSY, ST_DEV_ERR, ST_NODEV, ST_ERROR = 0, 1, 2, 3, 4, 5
_ST_TEXT = {
    ST_OK: "ok", ST_NA: "not available", ST_DEV_BUSY: "device busy (imported by another host)",
    ST_DEV_ERR: "device error", ST_NODEV: "no such device", ST_ERROR: "error",
}

# URB status values are negative Linux errnos.
ENOENT, ENODEV, EPIPE, ETIMEDOUT, EOVERFLOW, EPROTO, ECONNRESET = 2, 19, 32, 110, 75, 71, 104

#: One URB never carries more than this; a larger length is treated as an attack or a desync.
MAX_TRANSFER_LENGTH: Final = 16 * 1024 * 1024
#: The kernel's USBIP_MAX_ISO_PACKETS.
MAX_ISO_PACKETS: Final = 1024
#: A device list longer than this is treated as garbage, not allocated.
MAX_DEVICES: Final = 4096
#: number_of_packets for a non-ISO transfer.
NO_ISO: Final = 0xFFFFFFFF

_COMMON = struct.Struct(">HHI")
_U32 = struct.Struct(">I")
_DEVICE = struct.Struct(">256s32sIIIHHHBBBBBB")  # 312 bytes
_INTERFACE = struct.Struct(">BBBx")
_BASIC = struct.Struct(">IIIII")
_SUBMIT = struct.Struct(">IIIIIIIIII8s")  # basic + flags, length, start, npk, interval, setup
_RET = struct.Struct(">IIIIIiIiii8x")  # basic + status, actual, start, npk, errors, pad
_UNLINK = struct.Struct(">IIIIII24x")  # basic + unlink_seqnum / status, pad
_ISO = struct.Struct(">IIIi")
HEADER_LEN: Final = 48
assert _SUBMIT.size == _RET.size == _UNLINK.size == HEADER_LEN and _DEVICE.size == 312


class Role(enum.Enum):
    SERVER = "server"  # exports devices
    CLIENT = "client"  # imports devices


@dataclass(frozen=True)
class UsbIpDevice:
    """The 312-byte device block of OP_REP_DEVLIST / OP_REP_IMPORT.

    ``interfaces`` (class, subclass, protocol) travel only in the device list;
    an import reply carries ``num_interfaces`` alone.
    """

    path: str
    busid: str
    busnum: int
    devnum: int
    speed: int
    vendor_id: int
    product_id: int
    bcd_device: int
    device_class: int = 0
    device_subclass: int = 0
    device_protocol: int = 0
    configuration_value: int = 1
    num_configurations: int = 1
    num_interfaces: int = 0
    interfaces: tuple[tuple[int, int, int], ...] = ()

    @property
    def devid(self) -> int:
        return (self.busnum << 16) | self.devnum


@dataclass(frozen=True)
class IsoPacket:
    offset: int
    length: int
    actual_length: int = 0
    status: int = 0


@dataclass(frozen=True)
class DevlistRequest:
    pass


@dataclass(frozen=True)
class DevlistReply:
    devices: tuple[UsbIpDevice, ...]
    status: int = ST_OK


@dataclass(frozen=True)
class ImportRequest:
    busid: str


@dataclass(frozen=True)
class ImportReply:
    status: int
    device: UsbIpDevice | None = None  # present exactly when status == ST_OK


@dataclass(frozen=True)
class SubmitCommand:
    seqnum: int
    devid: int
    direction: int
    endpoint: int
    transfer_length: int
    setup: bytes = bytes(8)
    data: bytes = b""  # OUT only; len(data) == transfer_length
    transfer_flags: int = 0
    start_frame: int = 0
    number_of_packets: int = NO_ISO
    interval: int = 0
    iso_packets: tuple[IsoPacket, ...] = ()


@dataclass(frozen=True)
class SubmitReturn:
    seqnum: int
    status: int
    actual_length: int
    data: bytes = b""  # IN only; len(data) == actual_length
    devid: int = 0
    direction: int = 0
    endpoint: int = 0
    start_frame: int = 0
    number_of_packets: int = NO_ISO
    error_count: int = 0
    iso_packets: tuple[IsoPacket, ...] = ()


@dataclass(frozen=True)
class UnlinkCommand:
    seqnum: int
    unlink_seqnum: int
    devid: int = 0
    direction: int = 0
    endpoint: int = 0


@dataclass(frozen=True)
class UnlinkReturn:
    seqnum: int
    status: int
    devid: int = 0
    direction: int = 0
    endpoint: int = 0


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed the TCP connection at a frame boundary (``receive_data(b"")``)."""


Event = (
    DevlistRequest | DevlistReply | ImportRequest | ImportReply | SubmitCommand | SubmitReturn | UnlinkCommand
    | UnlinkReturn | ConnectionClosed
)


def status_text(status: int) -> str:
    """Human words for an OP_REP status word."""
    return _ST_TEXT.get(status, f"status {status}")


def path_with_serial(busid: str, serial: str | None) -> str:
    """Our server's ``path`` field: a sysfs-like path ending in the serial (egw extension)."""
    base = f"/sys/devices/egw-usbip/{busid}"
    if serial:
        candidate = f"{base}/serial:{quote(serial, safe='')}"
        if len(candidate.encode()) <= 255:
            return candidate
    return base


def serial_from_path(path: str) -> str | None:
    """The serial our server put into ``path``; ``None`` for any other server's path."""
    marker = "/serial:"
    if not path.startswith("/sys/devices/egw-usbip/") or marker not in path:
        return None
    return unquote(path.rsplit(marker, 1)[1]) or None


def _cstring(raw: bytes, what: str, *, strict: bool) -> str:
    text = raw.split(b"\0", 1)[0]
    if strict:
        if any(b < 0x20 or b > 0x7E for b in text):
            raise FrameError(f"{what} {text!r} is not printable ASCII: the peer is not speaking USB/IP")
        return text.decode("ascii")
    return text.decode("utf-8", errors="replace")


def _encode_cstring(text: str, size: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) >= size:
        raise LocalProtocolError(f"{what} {text!r} is {len(raw)} bytes; USB/IP allows at most {size - 1}")
    return raw.ljust(size, b"\0")


def _encode_device(dev: UsbIpDevice, num_interfaces: int) -> bytes:
    try:
        return _DEVICE.pack(
            _encode_cstring(dev.path, 256, "path"), _encode_cstring(dev.busid, 32, "busid"),
            dev.busnum, dev.devnum, dev.speed, dev.vendor_id, dev.product_id, dev.bcd_device,
            dev.device_class, dev.device_subclass, dev.device_protocol, dev.configuration_value,
            dev.num_configurations, num_interfaces,
        )
    except struct.error as exc:
        raise LocalProtocolError(f"device {dev.busid!r} has a field out of range: {exc}") from exc


def _decode_device(raw: bytes) -> UsbIpDevice:
    (path, busid, busnum, devnum, speed, vid, pid, bcd, dcls, dsub, dproto,
     cfg, ncfg, nif) = _DEVICE.unpack(raw)
    return UsbIpDevice(
        path=_cstring(path, "path", strict=False), busid=_cstring(busid, "busid", strict=True),
        busnum=busnum, devnum=devnum, speed=speed, vendor_id=vid, product_id=pid, bcd_device=bcd,
        device_class=dcls, device_subclass=dsub, device_protocol=dproto,
        configuration_value=cfg, num_configurations=ncfg, num_interfaces=nif,
    )


def _iso_count(number_of_packets: int, what: str) -> int:
    """How many ISO descriptors follow: 0 for a non-ISO transfer."""
    if number_of_packets in (0, NO_ISO):
        return 0
    if number_of_packets > MAX_ISO_PACKETS:
        raise LengthError(
            f"{what} announces {number_of_packets} ISO packets; USB/IP allows at most {MAX_ISO_PACKETS}"
        )
    return number_of_packets


def _replace_interfaces(dev: UsbIpDevice, interfaces: tuple[tuple[int, ...], ...]) -> UsbIpDevice:
    fields = dict(dev.__dict__)
    fields["interfaces"] = tuple((i[0], i[1], i[2]) for i in interfaces)
    return UsbIpDevice(**fields)


def _decode_iso(frame: bytes, offset: int, count: int) -> tuple[IsoPacket, ...]:
    return tuple(IsoPacket(*_ISO.unpack_from(frame, offset + i * _ISO.size)) for i in range(count))


def _iso_fields(p: IsoPacket) -> tuple[int, int, int, int]:
    return (p.offset, p.length, p.actual_length, p.status)


def _signed(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def _pack(fmt: struct.Struct, *values: object) -> bytes:
    try:
        return fmt.pack(*values)
    except struct.error as exc:
        raise LocalProtocolError(f"USB/IP field out of range: {exc} in {values!r}") from exc


def _encode_submit(event: SubmitCommand, limit: int) -> bytes:
    if event.direction not in (DIR_OUT, DIR_IN) or not 0 <= event.endpoint <= 15:
        raise LocalProtocolError(f"CMD_SUBMIT needs direction 0/1 and endpoint 0-15, got {event!r}")
    if len(event.setup) != 8:
        raise LocalProtocolError("the setup field is exactly 8 bytes (zeros when unused)")
    if event.transfer_length > limit:
        raise LocalProtocolError(f"a {event.transfer_length}-byte URB exceeds the {limit}-byte limit")
    if event.direction == DIR_OUT and len(event.data) != event.transfer_length:
        raise LocalProtocolError("an OUT CMD_SUBMIT carries exactly transfer_length data bytes")
    if event.direction == DIR_IN and event.data:
        raise LocalProtocolError("an IN CMD_SUBMIT carries no data")
    frame = _pack(
        _SUBMIT, CMD_SUBMIT, event.seqnum, event.devid, event.direction, event.endpoint, event.transfer_flags,
        event.transfer_length, event.start_frame & 0xFFFFFFFF, event.number_of_packets & 0xFFFFFFFF,
        event.interval & 0xFFFFFFFF, event.setup,
    )
    return frame + event.data + b"".join(_pack(_ISO, *_iso_fields(p)) for p in event.iso_packets)
