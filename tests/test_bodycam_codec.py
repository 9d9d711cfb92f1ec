"""F9 vendor command codec: golden vectors computed by hand from docs/protocols/bodycam-usb.md."""

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge import bodycam_usb as f9
from firmware_bridge.bodycam_usb import Function, IRet, ZFY_LAYOUT_89, ZFY_LAYOUT_94, ZfyInfo
from firmware_bridge.errors import FrameError, LengthError, LocalProtocolError, ProtocolError, UnknownCodeError

INFO = ZfyInfo("1234567", "010203", "张三", "330100000000", "公安")
# GBK: 张 D5C5, 三 C8FD, 公 B9AB, 安 B0B2.
ZFY_94 = (
    b"1234567\0"                                   # cSerial[8]
    + b"010203\0"                                  # userNo[7]
    + bytes.fromhex("d5c5c8fd") + bytes(29)        # userName[33]
    + b"330100000000\0"                            # unitNo[13]
    + bytes.fromhex("b9abb0b2") + bytes(29)        # unitName[33]
)
ZFY_89 = (
    b"1234567" + b"010203" + bytes.fromhex("d5c5c8fd") + bytes(28) + b"330100000000" + bytes.fromhex("b9abb0b2") + bytes(28)
)


def test_cdb_golden():
    assert f9.build_cdb(Function.GET_ZFY_INFO) == bytes.fromhex("f903303030303030" "0000000000000000")
    assert f9.build_cdb(Function.SET_PASSWORD, "a1b2c3") == bytes.fromhex("f90a613162326333") + bytes(8)
    assert f9.parse_cdb(bytes.fromhex("f90b313233343536") + bytes(8)) == f9.VendorCommand(0x0B, "123456")
    assert f9.parse_cdb(bytes.fromhex("f97f303030303030") + bytes(8)).function == 0x7F  # unknown: the device refuses


@pytest.mark.parametrize("raw, error", [
    (bytes.fromhex("f903303030303030") + bytes(7), LengthError),
    (bytes.fromhex("fa03303030303030") + bytes(8), UnknownCodeError),
    (bytes.fromhex("f903303030303030") + bytes(7) + b"\x01", FrameError),
    (bytes.fromhex("f903303030303000") + bytes(8), FrameError),  # NUL inside the password
])
def test_cdb_rejects(raw, error):
    with pytest.raises(error):
        f9.parse_cdb(raw)


def test_zfy_94_golden():
    assert len(ZFY_94) == 94
    assert f9.encode_zfy_info(INFO) == ZFY_94
    assert f9.decode_zfy_info(ZFY_94) == INFO


def test_zfy_89_golden_unterminated():
    assert len(ZFY_89) == 89
    assert f9.encode_zfy_info(INFO, ZFY_LAYOUT_89) == ZFY_89
    assert f9.decode_zfy_info(ZFY_89, ZFY_LAYOUT_89) == INFO
    full = ZfyInfo("1234567", "010203", "名" * 16)  # 32 GBK bytes: legal without a terminator
    assert f9.decode_zfy_info(f9.encode_zfy_info(full, ZFY_LAYOUT_89), ZFY_LAYOUT_89) == full
    with pytest.raises(LocalProtocolError):
        f9.encode_zfy_info(full, ZFY_LAYOUT_94.__class__("x", 8, 7, 32, 13, 33, True))


def test_zfy_rejects():
    with pytest.raises(FrameError):  # no NUL terminator in userName of the 94-byte layout
        f9.decode_zfy_info(ZFY_94[:15] + b"A" * 33 + ZFY_94[48:])
    with pytest.raises(FrameError):  # invalid GBK is a ProtocolError, never UnicodeDecodeError
        f9.decode_zfy_info(ZFY_94[:15] + b"\xff\xff" + bytes(31) + ZFY_94[48:])
    with pytest.raises(FrameError):  # serial not 7 digits
        f9.decode_zfy_info(b"12345a7\0" + ZFY_94[8:])
    with pytest.raises(LengthError):
        f9.decode_zfy_info(ZFY_94[:-1])
    with pytest.raises(LocalProtocolError):
        f9.encode_zfy_info(ZfyInfo("123456", "010203"))
    with pytest.raises(LocalProtocolError):
        f9.encode_zfy_info(ZfyInfo("1234567", "010203", "x" * 33))
    with pytest.raises(LocalProtocolError):
        f9.encode_zfy_info(ZfyInfo("1234567", "010203", "\U0001F600"))  # not in GBK
    unbound = f9.decode_zfy_info(b"1234567\0" + bytes(86))
    assert unbound == ZfyInfo("1234567", "")


