"""The file-name policy (drivers/bodycam/names.py): every name a recorder's volume lists is hostile data.

The names are generated the way the file system hands them to us: raw bytes decoded with
``os.fsdecode`` (undecodable bytes become lone surrogates U+DC80..U+DCFF). A name the policy
accepts must be exactly one plain, printable-or-harmless component that cannot leave its
directory, cannot hide its extension and fits the byte limit; a refused name says why and
renders as one unambiguous printable line.
"""

import os
import tempfile
import unicodedata
from datetime import datetime

from hypothesis import example, given
from hypothesis import strategies as st

from drivers.bodycam import MAX_NAME_BYTES, RecordingName, parse_recording_name, unsafe_name_reason
from drivers.bodycam.names import display_name

BIDI = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)]
PLAIN = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Cf", "Zl", "Zp"],
                                       exclude_characters="/\\"), min_size=1, max_size=40)


def fs_name(raw: bytes) -> str:
    """A name as os.scandir / os.listdir give it for these bytes on this (UTF-8) system."""
    return os.fsdecode(raw)


def injected(base: str, hostile: str, at: int) -> str:
    at = min(at, len(base))
    return base[:at] + hostile + base[at:]


@given(st.binary(min_size=1, max_size=2 * MAX_NAME_BYTES).filter(lambda b: b"/" not in b and b"\x00" not in b))
@example(b"..")
@example(b"\xff.avi")
@example("\u202eiva.exe".encode())
@example(b"x" * MAX_NAME_BYTES)
@example(b"x" * (MAX_NAME_BYTES + 1))
def test_an_accepted_name_is_one_plain_component(raw):
    name = fs_name(raw)
    if unsafe_name_reason(name) is not None:
        return
    assert name not in ("", ".", "..")
    assert os.fsencode(name) == raw and raw.decode("utf-8") == name  # valid UTF-8, nothing smuggled in
    assert len(raw) <= MAX_NAME_BYTES
    assert "/" not in name and "\\" not in name and not (len(name) >= 2 and name[1] == ":" and name[0].isascii()
                                                          and name[0].isalpha())
    assert not any(unicodedata.category(c) == "Cc" for c in name)
    assert not any(c in BIDI for c in name)
    assert os.path.dirname(os.path.normpath(os.path.join("/volume", name))) == "/volume"


@given(PLAIN, st.sampled_from(["/", "\\"]), st.integers(min_value=0, max_value=40))
def test_a_path_separator_anywhere_is_refused(base, separator, at):
    name = injected(base, separator, at)
    reason = unsafe_name_reason(name)
    assert reason is not None
    if len(os.fsencode(name)) <= MAX_NAME_BYTES:
        assert "separator" in reason


@given(PLAIN, st.sampled_from([chr(c) for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))]),
       st.integers(min_value=0, max_value=40))
def test_a_control_character_anywhere_is_refused(base, control, at):
    name = injected(base, control, at)
    assert unsafe_name_reason(name) is not None


@given(PLAIN, st.sampled_from(BIDI), st.integers(min_value=0, max_value=40))
def test_a_bidirectional_override_anywhere_is_refused(base, override, at):
    """``\\u202eiva.exe`` shows as ``exe.avi``: an operator must never be shown a name that lies."""
    name = injected(base, override, at)
    reason = unsafe_name_reason(name)
    assert reason is not None
    if len(os.fsencode(name)) <= MAX_NAME_BYTES and "/" not in name and "\\" not in name and name[1:2] != ":":
        assert "bidirectional" in reason


@given(PLAIN, st.binary(min_size=1, max_size=4).map(lambda b: bytes(0x80 | (x & 0x3F) for x in b)),
       st.integers(min_value=0, max_value=40))
def test_bytes_that_are_not_utf8_are_refused(base, stray, at):
    """A continuation byte without its lead byte: the name has no text, only bytes."""
    name = fs_name(base[:at].encode() + stray + base[at:].encode())  # between two whole characters
    assert unsafe_name_reason(name) is not None


