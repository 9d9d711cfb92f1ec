"""The file-name policy: which names read from a recorder's volume are refused, and why.

Every directory entry name on a device is hostile data (the recorder's file system is
written by firmware we do not control, or by whoever had the card): a name is checked here
before it is used at all, and is only ever passed as one component relative to an open
directory. Kept apart from the USB driver so the security-critical rules are in one short
module with their own tests. Recording names (``<serial>_<userNo>_<start>_<seq>[_IMP].<ext>``)
are parsed here too: a name that does not parse is kept as an unparsed file, never dropped."""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

DEFAULT_NAME_PATTERN = r"(?P<serial>\d{7})_(?P<user_no>\d{6})_(?P<start>\d{14})_(?P<seq>\d{4})(?P<imp>_IMP)?\.(?P<ext>avi|mp4|wav|jpg)"

MAX_NAME_BYTES = 200
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}


def unsafe_name_reason(name: str) -> str | None:
    """Why a directory entry name from a device must not be used, or None if it is plain data we accept.

    Cheap checks first: a volume may list up to ``max_entries`` names, and a printable name
    (``str.isprintable``: no control, format, surrogate or unassigned characters) needs no
    per-character look-up.
    """
    if name in ("", ".", ".."):
        return "dot or empty name"
    if _over_long(name):
        return f"name is longer than {MAX_NAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "name contains a path separator"
    if re.match(r"[A-Za-z]:", name):
        return "name looks like an absolute (drive letter) path"
    if name.isprintable():
        return None
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in name):
        return "name is not valid UTF-8"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "name contains control characters"
    if any(c in _BIDI for c in name):
        return "name contains bidirectional override characters"
    return None


def _over_long(name: str) -> bool:
    """More than ``MAX_NAME_BYTES`` as the file system stores it (the bytes a non-UTF-8 name came as)?"""
    if len(name) * 4 <= MAX_NAME_BYTES:
        return False  # four bytes per character at most
    try:
        return len(os.fsencode(name)) > MAX_NAME_BYTES
    except UnicodeEncodeError:  # a lone surrogate that no file system name decodes to
        return len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES


def display_name(name: str) -> str:
    """A printable, unambiguous rendering for logs and operators (never for paths)."""
    return ascii(name)[1:-1] if not name.isprintable() or any(0xDC80 <= ord(c) <= 0xDCFF for c in name) else name


@dataclass(frozen=True)
class RecordingName:
    serial: str
    user_no: str
    start: datetime  # device local time, as in the name
    seq: int
    important: bool
    ext: str

    @property
    def media_kind(self) -> str:
        return {"avi": "video", "mp4": "video", "wav": "audio", "jpg": "photo"}.get(self.ext, "other")


def parse_recording_name(name: str, pattern: str = DEFAULT_NAME_PATTERN) -> RecordingName | str:
    """The parsed name, or a string saying why it does not parse (the file is kept as unparsed)."""
    match = re.fullmatch(pattern, name, flags=re.IGNORECASE)
    if match is None:
        return "name does not follow <serial>_<userNo>_<YYYYMMDDhhmmss>_<nnnn>[_IMP].<ext>"
    try:
        start = datetime.strptime(match["start"], "%Y%m%d%H%M%S")
    except ValueError:
        return f"start time {match['start']} is not a calendar time"
    return RecordingName(serial=match["serial"], user_no=match["user_no"], start=start, seq=int(match["seq"]),
                         important=bool(match["imp"]), ext=match["ext"].lower())
