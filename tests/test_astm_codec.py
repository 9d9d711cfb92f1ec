"""ASTM E1381 frames and E1394 records: golden vectors from docs/protocols/rapidtest-astm.md."""

from __future__ import annotations

from datetime import datetime

import pytest

from firmware_bridge.astm import (
    ACK,
    ENQ,
    EOT,
    NAK,
    NEED_DATA,
    AstmReceiver,
    Delimiters,
    Frame,
    FrameRejected,
    MessageReceived,
    Record,
    Repeats,
    SessionAborted,
    SessionEnded,
    assign_sequence_numbers,
    check_structure,
    checksum,
    decode_frame,
    decode_message,
    decode_record,
    encode_frame,
    encode_message,
    encode_record,
    format_timestamp,
    message_frames,
    parse_timestamp,
)
from firmware_bridge.errors import ChecksumError, FrameError, LengthError, LocalProtocolError, ProtocolError

# The two worked frames of docs/protocols/rapidtest-astm.md §3, byte for byte.
GOLDEN_H = b"\x021H|\\^&|||RAPIDSIM^1.0|||||||P|LIS2-A2|20240101120000\r\x03B2\r\n"
GOLDEN_R = b"\x022R|1|^^^OPPEST|62.5|%|0^50|H||F||||20240101121500\r\x03AE\r\n"
H_TEXT = "H|\\^&|||RAPIDSIM^1.0|||||||P|LIS2-A2|20240101120000"
R_TEXT = "R|1|^^^OPPEST|62.5|%|0^50|H||F||||20240101121500"
L_FRAME = encode_frame(3, b"L|1|N\r", True)