@given(st.sampled_from(["", ".", ".."]))
def test_dot_and_empty_names_are_refused(name):
    assert unsafe_name_reason(name) == "dot or empty name"


@given(st.text(alphabet="执法记录仪abc", min_size=1, max_size=120))
def test_the_byte_limit_counts_bytes_not_characters(name):
    reason = unsafe_name_reason(name)
    if len(name.encode()) > MAX_NAME_BYTES:
        assert reason == f"name is longer than {MAX_NAME_BYTES} bytes"
    else:
        assert reason is None


@given(st.text(max_size=60) | st.binary(max_size=60).map(fs_name))
def test_a_refused_name_renders_as_one_printable_line(name):
    if unsafe_name_reason(name) is None:
        return
    shown = display_name(name)
    assert shown.isprintable()
    assert not any(c in BIDI for c in shown)
    assert "\n" not in shown and "\r" not in shown


@given(st.binary(min_size=1, max_size=MAX_NAME_BYTES).filter(lambda b: b"/" not in b and b"\x00" not in b
                                                               and b not in (b".", b"..")))
def test_an_accepted_name_creates_one_file_in_its_own_directory(raw):
    """The real file system agrees: an accepted name opened relative to a directory stays in it."""
    name = fs_name(raw)
    if unsafe_name_reason(name) is not None:
        return
    with tempfile.TemporaryDirectory() as top:
        inner = os.path.join(top, "volume")
        os.mkdir(inner)
        dir_fd = os.open(inner, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
            os.close(fd)
        finally:
            os.close(dir_fd)
        assert os.listdir(inner) == [name]
        assert sorted(os.listdir(top)) == ["volume"]


@given(st.from_regex(r"[0-9]{7}", fullmatch=True), st.from_regex(r"[0-9]{6}", fullmatch=True),
       st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2099, 12, 31)).map(lambda d: d.replace(microsecond=0)),
       st.integers(min_value=0, max_value=9999), st.booleans(), st.sampled_from(["avi", "mp4", "wav", "jpg", "MP4", "Jpg"]))
def test_recording_names_round_trip(serial, user_no, start, seq, important, ext):
    name = f"{serial}_{user_no}_{start:%Y%m%d%H%M%S}_{seq:04d}{'_IMP' if important else ''}.{ext}"
    assert unsafe_name_reason(name) is None
    assert parse_recording_name(name) == RecordingName(serial, user_no, start, seq, important, ext.lower())


@given(st.text(max_size=80) | st.binary(max_size=80).map(fs_name))
@example("1000001_100001_20261301080000_0001.avi")  # month 13
@example("1000001_100001_20260101080000_42.avi")
def test_parsing_any_name_gives_a_recording_or_a_reason(name):
    """A name that does not parse is kept as an unparsed file (with the reason), never an exception."""
    parsed = parse_recording_name(name)
    assert isinstance(parsed, (RecordingName, str))
    if isinstance(parsed, str):
        assert parsed


def test_the_fixed_examples():
    assert unsafe_name_reason("1000001_100001_20260101080000_0001_IMP.avi") is None
    assert unsafe_name_reason("执法记录.mp4") is None
    for bad in ("..", ".", "", "a/b", "a\\b", "C:x", "a\x00b", "a\x7fb", "\u202eiva.exe", "x" * 201, "\udcff.avi"):
        assert unsafe_name_reason(bad) is not None, bad
    assert unsafe_name_reason("C:x") == "name looks like an absolute (drive letter) path"
    assert unsafe_name_reason("\udcff.avi") == "name is not valid UTF-8"
    parsed = parse_recording_name("1000001_100001_20260101080000_0042_IMP.MP4")
    assert parsed == RecordingName("1000001", "100001", datetime(2026, 1, 1, 8), 42, True, "mp4")
    assert isinstance(parse_recording_name("1000001_100001_20260101080000_42.avi"), str)
    assert display_name("\u202eiva.exe") == "\\u202eiva.exe"