def test_zfy_text_policy_replace_keeps_raw_bytes_and_names_the_lossy_fields():
    bad = ZFY_94[:15] + bytes.fromhex("d5c5ff80") + bytes(29) + ZFY_94[48:61] + bytes.fromhex("bcbcd5") + bytes(30)
    info = f9.decode_zfy_info(bad, text_errors="replace")
    assert (info.serial, info.user_no, info.unit_no) == ("1234567", "010203", "330100000000")
    assert info.user_name == "张\ufffd\ufffd" and info.unit_name.startswith("技") and "\ufffd" in info.unit_name
    assert info.lossy == ("user_name", "unit_name") and info.raw == bad
    assert f9.decode_zfy_info(ZFY_94, text_errors="replace").lossy == ()
    assert f9.decode_zfy_info(ZFY_94).raw == ZFY_94
    with pytest.raises(FrameError):  # the default stays strict
        f9.decode_zfy_info(bad)
    with pytest.raises(FrameError):  # identity fields are never replaced: a garbled police number is refused
        f9.decode_zfy_info(ZFY_94[:8] + b"01\xff203\0" + ZFY_94[15:], text_errors="replace")
    with pytest.raises(LocalProtocolError):  # a replaced name cannot be written back as if it were the device's
        f9.encode_zfy_info(info)
    response = f9.parse_response(Function.GET_ZFY_INFO, b"\x00" + bad, text_errors="replace")
    assert isinstance(response, f9.ZfyInfoResponse) and response.info.lossy == ("user_name", "unit_name")


def test_time_golden():
    when = datetime(2026, 3, 5, 7, 8, 9)
    assert f9.encode_device_time(when) == b"20260305070809"
    assert f9.decode_device_time(b"20260305070809") == when
    assert f9.encode_sync_time(when, 480) == b"20260305070809" + bytes.fromhex("e001")
    assert f9.encode_sync_time(when, -300) == b"20260305070809" + bytes.fromhex("d4fe")
    assert f9.decode_sync_time(b"20260305070809\xd4\xfe") == (when, -300)
    for bad in (b"20261332000000", b"2026030507080x", b"2026-03-05 07:"):
        with pytest.raises(FrameError):
            f9.decode_device_time(bad)
    with pytest.raises(FrameError):
        f9.decode_sync_time(b"20260305070809" + (900).to_bytes(2, "little"))
    with pytest.raises(LocalProtocolError):
        f9.encode_sync_time(when, 900)


def test_response_goldens():
    P = f9.parse_response
    assert P(Function.INIT_DEVICE, b"\x01EGW01") == f9.IdCodeResponse(IRet.CONNECT_OK, "EGW01")
    assert P(Function.GET_ZFY_INFO, b"\x00" + ZFY_94) == f9.ZfyInfoResponse(IRet.NONE, INFO)
    assert P(Function.GET_ZFY_INFO, b"\x00" + ZFY_89, ZFY_LAYOUT_89) == f9.ZfyInfoResponse(IRet.NONE, INFO)
    assert P(Function.GET_DEV_TIME, b"\x0020260305070809") == f9.DeviceTimeResponse(IRet.NONE, datetime(2026, 3, 5, 7, 8, 9))
    assert P(Function.READ_RESOLUTION, bytes.fromhex("000005d002")) == f9.ResolutionResponse(IRet.NONE, 1280, 720)
    assert P(Function.READ_BATTERY, bytes.fromhex("0057")) == f9.BatteryResponse(IRet.NONE, 87)
    storage = bytes.fromhex("00" "00800000" "e8030000" "04000000")
    assert P(Function.GET_STORAGE, storage) == f9.StorageResponse(IRet.NONE, 32768, 1000, 4)
    refused = bytes.fromhex("04") + bytes(94)
    assert P(Function.GET_ZFY_INFO, refused) == f9.FunctionRefused(Function.GET_ZFY_INFO, IRet.PASSWORD_WRONG)
    assert f9.encode_refusal(Function.GET_ZFY_INFO, IRet.PASSWORD_WRONG) == refused
    # encoders reproduce the same bytes
    E = f9.encode_response
    assert E(Function.READ_RESOLUTION, f9.ResolutionResponse(IRet.NONE, 1280, 720)) == bytes.fromhex("000005d002")
    assert E(Function.GET_STORAGE, f9.StorageResponse(IRet.NONE, 32768, 1000, 4)) == storage
    assert E(Function.GET_ZFY_INFO, f9.ZfyInfoResponse(IRet.NONE, INFO)) == b"\x00" + ZFY_94
    assert E(Function.INIT_DEVICE, f9.IdCodeResponse(IRet.CONNECT_OK, "EGW01")) == b"\x01EGW01"


