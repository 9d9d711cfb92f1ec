"""Wacom STU signature pads: the USB HID reports, sans-IO (bytes in, events out).

An STU pad is a plain HID device: pen samples arrive as *input reports* on
the interrupt IN endpoint, everything else is a *feature report* moved by
HID GET_REPORT / SET_REPORT control transfers (wValue = 0x0300 | report id).
Every report starts with its report id byte; sizes below include it. Field
layouts follow the official SDK (``WacomGSS/STU/Protocol.hpp`` /
``Protocol.cpp``), see docs/protocols/signpad-stu.md. Confidence H (read
from the SDK) unless marked M (one secondary source).

Pen data, report 0x01 (7 bytes)::

    +----+--------------------------+----------+--------+--------+
    | 01 | rdy|  sw  | pressure 11:8| pres 7:0 | x u16BE| y u16BE|
    |    | b7 |b6..b4|    b3..b0    |          |        |        |
    +----+--------------------------+----------+--------+--------+

  (pabloko's WebHID driver reads rdy/sw from bits 0/1; that is wrong, the
  SDK's layout above is used.)

PenDataOption 0x30 (9 bytes) = PenData fields + option u16 BE (timeCount in
mode 1, sequence in mode 2). PenDataTimeCountSequence 0x34 (11 bytes) =
PenData fields + timeCount u16 BE (1 ms tick, wraps) + sequence u16 BE.

Feature reports (id, then payload)::

    03 Status         statusCode u8 | lastResultCode u8 | statusWord u16 LE    (5)
    04 Reset          resetFlag u8 (0 soft, 1 hard)                           (2)
    08 Information    modelName 9 chars | fwMajor | fwMinor | secureIc |
                      secureIcVersion[4]                                      (17)
    09 Capability     maxX | maxY | maxPressure | screenW | screenH (u16 BE) |
                      maxReportRate u8 | resolution u16 BE | encodingFlag u8 |
                      2 reserved                                              (17)
    0B Uid2           10 ASCII chars                                          (11)
    15 StartCapture   sessionId u32 BE                                        (5)
    16 EndCapture     00                                                      (2)
    20 ClearScreen    00                                                      (2)
    21 InkingMode     mode u8 (0 off, 1 on)                                   (2)
    25 StartImageData encodingMode u8                                         (2)
    26 ImageDataBlock length u16 LE | 253 data bytes (zero padded)            (256)
    27 EndImageData   flag u8 (0 commit, 1 abandon)                           (2)
    32 PenDataOptionMode mode u8 (0 none, 1 timeCount, 2 sequence, 3 both)    (2)

Byte order: Capability / Uid / StartCapture / pen data are big-endian in
the SDK; Status' statusWord and ImageDataBlock's length are little-endian
(both as the SDK's Protocol.cpp writes them).

Image encodings (encodingMode of StartImageData; SDK ``EncodingMode``):
0x00 1-bit, 0x01 1-bit zlib, 0x02 16-bit RGB565, 0x04 24-bit, +0x10 = bulk
endpoint. ``flatten_image`` / ``unflatten_image`` implement 0x00, 0x02, 0x04:

* 24-bit: B, G, R per pixel, rows top to bottom (pabloko's driver names the
  STU-540 format "24BGR"; M).
* 16-bit: RGB565 per pixel, high byte first (the SDK's flattenColor16 swaps
  to that order; H).
* 1-bit: rows of ceil(width / 8) bytes, MSB = leftmost pixel, bit set =
  white, cleared = dark (the SDK's flattenMonochrome clears bits for dark
  pixels; M for the polarity).

The Capability's encodingFlag says which the pad accepts: 0x01 zlib, 0x02
1-bit, 0x04 16-bit, 0x08 24-bit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Union

import numpy as np

from firmware_bridge.errors import LengthError, LocalProtocolError, ProtocolError, UnknownCodeError
from firmware_bridge.sansio import NEED_DATA, Decoder, NeedData

__all__ = [
    "NEED_DATA", "NeedData",
    "REPORT_PEN_DATA", "REPORT_STATUS", "REPORT_RESET", "REPORT_INFORMATION", "REPORT_CAPABILITY",
    "REPORT_UID2", "REPORT_START_CAPTURE", "REPORT_END_CAPTURE", "REPORT_CLEAR_SCREEN",
    "REPORT_INKING_MODE", "REPORT_START_IMAGE_DATA", "REPORT_IMAGE_DATA_BLOCK", "REPORT_END_IMAGE_DATA",
    "REPORT_PEN_DATA_OPTION", "REPORT_PEN_DATA_OPTION_MODE", "REPORT_PEN_DATA_TIME_COUNT_SEQUENCE",
    "REPORT_SIZES", "INPUT_REPORT_IDS", "FEATURE_REPORT_IDS",
    "HID_GET_REPORT", "HID_SET_REPORT", "HID_SET_IDLE", "HID_REQ_TYPE_GET", "HID_REQ_TYPE_SET",
    "REPORT_TYPE_INPUT", "REPORT_TYPE_FEATURE", "feature_value",
    "ENCODING_FLAG_ZLIB", "ENCODING_FLAG_1BIT", "ENCODING_FLAG_16BIT", "ENCODING_FLAG_24BIT",
    "ENCODING_MODE_1BIT", "ENCODING_MODE_1BIT_ZLIB", "ENCODING_MODE_16BIT", "ENCODING_MODE_24BIT",
    "STATUS_READY", "STATUS_IMAGE", "STATUS_CAPTURE", "STATUS_CALCULATION", "STATUS_IMAGE_BOOT",
    "STATUS_SYSTEM_RESET", "RESULT_NONE", "RESULT_WRONG_REPORT_ID", "RESULT_WRONG_STATE",
    "RESULT_CRC", "RESULT_GRAPHICS_WRONG_ENCODING_TYPE", "RESULT_GRAPHICS_IMAGE_TOO_LONG",
    "RESULT_GRAPHICS_ZLIB_ERROR", "RESULT_GRAPHICS_WRONG_PARAMETERS",
    "PEN_OPTION_NONE", "PEN_OPTION_TIME_COUNT", "PEN_OPTION_SEQUENCE", "PEN_OPTION_TIME_COUNT_SEQUENCE",
    "IMAGE_BLOCK_DATA_SIZE",
    "PenData", "PenDataOption", "PenDataTimeCountSequence", "PenReport",
    "Status", "Reset", "Information", "Capability", "Uid2", "StartCapture", "EndCapture",
    "ClearScreen", "InkingMode", "StartImageData", "ImageDataBlock", "EndImageData",
    "PenDataOptionMode", "FeatureReport",
    "decode_input_report", "decode_feature_report", "encode_report", "PenReportDecoder",
    "image_size", "flatten_image", "unflatten_image", "image_blocks",
]


# ---- report ids ---------------------------------------------------------------

REPORT_PEN_DATA = 0x01
REPORT_STATUS = 0x03
REPORT_RESET = 0x04
REPORT_INFORMATION = 0x08
REPORT_CAPABILITY = 0x09
REPORT_UID2 = 0x0B
REPORT_START_CAPTURE = 0x15
REPORT_END_CAPTURE = 0x16
REPORT_CLEAR_SCREEN = 0x20
REPORT_INKING_MODE = 0x21
REPORT_START_IMAGE_DATA = 0x25
REPORT_IMAGE_DATA_BLOCK = 0x26
REPORT_END_IMAGE_DATA = 0x27
REPORT_PEN_DATA_OPTION = 0x30
REPORT_PEN_DATA_OPTION_MODE = 0x32
REPORT_PEN_DATA_TIME_COUNT_SEQUENCE = 0x34

#: Total report sizes in bytes, report id included (SDK Protocol.cpp array sizes).
REPORT_SIZES: dict[int, int] = {
    REPORT_PEN_DATA: 7,
    REPORT_STATUS: 5,
    REPORT_RESET: 2,
    REPORT_INFORMATION: 17,
    REPORT_CAPABILITY: 17,
    REPORT_UID2: 11,
    REPORT_START_CAPTURE: 5,
    REPORT_END_CAPTURE: 2,
    REPORT_CLEAR_SCREEN: 2,
    REPORT_INKING_MODE: 2,
    REPORT_START_IMAGE_DATA: 2,
    REPORT_IMAGE_DATA_BLOCK: 256,
    REPORT_END_IMAGE_DATA: 2,
    REPORT_PEN_DATA_OPTION: 9,
    REPORT_PEN_DATA_OPTION_MODE: 2,
    REPORT_PEN_DATA_TIME_COUNT_SEQUENCE: 11,
}
INPUT_REPORT_IDS = frozenset({REPORT_PEN_DATA, REPORT_PEN_DATA_OPTION, REPORT_PEN_DATA_TIME_COUNT_SEQUENCE})
FEATURE_REPORT_IDS = frozenset(REPORT_SIZES) - INPUT_REPORT_IDS

# ---- HID class requests (HID 1.11 §7.2) ----------------------------------------

HID_GET_REPORT = 0x01
HID_SET_IDLE = 0x0A
HID_SET_REPORT = 0x09
HID_REQ_TYPE_GET = 0xA1  # device-to-host | class | interface
HID_REQ_TYPE_SET = 0x21  # host-to-device | class | interface
REPORT_TYPE_INPUT = 0x01
REPORT_TYPE_FEATURE = 0x03


def feature_value(report_id: int) -> int:
    """wValue of a GET/SET_REPORT for a feature report: report type in the high byte."""
    return REPORT_TYPE_FEATURE << 8 | (report_id & 0xFF)


# ---- enumerations ---------------------------------------------------------------

ENCODING_FLAG_ZLIB, ENCODING_FLAG_1BIT, ENCODING_FLAG_16BIT, ENCODING_FLAG_24BIT = 0x01, 0x02, 0x04, 0x08
ENCODING_MODE_1BIT, ENCODING_MODE_1BIT_ZLIB, ENCODING_MODE_16BIT, ENCODING_MODE_24BIT = 0x00, 0x01, 0x02, 0x04

STATUS_READY, STATUS_IMAGE, STATUS_CAPTURE, STATUS_CALCULATION, STATUS_IMAGE_BOOT = 0x00, 0x01, 0x02, 0x03, 0x04
STATUS_SYSTEM_RESET = 0x20
RESULT_NONE, RESULT_WRONG_REPORT_ID, RESULT_WRONG_STATE, RESULT_CRC = 0x00, 0x01, 0x02, 0x03
RESULT_GRAPHICS_WRONG_ENCODING_TYPE, RESULT_GRAPHICS_IMAGE_TOO_LONG = 0x10, 0x11
RESULT_GRAPHICS_ZLIB_ERROR, RESULT_GRAPHICS_WRONG_PARAMETERS = 0x12, 0x15

PEN_OPTION_NONE, PEN_OPTION_TIME_COUNT, PEN_OPTION_SEQUENCE, PEN_OPTION_TIME_COUNT_SEQUENCE = 0, 1, 2, 3

IMAGE_BLOCK_DATA_SIZE = 253  # data bytes per ImageDataBlock over HID


# ---- helpers ----------------------------------------------------------------------

def _check_size(raw: bytes, report_id: int, name: str) -> None:
    if not raw:
        raise LengthError(f"empty {name} report; a report starts with its id byte 0x{report_id:02x}")
    if raw[0] != report_id:
        raise UnknownCodeError(f"expected {name} report 0x{report_id:02x}, got report id 0x{raw[0]:02x}")
    want = REPORT_SIZES[report_id]
    if len(raw) != want:
        raise LengthError(f"{name} report 0x{report_id:02x} is {want} bytes, got {len(raw)}")


def _u16(name: str, value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{name}={value} does not fit an unsigned 16-bit field")
    return value


def _u8(name: str, value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise LocalProtocolError(f"{name}={value} does not fit an unsigned 8-bit field")
    return value


def _ascii(raw: bytes, name: str) -> str:
    text = raw.split(b"\x00", 1)[0]
    try:
        return text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{name} holds non-ASCII bytes {text!r}; the pad sent a corrupt report") from exc


def _ascii_field(name: str, text: str, width: int) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{name} {text!r} must be ASCII") from exc
    if len(raw) > width:
        raise LocalProtocolError(f"{name} {text!r} is longer than {width} bytes")
    return raw.ljust(width, b"\x00")


# ---- pen data (input reports) ----------------------------------------------------

_PEN = struct.Struct(">BBHH")


def _pen_bytes(rdy: bool, sw: int, pressure: int, x: int, y: int) -> bytes:
    if not 0 <= sw <= 7:
        raise LocalProtocolError(f"sw={sw} does not fit the 3-bit switch field")
    if not 0 <= pressure <= 0xFFF:
        raise LocalProtocolError(f"pressure={pressure} does not fit 12 bits")
    head = (0x80 if rdy else 0) | sw << 4 | pressure >> 8
    return _PEN.pack(head, pressure & 0xFF, _u16("x", x), _u16("y", y))


def _pen_fields(raw: bytes) -> tuple[bool, int, int, int, int]:
    head, low, x, y = _PEN.unpack_from(raw, 1)
    return bool(head & 0x80), (head >> 4) & 0x07, (head & 0x0F) << 8 | low, x, y


@dataclass(frozen=True)
class PenData:
    """One pen sample: in proximity (rdy), switch/touch bits (sw), pressure, tablet x/y."""

    rdy: bool
    sw: int
    pressure: int
    x: int
    y: int

    report_id: ClassVar[int] = REPORT_PEN_DATA

    @property
    def touching(self) -> bool:
        return self.sw != 0

    def encode(self) -> bytes:
        return bytes([self.report_id]) + _pen_bytes(self.rdy, self.sw, self.pressure, self.x, self.y)

    @classmethod
    def decode(cls, raw: bytes) -> "PenData":
        _check_size(raw, cls.report_id, "PenData")
        return cls(*_pen_fields(raw))


@dataclass(frozen=True)
class PenDataOption:
    """PenData plus one option word (timeCount in option mode 1, sequence in mode 2)."""

    rdy: bool
    sw: int
    pressure: int
    x: int
    y: int
    option: int

    report_id: ClassVar[int] = REPORT_PEN_DATA_OPTION

    @property
    def touching(self) -> bool:
        return self.sw != 0

    def encode(self) -> bytes:
        return (bytes([self.report_id]) + _pen_bytes(self.rdy, self.sw, self.pressure, self.x, self.y)
                + struct.pack(">H", _u16("option", self.option)))

    @classmethod
    def decode(cls, raw: bytes) -> "PenDataOption":
        _check_size(raw, cls.report_id, "PenDataOption")
        return cls(*_pen_fields(raw), struct.unpack_from(">H", raw, 7)[0])


@dataclass(frozen=True)
class PenDataTimeCountSequence:
    """PenData plus the pad's 1 ms time count (wraps at 0xFFFF) and a report sequence number."""

    rdy: bool
    sw: int
    pressure: int
    x: int
    y: int
    time_count: int
    sequence: int

    report_id: ClassVar[int] = REPORT_PEN_DATA_TIME_COUNT_SEQUENCE

    @property
    def touching(self) -> bool:
        return self.sw != 0

    def encode(self) -> bytes:
        return (bytes([self.report_id]) + _pen_bytes(self.rdy, self.sw, self.pressure, self.x, self.y)
                + struct.pack(">HH", _u16("time_count", self.time_count), _u16("sequence", self.sequence)))

    @classmethod
    def decode(cls, raw: bytes) -> "PenDataTimeCountSequence":
        _check_size(raw, cls.report_id, "PenDataTimeCountSequence")
        time_count, sequence = struct.unpack_from(">HH", raw, 7)
        return cls(*_pen_fields(raw), time_count, sequence)


