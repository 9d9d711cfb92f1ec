"""ASTM E1381 (CLSI LIS1-A) link layer and ASTM E1394 (CLSI LIS2-A2) records, sans-IO.

Rapid-test analyzers (pesticide-residue enzyme-inhibition readers, colloidal
gold strip readers) report results the way clinical analyzers do: E1394
records carried in E1381 frames over RS-232 or TCP.  This module is pure byte
arithmetic: it never reads a clock, sleeps or touches a port.  The caller
passes the current time (any monotonic float, in seconds) into every call
that can start or restart a timer, reads :attr:`deadline`, and calls
``handle_timeout(now)`` once that moment has passed (or ``expire_timer()`` if
it keeps its own timers).

Frame (one record, or one ≤240-byte piece of a long record)::

    +-----+----+------------------+---------+----+----+----+----+
    | STX | FN | text (≤240 B)    | ETB|ETX | C1 | C2 | CR | LF |
    | 02  |'1' | 'H|\\^&|…' CR    | 17 | 03 | 'B'| '2'| 0D | 0A |
    +-----+----+------------------+---------+----+----+----+----+
            \\______ checksum: sum of FN … ETB/ETX mod 256, as two
                      uppercase hex digits C1 C2 ______/

    FN   '1' for a session's first frame, then 2..7, 0, 1, … (mod 8);
         a retransmitted frame keeps its FN.
    ETB  more of this record follows in the next frame; ETX: record ends here.
    Max frame = 1 + 1 + 240 + 1 + 2 + 2 = 247 bytes.

Session (sender = instrument, receiver = computer)::

    sender    ENQ          STX 1 … ETX C1 C2 CR LF        STX 2 …        EOT
    receiver       ACK                               ACK         ACK
                   NAK = busy (retry ENQ after 10 s); ENQ = contention
                   (the instrument wins); NAK to a frame = send it again,
                   6 failures = abort with EOT; EOT instead of ACK =
                   "receiver interrupt" (please stop).
    timers    sender waits 15 s for any reply, receiver 30 s for the next
              frame or EOT; expiry aborts the session.

Records (E1394): one per line, CR-terminated, fields split by the delimiters
declared in the header itself (``H|\\^&``: field ``|``, repeat ``\\``,
component ``^``, escape ``&``)::

    H|\\^&|||RAPIDSIM^1.0|||||||P|LIS2-A2|20240101120000
    P|1
    O|1|S000001||^^^OPPEST|R
    R|1|^^^OPPEST|62.5|%|0^50|H||F||||20240101121500
    C|1|I|positive|G
    L|1|N

    nesting H → P → O → R → C, closed by L; every sequence number restarts
    at 1 under its parent (L is always 1).

Field values in :class:`Record` are modelled as::

    Field = str                       plain text            "62.5"
          | tuple[str, ...]           components (≥2)       ("", "", "", "OPPEST")
          | Repeats                   repeated values       Repeats(("a", ("b", "c")))

Decoding always yields this canonical form (trailing empty fields dropped);
``decode_record(encode_record(r)) == r`` for every canonical record.

Driving a state machine (the receiver here; the sender is symmetrical, with
``send_message(records, now)`` to start)::

    rx = AstmReceiver()
    while True:
        data = port.read_some(timeout=...)            # the caller's I/O
        rx.receive_data(data, now())
        if rx.deadline is not None and now() >= rx.deadline:
            rx.handle_timeout(now())
        port.write(rx.data_to_send())                  # ACK / NAK / EOT
        while (event := rx.next_event()) is not NEED_DATA:
            ...                                        # MessageReceived, SessionAborted, …

Errors (all from :mod:`firmware_bridge.errors`): ``FrameError`` (structure,
bad record type, undecodable text), ``ChecksumError``, ``LengthError``;
``LocalProtocolError`` when *our* caller asks for something unsendable.  The
link state machines never raise on remote input: a bad frame is NAKed and
reported as a :class:`FrameRejected` event.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Union

from firmware_bridge.errors import (
    ChecksumError,
    FrameError,
    LengthError,
    LocalProtocolError,
    ProtocolError,
)

__all__ = [
    # control bytes and limits
    "ENQ", "ACK", "NAK", "EOT", "STX", "ETX", "ETB", "CR", "LF",
    "MAX_TEXT", "MAX_FRAME", "MAX_MESSAGE", "MAX_RECORDS",
    "SENDER_TIMEOUT", "RECEIVER_TIMEOUT", "BUSY_DELAY", "MAX_FAILURES",
    # records
    "Delimiters", "DEFAULT_DELIMITERS", "Repeats", "Field", "Record",
    "encode_record", "decode_record", "encode_message", "decode_message",
    "format_timestamp", "parse_timestamp",
    "assign_sequence_numbers", "check_structure",
    # frames
    "Frame", "checksum", "encode_frame", "decode_frame", "message_frames",
    # link state machines and their events
    "NEED_DATA", "NeedData", "Event",
    "MessageReceived", "MessageSent", "SessionAborted", "MessageTooLarge", "SessionEnded",
    "FrameRejected", "FrameRetransmitted", "LinkBusy", "ContentionLost",
    "AstmReceiver", "AstmSender",
]

ENQ: Final = 0x05
ACK: Final = 0x06
NAK: Final = 0x15
EOT: Final = 0x04
STX: Final = 0x02
ETX: Final = 0x03
ETB: Final = 0x17
CR: Final = 0x0D
LF: Final = 0x0A

MAX_TEXT: Final = 240
MAX_FRAME: Final = 247
SENDER_TIMEOUT: Final = 15.0
RECEIVER_TIMEOUT: Final = 30.0
BUSY_DELAY: Final = 10.0
MAX_FAILURES: Final = 6
# Receiver limits per message (not in E1381/E1394, which set none): far above any real
# analyzer report (a 96-sample batch is ~600 records, ~60 KB) and small enough that a
# sender that never finishes a message cannot exhaust memory (4 MiB of short records
# costs ~80 MB of Python objects, hence the separate record cap).
MAX_MESSAGE: Final = 4 * 1024 * 1024
MAX_RECORDS: Final = 10_000
_TOO_LARGE_HEAD: Final = 1024  # bytes of an oversized message kept for diagnosis

# Control characters that may never appear inside frame text (CR ends records
# and is allowed).  Everything below 0x20 except CR, plus DEL for good measure
# on the encoding side; the decoder rejects the ones that break framing.
_FORBIDDEN_IN_TEXT: Final = frozenset(b for b in range(0x20) if b != CR)


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Delimiters:
    """The four delimiters an E1394 message declares in its header (H.2)."""

    field: str = "|"
    repeat: str = "\\"
    component: str = "^"
    escape: str = "&"

    def __post_init__(self) -> None:
        chars = (self.field, self.repeat, self.component, self.escape)
        if any(len(c) != 1 or not (0x21 <= ord(c) <= 0x7E) or c.isalnum() for c in chars):
            raise LocalProtocolError(
                f"delimiters {chars!r} must be single printable, non-alphanumeric ASCII characters"
            )
        if len(set(chars)) != 4:
            raise LocalProtocolError(f"delimiters {chars!r} must be four different characters")

    @property
    def declaration(self) -> str:
        """H.2 as written on the wire: repeat, component, escape (``\\^&``)."""
        return self.repeat + self.component + self.escape

    @classmethod
    def from_header(cls, text: str) -> Delimiters:
        """Read the delimiters from the start of an H record (``H|\\^&…``)."""
        if len(text) < 5 or text[0] != "H":
            raise FrameError(f"header record {text[:16]!r} is too short to declare delimiters; "
                             "it must start with 'H' and four delimiter characters, e.g. 'H|\\^&'")
        if len(text) > 5 and text[5] != text[1]:
            raise FrameError(f"header record {text[:16]!r}: the delimiter declaration must be followed "
                             "by the field delimiter")
        try:
            return cls(text[1], text[2], text[3], text[4])
        except LocalProtocolError as exc:
            raise FrameError(f"header record declares unusable delimiters: {exc}") from None


DEFAULT_DELIMITERS: Final = Delimiters()


@dataclass(frozen=True)
class Repeats:
    """A field holding repeated values (separated by the repeat delimiter)."""

    items: tuple[Union[str, tuple[str, ...]], ...]


Field = Union[str, tuple[str, ...], Repeats]


def _escape(text: str, d: Delimiters) -> str:
    if not any(c in text for c in (d.field, d.repeat, d.component, d.escape)) and all(
        0x20 <= ord(c) != 0x7F for c in text
    ):
        return text
    e = d.escape
    out: list[str] = []
    for ch in text:
        if ch == d.field:
            out.append(f"{e}F{e}")
        elif ch == d.component:
            out.append(f"{e}S{e}")
        elif ch == d.repeat:
            out.append(f"{e}R{e}")
        elif ch == e:
            out.append(f"{e}E{e}")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"{e}X{ord(ch):02X}{e}")
        else:
            out.append(ch)
    return "".join(out)


_HEX = frozenset("0123456789abcdefABCDEF")


def _unescape(text: str, d: Delimiters) -> str:
    """Undo E1394 escapes; unknown or unterminated sequences stay literal (lenient on input)."""
    e = d.escape
    if e not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != e:
            out.append(ch)
            i += 1
            continue
        j = text.find(e, i + 1)
        if j < 0:
            out.append(text[i:])
            break
        seq = text[i + 1 : j]
        if seq == "F":
            out.append(d.field)
        elif seq == "S":
            out.append(d.component)
        elif seq == "R":
            out.append(d.repeat)
        elif seq == "E":
            out.append(e)
        elif seq in ("H", "N"):
            pass  # highlighting on/off: presentation only
        elif len(seq) >= 3 and seq[0] == "X" and len(seq) % 2 == 1 and all(c in _HEX for c in seq[1:]):
            out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
        else:
            out.append(text[i : j + 1])
        i = j + 1
    return "".join(out)


def _encode_components(value: Union[str, tuple[str, ...]], d: Delimiters) -> str:
    if isinstance(value, str):
        return _escape(value, d)
    if isinstance(value, tuple) and all(isinstance(c, str) for c in value):
        return d.component.join(_escape(c, d) for c in value)
    raise LocalProtocolError(f"a component list must be a tuple of str, not {value!r}")


def _encode_field(value: Field, d: Delimiters) -> str:
    if isinstance(value, Repeats):
        return d.repeat.join(_encode_components(item, d) for item in value.items)
    return _encode_components(value, d)


def _decode_components(text: str, d: Delimiters) -> Union[str, tuple[str, ...]]:
    if d.component in text:
        return tuple(_unescape(part, d) for part in text.split(d.component))
    return _unescape(text, d)


def _decode_field(text: str, d: Delimiters) -> Field:
    if d.repeat in text:
        return Repeats(tuple(_decode_components(part, d) for part in text.split(d.repeat)))
    return _decode_components(text, d)


@dataclass(frozen=True)
class Record:
    """One E1394 record.

    ``type`` is field 1 (``'H'``, ``'P'``, ``'O'``, ``'R'``, ``'C'``, ``'Q'``,
    ``'L'``, or a manufacturer letter); ``fields`` holds fields 2, 3, … in
    order, so ASTM field *n* is ``fields[n - 2]`` — use :meth:`get` to avoid
    the off-by-two.  For an H record ``fields[0]`` is the delimiter
    declaration (``'\\^&'``); the encoder always writes the declaration of the
    delimiters it encodes with.
    """

    type: str
    fields: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        if len(self.type) != 1 or not ("A" <= self.type <= "Z"):
            raise LocalProtocolError(f"record type {self.type!r} must be one uppercase letter A-Z")

    @classmethod
    def from_fields(cls, rtype: str, values: Mapping[int, Field]) -> Record:
        """Build a record from ASTM-numbered fields (``{2: "1", 4: "62.5"}``); gaps are empty.

        For H, field 2 defaults to the standard delimiter declaration ``\\^&``.
        """
        if any(n < 2 for n in values):
            raise LocalProtocolError("ASTM field numbers start at 2 (field 1 is the record type)")
        if rtype == "H" and not values.get(2):
            values = {**values, 2: DEFAULT_DELIMITERS.declaration}  # H.2 is the delimiter declaration
        count = max(values, default=1) - 1
        return cls(rtype, tuple(values.get(n + 2, "") for n in range(count)))

    def get(self, n: int) -> Field:
        """ASTM field *n* (1 = record type); a field not present is ``''``."""
        if n == 1:
            return self.type
        if n < 1:
            raise LocalProtocolError(f"ASTM field numbers start at 1, got {n}")
        return self.fields[n - 2] if n - 2 < len(self.fields) else ""

    def component(self, n: int, i: int = 1) -> str:
        """Component *i* (1-based) of field *n*; the first repeat of a repeated field."""
        value = self.get(n)
        if isinstance(value, Repeats):
            value = value.items[0] if value.items else ""
        if isinstance(value, str):
            return value if i == 1 else ""
        return value[i - 1] if 0 < i <= len(value) else ""

    def text(self, n: int, separator: str = " ") -> str:
        """Field *n* flattened to one string: non-empty components joined by *separator*."""
        value = self.get(n)
        items: Iterable[Union[str, tuple[str, ...]]] = value.items if isinstance(value, Repeats) else (value,)
        parts: list[str] = []
        for item in items:
            if isinstance(item, str):
                parts.append(item)
            else:
                parts.extend(item)
        return separator.join(p for p in parts if p)

    @property
    def seq(self) -> str:
        """Field 2, the sequence number (for every record type but H)."""
        return self.component(2)


def encode_record(record: Record, delimiters: Delimiters = DEFAULT_DELIMITERS) -> str:
    """One record as wire text, without its terminating CR; trailing empty fields dropped."""
    d = delimiters
    encoded = [_encode_field(v, d) for v in record.fields]
    if record.type == "H":
        encoded = [d.declaration] + encoded[1:]
    while len(encoded) > (1 if record.type == "H" else 0) and encoded[-1] == "":
        encoded.pop()
    return d.field.join([record.type, *encoded])


def decode_record(text: str, delimiters: Delimiters = DEFAULT_DELIMITERS) -> Record:
    """Parse one record (no CR).  An H record declares its own delimiters and uses them.

    Raises FrameError for an empty line, a record type that is not one
    letter, or a malformed header.
    """
    if not text:
        raise FrameError("empty record: every E1394 record starts with a record type letter")
    rtype = text[0]
    if not ("A" <= rtype <= "Z"):
        raise FrameError(f"record {text[:16]!r} does not start with a record type letter A-Z")
    if rtype == "H":
        d = Delimiters.from_header(text)
        rest = text[6:].split(d.field) if len(text) > 6 else ([""] if len(text) == 6 else [])
        values: list[Field] = [d.declaration] + [_decode_field(f, d) for f in rest]
        while len(values) > 1 and values[-1] == "":
            values.pop()
        return Record("H", tuple(values))
    d = delimiters
    if len(text) > 1 and text[1] != d.field:
        raise FrameError(f"record {text[:16]!r}: the record type must be followed by the field delimiter {d.field!r}")
    parts = text[2:].split(d.field) if len(text) > 1 else []
    fields = [_decode_field(f, d) for f in parts]
    while fields and fields[-1] == "":
        fields.pop()
    return Record(rtype, tuple(fields))


def encode_message(records: Sequence[Record], delimiters: Delimiters = DEFAULT_DELIMITERS,
                   encoding: str = "latin-1") -> bytes:
    """Records as CR-terminated lines, encoded to bytes (no framing)."""
    text = "".join(encode_record(r, delimiters) + "\r" for r in records)
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(
            f"record text cannot be encoded as {encoding}: {exc}; choose an encoding the instrument "
            "and the host agree on (e.g. 'utf-8' or 'gbk')"
        ) from None


def decode_message(data: bytes, encoding: str = "latin-1",
                   delimiters: Delimiters = DEFAULT_DELIMITERS) -> list[Record]:
    """Split CR-separated record text (as reassembled from frames) into records.

    A header anywhere switches to the delimiters it declares.  Raises
    FrameError for undecodable bytes or a malformed record.
    """
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise FrameError(f"record text is not valid {encoding}: {exc}") from None
    records: list[Record] = []
    d = delimiters
    for line in text.split("\r"):
        if not line or line == "\n":
            continue
        line = line.lstrip("\n")
        record = decode_record(line, d)
        if record.type == "H":
            d = Delimiters.from_header(line)
        records.append(record)
    return records


def format_timestamp(moment: datetime) -> str:
    """``YYYYMMDDHHMMSS`` (the instrument's local clock; E1394 carries no zone)."""
    return f"{moment.year:04d}{moment.month:02d}{moment.day:02d}{moment.hour:02d}{moment.minute:02d}{moment.second:02d}"


def parse_timestamp(text: str) -> datetime:
    """Parse ``YYYYMMDD[HHMM[SS]]``; raises FrameError with the offending text."""
    if len(text) not in (8, 12, 14) or not text.isascii() or not text.isdigit():
        raise FrameError(f"timestamp {text!r} is not YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS")
    parts = [int(text[i : i + 2]) for i in range(4, len(text), 2)]
    parts += [0] * (5 - len(parts))
    try:
        return datetime(int(text[:4]), parts[0], parts[1], parts[2], parts[3], parts[4])
    except ValueError as exc:
        raise FrameError(f"timestamp {text!r} is not a real date/time: {exc}") from None


_LEVELS: Final = {"H": 0, "P": 1, "Q": 1, "L": 1, "O": 2, "R": 3}


def _walk_levels(records: Sequence[Record]) -> list[tuple[int, str]]:
    """(level, expected sequence number) for each record, following H→P→O→R→C."""
    counters: dict[tuple[int, bool], int] = {}
    out: list[tuple[int, str]] = []
    parent_level = -1  # level of the latest non-comment record
    for record in records:
        is_comment = record.type not in _LEVELS
        level = parent_level + 1 if is_comment else _LEVELS[record.type]
        for key in [k for k in counters if k[0] > level]:
            del counters[key]
        key = (level, is_comment)
        counters[key] = counters.get(key, 0) + 1
        expected = "1" if record.type == "L" else str(counters[key])
        out.append((level, expected))
        if not is_comment:
            parent_level = level
    return out


def assign_sequence_numbers(records: Sequence[Record]) -> list[Record]:
    """Rewrite field 2 of every record but H so each restarts at 1 under its parent."""
    result: list[Record] = []
    for record, (_, expected) in zip(records, _walk_levels(records)):
        if record.type == "H":
            result.append(record)
        else:
            rest = record.fields[1:] if record.fields else ()
            result.append(Record(record.type, (expected, *rest)))
    return result


def check_structure(records: Sequence[Record]) -> None:
    """Check one message: H first, L last, nesting H→P→O→R(→C), sequence numbers.

    Raises FrameError naming the first record that breaks a rule.
    """
    if not records or records[0].type != "H":
        raise FrameError("a message must start with an H (header) record")
    if records[-1].type != "L":
        raise FrameError("a message must end with an L (terminator) record")
    parent_level = 0
    for index, (record, (level, expected)) in enumerate(zip(records, _walk_levels(records))):
        if index and record.type == "H":
            raise FrameError(f"record {index + 1}: a second H inside one message")
        if record.type == "L" and index != len(records) - 1:
            raise FrameError(f"record {index + 1}: L before the end of the message")
        if index and level > parent_level + 1:
            raise FrameError(f"record {index + 1} ({record.type}) has no parent record at level {level - 1}")
        if record.type != "H" and record.seq != expected:
            raise FrameError(f"record {index + 1} ({record.type}) has sequence number {record.seq!r}, "
                             f"expected {expected!r}")
        if record.type in _LEVELS:
            parent_level = level


# ---------------------------------------------------------------- frames


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


# ---------------------------------------------------------------- events


class NeedData(enum.Enum):
    """``next_event()`` has nothing more until more bytes (or time) arrive."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True)
class MessageReceived:
    """A whole message (H … L) arrived.

    ``transcript`` is every byte received from the ENQ that opened the session
    (or from the end of the previous message in the same session) through
    the frame carrying the L record, noise and retransmissions included —
    the wire as it was.  ``text`` is the reassembled record text (CR-separated).
    """

    records: tuple[Record, ...]
    transcript: bytes
    text: bytes


@dataclass(frozen=True)
class MessageSent:
    """The receiver acknowledged every frame of the message."""

    records: tuple[Record, ...]


@dataclass(frozen=True)
class SessionAborted:
    """A session ended without a complete message; ``records`` holds what was lost.

    On the receiver: the partial records and the bytes received so far.  On the
    sender: the whole message, so the caller can queue it again.
    """

    reason: str
    records: tuple[Record, ...] = ()
    transcript: bytes = b""


@dataclass(frozen=True)
class MessageTooLarge(SessionAborted):
    """The sender passed the receiver's limit (``max_message`` bytes or ``max_records``
    records) before finishing a message: a broken or hostile instrument.

    The partial message is discarded and, unlike other aborts, every further
    frame of the session is refused with NAK — never ACKed, so the sender
    cannot believe the message was delivered — until it ends the session (EOT),
    starts a new one (ENQ) or the receiver timer expires.  ``records`` is empty
    and ``transcript`` holds only the first bytes (for diagnosis): keeping more
    is what the limit prevents.  ``limit`` is ``"bytes"`` or ``"records"``.  A
    sender that keeps going after the NAKs ignores the protocol; reset the link.
    """

    limit: str = "bytes"


@dataclass(frozen=True)
class SessionEnded:
    """The link returned to neutral with nothing pending (EOT, or a quiet timeout)."""

    reason: str


@dataclass(frozen=True)
class FrameRejected:
    """The receiver NAKed a frame (or dropped a fragment); the sender should resend.

    Consecutive rejections not yet collected by ``next_event`` are merged
    (``count`` grows, ``reason``/``frame`` are the latest), so a burst of line
    noise costs one event, not one per stray STX.
    """

    reason: str
    frame: bytes
    count: int = 1


@dataclass(frozen=True)
class FrameRetransmitted:
    """The sender is sending frame ``fn`` again after failure number ``failures``."""

    fn: int
    failures: int


@dataclass(frozen=True)
class LinkBusy:
    """The receiver answered ENQ with NAK; the sender retries after ``retry_in`` seconds."""

    retry_in: float


@dataclass(frozen=True)
class ContentionLost:
    """Both sides sent ENQ and the other side has priority: feed its bytes to a receiver."""

    retry_in: float


Event = Union[MessageReceived, MessageSent, SessionAborted, MessageTooLarge, SessionEnded, FrameRejected,
              FrameRetransmitted, LinkBusy, ContentionLost]


class _Endpoint:
    """Shared plumbing: outgoing buffer, event queue, deadline."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        """When (in the caller's clock) ``handle_timeout`` must be called; None = no timer."""
        return self._deadline

    def data_to_send(self) -> bytes:
        """Bytes the caller must write to the link now (may be empty)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | Literal[NeedData.NEED_DATA]:
        return self._events.popleft() if self._events else NEED_DATA

    def handle_timeout(self, now: float) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def expire_timer(self) -> None:
        """The caller's own timer for :attr:`deadline` fired."""
        if self._deadline is not None:
            self.handle_timeout(self._deadline)


# ---------------------------------------------------------------- receiver


class _RxState(enum.Enum):
    IDLE = "idle"
    RECEIVING = "receiving"


class AstmReceiver(_Endpoint):
    """E1381 receiver (the computer side): ACKs good frames, NAKs bad ones, reassembles messages.

    State machine::

        IDLE ──ENQ──► (busy? NAK : ACK) ──► RECEIVING
        RECEIVING ──frame ok, FN expected──► ACK, keep text; ETX ends a record;
                                             an L record completes the message
                  ──frame ok, FN = previous──► ACK again (our ACK was lost), ignore
                  ──bad checksum / FN / form──► NAK (FrameRejected)
                  ──EOT──────────────────────► IDLE (partial message → SessionAborted)
                  ──ENQ──────────────────────► sender restarted: drop partial, ACK
                  ──30 s without frame/EOT───► IDLE, partial discarded
                  ──> max_message bytes or───► REFUSING (partial → MessageTooLarge;
                    max_records records          the frame that crossed the limit is NAKed)
        REFUSING  ──any frame────────────────► NAK, content dropped unread
                  ──EOT / ENQ / timer────────► as in RECEIVING (the refusal ends with the session)

    Bytes outside frames that are not ENQ/EOT are line noise and ignored; an
    STX inside a frame restarts the frame.  Nothing here ever raises on
    remote input.

    ``hold_message_ack=True`` withholds the ACK of the frame that completes a
    message until the caller calls :meth:`acknowledge_message` — i.e. until
    it has safely stored the result.  The instrument keeps the message until
    that ACK, so a crash in between costs a re-send, never a result.  If the
    sender gives up first (EOT after its 15 s timer), the held ACK is dropped
    and the instrument will send the message again.

    Memory is bounded by ``max_message`` (bytes received since the previous
    message ended, noise and retransmissions included) and ``max_records``
    (records of the message so far).  A message beyond either is refused, not
    truncated and never ACKed to the end: ACKing the rest would let the
    instrument think a discarded result was delivered and delete it.
    """

    def __init__(self, *, timeout: float = RECEIVER_TIMEOUT, encoding: str = "latin-1",
                 hold_message_ack: bool = False, max_message: int = MAX_MESSAGE,
                 max_records: int = MAX_RECORDS) -> None:
        super().__init__()
        if timeout <= 0:
            raise LocalProtocolError("receiver timeout must be positive")
        if max_message < MAX_FRAME or max_records < 2:
            raise LocalProtocolError(f"max_message must be ≥ {MAX_FRAME} bytes and max_records ≥ 2")
        "x".encode(encoding)  # fail early (LookupError) on an unknown codec name
        self.timeout = timeout
        self.encoding = encoding
        self.busy = False
        self.hold_message_ack = hold_message_ack
        self.max_message = max_message
        self.max_records = max_records
        self._refusing = False
        self._held = False
        self._interrupt = False
        self._state = _RxState.IDLE
        self._frame: bytearray | None = None
        self._frame_len = 0
        self._reset_session()

    # -- public API

    @property
    def receiving(self) -> bool:
        return self._state is _RxState.RECEIVING

    @property
    def awaiting_acknowledgement(self) -> bool:
        """A completed message's final ACK is being held for :meth:`acknowledge_message`."""
        return self._held

    def acknowledge_message(self) -> None:
        """Release the held ACK of the last completed message (no-op when nothing is held)."""
        if self._held:
            self._held = False
            self._reply_ok()

    def interrupt(self) -> None:
        """Ask the sender to stop: the next good frame is answered with EOT instead of ACK."""
        self._interrupt = True

    def receive_data(self, data: bytes, now: float) -> None:
        i = 0
        n = len(data)
        while i < n:
            if self._state is _RxState.IDLE:
                j = data.find(ENQ, i)
                if j < 0:
                    return
                i = j + 1
                self._start_session(now)
                continue
            if self._frame is not None:
                i = self._continue_frame(data, i, now)
                continue
            b = data[i]
            if not self._refusing:
                self._transcript.append(b)
            i += 1
            if b == STX:
                self._frame = bytearray([STX])
                self._frame_len = 1
            elif b == EOT:
                self._end_session("EOT")
            elif b == ENQ:
                if self._has_partial():
                    self._abort("the sender started a new session (ENQ) in the middle of a message")
                self._start_session(now)
            # anything else between frames is line noise
        if len(self._transcript) > self.max_message:  # noise or a frame still arriving
            self._refuse("bytes")

    def handle_timeout(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if not self._refusing and (self._has_partial() or self._frame is not None):
            self._abort(f"no frame or EOT within {self.timeout:g} s; the partial message was discarded")
        else:
            self._events.append(SessionEnded(f"no frame or EOT within {self.timeout:g} s"))
        self._go_idle()

    # -- internals

    def _reset_session(self) -> None:
        self._held = False
        self._refusing = False
        self._last_fn: int | None = None
        self._text = bytearray()
        self._transcript = bytearray()
        self._reset_message()

    def _reset_message(self) -> None:
        self._records: list[Record] = []
        self._message_text = bytearray()
        self._delimiters = DEFAULT_DELIMITERS
        self._discarding = False

    def _has_partial(self) -> bool:
        return bool(self._records or self._text or self._discarding)

    def _start_session(self, now: float) -> None:
        self._reset_session()
        self._frame = None
        self._transcript.append(ENQ)
        if self.busy:
            self._out.append(NAK)
            self._go_idle()
            return
        self._out.append(ACK)
        self._state = _RxState.RECEIVING
        self._deadline = now + self.timeout

    def _go_idle(self) -> None:
        self._state = _RxState.IDLE
        self._deadline = None
        self._frame = None
        self._reset_session()

    def _end_session(self, why: str) -> None:
        if self._has_partial():
            self._abort(f"{why} before the message's L record; the partial message was discarded")
        else:
            self._events.append(SessionEnded(why))
        self._go_idle()

    def _abort(self, reason: str) -> None:
        self._events.append(SessionAborted(reason, tuple(self._records), bytes(self._transcript)))
        self._text.clear()
        self._reset_message()
        self._transcript.clear()

    def _refuse(self, limit: Literal["bytes", "records"]) -> None:
        """Drop the message in progress and refuse the rest of the session (see the state machine)."""
        if limit == "bytes":
            reason = (f"the instrument sent more than {self.max_message} bytes without finishing a message "
                      f"({len(self._records)} records so far)")
        else:
            reason = f"the instrument sent more than {self.max_records} records in one message"
        self._events.append(MessageTooLarge(reason + "; the message was refused", (),
                                            bytes(self._transcript[:_TOO_LARGE_HEAD]), limit))
        self._text.clear()
        self._reset_message()
        self._transcript.clear()
        self._refusing = True

    def _continue_frame(self, data: bytes, i: int, now: float) -> int:
        assert self._frame is not None
        n = len(data)
        lf = data.find(LF, i)
        stop = lf if lf >= 0 else n
        stx = data.find(STX, i, stop)
        if stx >= 0:
            # A new STX before this frame ended: the fragment was noise or a truncated
            # frame.  No reply: E1381 answers complete frames only, and a NAK here
            # would be a second reply to the one frame the sender is waiting on.
            self._append_frame_bytes(data[i:stx])
            if not self._refusing:
                self._transcript += data[i:stx]
            self._add_rejection(FrameRejected(f"frame cut short by a new STX after {self._frame_len} bytes",
                                              bytes(self._frame)))
            if not self._refusing:
                self._transcript.append(STX)
            self._frame = bytearray([STX])
            self._frame_len = 1
            return stx + 1
        if lf < 0:
            self._append_frame_bytes(data[i:])
            if not self._refusing:
                self._transcript += data[i:]
            return n
        self._append_frame_bytes(data[i : lf + 1])
        if not self._refusing:
            self._transcript += data[i : lf + 1]
        raw = bytes(self._frame)
        length = self._frame_len
        self._frame = None
        if not self._refusing and len(self._transcript) > self.max_message:
            self._refuse("bytes")  # this frame crossed the limit: NAK it below, never ACK
        if self._refusing:
            self._reject("the message in progress was refused for its size; frames are NAKed until the "
                          "sender ends the session", raw[:MAX_FRAME], now)
        elif length > MAX_FRAME:
            self._reject(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte maximum", raw, now)
        else:
            self._complete_frame(raw, now)
        return lf + 1

    def _append_frame_bytes(self, chunk: bytes) -> None:
        assert self._frame is not None
        self._frame_len += len(chunk)
        room = MAX_FRAME + 1 - len(self._frame)
        if room > 0:
            self._frame += chunk[:room]

    def _add_rejection(self, event: FrameRejected) -> None:
        last = self._events[-1] if self._events else None
        if isinstance(last, FrameRejected):
            self._events[-1] = FrameRejected(event.reason, event.frame, last.count + event.count)
        else:
            self._events.append(event)

    def _reject(self, reason: str, raw: bytes, now: float) -> None:
        self._add_rejection(FrameRejected(reason, raw))
        self._out.append(NAK)
        self._deadline = now + self.timeout

    def _reply_ok(self) -> None:
        if self._interrupt:
            self._interrupt = False
            self._out.append(EOT)
        else:
            self._out.append(ACK)

    def _complete_frame(self, raw: bytes, now: float) -> None:
        try:
            frame = decode_frame(raw)
        except ProtocolError as exc:
            self._reject(str(exc), raw, now)
            return
        self._deadline = now + self.timeout
        if self._last_fn is not None and frame.fn == self._last_fn:
            if not self._held:  # (while an ACK is held the sender must keep waiting for it)
                self._reply_ok()  # a retransmission of a frame we already took: our ACK was lost
            return
        expected = 1 if self._last_fn is None else (self._last_fn + 1) % 8
        if frame.fn != expected:
            self._reject(f"frame number {frame.fn}, expected {expected}", raw, now)
            return
        self._last_fn = frame.fn
        self._text += frame.text
        completed = self._take_records() if frame.final else False
        if self._refusing:  # this frame's records went past max_records
            self._out.append(NAK)
        elif completed and self.hold_message_ack:
            self._held = True
        else:
            self._reply_ok()

    def _take_records(self) -> bool:
        """Decode the records of a finished ETX frame; True when one completed a message."""
        completed = False
        text = bytes(self._text)
        self._text.clear()
        lines = text.split(b"\r")
        for line in lines:
            if not line:
                continue
            if self._discarding and not line.startswith(b"H"):
                continue
            try:
                decoded = line.decode(self.encoding)
                if decoded.startswith("H"):
                    if self._records:
                        self._abort("a new H record arrived before the L record of the previous message")
                    self._reset_message()
                    self._delimiters = Delimiters.from_header(decoded)
                elif not self._records:
                    raise FrameError(f"{decoded[:1]!r} record before any H header record")
                record = decode_record(decoded, self._delimiters)
            except (UnicodeDecodeError, LookupError) as exc:
                self._abort(f"record text is not valid {self.encoding}: {exc}")
                self._discarding = True
                continue
            except ProtocolError as exc:
                self._abort(f"malformed record: {exc}")
                self._discarding = True
                continue
            self._discarding = False
            if len(self._records) >= self.max_records:
                self._refuse("records")
                break
            self._records.append(record)
            self._message_text += line + b"\r"
            if record.type == "L":
                self._events.append(MessageReceived(tuple(self._records), bytes(self._transcript),
                                                    bytes(self._message_text)))
                self._transcript.clear()
                self._reset_message()
                completed = True
        return completed


# ---------------------------------------------------------------- sender


class _TxState(enum.Enum):
    IDLE = "idle"
    ESTABLISHING = "establishing"   # ENQ sent, waiting for ACK/NAK/ENQ
    TRANSFERRING = "transferring"   # a frame sent, waiting for its reply
    WAITING = "waiting"             # backing off before the next ENQ


class AstmSender(_Endpoint):
    """E1381 sender (the instrument side): one message per session.

    State machine::

        IDLE ──send_message──► ENQ ► ESTABLISHING
        ESTABLISHING ──ACK──► frame 1 ► TRANSFERRING
                     ──NAK──► WAITING (busy_delay, 10 s) ──► ENQ again
                     ──ENQ──► contention: priority → WAITING 1 s → ENQ;
                              no priority → ContentionLost, WAITING 20 s
                     ──15 s──► EOT, SessionAborted (caller may queue again)
        TRANSFERRING ──ACK──► next frame, or EOT + MessageSent after the last
                     ──EOT──► receiver interrupt: honoured → EOT, SessionAborted;
                              ignored → taken as ACK
                     ──NAK / any other byte──► resend the same frame (same FN);
                              the 6th failure → EOT, SessionAborted
                     ──15 s──► EOT, SessionAborted
        WAITING ──deadline──► ENQ ► ESTABLISHING

    ``SessionAborted.records`` carries the message back, so an instrument
    that must never lose a result re-queues it.
    """

    def __init__(self, *, reply_timeout: float = SENDER_TIMEOUT, busy_delay: float = BUSY_DELAY,
                 priority: bool = True, max_failures: int = MAX_FAILURES, honour_interrupts: bool = True,
                 delimiters: Delimiters = DEFAULT_DELIMITERS, encoding: str = "latin-1",
                 max_text: int = MAX_TEXT) -> None:
        super().__init__()
        if reply_timeout <= 0 or busy_delay < 0 or max_failures < 1:
            raise LocalProtocolError("reply_timeout must be > 0, busy_delay ≥ 0 and max_failures ≥ 1")
        self.reply_timeout = reply_timeout
        self.busy_delay = busy_delay
        self.priority = priority
        self.contention_delay = 1.0 if priority else 20.0
        self.max_failures = max_failures
        self.honour_interrupts = honour_interrupts
        self.delimiters = delimiters
        self.encoding = encoding
        self.max_text = max_text
        self._state = _TxState.IDLE
        self._message: tuple[Record, ...] = ()
        self._frames: list[bytes] = []
        self._index = 0
        self._failures = 0

    @property
    def idle(self) -> bool:
        """True when a new message may be handed to :meth:`send_message`."""
        return self._state is _TxState.IDLE

    @property
    def current_message(self) -> tuple[Record, ...]:
        """The message being sent (empty when idle)."""
        return self._message

    @property
    def frames(self) -> tuple[bytes, ...]:
        """The encoded frames of the current message."""
        return tuple(self._frames)

    @property
    def frame_index(self) -> int:
        """Index of the frame awaiting its reply (meaningful while transferring)."""
        return self._index

    def send_message(self, records: Sequence[Record], now: float) -> None:
        """Start a session for *records*: ENQ goes out, the 15 s timer starts."""
        if not self.idle:
            raise LocalProtocolError("a message is already being sent; wait for MessageSent or SessionAborted")
        if not records:
            raise LocalProtocolError("a message needs at least one record")
        self._frames = message_frames(records, delimiters=self.delimiters, encoding=self.encoding,
                                      max_text=self.max_text)
        self._message = tuple(records)
        self._establish(now)

    def abort(self, now: float, reason: str = "the sender aborted the message") -> None:
        """Give up the current session: EOT goes out, SessionAborted carries the message back."""
        if self.idle:
            return
        if self._state is not _TxState.WAITING:
            self._out.append(EOT)
        self._finish_abort(reason)

    def receive_data(self, data: bytes, now: float) -> None:
        for b in data:
            if self._state is _TxState.ESTABLISHING:
                if b == ACK:
                    self._state = _TxState.TRANSFERRING
                    self._index = 0
                    self._failures = 0
                    self._send_frame(now)
                elif b == NAK:
                    self._wait(now, self.busy_delay)
                    self._events.append(LinkBusy(self.busy_delay))
                elif b == ENQ:
                    self._wait(now, self.contention_delay)
                    if not self.priority:
                        self._events.append(ContentionLost(self.contention_delay))
                # anything else: noise; the reply timer still runs
            elif self._state is _TxState.TRANSFERRING:
                if b == ACK or (b == EOT and not self.honour_interrupts):
                    self._index += 1
                    self._failures = 0
                    if self._index >= len(self._frames):
                        self._out.append(EOT)
                        message = self._message
                        self._go_idle()
                        self._events.append(MessageSent(message))
                        return  # bytes after the last reply belong to no session of ours
                    self._send_frame(now)
                elif b == EOT:
                    if self._index + 1 >= len(self._frames):
                        # The interrupt also acknowledges the last frame: the message is through.
                        message = self._message
                        self._go_idle()
                        self._events.append(MessageSent(message))
                        return
                    self._out.append(EOT)
                    self._finish_abort("the receiver asked to interrupt (EOT instead of ACK)")
                    return
                else:
                    self._failures += 1
                    if self._failures >= self.max_failures:
                        self._out.append(EOT)
                        self._finish_abort(f"frame {self._current_fn()} failed {self._failures} times "
                                           "(NAK or garbled reply); session aborted")
                        return
                    self._events.append(FrameRetransmitted(self._current_fn(), self._failures))
                    self._send_frame(now)
            # IDLE / WAITING: replies to nothing of ours are ignored

    def handle_timeout(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if self._state is _TxState.WAITING:
            self._establish(now)
        elif self._state is _TxState.ESTABLISHING:
            self._out.append(EOT)
            self._finish_abort(f"no reply to ENQ within {self.reply_timeout:g} s")
        elif self._state is _TxState.TRANSFERRING:
            self._out.append(EOT)
            self._finish_abort(f"no reply to frame {self._current_fn()} within {self.reply_timeout:g} s")

    # -- internals

    def _current_fn(self) -> int:
        return self._frames[self._index][1] - 0x30

    def _establish(self, now: float) -> None:
        self._state = _TxState.ESTABLISHING
        self._out.append(ENQ)
        self._deadline = now + self.reply_timeout

    def _wait(self, now: float, delay: float) -> None:
        self._state = _TxState.WAITING
        self._deadline = now + delay

    def _send_frame(self, now: float) -> None:
        self._out += self._frames[self._index]
        self._deadline = now + self.reply_timeout

    def _go_idle(self) -> None:
        self._state = _TxState.IDLE
        self._deadline = None
        self._message = ()
        self._frames = []
        self._index = 0
        self._failures = 0

    def _finish_abort(self, reason: str) -> None:
        message = self._message
        self._go_idle()
        self._events.append(SessionAborted(reason, message))
