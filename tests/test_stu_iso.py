"""ISO/IEC 19794-7:2007 encoder: header bytes exact, scaling codes, refusal instead of wrapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.errors import LocalProtocolError, ProtocolError
from firmware_bridge.iso19794_7 import (
    CHANNEL_BITS, SignatureTimeSeries, channel_mask, decode_record, decode_scaling, encode_record, encode_scaling,
)


def test_scaling_codes_from_the_wacom_export():
    assert encode_scaling(100) == 0xB480  # 100 units/mm
    assert encode_scaling(10000) == 0xE9C4  # T: 10000 per second
    assert decode_scaling(0xB480) == 100.0
    assert decode_scaling(0xE9C4) == pytest.approx(10000.0)
    assert encode_scaling(1000) == 0xCFA0  # E=25, F=0x7A0: 2^9 * (1 + 1952/2048) = 1000


def test_channel_mask_order():
    assert channel_mask(("X", "Y", "T", "F")) == 0xC140
    assert channel_mask(("X", "Y", "T", "F", "S")) == 0xC160  # the Wacom export's mask
    assert CHANNEL_BITS["R"] == 0x0001
    with pytest.raises(LocalProtocolError):
        channel_mask(("T", "F"))


def test_record_bytes_exact():
    series = SignatureTimeSeries(t_ms=[1000.0, 1005.0], x=[100, 200], y=[300, 400], f=[0, 512],
                                 xy_units_per_mm=100.0, f_max=1023)
    expected = bytes.fromhex(
        "53444900" "20313000"          # "SDI\0", " 10\0"
        "C140"                          # X Y T F
        "E0 B480 8064 80C8"             # X: scaling+min+max, 100/mm, min/max offset by 32768
        "E0 B480 812C 8190"             # Y
        "80 E9C4"                       # T: scaling only, 10000/s
        "60 0000 03FF"                  # F: min 0, max 1023
        "00"                            # reserved
        "00000002"                      # sample count (4 bytes, as Wacom's export)
        "8064 812C 0000 0000"           # x+32768, y+32768, t=0, f=0
        "80C8 8190 0032 0200"           # t = 5 ms = 50 units, f = 512
    )
    assert encode_record(series) == expected
    assert encode_record(series, count_bytes=3)[33:36] == b"\x00\x00\x02"


def test_long_signature_needs_coarser_time_units():
    series = SignatureTimeSeries(t_ms=[0.0, 7000.0], x=[0, 1], y=[0, 1], f=[1, 1], xy_units_per_mm=100.0, f_max=1023)
    with pytest.raises(LocalProtocolError, match="t_units_per_second"):
        encode_record(series)
    record = encode_record(series, t_units_per_second=1000)
    assert record[-4:-2] == (7000).to_bytes(2, "big")


@pytest.mark.parametrize("series", [
    SignatureTimeSeries([], [], [], [], 100.0, 1023),
    SignatureTimeSeries([0.0], [0, 1], [0], [0], 100.0, 1023),
    SignatureTimeSeries([5.0, 0.0], [0, 0], [0, 0], [0, 0], 100.0, 1023),
    SignatureTimeSeries([0.0], [40000], [0], [0], 100.0, 1023),
    SignatureTimeSeries([0.0], [0], [0], [70000], 100.0, 1023),
])
def test_bad_series_are_refused(series):
    with pytest.raises(LocalProtocolError):
        encode_record(series)


@given(st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 30000), st.integers(0, 30000), st.integers(0, 4095)),
                min_size=1, max_size=50))
def test_record_length_and_samples(rows):
    rows.sort()
    t, x, y, f = (list(c) for c in zip(*rows))
    record = encode_record(SignatureTimeSeries([float(v) for v in t], x, y, f, 100.0, 4095))
    assert record[:8] == b"SDI\x00 10\x00"
    assert len(record) == 37 + 8 * len(rows)
    assert int.from_bytes(record[33:37], "big") == len(rows)
    first = record[37:45]
    assert int.from_bytes(first[:2], "big") == x[0] + 32768 and int.from_bytes(first[6:8], "big") == f[0]


def test_decode_the_golden_record():
    series = SignatureTimeSeries(t_ms=[1000.0, 1005.0], x=[100, 200], y=[300, 400], f=[0, 512],
                                 xy_units_per_mm=100.0, f_max=1023)
    record = decode_record(encode_record(series))
    assert record.mask == 0xC140 and [c.name for c in record.channels] == ["X", "Y", "T", "F"]
    x, y, t, f = record.channels
    assert x.scaling == 100.0 and (x.minimum, x.maximum) == (0x8064, 0x80C8) and x.mean is None
    assert t.scaling == pytest.approx(10000.0) and t.minimum is None
    assert (f.minimum, f.maximum, f.scaling) == (0, 1023, None)
    assert record.samples == ((0x8064, 0x812C, 0, 0), (0x80C8, 0x8190, 50, 512))
    assert record.column("T") == [0, 50]
    with pytest.raises(KeyError):
        record.column("S")


def test_decode_a_wacom_style_record_with_a_one_byte_switch_channel():
    raw = bytes.fromhex(
        "53444900 20313000 C160"       # X Y T F S
        "E0 B480 8000 8100" "E0 B480 8000 8100"
        "80 E9C4" "60 0000 01FF" "00"  # S preamble 00
        "00" "00000001"                 # reserved, one sample
        "8010 8020 0000 0100 01"        # 9 bytes: X2 Y2 T2 F2 S1
    )
    record = decode_record(raw)
    assert [c.name for c in record.channels][-1] == "S" and record.samples == ((0x8010, 0x8020, 0, 0x100, 1),)


@pytest.mark.parametrize("raw", [
    b"", b"SDI\x00", b"XDI\x00 10\x00\xc1\x40", b"SDI\x00 20\x00\xc1\x40",
    bytes.fromhex("53444900 20313000 0140"),  # no X/Y
    bytes.fromhex("53444900 20313000 C000 01 00 00 00000000"),  # reserved preamble bit
    bytes.fromhex("53444900 20313000 C000 00 00 01 00000000"),  # reserved byte not 0
    bytes.fromhex("53444900 20313000 C000 00 00 00 00000002 0001 0002"),  # count says 2, holds 1
])
def test_decode_rejects_malformed_records(raw):
    with pytest.raises(ProtocolError):
        decode_record(raw)


@given(st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 30000), st.integers(0, 30000), st.integers(0, 4095)),
                min_size=1, max_size=40))
def test_encode_decode_round_trip(rows):
    rows.sort()
    t, x, y, f = (list(c) for c in zip(*rows))
    record = decode_record(encode_record(SignatureTimeSeries([float(v) for v in t], x, y, f, 100.0, 4095)))
    assert [v - 32768 for v in record.column("X")] == x and [v - 32768 for v in record.column("Y")] == y
    assert record.column("F") == f and record.column("T") == [(v - t[0]) * 10 for v in t]


@given(st.binary(max_size=80))
def test_any_bytes_decode_or_raise_protocol_error(raw):
    for prefix in (b"", b"SDI\x00 10\x00"):
        try:
            decode_record(prefix + raw)
        except ProtocolError:
            pass
