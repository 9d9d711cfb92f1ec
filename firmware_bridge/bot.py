"""USB mass-storage Bulk-Only Transport (BOT 1.0) and the SCSI basics, sans-IO.

Why this module exists: body-worn cameras carry their vendor commands as SCSI
commands inside BOT, and a simulated recorder must answer the generic SCSI
commands every host sends first. Both ends (our driver and our simulator)
share these encoders and decoders, pinned by hand-computed golden vectors.

Command Block Wrapper (CBW), 31 bytes, little-endian::

    0        4        8                12      13     14       15                31
    +--------+--------+----------------+-------+------+--------+-----------------+
    | "USBC" |  tag   | data length    | flags | LUN  | CB len |  CB (16 bytes)  |
    | 55534243  u32   |      u32       |  u8   | u8   | u8 1-16|  zero padded    |
    +--------+--------+----------------+-------+------+--------+-----------------+
    flags: 0x80 = data IN (device to host), 0x00 = data OUT / no data.
    LUN: low 4 bits only; CB length: low 5 bits, 1..16.

Command Status Wrapper (CSW), 13 bytes, little-endian::

    0        4        8          12
    +--------+--------+----------+--------+
    | "USBS" |  tag   | residue  | status |
    | 55534253  u32   |   u32    |   u8   |   status: 0 passed, 1 failed, 2 phase error
    +--------+--------+----------+--------+

Fixed-format sense data (REQUEST SENSE), 18 bytes::

    0     1     2        3..6    7        8..11   12    13     14..17
    +-----+-----+--------+-------+--------+-------+-----+------+--------+
    | 70h | 00  | key    | info  | add.len| cmd   | ASC | ASCQ | FRU,SKS|
    |     |     | (4 bit)|       |  = 0Ah | info  |     |      |        |
    +-----+-----+--------+-------+--------+-------+-----+------+--------+

Standard INQUIRY data, 36 bytes::

    0       1      2       3       4        5..7   8..15    16..31    32..35
    +-------+------+-------+-------+--------+------+--------+---------+--------+
    | type  | RMB  | vers. | fmt=2 | add.len| flags| vendor | product | rev.   |
    | 00h   | 80h  |       |       | = 31   |      | 8 ASCII| 16 ASCII| 4 ASCII|
    +-------+------+-------+-------+--------+------+--------+---------+--------+

CDBs (6 bytes): TEST UNIT READY ``00 00 00 00 00 00``; REQUEST SENSE
``03 00 00 00 <alloc> 00``; INQUIRY ``12 00 00 00 <alloc> 00``.

The device-side ``BotDeviceParser`` follows h11: ``receive_data(bytes)``
buffers what arrived on the bulk OUT pipe, ``next_event()`` returns a
``CommandBlock``, a ``DataOut`` or ``NEED_DATA``. It knows when the host is in
a data-OUT phase because the CBW announced it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Final

from firmware_bridge.errors import FrameError, LengthError, LocalProtocolError, UnknownCodeError
from firmware_bridge.sansio import NEED_DATA, Decoder, NeedData

__all__ = [
    "CBW_SIGNATURE", "CSW_SIGNATURE", "CBW_LENGTH", "CSW_LENGTH", "SENSE_LENGTH", "INQUIRY_LENGTH",
    "FLAG_DATA_IN", "CswStatus", "SenseKey", "ScsiOpcode",
    "CommandBlockWrapper", "CommandStatusWrapper", "SenseData", "InquiryData",
    "test_unit_ready_cdb", "request_sense_cdb", "inquiry_cdb",
    "CommandBlock", "DataOut", "NEED_DATA", "NeedData", "BotDeviceParser",
]

CBW_SIGNATURE: Final = b"USBC"
CSW_SIGNATURE: Final = b"USBS"
CBW_LENGTH: Final = 31
CSW_LENGTH: Final = 13
SENSE_LENGTH: Final = 18
INQUIRY_LENGTH: Final = 36
FLAG_DATA_IN: Final = 0x80
MAX_DATA_LENGTH: Final = 0xFFFFFFFF

_CBW = struct.Struct("<4sIIBBB16s")
_CSW = struct.Struct("<4sIIB")


class CswStatus(IntEnum):
    PASSED = 0
    FAILED = 1
    PHASE_ERROR = 2


class SenseKey(IntEnum):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    ABORTED_COMMAND = 0xB


class ScsiOpcode(IntEnum):
    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    INQUIRY = 0x12


@dataclass(frozen=True)
class CommandBlockWrapper:
    """One CBW. ``data_in`` is the direction of the data phase (ignored when length is 0)."""

    tag: int
    data_length: int
    data_in: bool
    lun: int
    cb: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.cb) <= 16:
            raise LocalProtocolError(f"a CBW command block is 1..16 bytes, got {len(self.cb)}")
        if not 0 <= self.tag <= 0xFFFFFFFF or not 0 <= self.data_length <= MAX_DATA_LENGTH:
            raise LocalProtocolError("CBW tag and data length are u32")
        if not 0 <= self.lun <= 15:
            raise LocalProtocolError(f"a LUN is 0..15, got {self.lun}")

    def to_bytes(self) -> bytes:
        flags = FLAG_DATA_IN if self.data_in else 0
        return _CBW.pack(CBW_SIGNATURE, self.tag, self.data_length, flags, self.lun, len(self.cb), self.cb.ljust(16, b"\0"))

    @classmethod
    def from_bytes(cls, raw: bytes) -> CommandBlockWrapper:
        """Decode exactly 31 bytes; anything else is not a meaningful CBW (BOT 6.2.1)."""
        if len(raw) != CBW_LENGTH:
            raise LengthError(f"a CBW is {CBW_LENGTH} bytes, got {len(raw)}")
        sig, tag, length, flags, lun, cb_len, cb = _CBW.unpack(raw)
        if sig != CBW_SIGNATURE:
            raise FrameError(f"CBW signature must be 'USBC' (55 53 42 43), got {sig.hex(' ')}")
        if flags & 0x7F:
            raise FrameError(f"CBW flags reserved bits set: 0x{flags:02x}")
        if lun & 0xF0:
            raise FrameError(f"CBW LUN reserved bits set: 0x{lun:02x}")
        if cb_len & 0xE0 or not 1 <= cb_len <= 16:
            raise LengthError(f"CBW command block length must be 1..16, got {cb_len}")
        return cls(tag=tag, data_length=length, data_in=bool(flags & FLAG_DATA_IN), lun=lun, cb=bytes(cb[:cb_len]))


@dataclass(frozen=True)
class CommandStatusWrapper:
    tag: int
    residue: int
    status: CswStatus

    def to_bytes(self) -> bytes:
        if not 0 <= self.tag <= 0xFFFFFFFF or not 0 <= self.residue <= 0xFFFFFFFF:
            raise LocalProtocolError("CSW tag and residue are u32")
        return _CSW.pack(CSW_SIGNATURE, self.tag, self.residue, int(self.status))

    @classmethod
    def from_bytes(cls, raw: bytes) -> CommandStatusWrapper:
        if len(raw) != CSW_LENGTH:
            raise LengthError(f"a CSW is {CSW_LENGTH} bytes, got {len(raw)}")
        sig, tag, residue, status = _CSW.unpack(raw)
        if sig != CSW_SIGNATURE:
            raise FrameError(f"CSW signature must be 'USBS' (55 53 42 53), got {sig.hex(' ')}")
        try:
            code = CswStatus(status)
        except ValueError:
            raise UnknownCodeError(f"CSW status must be 0, 1 or 2, got {status}") from None
        return cls(tag=tag, residue=residue, status=code)


@dataclass(frozen=True)
class SenseData:
    """Fixed-format sense data (response code 70h, current error)."""

    key: int
    asc: int = 0
    ascq: int = 0

    def to_bytes(self) -> bytes:
        if not 0 <= self.key <= 0xF or not 0 <= self.asc <= 0xFF or not 0 <= self.ascq <= 0xFF:
            raise LocalProtocolError(f"sense key is 4 bits, ASC/ASCQ 8 bits: {self}")
        raw = bytearray(SENSE_LENGTH)
        raw[0] = 0x70
        raw[2] = self.key
        raw[7] = SENSE_LENGTH - 8
        raw[12] = self.asc
        raw[13] = self.ascq
        return bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SenseData:
        """Accepts 70h/71h fixed format, at least 14 bytes (enough for ASC/ASCQ)."""
        if len(raw) < 14:
            raise LengthError(f"fixed-format sense data needs at least 14 bytes, got {len(raw)}")
        code = raw[0] & 0x7F
        if code not in (0x70, 0x71):
            raise UnknownCodeError(f"sense response code must be 70h or 71h (fixed format), got {code:02x}h")
        return cls(key=raw[2] & 0x0F, asc=raw[12], ascq=raw[13])


@dataclass(frozen=True)
class InquiryData:
    """Standard INQUIRY data; strings are ASCII, space padded on the wire."""

    vendor: str
    product: str
    revision: str
    removable: bool = True
    peripheral_type: int = 0x00  # direct-access block device

    def to_bytes(self) -> bytes:
        raw = bytearray(INQUIRY_LENGTH)
        raw[0] = self.peripheral_type & 0x1F
        raw[1] = 0x80 if self.removable else 0
        raw[2] = 0x04  # SPC-2
        raw[3] = 0x02  # response data format 2
        raw[4] = INQUIRY_LENGTH - 5
        raw[8:16] = _ascii_field(self.vendor, 8, "vendor")
        raw[16:32] = _ascii_field(self.product, 16, "product")
        raw[32:36] = _ascii_field(self.revision, 4, "revision")
        return bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> InquiryData:
        if len(raw) < INQUIRY_LENGTH:
            raise LengthError(f"standard INQUIRY data is {INQUIRY_LENGTH} bytes, got {len(raw)}")
        try:
            vendor, product, revision = (raw[a:b].decode("ascii").rstrip(" \0") for a, b in ((8, 16), (16, 32), (32, 36)))
        except UnicodeDecodeError as exc:
            raise FrameError(f"INQUIRY strings must be ASCII: {exc}") from None
        return cls(vendor=vendor, product=product, revision=revision, removable=bool(raw[1] & 0x80), peripheral_type=raw[0] & 0x1F)


def _ascii_field(text: str, size: int, name: str) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"INQUIRY {name} must be ASCII: {text!r}") from None
    if len(raw) > size:
        raise LocalProtocolError(f"INQUIRY {name} is at most {size} characters: {text!r}")
    return raw.ljust(size, b" ")


def test_unit_ready_cdb() -> bytes:
    return bytes(6)


def request_sense_cdb(allocation: int = SENSE_LENGTH) -> bytes:
    if not 0 <= allocation <= 0xFF:
        raise LocalProtocolError("REQUEST SENSE allocation length is one byte")
    return bytes([ScsiOpcode.REQUEST_SENSE, 0, 0, 0, allocation, 0])


def inquiry_cdb(allocation: int = INQUIRY_LENGTH) -> bytes:
    if not 0 <= allocation <= 0xFFFF:
        raise LocalProtocolError("INQUIRY allocation length is u16")
    return bytes([ScsiOpcode.INQUIRY, 0, 0]) + struct.pack(">H", allocation) + b"\0"


# Not a test: keep pytest from collecting the CDB builder above as a test function.
test_unit_ready_cdb.__test__ = False  # type: ignore[attr-defined]


# ---- device-side parser (h11 style) -------------------------------------------


@dataclass(frozen=True)
class CommandBlock:
    """A CBW arrived."""

    cbw: CommandBlockWrapper


@dataclass(frozen=True)
class DataOut:
    """The complete data-OUT phase of the command whose tag is given."""

    tag: int
    data: bytes


class BotDeviceParser:
    """What a BOT device sees on its bulk OUT pipe: CBW, then data OUT when announced.

    After an invalid CBW the parser refuses everything (BOT 6.6.1: the device
    stalls until a Bulk-Only Mass Storage Reset); ``reset()`` clears that.
    ``max_data_out`` bounds the buffer so a hostile host cannot make us hoard.
    """

    def __init__(self, max_data_out: int = 1 << 20) -> None:
        self.max_data_out = max_data_out
        self.reset()

    def reset(self) -> None:
        self._buffer = bytearray()
        self._pending_out: CommandBlockWrapper | None = None
        self._broken: str | None = None

    @property
    def in_data_out_phase(self) -> bool:
        return self._pending_out is not None

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> CommandBlock | DataOut | NeedData:
        if self._broken is not None:
            raise FrameError(f"bulk pipe needs a mass-storage reset after: {self._broken}")
        if self._pending_out is not None:
            need = self._pending_out.data_length
            if len(self._buffer) < need:
                return NEED_DATA
            data = bytes(self._buffer[:need])
            del self._buffer[:need]
            tag = self._pending_out.tag
            self._pending_out = None
            return DataOut(tag=tag, data=data)
        if len(self._buffer) < CBW_LENGTH:
            # A CBW never arrives split across a wrong signature: reject early.
            if self._buffer and not CBW_SIGNATURE.startswith(bytes(self._buffer[:4])):
                self._broken = f"bytes that are not a CBW ({bytes(self._buffer[:4]).hex(' ')})"
                raise FrameError(f"expected a CBW ('USBC'), got {bytes(self._buffer[:4]).hex(' ')}")
            return NEED_DATA
        raw = bytes(self._buffer[:CBW_LENGTH])
        del self._buffer[:CBW_LENGTH]
        try:
            cbw = CommandBlockWrapper.from_bytes(raw)
        except (FrameError, LengthError) as exc:
            self._broken = str(exc)
            raise
        if not cbw.data_in and cbw.data_length:
            if cbw.data_length > self.max_data_out:
                self._broken = f"data-OUT length {cbw.data_length} over {self.max_data_out}"
                raise LengthError(f"CBW announces {cbw.data_length} bytes OUT, at most {self.max_data_out} accepted")
            self._pending_out = cbw
        return CommandBlock(cbw=cbw)


if TYPE_CHECKING:
    def _is_a_decoder(parser: BotDeviceParser) -> Decoder[CommandBlock | DataOut]:
        return parser  # mypy proves the parser keeps the shared sans-IO shape
