"""ASTM E1394 (CLSI LIS2-A2) records: delimiters, escapes, fields, messages, structure checks.

The text layer only: a message here is CR-separated record text, with no
frames, checksums or link timing (those live in ``frames`` and the link
state machines).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from firmware_bridge.errors import FrameError, LocalProtocolError


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

    items: tuple[str | tuple[str, ...], ...]


Field = str | tuple[str, ...] | Repeats


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


def _encode_components(value: str | tuple[str, ...], d: Delimiters) -> str:
    if isinstance(value, str):
        return _escape(value, d)
    if isinstance(value, tuple) and all(isinstance(c, str) for c in value):
        return d.component.join(_escape(c, d) for c in value)
    raise LocalProtocolError(f"a component list must be a tuple of str, not {value!r}")


def _encode_field(value: Field, d: Delimiters) -> str:
    if isinstance(value, Repeats):
        return d.repeat.join(_encode_components(item, d) for item in value.items)
    return _encode_components(value, d)


def _decode_components(text: str, d: Delimiters) -> str | tuple[str, ...]:
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
        items: Iterable[str | tuple[str, ...]] = value.items if isinstance(value, Repeats) else (value,)
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
