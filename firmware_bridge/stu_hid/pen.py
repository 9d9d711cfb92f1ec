"""STU pen data: the input reports (0x01, 0x30, 0x34) and a decoder for a stream of them."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from firmware_bridge.errors import LengthError, LocalProtocolError, ProtocolError, UnknownCodeError
from firmware_bridge.sansio import NEED_DATA, NeedData
from firmware_bridge.stu_hid.constants import (
    INPUT_REPORT_IDS,
    REPORT_PEN_DATA,
    REPORT_PEN_DATA_OPTION,
    REPORT_PEN_DATA_TIME_COUNT_SEQUENCE,
    REPORT_SIZES,
)
from firmware_bridge.stu_hid.fields import check_report_size, checked_u16

_PEN = struct.Struct(">BBHH")


def _pen_bytes(rdy: bool, sw: int, pressure: int, x: int, y: int) -> bytes:
    if not 0 <= sw <= 7:
        raise LocalProtocolError(f"sw={sw} does not fit the 3-bit switch field")
    if not 0 <= pressure <= 0xFFF:
        raise LocalProtocolError(f"pressure={pressure} does not fit 12 bits")
    head = (0x80 if rdy else 0) | sw << 4 | pressure >> 8
    return _PEN.pack(head, pressure & 0xFF, checked_u16("x", x), checked_u16("y", y))


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
    def decode(cls, raw: bytes) -> PenData:
        check_report_size(raw, cls.report_id, "PenData")
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
                + struct.pack(">H", checked_u16("option", self.option)))

    @classmethod
    def decode(cls, raw: bytes) -> PenDataOption:
        check_report_size(raw, cls.report_id, "PenDataOption")
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
                + struct.pack(">HH", checked_u16("time_count", self.time_count), checked_u16("sequence", self.sequence)))

    @classmethod
    def decode(cls, raw: bytes) -> PenDataTimeCountSequence:
        check_report_size(raw, cls.report_id, "PenDataTimeCountSequence")
        time_count, sequence = struct.unpack_from(">HH", raw, 7)
        return cls(*_pen_fields(raw), time_count, sequence)


PenReport = PenData | PenDataOption | PenDataTimeCountSequence
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
