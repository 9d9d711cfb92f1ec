"""ASTM E1381 frames: ``STX FN text ETB|ETX C1 C2 CR LF`` and splitting a message into them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from firmware_bridge.astm.constants import CR, ETB, ETX, MAX_FRAME, MAX_TEXT, STX
from firmware_bridge.astm.records import DEFAULT_DELIMITERS, Delimiters, Record, encode_message
from firmware_bridge.errors import ChecksumError, FrameError, LengthError, LocalProtocolError

# Control characters that may never appear inside frame text (CR ends records
# and is allowed).  Everything below 0x20 except CR, plus DEL for good measure
# on the encoding side; the decoder rejects the ones that break framing.
_FORBIDDEN_IN_TEXT: Final = frozenset(b for b in range(0x20) if b != CR)


@dataclass(frozen=True)
class Frame:
    """One E1381 frame: number, text (≤240 bytes) and whether it ends a record (ETX)."""

    fn: int
    text: bytes
    final: bool

    def encode(self) -> bytes:
        return encode_frame(self.fn, self.text, self.final)


def checksum(body: bytes) -> bytes:
    """Two uppercase hex digits: sum of FN … ETB/ETX modulo 256."""
    return b"%02X" % (sum(body) & 0xFF)


def encode_frame(fn: int, text: bytes, final: bool) -> bytes:
    """``STX FN text ETB|ETX C1 C2 CR LF``; raises LocalProtocolError for an unsendable frame."""
    if not 0 <= fn <= 7:
        raise LocalProtocolError(f"frame number {fn} is outside 0..7")
    if len(text) > MAX_TEXT:
        raise LocalProtocolError(f"frame text of {len(text)} bytes exceeds {MAX_TEXT}; split it with message_frames()")
    bad = next((b for b in text if b in _FORBIDDEN_IN_TEXT), None)
    if bad is not None:
        raise LocalProtocolError(f"frame text contains control byte 0x{bad:02X}; escape it in the record (&Xhh&)")
    body = bytes([0x30 + fn]) + text + bytes([ETX if final else ETB])
    return bytes([STX]) + body + checksum(body) + b"\r\n"


def decode_frame(data: bytes) -> Frame:
    """Parse one complete frame, ``STX`` through ``LF``; raise the specific ProtocolError."""
    if len(data) < 7:
        raise LengthError(f"frame of {len(data)} bytes is shorter than the 7-byte minimum")
    if len(data) > MAX_FRAME:
        raise LengthError(f"frame of {len(data)} bytes exceeds the {MAX_FRAME}-byte maximum")
    if data[0] != STX:
        raise FrameError(f"frame starts with 0x{data[0]:02X}, not STX")
    if data[-2:] != b"\r\n":
        raise FrameError("frame does not end with CR LF")
    terminator = data[-5]
    if terminator not in (ETX, ETB):
        raise FrameError(f"frame has 0x{terminator:02X} where ETX or ETB belongs")
    fn_byte = data[1]
    if not 0x30 <= fn_byte <= 0x37:
        raise FrameError(f"frame number 0x{fn_byte:02X} is not an ASCII digit 0-7")
    text = data[2:-5]
    bad = next((b for b in text if b in _FORBIDDEN_IN_TEXT), None)
    if bad is not None:
        raise FrameError(f"frame text contains control byte 0x{bad:02X}")
    received = data[-4:-2]
    expected = checksum(data[1:-4])
    if received.upper() != expected:
        raise ChecksumError(f"frame checksum {received!r} does not match computed {expected.decode()}")
    return Frame(fn_byte - 0x30, text, terminator == ETX)


def message_frames(records: Sequence[Record], *, delimiters: Delimiters = DEFAULT_DELIMITERS,
                   encoding: str = "latin-1", first_fn: int = 1, max_text: int = MAX_TEXT) -> list[bytes]:
    """Frame a message: each record starts a new frame; long ones split over ETB frames."""
    if not 1 <= max_text <= MAX_TEXT:
        raise LocalProtocolError(f"max_text {max_text} must be within 1..{MAX_TEXT}")
    frames: list[bytes] = []
    fn = first_fn % 8
    for record in records:
        text = encode_message([record], delimiters, encoding)
        pieces = [text[i : i + max_text] for i in range(0, len(text), max_text)]
        for index, piece in enumerate(pieces):
            frames.append(encode_frame(fn, piece, index == len(pieces) - 1))
            fn = (fn + 1) % 8
    return frames