@pytest.mark.parametrize("function, data, error", [
    (Function.READ_BATTERY, b"\x00\x65", FrameError),  # 101 %
    (Function.READ_BATTERY, b"\x00", LengthError),
    (Function.READ_BATTERY, b"\x09\x10", UnknownCodeError),  # iRet 9 undefined
    (Function.GET_STORAGE, bytes.fromhex("00" "01000000" "02000000" "00000000"), FrameError),  # free > total
    (Function.GET_ID_CODE, b"\x00EGW\x001", FrameError),
    (Function.GET_DEV_TIME, b"", LengthError),
])
def test_response_rejects(function, data, error):
    with pytest.raises(error):
        f9.parse_response(function, data)


def test_misuse_is_local():
    with pytest.raises(LocalProtocolError):
        f9.parse_response(Function.SET_MSDC, b"\x00")
    with pytest.raises(LocalProtocolError):
        f9.build_cdb(Function.GET_ID_CODE, "12345")
    with pytest.raises(LocalProtocolError):
        f9.encode_response(Function.READ_BATTERY, f9.ResolutionResponse(IRet.NONE, 1, 1))


def test_lengths_follow_the_table():
    assert [f9.response_length(f) for f in Function] == [6, 6, 95, 94, 15, 16, 5, 2, 0, 6, 13]
    assert f9.response_length(Function.GET_ZFY_INFO, ZFY_LAYOUT_89) == 90
    assert [int(c) for c in IRet] == list(range(9))


IN_FUNCTIONS = [f for f, spec in f9.FUNCTION_SPECS.items() if spec.direction is f9.Direction.IN]


@given(st.sampled_from(IN_FUNCTIONS), st.binary(max_size=100), st.sampled_from([ZFY_LAYOUT_94, ZFY_LAYOUT_89]))
def test_any_response_decodes_or_raises(function, data, layout):
    try:
        f9.parse_response(function, data, layout)
    except ProtocolError:
        pass


@given(st.binary(min_size=94, max_size=94), st.binary(min_size=89, max_size=89), st.binary(max_size=20))
def test_any_zfy_time_cdb_decodes_or_raises(raw94, raw89, other):
    for call in (lambda: f9.decode_zfy_info(raw94), lambda: f9.decode_zfy_info(raw89, ZFY_LAYOUT_89),
                 lambda: f9.decode_device_time(other), lambda: f9.decode_sync_time(other), lambda: f9.parse_cdb(other),
                 lambda: f9.decode_password_payload(other)):
        try:
            call()
        except ProtocolError:
            pass


_GBK_TEXT = st.text(alphabet=st.sampled_from(list("张三李四王五公安局市场监督管理杭州abcXYZ 0123-")), max_size=10)


@given(st.from_regex(r"[0-9]{7}", fullmatch=True), st.from_regex(r"[0-9]{6}", fullmatch=True), _GBK_TEXT,
       st.one_of(st.just(""), st.from_regex(r"[0-9]{12}", fullmatch=True)), _GBK_TEXT,
       st.sampled_from([ZFY_LAYOUT_94, ZFY_LAYOUT_89]))
def test_zfy_round_trip(serial, user_no, name, unit_no, unit_name, layout):
    info = ZfyInfo(serial, user_no, name.rstrip("\0"), unit_no, unit_name)
    assert f9.decode_zfy_info(f9.encode_zfy_info(info, layout), layout) == info


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)), st.integers(-720, 840))
def test_time_round_trip(when, zone):
    when = when.replace(microsecond=0)
    assert f9.decode_sync_time(f9.encode_sync_time(when, zone)) == (when, zone)