PenReport = Union[PenData, PenDataOption, PenDataTimeCountSequence]
_INPUT_CLASSES: dict[int, type[PenData] | type[PenDataOption] | type[PenDataTimeCountSequence]] = {
    REPORT_PEN_DATA: PenData,
    REPORT_PEN_DATA_OPTION: PenDataOption,
    REPORT_PEN_DATA_TIME_COUNT_SEQUENCE: PenDataTimeCountSequence,
}


def decode_input_report(raw: bytes) -> PenReport:
    """One interrupt-IN transfer → a pen report. Raises ProtocolError for anything else."""
    raw = bytes(raw)
    if not raw:
        raise LengthError("empty input report: an STU input report starts with its id byte")
    cls = _INPUT_CLASSES.get(raw[0])
    if cls is None:
        raise UnknownCodeError(f"input report id 0x{raw[0]:02x} is not a pen data report (01, 30, 34)")
    return cls.decode(raw)


class PenReportDecoder:
    """Splits a byte stream of back-to-back input reports (h11 style).

    USB delivers one report per interrupt transfer, so drivers mostly call
    ``decode_input_report``; this class exists for links that do not keep
    transfer boundaries (serial tunnelling, captures written to a file).
    An unknown report id is fatal: without its size the stream cannot be
    resynchronised, so the decoder raises and stays failed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._failed: ProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> PenReport | NeedData:
        if self._failed is not None:
            raise self._failed
        if not self._buffer:
            return NEED_DATA
        report_id = self._buffer[0]
        if report_id not in INPUT_REPORT_IDS:
            self._failed = UnknownCodeError(
                f"input report id 0x{report_id:02x} is not a pen data report; the stream cannot be resynchronised")
            raise self._failed
        size = REPORT_SIZES[report_id]
        if len(self._buffer) < size:
            return NEED_DATA
        raw = bytes(self._buffer[:size])
        del self._buffer[:size]
        return decode_input_report(raw)


# ---- feature reports ----------------------------------------------------------------

@dataclass(frozen=True)
class Status:
    status_code: int
    last_result_code: int
    status_word: int

    report_id: ClassVar[int] = REPORT_STATUS

    def encode(self) -> bytes:
        return struct.pack("<BBBH", self.report_id, _u8("status_code", self.status_code),
                           _u8("last_result_code", self.last_result_code), _u16("status_word", self.status_word))

    @classmethod
    def decode(cls, raw: bytes) -> "Status":
        _check_size(raw, cls.report_id, "Status")
        _, code, result, word = struct.unpack("<BBBH", raw)
        return cls(code, result, word)


@dataclass(frozen=True)
class _OneByte:
    """Base for the two-byte reports: id + one value byte."""

    value: int

    report_id: ClassVar[int] = 0
    name: ClassVar[str] = ""
    allowed: ClassVar[frozenset[int] | None] = None

    def encode(self) -> bytes:
        if self.allowed is not None and self.value not in self.allowed:
            raise LocalProtocolError(f"{self.name} value {self.value} is not one of {sorted(self.allowed)}")
        return bytes([self.report_id, _u8(self.name, self.value)])

    @classmethod
    def decode(cls, raw: bytes):  # type: ignore[no-untyped-def]
        _check_size(raw, cls.report_id, cls.name)
        if cls.allowed is not None and raw[1] not in cls.allowed:
            raise UnknownCodeError(f"{cls.name} value 0x{raw[1]:02x} is not one of {sorted(cls.allowed)}")
        return cls(raw[1])


@dataclass(frozen=True)
class Reset(_OneByte):
    """0 soft reset, 1 hard reset."""

    report_id: ClassVar[int] = REPORT_RESET
    name: ClassVar[str] = "Reset"
    allowed: ClassVar[frozenset[int] | None] = frozenset({0, 1})


@dataclass(frozen=True)
class EndCapture(_OneByte):
    value: int = 0
    report_id: ClassVar[int] = REPORT_END_CAPTURE
    name: ClassVar[str] = "EndCapture"


@dataclass(frozen=True)
class ClearScreen(_OneByte):
    value: int = 0
    report_id: ClassVar[int] = REPORT_CLEAR_SCREEN
    name: ClassVar[str] = "ClearScreen"


@dataclass(frozen=True)
class InkingMode(_OneByte):
    """0 off, 1 on: whether the pad draws ink on its own LCD as the pen moves."""

    report_id: ClassVar[int] = REPORT_INKING_MODE
    name: ClassVar[str] = "InkingMode"
    allowed: ClassVar[frozenset[int] | None] = frozenset({0, 1})


@dataclass(frozen=True)
class StartImageData(_OneByte):
    """encodingMode: 0x00 1-bit, 0x01 1-bit zlib, 0x02 16-bit, 0x04 24-bit; +0x10 bulk."""

    report_id: ClassVar[int] = REPORT_START_IMAGE_DATA
    name: ClassVar[str] = "StartImageData"
    allowed: ClassVar[frozenset[int] | None] = frozenset({0x00, 0x01, 0x02, 0x04, 0x10, 0x11, 0x12, 0x14})


@dataclass(frozen=True)
class EndImageData(_OneByte):
    """0 commit the uploaded image to the screen, 1 abandon it."""

    value: int = 0
    report_id: ClassVar[int] = REPORT_END_IMAGE_DATA
    name: ClassVar[str] = "EndImageData"
    allowed: ClassVar[frozenset[int] | None] = frozenset({0, 1})


@dataclass(frozen=True)
class PenDataOptionMode(_OneByte):
    """0 plain PenData, 1 + timeCount, 2 + sequence, 3 PenDataTimeCountSequence (0x34)."""

    report_id: ClassVar[int] = REPORT_PEN_DATA_OPTION_MODE
    name: ClassVar[str] = "PenDataOptionMode"
    allowed: ClassVar[frozenset[int] | None] = frozenset({0, 1, 2, 3})


@dataclass(frozen=True)
class Information:
    model_name: str
    firmware_major: int
    firmware_minor: int
    secure_ic: int
    secure_ic_version: bytes  # 4 bytes

    report_id: ClassVar[int] = REPORT_INFORMATION

    @property
    def firmware(self) -> str:
        return f"{self.firmware_major:x}.{self.firmware_minor:02x}"

    def encode(self) -> bytes:
        if len(self.secure_ic_version) != 4:
            raise LocalProtocolError("secure_ic_version is exactly 4 bytes")
        return (bytes([self.report_id]) + _ascii_field("model_name", self.model_name, 9)
                + bytes([_u8("firmware_major", self.firmware_major), _u8("firmware_minor", self.firmware_minor),
                         _u8("secure_ic", self.secure_ic)]) + bytes(self.secure_ic_version))

    @classmethod
    def decode(cls, raw: bytes) -> "Information":
        _check_size(raw, cls.report_id, "Information")
        return cls(_ascii(raw[1:10], "Information.modelName"), raw[10], raw[11], raw[12], bytes(raw[13:17]))


_CAPABILITY = struct.Struct(">BHHHHHBHBH")


@dataclass(frozen=True)
class Capability:
    tablet_max_x: int
    tablet_max_y: int
    tablet_max_pressure: int
    screen_width: int
    screen_height: int
    max_report_rate: int
    resolution: int  # tablet units per inch
    encoding_flag: int

    report_id: ClassVar[int] = REPORT_CAPABILITY

    def encode(self) -> bytes:
        return _CAPABILITY.pack(
            self.report_id, _u16("tablet_max_x", self.tablet_max_x), _u16("tablet_max_y", self.tablet_max_y),
            _u16("tablet_max_pressure", self.tablet_max_pressure), _u16("screen_width", self.screen_width),
            _u16("screen_height", self.screen_height), _u8("max_report_rate", self.max_report_rate),
            _u16("resolution", self.resolution), _u8("encoding_flag", self.encoding_flag), 0,
        )

    @classmethod
    def decode(cls, raw: bytes) -> "Capability":
        _check_size(raw, cls.report_id, "Capability")
        fields = _CAPABILITY.unpack(raw)
        return cls(*fields[1:9])


@dataclass(frozen=True)
class Uid2:
    uid2: str

    report_id: ClassVar[int] = REPORT_UID2

    def encode(self) -> bytes:
        return bytes([self.report_id]) + _ascii_field("uid2", self.uid2, 10)

    @classmethod
    def decode(cls, raw: bytes) -> "Uid2":
        _check_size(raw, cls.report_id, "Uid2")
        return cls(_ascii(raw[1:11], "Uid2"))


@dataclass(frozen=True)
class StartCapture:
    session_id: int

    report_id: ClassVar[int] = REPORT_START_CAPTURE

    def encode(self) -> bytes:
        if not 0 <= self.session_id <= 0xFFFFFFFF:
            raise LocalProtocolError(f"session_id={self.session_id} does not fit 32 bits")
        return struct.pack(">BI", self.report_id, self.session_id)

    @classmethod
    def decode(cls, raw: bytes) -> "StartCapture":
        _check_size(raw, cls.report_id, "StartCapture")
        return cls(struct.unpack(">BI", raw)[1])


@dataclass(frozen=True)
class ImageDataBlock:
    """Up to 253 bytes of image data; the report is always 256 bytes (zero padded)."""

    data: bytes

    report_id: ClassVar[int] = REPORT_IMAGE_DATA_BLOCK

    def encode(self) -> bytes:
        if len(self.data) > IMAGE_BLOCK_DATA_SIZE:
            raise LocalProtocolError(f"an HID ImageDataBlock carries at most 253 bytes, got {len(self.data)}")
        return (struct.pack("<BH", self.report_id, len(self.data)) + bytes(self.data)).ljust(
            REPORT_SIZES[self.report_id], b"\x00")

    @classmethod
    def decode(cls, raw: bytes) -> "ImageDataBlock":
        _check_size(raw, cls.report_id, "ImageDataBlock")
        length = raw[1] | raw[2] << 8
        if length > IMAGE_BLOCK_DATA_SIZE:
            raise LengthError(f"ImageDataBlock claims {length} data bytes; an HID block holds at most 253")
        return cls(bytes(raw[3:3 + length]))


FeatureReport = Union[Status, Reset, Information, Capability, Uid2, StartCapture, EndCapture, ClearScreen,
                      InkingMode, StartImageData, ImageDataBlock, EndImageData, PenDataOptionMode]

_FEATURE_CLASSES: dict[int, Any] = {
    REPORT_STATUS: Status, REPORT_RESET: Reset, REPORT_INFORMATION: Information,
    REPORT_CAPABILITY: Capability, REPORT_UID2: Uid2, REPORT_START_CAPTURE: StartCapture,
    REPORT_END_CAPTURE: EndCapture, REPORT_CLEAR_SCREEN: ClearScreen, REPORT_INKING_MODE: InkingMode,
    REPORT_START_IMAGE_DATA: StartImageData, REPORT_IMAGE_DATA_BLOCK: ImageDataBlock,
    REPORT_END_IMAGE_DATA: EndImageData, REPORT_PEN_DATA_OPTION_MODE: PenDataOptionMode,
}


def decode_feature_report(raw: bytes) -> FeatureReport:
    """A feature report (id byte first) → its dataclass. Raises ProtocolError for anything else."""
    raw = bytes(raw)
    if not raw:
        raise LengthError("empty feature report: it starts with its id byte")
    cls = _FEATURE_CLASSES.get(raw[0])
    if cls is None:
        raise UnknownCodeError(f"feature report id 0x{raw[0]:02x} is not one this codec knows")
    report: FeatureReport = cls.decode(raw)
    return report


def encode_report(report: FeatureReport | PenReport) -> bytes:
    """Any report → its bytes, id first (same as ``report.encode()``)."""
    return report.encode()


# ---- screen images --------------------------------------------------------------------

def image_size(mode: int, width: int, height: int) -> int:
    """Bytes of a full-screen image in an encoding mode (bulk flag ignored)."""
    base = mode & ~0x10
    if base == ENCODING_MODE_24BIT:
        return width * height * 3
    if base == ENCODING_MODE_16BIT:
        return width * height * 2
    if base == ENCODING_MODE_1BIT:
        return (width + 7) // 8 * height
    raise UnknownCodeError(f"image encoding mode 0x{mode:02x} is not supported (0x00 1-bit, 0x02 16-bit, 0x04 24-bit)")


def flatten_image(bgr: np.ndarray, mode: int) -> bytes:
    """An OpenCV BGR image (H×W×3 uint8) → the bytes a pad expects for ``mode``."""
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise LocalProtocolError(f"expected an H×W×3 uint8 BGR image, got shape {bgr.shape} {bgr.dtype}")
    base = mode & ~0x10
    if base == ENCODING_MODE_24BIT:
        return np.ascontiguousarray(bgr).tobytes()
    if base == ENCODING_MODE_16BIT:
        b = bgr[:, :, 0].astype(np.uint16)
        g = bgr[:, :, 1].astype(np.uint16)
        r = bgr[:, :, 2].astype(np.uint16)
        rgb565 = (r >> 3) << 11 | (g >> 2) << 5 | (b >> 3)
        return rgb565.astype(">u2").tobytes()
    if base == ENCODING_MODE_1BIT:
        gray = bgr.astype(np.uint16).sum(axis=2) // 3
        white = gray >= 128
        return np.packbits(white, axis=1).tobytes()
    raise LocalProtocolError(f"image encoding mode 0x{mode:02x} is not supported by flatten_image")


def unflatten_image(data: bytes, mode: int, width: int, height: int) -> np.ndarray:
    """Pad image bytes → an H×W×3 uint8 BGR image. Raises LengthError if the size is wrong."""
    want = image_size(mode, width, height)
    if len(data) != want:
        raise LengthError(f"a {width}×{height} image in mode 0x{mode:02x} is {want} bytes, got {len(data)}")
    base = mode & ~0x10
    if base == ENCODING_MODE_24BIT:
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    if base == ENCODING_MODE_16BIT:
        v = np.frombuffer(data, dtype=">u2").reshape(height, width).astype(np.uint16)
        r = ((v >> 11) & 0x1F) * 255 // 31
        g = ((v >> 5) & 0x3F) * 255 // 63
        b = (v & 0x1F) * 255 // 31
        return np.stack([b, g, r], axis=2).astype(np.uint8)
    packed = np.frombuffer(data, dtype=np.uint8).reshape(height, (width + 7) // 8)
    white = np.unpackbits(packed, axis=1)[:, :width].astype(np.uint8) * 255
    return np.repeat(white[:, :, None], 3, axis=2)


def image_blocks(data: bytes) -> list[ImageDataBlock]:
    """Split image bytes into HID ImageDataBlocks of 253 bytes (the last one shorter)."""
    return [ImageDataBlock(bytes(data[i:i + IMAGE_BLOCK_DATA_SIZE]))
            for i in range(0, len(data), IMAGE_BLOCK_DATA_SIZE)]


if TYPE_CHECKING:
    def _is_a_decoder(decoder: PenReportDecoder) -> Decoder[PenReport]:
        return decoder  # mypy proves the decoder keeps the shared sans-IO shape
