"""Field checks shared by the STU report classes: sizes, integer ranges, ASCII text."""

from __future__ import annotations

from firmware_bridge.errors import LengthError, LocalProtocolError, ProtocolError, UnknownCodeError
from firmware_bridge.stu_hid.constants import REPORT_SIZES


def check_report_size(raw: bytes, report_id: int, name: str) -> None:
    if not raw:
        raise LengthError(f"empty {name} report; a report starts with its id byte 0x{report_id:02x}")
    if raw[0] != report_id:
        raise UnknownCodeError(f"expected {name} report 0x{report_id:02x}, got report id 0x{raw[0]:02x}")
    want = REPORT_SIZES[report_id]
    if len(raw) != want:
        raise LengthError(f"{name} report 0x{report_id:02x} is {want} bytes, got {len(raw)}")


def checked_u16(name: str, value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{name}={value} does not fit an unsigned 16-bit field")
    return value


def checked_u8(name: str, value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise LocalProtocolError(f"{name}={value} does not fit an unsigned 8-bit field")
    return value


def ascii_text(raw: bytes, name: str) -> str:
    text = raw.split(b"\x00", 1)[0]
    try:
        return text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{name} holds non-ASCII bytes {text!r}; the pad sent a corrupt report") from exc


def ascii_field(name: str, text: str, width: int) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{name} {text!r} must be ASCII") from exc
    if len(raw) > width:
        raise LocalProtocolError(f"{name} {text!r} is longer than {width} bytes")
    return raw.ljust(width, b"\x00")
