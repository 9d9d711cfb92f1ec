"""Bulk-Only Transport codec: golden vectors hand-computed from docs/protocols/bodycam-usb.md / BOT 1.0."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import bot
from firmware_bridge.bot import (
    NEED_DATA, BotDeviceParser, CommandBlock, CommandBlockWrapper, CommandStatusWrapper, CswStatus, DataOut,
    InquiryData, SenseData,
)
from firmware_bridge.errors import FrameError, LengthError, LocalProtocolError, ProtocolError, UnknownCodeError

# CBW: "USBC", tag 0x12345678, 36 bytes IN, LUN 0, CB length 6, INQUIRY(36) zero padded to 16.
CBW_INQUIRY = bytes.fromhex(
    "55534243" "78563412" "24000000" "80" "00" "06" "120000002400" "00000000000000000000"
)
# CBW: tag 1, 94 bytes OUT, LUN 0, CB length 16: F9 04 "000000" + 8 zeros (WriteZFYInfo).
CBW_F9_OUT = bytes.fromhex("55534243" "01000000" "5e000000" "00" "00" "10" "f904303030303030" "0000000000000000")
CSW_PASSED = bytes.fromhex("55534253" "78563412" "00000000" "00")
CSW_FAILED_RESIDUE_5 = bytes.fromhex("55534253" "02000000" "05000000" "01")
# Fixed sense, key 05, ASC 74, ASCQ 04 (wrong password).
SENSE_WRONG_PASSWORD = bytes.fromhex("700005000000000a00000000" "7404" "00000000")
INQUIRY_EGW = bytes.fromhex("00800402" "1f000000") + b"EGW     " + b"BodyCam         " + b"0100"


def test_cbw_golden_encode_decode():
    cbw = CommandBlockWrapper(tag=0x12345678, data_length=36, data_in=True, lun=0, cb=bot.inquiry_cdb())
    assert len(CBW_INQUIRY) == 31
    assert cbw.to_bytes() == CBW_INQUIRY
    assert CommandBlockWrapper.from_bytes(CBW_INQUIRY) == cbw
    out = CommandBlockWrapper(tag=1, data_length=94, data_in=False, lun=0, cb=bytes.fromhex("f904303030303030") + bytes(8))
    assert out.to_bytes() == CBW_F9_OUT
    assert CommandBlockWrapper.from_bytes(CBW_F9_OUT) == out


def test_csw_golden():
    assert CommandStatusWrapper(0x12345678, 0, CswStatus.PASSED).to_bytes() == CSW_PASSED
    assert CommandStatusWrapper.from_bytes(CSW_FAILED_RESIDUE_5) == CommandStatusWrapper(2, 5, CswStatus.FAILED)
    assert len(CSW_PASSED) == 13


def test_sense_and_inquiry_golden():
    assert SenseData(0x05, 0x74, 0x04).to_bytes() == SENSE_WRONG_PASSWORD
    assert SenseData.from_bytes(SENSE_WRONG_PASSWORD) == SenseData(5, 0x74, 4)
    assert InquiryData("EGW", "BodyCam", "0100").to_bytes() == INQUIRY_EGW
    assert InquiryData.from_bytes(INQUIRY_EGW) == InquiryData("EGW", "BodyCam", "0100")


def test_cdbs_golden():
    assert bot.test_unit_ready_cdb() == bytes(6)
    assert bot.request_sense_cdb() == bytes.fromhex("030000001200")
    assert bot.inquiry_cdb() == bytes.fromhex("120000002400")


@pytest.mark.parametrize("raw, error", [
    (CBW_INQUIRY[:30], LengthError),
    (CBW_INQUIRY + b"\0", LengthError),
    (b"USBD" + CBW_INQUIRY[4:], FrameError),
    (CBW_INQUIRY[:12] + b"\x81" + CBW_INQUIRY[13:], FrameError),  # reserved flag bit
    (CBW_INQUIRY[:13] + b"\x10" + CBW_INQUIRY[14:], FrameError),  # LUN reserved bits
    (CBW_INQUIRY[:14] + b"\x00" + CBW_INQUIRY[15:], LengthError),  # CB length 0
    (CBW_INQUIRY[:14] + b"\x11" + CBW_INQUIRY[15:], LengthError),  # CB length 17
])
def test_cbw_rejects(raw, error):
    with pytest.raises(error):
        CommandBlockWrapper.from_bytes(raw)


def test_csw_and_sense_reject():
    with pytest.raises(FrameError):
        CommandStatusWrapper.from_bytes(b"USBC" + CSW_PASSED[4:])
    with pytest.raises(UnknownCodeError):
        CommandStatusWrapper.from_bytes(CSW_PASSED[:12] + b"\x03")
    with pytest.raises(LengthError):
        CommandStatusWrapper.from_bytes(CSW_PASSED[:12])
    with pytest.raises(UnknownCodeError):
        SenseData.from_bytes(b"\x72" + SENSE_WRONG_PASSWORD[1:])  # descriptor format not accepted
    with pytest.raises(LengthError):
        SenseData.from_bytes(SENSE_WRONG_PASSWORD[:13])
    with pytest.raises(FrameError):
        InquiryData.from_bytes(INQUIRY_EGW[:8] + b"\xff" * 8 + INQUIRY_EGW[16:])


def test_local_misuse_is_local_protocol_error():
    with pytest.raises(LocalProtocolError):
        CommandBlockWrapper(1, 0, False, 0, b"")
    with pytest.raises(LocalProtocolError):
        CommandBlockWrapper(1, 0, False, 16, b"\0")
    with pytest.raises(LocalProtocolError):
        InquiryData("TOO-LONG-VENDOR", "x", "1").to_bytes()
    with pytest.raises(LocalProtocolError):
        SenseData(0x10).to_bytes()


def _events(parser):
    out = []
    while (event := parser.next_event()) is not NEED_DATA:
        out.append(event)
    return out


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_parser_cbw_then_data_out_then_cbw(mode):
    payload = bytes(range(94))
    stream = CBW_F9_OUT + payload + CBW_INQUIRY
    parser = BotDeviceParser()
    events = []
    chunks = [stream] if mode == "whole" else [bytes([b]) for b in stream]
    for chunk in chunks:
        parser.receive_data(chunk)
        events += _events(parser)
    assert events == [
        CommandBlock(CommandBlockWrapper.from_bytes(CBW_F9_OUT)),
        DataOut(tag=1, data=payload),
        CommandBlock(CommandBlockWrapper.from_bytes(CBW_INQUIRY)),
    ]
    assert not parser.in_data_out_phase


def test_parser_garbage_before_cbw_breaks_until_reset():
    parser = BotDeviceParser()
    parser.receive_data(b"\x00garbage" + CBW_INQUIRY)
    with pytest.raises(FrameError):
        parser.next_event()
    with pytest.raises(FrameError):  # stays broken: BOT requires a reset recovery
        parser.next_event()
    parser.reset()
    parser.receive_data(CBW_INQUIRY + b"USBC")  # trailing partial CBW waits for more
    assert _events(parser) == [CommandBlock(CommandBlockWrapper.from_bytes(CBW_INQUIRY))]


def test_parser_bounds_data_out():
    parser = BotDeviceParser(max_data_out=10)
    parser.receive_data(CBW_F9_OUT)
    with pytest.raises(LengthError):
        parser.next_event()


@given(st.binary(min_size=31, max_size=31))
def test_any_31_bytes_decode_or_raise(raw):
    try:
        cbw = CommandBlockWrapper.from_bytes(raw)
    except ProtocolError:
        return
    assert cbw.to_bytes()[:15 + len(cbw.cb)] == raw[:15 + len(cbw.cb)]


@given(st.binary(max_size=20))
def test_any_bytes_csw_sense_inquiry(raw):
    for decode in (CommandStatusWrapper.from_bytes, SenseData.from_bytes, InquiryData.from_bytes):
        try:
            decode(raw)
        except ProtocolError:
            pass


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_parser_any_stream_events_or_protocol_error(chunks, with_cbw):
    parser = BotDeviceParser(max_data_out=256)
    if with_cbw:
        chunks = [CBW_F9_OUT[:20], CBW_F9_OUT[20:], *chunks]
    try:
        for chunk in chunks:
            parser.receive_data(chunk)
            for _ in range(100):  # never loops forever: each event consumes bytes
                if parser.next_event() is NEED_DATA:
                    break
            else:
                raise AssertionError("parser produced 100 events without needing data")
    except ProtocolError:
        pass


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.booleans(), st.integers(0, 15), st.binary(min_size=1, max_size=16))
def test_cbw_round_trip(tag, length, data_in, lun, cb):
    cbw = CommandBlockWrapper(tag, length, data_in, lun, cb)
    assert CommandBlockWrapper.from_bytes(cbw.to_bytes()) == cbw


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.sampled_from(list(CswStatus)))
def test_csw_round_trip(tag, residue, status):
    csw = CommandStatusWrapper(tag, residue, status)
    assert CommandStatusWrapper.from_bytes(csw.to_bytes()) == csw