def events(endpoint) -> list:
    out = []
    while (event := endpoint.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def golden_records() -> tuple[Record, Record]:
    header = Record.from_fields("H", {2: "\\^&", 5: ("RAPIDSIM", "1.0"), 12: "P", 13: "LIS2-A2",
                                      14: "20240101120000"})
    result = Record.from_fields("R", {2: "1", 3: ("", "", "", "OPPEST"), 4: "62.5", 5: "%", 6: ("0", "50"),
                                      7: "H", 9: "F", 13: "20240101121500"})
    return header, result


def test_golden_frames_are_reproduced_exactly_by_the_encoder():
    header, result = golden_records()
    assert encode_record(header) == H_TEXT
    assert encode_record(result) == R_TEXT
    assert message_frames([header, result]) == [GOLDEN_H, GOLDEN_R]
    assert checksum(b"1" + H_TEXT.encode() + b"\r\x03") == b"B2"
    assert checksum(b"2" + R_TEXT.encode() + b"\r\x03") == b"AE"


def test_golden_frames_decode_to_the_same_records():
    header, result = golden_records()
    frame_h, frame_r = decode_frame(GOLDEN_H), decode_frame(GOLDEN_R)
    assert frame_h == Frame(1, H_TEXT.encode() + b"\r", True)
    assert frame_r == Frame(2, R_TEXT.encode() + b"\r", True)
    assert decode_message(frame_h.text + frame_r.text) == [header, result]
    assert result.get(3) == ("", "", "", "OPPEST") and result.component(3, 4) == "OPPEST"
    assert result.component(6, 2) == "50" and result.get(14) == ""
    assert header.component(5, 2) == "1.0" and header.get(1) == "H"


def _feed_whole(receiver, data):
    receiver.receive_data(data, 0.0)


def _feed_bytewise(receiver, data):
    for i in range(len(data)):
        receiver.receive_data(data[i : i + 1], 0.0)


@pytest.mark.parametrize("feed", [_feed_whole, _feed_bytewise], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("noise", [b"", b"\x00\xff garbage\r\n\x7f"], ids=["clean", "noisy"])
def test_golden_frames_through_the_receiver(feed, noise):
    receiver = AstmReceiver()
    wire = noise + bytes([ENQ]) + noise + GOLDEN_H + noise + GOLDEN_R + noise + L_FRAME + noise + bytes([EOT]) + noise
    feed(receiver, wire)
    assert receiver.data_to_send() == bytes([ACK] * 4)
    got = events(receiver)
    assert isinstance(got[0], MessageReceived)
    header, result = golden_records()
    assert got[0].records == (header, result, Record("L", ("1", "N")))
    assert got[0].text == H_TEXT.encode() + b"\r" + R_TEXT.encode() + b"\rL|1|N\r"
    # The transcript is the wire from ENQ through the L frame, noise included.
    start = wire.index(bytes([ENQ]))
    assert got[0].transcript == wire[start : wire.index(L_FRAME) + len(L_FRAME)]
    assert got[1] == SessionEnded("EOT")
    assert not receiver.receiving


def test_golden_frame_with_a_flipped_byte_is_nakked_then_accepted_on_resend():
    receiver = AstmReceiver()
    broken = bytearray(GOLDEN_H)
    broken[10] ^= 0x01
    receiver.receive_data(bytes([ENQ]) + bytes(broken) + GOLDEN_H, 0.0)
    assert receiver.data_to_send() == bytes([ACK, NAK, ACK])
    rejected = events(receiver)
    assert len(rejected) == 1 and isinstance(rejected[0], FrameRejected) and "checksum" in rejected[0].reason


@pytest.mark.parametrize(
    "frame, error",
    [
        (b"\x021H|\r\x03", LengthError),
        (b"\x02" + b"1" + b"A" * 241 + b"\x0300\r\n", LengthError),
        (GOLDEN_H[:-4] + b"00\r\n", ChecksumError),
        (b"\x028H|\r\x03XX\r\n", FrameError),
        (GOLDEN_H.replace(b"\x03B2", b"\x04B2"), FrameError),
        (GOLDEN_H[:-1] + b"\r", FrameError),
        (b"\x03" + GOLDEN_H[1:], FrameError),
        (b"\x021H\x05|\r\x03" + checksum(b"1H\x05|\r\x03") + b"\r\n", FrameError),
        (GOLDEN_H[:-4] + b"ZZ\r\n", ChecksumError),
    ],
)
def test_decode_frame_rejects_with_specific_errors(frame, error):
    with pytest.raises(error):
        decode_frame(frame)


def test_lowercase_checksum_is_accepted_but_encoder_writes_uppercase():
    assert decode_frame(GOLDEN_H[:-4] + b"b2\r\n").fn == 1
    assert b"B2" in encode_frame(1, H_TEXT.encode() + b"\r", True)


def test_encode_frame_refuses_unsendable_frames():
    with pytest.raises(LocalProtocolError):
        encode_frame(8, b"x", True)
    with pytest.raises(LocalProtocolError):
        encode_frame(1, b"x" * 241, True)
    with pytest.raises(LocalProtocolError):
        encode_frame(1, b"a\x02b", True)


def test_long_record_splits_over_etb_frames_and_fn_wraps_mod_8():
    long_comment = Record.from_fields("C", {2: "1", 3: "I", 4: "x" * 700, 5: "G"})
    records = [Record.from_fields("H", {5: "SIM"}), long_comment] + [
        Record.from_fields("C", {2: str(i), 3: "I", 4: f"c{i}"}) for i in range(2, 8)
    ] + [Record("L", ("1", "N"))]
    frames = message_frames(records)
    assert [f[1:2] for f in frames] == [bytes([0x30 + (i + 1) % 8]) for i in range(len(frames))]
    assert frames[7][1:2] == b"0" and frames[8][1:2] == b"1"
    decoded = [decode_frame(f) for f in frames]
    assert [d.final for d in decoded[1:5]] == [False, False, True, True]  # 705 bytes → 240+240+225
    assert all(len(f) <= 247 for f in frames) and len(frames[1]) == 247
    receiver = AstmReceiver()
    receiver.receive_data(bytes([ENQ]) + b"".join(frames) + bytes([EOT]), 0.0)
    got = events(receiver)
    assert isinstance(got[0], MessageReceived) and list(got[0].records) == records
    assert receiver.data_to_send() == bytes([ACK] * (len(frames) + 1))


def test_escapes_round_trip_and_decode_from_wire_form():
    d = Delimiters()
    record = Record.from_fields("C", {2: "1", 3: "I", 4: "a|b^c\\d&e\rf\x01", 5: "G"})
    text = encode_record(record, d)
    assert text == "C|1|I|a&F&b&S&c&R&d&E&e&X0D&f&X01&|G"
    assert decode_record(text, d) == record
    assert decode_record("C|1|I|&X4142&&H&bold&N&|G").get(4) == "ABbold"
    # Unknown or unterminated escapes stay literal rather than losing text.
    assert decode_record("C|1|I|&Q& & x").get(4) == "&Q& & x"


def test_custom_delimiters_declared_in_the_header_are_used():
    d = Delimiters(field="!", repeat="~", component="@", escape="%")
    header = Record("H", ("~@%", "", "", ("SIM", "2")))
    result = Record.from_fields("R", {2: "1", 3: ("", "", "", "X"), 4: "1!2"})
    wire = encode_message([header, result, Record("L", ("1",))], d)
    assert wire == b"H!~@%!!!SIM@2\rR!1!@@@X!1%F%2\rL!1\r"
    assert decode_message(wire) == [header, result, Record("L", ("1",))]


def test_repeats_and_component_access():
    record = decode_record("O|1|S1||^^^A^Alpha\\^^^B^Beta|R")
    assert record.get(5) == Repeats((("", "", "", "A", "Alpha"), ("", "", "", "B", "Beta")))
    assert record.component(5, 4) == "A"
    assert record.text(5) == "A Alpha B Beta"
    assert encode_record(record) == "O|1|S1||^^^A^Alpha\\^^^B^Beta|R"


@pytest.mark.parametrize("bad", ["", "1|x", "h|x", "R^1", "H|\\^", "H|\\^&x", "H||^&|", "HAB&C"])
def test_decode_record_errors(bad):
    with pytest.raises(FrameError):
        decode_record(bad)


def test_timestamps():
    moment = datetime(2024, 1, 1, 12, 15, 0)
    assert format_timestamp(moment) == "20240101121500"
    assert parse_timestamp("20240101121500") == moment
    assert parse_timestamp("20240101") == datetime(2024, 1, 1)
    assert parse_timestamp("202401011215") == datetime(2024, 1, 1, 12, 15)
    for bad in ("2024010112150", "20241301000000", "2024O101", "２０２４０１０１"):
        with pytest.raises(FrameError):
            parse_timestamp(bad)


def test_sequence_numbers_restart_under_each_parent():
    raw = [Record("H"), Record("P", ("9",)), Record("O", ("9", "S1")), Record("R", ("9",)), Record("C", ("9",)),
           Record("C", ("9",)), Record("R", ("9",)), Record("C", ("9",)), Record("O", ("9", "S2")),
           Record("R", ("9",)), Record("P", ("9",)), Record("C", ("9",)), Record("O", ("9",)), Record("L", ("9", "N"))]
    numbered = assign_sequence_numbers(raw)
    assert [r.type + r.seq for r in numbered[1:]] == [
        "P1", "O1", "R1", "C1", "C2", "R2", "C1", "O2", "R1", "P2", "C1", "O1", "L1"]
    check_structure(numbered)
    with pytest.raises(FrameError, match="sequence number"):
        check_structure(raw)


@pytest.mark.parametrize(
    "types",
    [["P", "L"], ["H", "P"], ["H", "O", "L"], ["H", "P", "R", "L"], ["H", "P", "H", "L"], ["H", "L", "P", "L"]],
)
def test_structure_violations(types):
    records = assign_sequence_numbers([Record(t) for t in types])
    with pytest.raises(FrameError):
        check_structure(records)


def test_message_text_that_is_not_valid_in_the_encoding_raises_protocol_error():
    with pytest.raises(ProtocolError):
        decode_message(b"H|\\^&\rC|1|I|\xff\xfe\r", encoding="utf-8")
    with pytest.raises(LocalProtocolError):
        encode_message([Record.from_fields("C", {4: "农药"})], encoding="latin-1")
    utf8 = encode_message([Record.from_fields("C", {2: "1", 4: "农药残留"})], encoding="utf-8")
    assert decode_message(utf8, encoding="utf-8")[0].get(4) == "农药残留"


def test_utf8_record_split_inside_a_character_reassembles():
    records = [Record.from_fields("H", {5: "SIM"}), Record.from_fields("C", {2: "1", 4: "菜" * 100}),
               Record("L", ("1", "N"))]
    frames = message_frames(records, encoding="utf-8")
    receiver = AstmReceiver(encoding="utf-8")
    receiver.receive_data(bytes([ENQ]) + b"".join(frames), 0.0)
    got = events(receiver)
    assert isinstance(got[0], MessageReceived) and list(got[0].records) == records


def test_receiver_reports_undecodable_records_and_recovers_with_the_next_message():
    receiver = AstmReceiver(encoding="utf-8")
    bad = [encode_frame(1, b"H|\\^&\r", True), encode_frame(2, b"C|1|\xff\r", True), encode_frame(3, b"L|1\r", True)]
    good = message_frames([Record("H", ("\\^&",)), Record("L", ("1", "N"))], first_fn=4)
    receiver.receive_data(bytes([ENQ]) + b"".join(bad + good) + bytes([EOT]), 0.0)
    got = events(receiver)
    assert isinstance(got[0], SessionAborted) and "utf-8" in got[0].reason
    assert isinstance(got[1], MessageReceived) and [r.type for r in got[1].records] == ["H", "L"]
    assert got[2] == SessionEnded("EOT")


def test_query_and_manufacturer_records_round_trip():
    query = decode_record("Q|1|^S000001||^^^ALL||20240101000000^20240102000000|||||||O")
    assert query.component(3, 2) == "S000001" and query.component(5, 4) == "ALL"
    assert query.component(7, 2) == "20240102000000" and query.get(14) == "O"
    assert encode_record(query) == "Q|1|^S000001||^^^ALL||20240101000000^20240102000000|||||||O"
    vendor = decode_record("M|1|DY3500|lamp^412nm")
    assert vendor.type == "M" and vendor.get(4) == ("lamp", "412nm")
    message = assign_sequence_numbers([Record("H"), query, Record("L", ("1", "F"))])
    check_structure(message)
