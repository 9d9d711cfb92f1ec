"""STU feature reports (GET/SET_REPORT over the control pipe): status, identity, capture and image upload."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from firmware_bridge.errors import LengthError, LocalProtocolError, UnknownCodeError
from firmware_bridge.stu_hid.constants import (
    IMAGE_BLOCK_DATA_SIZE,
    REPORT_CAPABILITY,
    REPORT_CLEAR_SCREEN,
    REPORT_END_CAPTURE,
    REPORT_END_IMAGE_DATA,
    REPORT_IMAGE_DATA_BLOCK,
    REPORT_INFORMATION,
    REPORT_INKING_MODE,
    REPORT_PEN_DATA_OPTION_MODE,
    REPORT_RESET,
    REPORT_SIZES,
    REPORT_START_CAPTURE,
    REPORT_START_IMAGE_DATA,
    REPORT_STATUS,
    REPORT_UID2,
)
from firmware_bridge.stu_hid.fields import ascii_field, ascii_text, check_report_size, checked_u8, checked_u16
from firmware_bridge.stu_hid.pen import PenReport


@dataclass(frozen=True)
class Status:
    status_code: int
    last_result_code: int
    status_word: int

    report_id: ClassVar[int] = REPORT_STATUS

    def encode(self) -> bytes:
        return struct.pack("<BBBH", self.report_id, checked_u8("status_code", self.status_code),
                           checked_u8("last_result_code", self.last_result_code), checked_u16("status_word", self.status_word))

    @classmethod
    def decode(cls, raw: bytes) -> Status:
        check_report_size(raw, cls.report_id, "Status")
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
        return bytes([self.report_id, checked_u8(self.name, self.value)])

    @classmethod
    def decode(cls, raw: bytes):  # type: ignore[no-untyped-def]
        check_report_size(raw, cls.report_id, cls.name)
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
        return (bytes([self.report_id]) + ascii_field("model_name", self.model_name, 9)
                + bytes([checked_u8("firmware_major", self.firmware_major), checked_u8("firmware_minor", self.firmware_minor),
                         checked_u8("secure_ic", self.secure_ic)]) + bytes(self.secure_ic_version))

    @classmethod
    def decode(cls, raw: bytes) -> Information:
        check_report_size(raw, cls.report_id, "Information")
        return cls(ascii_text(raw[1:10], "Information.modelName"), raw[10], raw[11], raw[12], bytes(raw[13:17]))


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
            self.report_id, checked_u16("tablet_max_x", self.tablet_max_x), checked_u16("tablet_max_y", self.tablet_max_y),
            checked_u16("tablet_max_pressure", self.tablet_max_pressure), checked_u16("screen_width", self.screen_width),
            checked_u16("screen_height", self.screen_height), checked_u8("max_report_rate", self.max_report_rate),
            checked_u16("resolution", self.resolution), checked_u8("encoding_flag", self.encoding_flag), 0,
        )

    @classmethod
    def decode(cls, raw: bytes) -> Capability:
        check_report_size(raw, cls.report_id, "Capability")
        fields = _CAPABILITY.unpack(raw)
        return cls(*fields[1:9])


@dataclass(frozen=True)
class Uid2:
    uid2: str

    report_id: ClassVar[int] = REPORT_UID2

    def encode(self) -> bytes:
        return bytes([self.report_id]) + ascii_field("uid2", self.uid2, 10)

    @classmethod
    def decode(cls, raw: bytes) -> Uid2:
        check_report_size(raw, cls.report_id, "Uid2")
        return cls(ascii_text(raw[1:11], "Uid2"))


@dataclass(frozen=True)
class StartCapture:
    session_id: int

    report_id: ClassVar[int] = REPORT_START_CAPTURE

    def encode(self) -> bytes:
        if not 0 <= self.session_id <= 0xFFFFFFFF:
            raise LocalProtocolError(f"session_id={self.session_id} does not fit 32 bits")
        return struct.pack(">BI", self.report_id, self.session_id)

    @classmethod
    def decode(cls, raw: bytes) -> StartCapture:
        check_report_size(raw, cls.report_id, "StartCapture")
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
    def decode(cls, raw: bytes) -> ImageDataBlock:
        check_report_size(raw, cls.report_id, "ImageDataBlock")
        length = raw[1] | raw[2] << 8
        if length > IMAGE_BLOCK_DATA_SIZE:
            raise LengthError(f"ImageDataBlock claims {length} data bytes; an HID block holds at most 253")
        return cls(bytes(raw[3:3 + length]))


FeatureReport = (
    Status | Reset | Information | Capability | Uid2 | StartCapture | EndCapture | ClearScreen | InkingMode
    | StartImageData | ImageDataBlock | EndImageData | PenDataOptionMode
)

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
