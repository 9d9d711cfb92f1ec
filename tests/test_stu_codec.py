"""STU HID report codec: golden vectors hand-computed from the documented layouts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import stu_hid as stu
from firmware_bridge.errors import LengthError, LocalProtocolError, ProtocolError, UnknownCodeError

# (report object, exact bytes) — each computed by hand from docs/protocols/signpad-stu.md / the SDK layout.
GOLDEN = [
    # rdy=1 -> b7, sw=1 -> b4, pressure 0x2A5 -> low nibble 2 | next byte A5: 0x80|0x10|0x02 = 0x92
    (stu.PenData(True, 1, 0x2A5, 0x1234, 0x0567), "01 92 A5 12 34 05 67"),
    (stu.PenData(True, 7, 0xFFF, 0xFFFF, 0x0000), "01 FF FF FF FF 00 00"),
    (stu.PenData(False, 0, 0, 0, 0), "01 00 00 00 00 00 00"),
    (stu.PenDataTimeCountSequence(True, 1, 0x2A5, 0x1234, 0x0567, 0xBEEF, 0x0102),
     "34 92 A5 12 34 05 67 BE EF 01 02"),
    (stu.PenDataOption(False, 0, 0x001, 0x0000, 0x0001, 0x1234), "30 00 01 00 00 00 01 12 34"),
    (stu.Capability(10800, 6480, 1023, 800, 480, 200, 2540, 0x0E),
     "09 2A 30 19 50 03 FF 03 20 01 E0 C8 09 EC 0E 00 00"),
    (stu.Information("STU-540", 0x01, 0x04, 0, b"\x00\x00\x00\x00"),
     "08 53 54 55 2D 35 34 30 00 00 01 04 00 00 00 00 00"),
    (stu.Uid2("5SIM000001"), "0B 35 53 49 4D 30 30 30 30 30 31"),
    (stu.Status(0x01, 0x02, 0x1234), "03 01 02 34 12"),
    (stu.Reset(1), "04 01"),
    (stu.StartCapture(0xDEADBEEF), "15 DE AD BE EF"),
    (stu.EndCapture(), "16 00"),
    (stu.ClearScreen(), "20 00"),
    (stu.InkingMode(1), "21 01"),
    (stu.StartImageData(stu.ENCODING_MODE_24BIT), "25 04"),
    (stu.EndImageData(0), "27 00"),
    (stu.EndImageData(1), "27 01"),
    (stu.PenDataOptionMode(3), "32 03"),
    (stu.ImageDataBlock(b"\x01\x02"), "26 02 00 01 02" + " 00" * 251),
    (stu.ImageDataBlock(b"\xAA" * 253), "26 FD 00" + " AA" * 253),
]


@pytest.mark.parametrize(("report", "hex_bytes"), GOLDEN, ids=[type(r).__name__ for r, _ in GOLDEN])
def test_golden_vectors_encode_and_decode(report, hex_bytes):
    raw = bytes.fromhex(hex_bytes)
    assert report.encode() == raw
    assert len(raw) == stu.REPORT_SIZES[raw[0]]
    decoder = stu.decode_input_report if raw[0] in stu.INPUT_REPORT_IDS else stu.decode_feature_report
    assert decoder(raw) == report


def test_pen_fields_follow_the_sdk_not_pabloko():
    report = stu.decode_input_report(bytes.fromhex("01 92 A5 12 34 05 67"))
    assert report.rdy is True and report.sw == 1 and report.touching
    assert report.pressure == 0x2A5 and report.x == 0x1234 and report.y == 0x0567
    # bits 0/1 of byte 0 belong to the pressure, not to rdy/sw
    low_bits = stu.decode_input_report(bytes.fromhex("01 03 00 00 00 00 00"))
    assert low_bits.rdy is False and low_bits.sw == 0 and low_bits.pressure == 0x300


def test_capability_and_information_fields():
    caps = stu.decode_feature_report(bytes.fromhex("09 2A 30 19 50 03 FF 03 20 01 E0 C8 09 EC 0E 00 00"))
    assert (caps.tablet_max_x, caps.tablet_max_y, caps.tablet_max_pressure) == (10800, 6480, 1023)
    assert (caps.screen_width, caps.screen_height, caps.max_report_rate) == (800, 480, 200)
    assert caps.resolution == 2540 and caps.encoding_flag & stu.ENCODING_FLAG_24BIT
    info = stu.Information.decode(bytes.fromhex("08 53 54 55 2D 35 34 30 00 00 01 04 00 00 00 00 00"))
    assert info.model_name == "STU-540" and info.firmware == "1.04"


def test_feature_value_puts_report_type_in_high_byte():
    assert stu.feature_value(0x09) == 0x0309
    assert stu.feature_value(stu.REPORT_IMAGE_DATA_BLOCK) == 0x0326


PEN_STREAM = [GOLDEN[0], GOLDEN[3], GOLDEN[4], GOLDEN[1]]


def _stream() -> bytes:
    return b"".join(bytes.fromhex(h) for _, h in PEN_STREAM)


def test_pen_stream_whole_and_byte_by_byte():
    for chunks in ([_stream()], [bytes([b]) for b in _stream()]):
        decoder = stu.PenReportDecoder()
        events = []
        for chunk in chunks:
            decoder.receive_data(chunk)
            while (event := decoder.next_event()) is not stu.NEED_DATA:
                events.append(event)
        assert events == [r for r, _ in PEN_STREAM]
        assert decoder.next_event() is stu.NEED_DATA


def test_pen_stream_with_trailing_partial_report_waits():
    decoder = stu.PenReportDecoder()
    decoder.receive_data(_stream() + bytes.fromhex("34 92 A5"))
    events = []
    while (event := decoder.next_event()) is not stu.NEED_DATA:
        events.append(event)
    assert len(events) == 4
    decoder.receive_data(bytes.fromhex("12 34 05 67 BE EF 01 02"))
    assert decoder.next_event() == PEN_STREAM[1][0]


def test_pen_stream_garbage_before_is_fatal_and_sticky():
    decoder = stu.PenReportDecoder()
    decoder.receive_data(b"\xEE" + _stream())
    with pytest.raises(UnknownCodeError):
        decoder.next_event()
    with pytest.raises(UnknownCodeError):
        decoder.next_event()


@pytest.mark.parametrize("raw,error", [
    (b"", LengthError),
    (bytes.fromhex("01 92 A5 12 34 05"), LengthError),  # truncated
    (bytes.fromhex("01 92 A5 12 34 05 67 00"), LengthError),  # too long
    (bytes.fromhex("02 00 00 00 00 00 00"), UnknownCodeError),
    (bytes.fromhex("09 00"), LengthError),
    (bytes.fromhex("26 FE 00") + bytes(253), LengthError),  # claims 254 data bytes
    (bytes.fromhex("21 02"), UnknownCodeError),  # inking mode 2 does not exist
    (bytes.fromhex("0B FF FF FF FF FF FF FF FF FF FF"), ProtocolError),  # non-ASCII uid2
    (bytes.fromhex("7F 00"), UnknownCodeError),
])
def test_bad_reports_raise_protocol_errors(raw, error):
    decode = stu.decode_input_report if raw[:1] in (b"\x01", b"\x02") else stu.decode_feature_report
    with pytest.raises(error):
        decode(raw)


@pytest.mark.parametrize("make", [
    lambda: stu.PenData(True, 8, 0, 0, 0),
    lambda: stu.PenData(True, 0, 0x1000, 0, 0),
    lambda: stu.PenData(True, 0, 0, 0x10000, 0),
    lambda: stu.ImageDataBlock(bytes(254)),
    lambda: stu.InkingMode(5),
    lambda: stu.Uid2("ELEVENCHARS"),
    lambda: stu.Information("STU-540", 1, 4, 0, b"\x00"),
    lambda: stu.StartCapture(1 << 32),
])
def test_encoding_nonsense_is_a_local_error(make):
    with pytest.raises(LocalProtocolError):
        make().encode()


def _screen() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)


def test_image_24bit_is_bgr_rows_exactly():
    img = _screen()
    data = stu.flatten_image(img, stu.ENCODING_MODE_24BIT)
    assert data[:3] == bytes(img[0, 0]) and len(data) == 6 * 10 * 3
    assert np.array_equal(stu.unflatten_image(data, stu.ENCODING_MODE_24BIT, 10, 6), img)


def test_image_16bit_is_rgb565_high_byte_first():
    img = np.zeros((1, 2, 3), np.uint8)
    img[0, 0] = (0, 0, 255)  # pure red in BGR
    img[0, 1] = (255, 0, 0)  # pure blue
    data = stu.flatten_image(img, stu.ENCODING_MODE_16BIT)
    assert data == bytes.fromhex("F800 001F")
    back = stu.unflatten_image(data, stu.ENCODING_MODE_16BIT, 2, 1)
    assert back[0, 0].tolist() == [0, 0, 255] and back[0, 1].tolist() == [255, 0, 0]


def test_image_1bit_rows_are_padded_msb_first_white_set():
    img = np.zeros((2, 10, 3), np.uint8)
    img[0, 0] = 255  # first pixel white
    img[1, 9] = 255  # last pixel of row 2 white
    data = stu.flatten_image(img, stu.ENCODING_MODE_1BIT)
    assert data == bytes.fromhex("80 00 00 40")
    back = stu.unflatten_image(data, stu.ENCODING_MODE_1BIT, 10, 2)
    assert back[0, 0].tolist() == [255] * 3 and back[1, 9].tolist() == [255] * 3 and back[0, 1].sum() == 0


def test_image_wrong_size_and_blocks():
    with pytest.raises(LengthError):
        stu.unflatten_image(b"\x00" * 5, stu.ENCODING_MODE_24BIT, 2, 1)
    with pytest.raises(UnknownCodeError):
        stu.image_size(0x03, 2, 1)
    blocks = stu.image_blocks(bytes(range(256)) * 2)
    assert [len(b.data) for b in blocks] == [253, 253, 6]
    assert b"".join(b.data for b in blocks) == bytes(range(256)) * 2


# ---- hypothesis -------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
pen = st.tuples(st.booleans(), st.integers(0, 7), st.integers(0, 0xFFF), u16, u16)
reports = st.one_of(
    pen.map(lambda p: stu.PenData(*p)),
    st.tuples(pen, u16).map(lambda a: stu.PenDataOption(*a[0], a[1])),
    st.tuples(pen, u16, u16).map(lambda a: stu.PenDataTimeCountSequence(*a[0], a[1], a[2])),
    st.tuples(u16, u16, u16, u16, u16, st.integers(0, 255), u16, st.integers(0, 255)).map(
        lambda a: stu.Capability(*a)),
    st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=9), st.integers(0, 255),
              st.integers(0, 255), st.integers(0, 255), st.binary(min_size=4, max_size=4)).map(
        lambda a: stu.Information(*a)),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=10).map(stu.Uid2),
    st.tuples(st.integers(0, 255), st.integers(0, 255), u16).map(lambda a: stu.Status(*a)),
    st.integers(0, 0xFFFFFFFF).map(stu.StartCapture),
    st.binary(max_size=253).map(stu.ImageDataBlock),
    st.integers(0, 3).map(stu.PenDataOptionMode),
    st.integers(0, 1).map(stu.InkingMode),
)


@given(reports)
def test_round_trip(report):
    raw = report.encode()
    decoder = stu.decode_input_report if raw[0] in stu.INPUT_REPORT_IDS else stu.decode_feature_report
    assert decoder(raw) == report


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_protocol_error(raw):
    for decode in (stu.decode_input_report, stu.decode_feature_report):
        try:
            decode(raw)
        except ProtocolError:
            pass


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=20), max_size=10))
def test_stream_decoder_never_raises_anything_else(chunks):
    decoder = stu.PenReportDecoder()
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            for _ in range(50):
                if decoder.next_event() is stu.NEED_DATA:
                    break
    except ProtocolError:
        pass


@given(st.binary(max_size=64), st.sampled_from([0x00, 0x02, 0x04, 0x01, 0x14]), st.integers(1, 8),
       st.integers(1, 4))
def test_unflatten_any_bytes_or_protocol_error(data, mode, width, height):
    try:
        img = stu.unflatten_image(data, mode, width, height)
    except ProtocolError:
        return
    assert img.shape == (height, width, 3) and img.dtype == np.uint8
