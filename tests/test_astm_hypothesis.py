"""Property tests: round trips of records and frames, and "any bytes decode or raise ProtocolError"."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.astm import (
    ACK,
    ENQ,
    EOT,
    NAK,
    NEED_DATA,
    AstmReceiver,
    AstmSender,
    Delimiters,
    MessageReceived,
    MessageSent,
    Record,
    Repeats,
    SessionAborted,
    assign_sequence_numbers,
    check_structure,
    decode_frame,
    decode_message,
    decode_record,
    encode_frame,
    encode_message,
    encode_record,
    message_frames,
)
from firmware_bridge.errors import ProtocolError

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(alphabet=st.characters(codec="latin-1"), max_size=12)
components = st.tuples(text, text) | st.lists(text, min_size=2, max_size=5).map(tuple)
repeat_item = text | components
field = text | components | st.lists(repeat_item, min_size=2, max_size=3).map(lambda xs: Repeats(tuple(xs)))
punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
delimiters = st.permutations(punct).map(lambda p: Delimiters(p[0], p[1], p[2], p[3]))


def canonical(rtype: str, fields: list) -> Record:
    while fields and fields[-1] == "":
        fields.pop()
    return Record(rtype, tuple(fields))


records = st.builds(canonical, st.sampled_from("PORCQLMS"), st.lists(field, max_size=8))


def events(endpoint) -> list:
    out = []
    while (event := endpoint.next_event()) is not NEED_DATA:
        out.append(event)
    return out


@FAST
@given(records, delimiters)
def test_record_round_trip(record, d):
    wire = encode_record(record, d)
    assert "\r" not in wire and all(ord(c) >= 0x20 for c in wire)
    assert decode_record(wire, d) == record


@FAST
@given(st.lists(field, max_size=12), delimiters)
def test_header_round_trip_declares_its_own_delimiters(fields, d):
    header = canonical("H", [d.declaration, *fields]) if fields else Record("H", (d.declaration,))
    wire = encode_record(header, d)
    assert wire.startswith("H" + d.field + d.declaration)
    assert decode_record(wire) == header  # decoded without being told the delimiters


@FAST
@given(st.integers(0, 7), st.binary(max_size=240).map(lambda b: bytes(x for x in b if x >= 0x20 or x == 0x0D)),
       st.booleans())
def test_frame_round_trip(fn, body, final):
    frame = encode_frame(fn, body, final)
    assert len(frame) <= 247
    decoded = decode_frame(frame)
    assert (decoded.fn, decoded.text, decoded.final) == (fn, body, final)


@settings(max_examples=60, deadline=None)
@given(st.lists(records, min_size=1, max_size=6), delimiters, st.integers(1, 240), st.data())
def test_message_round_trip_through_frames_and_receiver(body, d, max_text, data):
    msg = [Record("H", (d.declaration,))] + body + [Record("L", ("1", "N"))]
    msg = [r for i, r in enumerate(msg) if r.type != "L" or i == len(msg) - 1]
    frames = message_frames(msg, delimiters=d, max_text=max_text)
    wire = bytes([ENQ]) + b"".join(frames) + bytes([EOT])
    receiver = AstmReceiver()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        receiver.receive_data(wire[start:end], 0.0)
    got = events(receiver)
    assert isinstance(got[0], MessageReceived)
    assert list(got[0].records) == msg
    assert decode_message(encode_message(msg, d)) == msg


@FAST
@given(st.lists(st.sampled_from("PORC"), max_size=12))
def test_assigned_sequence_numbers_pass_the_structure_check_when_nesting_is_legal(types):
    # Build a legal nesting: every O needs a P above it, every R an O.
    built: list[Record] = [Record("H")]
    depth = 0
    for t in types:
        need = {"P": 0, "O": 1, "R": 2, "C": 0}[t]
        if depth < need:
            continue
        built.append(Record(t, ("0",)))
        if t != "C":
            depth = {"P": 1, "O": 2, "R": 3}[t]
    built.append(Record("L", ("0", "N")))
    check_structure(assign_sequence_numbers(built))


# ------------------------------------------------------------ fuzz invariants


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_decode_as_a_frame_or_raise_protocol_error(data):
    try:
        frame = decode_frame(data)
    except ProtocolError:
        return
    assert encode_frame(frame.fn, frame.text, frame.final)[:-4] == data[:-4]


@FAST
@given(st.binary(max_size=300))
def test_any_frame_shaped_bytes_decode_or_raise_protocol_error(body):
    data = b"\x02" + body + b"\r\n"
    try:
        decode_frame(data)
    except ProtocolError:
        pass


@FAST
@given(st.text(max_size=200), delimiters)
def test_any_text_decodes_as_a_record_or_raises_protocol_error(line, d):
    try:
        decode_record(line, d)
    except ProtocolError:
        pass


@FAST
@given(st.binary(max_size=400), st.sampled_from(["latin-1", "utf-8", "gbk", "ascii"]))
def test_any_bytes_decode_as_a_message_or_raise_protocol_error(data, encoding):
    try:
        decode_message(data, encoding)
    except ProtocolError:
        pass


alphabet_heavy = st.lists(
    st.sampled_from([b"\x05", b"\x04", b"\x02", b"\x03", b"\x17", b"\r", b"\n", b"\x06", b"\x15", b"1", b"H|\\^&",
                     b"L|1", b"R|1|", b"B2", b"\xff", b"&X0&", b"\x021H|\\^&\r\x03"]) | st.binary(max_size=20),
    max_size=40,
).map(b"".join)


@FAST
@given(st.lists(st.tuples(alphabet_heavy, st.floats(0, 100)), max_size=10), st.sampled_from(["latin-1", "utf-8"]))
def test_receiver_never_raises_on_remote_bytes(chunks, encoding):
    receiver = AstmReceiver(encoding=encoding)
    now = 0.0
    for chunk, dt in chunks:
        now += dt
        receiver.receive_data(chunk, now)
        receiver.handle_timeout(now)
        reply = receiver.data_to_send()
        assert set(reply) <= {ACK, NAK, EOT}
        for event in events(receiver):
            if isinstance(event, MessageReceived):
                assert event.records[0].type == "H" and event.records[-1].type == "L"


@FAST
@given(st.lists(st.tuples(st.binary(max_size=4), st.floats(0, 40)), max_size=30))
def test_sender_never_raises_and_always_ends(replies):
    sender = AstmSender()
    msg = (Record("H", ("\\^&",)), Record("L", ("1", "N")))
    sender.send_message(msg, 0.0)
    now = 0.0
    for reply, dt in replies:
        now += dt
        sender.receive_data(reply, now)
        sender.handle_timeout(now)
        sender.data_to_send()
    for _ in range(20):  # let every timer run out: the sender must come back to idle
        if sender.idle:
            break
        now = max(now, sender.deadline or now)
        sender.handle_timeout(now)
        sender.receive_data(b"", now)
        sender.data_to_send()
        if not sender.idle and sender.deadline is None:
            raise AssertionError("sender stuck without a timer")
        if not sender.idle and sender.deadline is not None and sender.deadline <= now:
            raise AssertionError("sender timer does not advance")
        now = sender.deadline or now
    done = [e for e in events(sender) if isinstance(e, (MessageSent, SessionAborted))]
    assert sender.idle or done == [] or isinstance(done[-1], (MessageSent, SessionAborted))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.05, 0.6))
def test_link_with_single_byte_corruption_never_delivers_a_damaged_message(seed, rate):
    """Frames garbled in flight are NAKed and resent; whatever is delivered equals what was sent."""
    msg = tuple(assign_sequence_numbers([
        Record.from_fields("H", {5: ("SIM", "1")}), Record("P", ("1",)), Record("O", ("1", "S1")),
        Record.from_fields("R", {2: "1", 3: ("", "", "", "OPPEST"), 4: "62.5", 5: "%"}),
        Record.from_fields("C", {2: "1", 3: "I", 4: "positive" * 40}), Record("L", ("1", "N")),
    ]))
    rng = random.Random(seed)
    sender, receiver = AstmSender(), AstmReceiver()
    sender.send_message(msg, 0.0)
    delivered: list[MessageReceived] = []
    now = 0.0
    for _ in range(400):
        out = sender.data_to_send()
        if out and rng.random() < rate:
            pos = rng.randrange(len(out))
            out = out[:pos] + bytes([(out[pos] + rng.randrange(1, 256)) & 0xFF]) + out[pos + 1:]
        receiver.receive_data(out, now)
        back = receiver.data_to_send()
        sender.receive_data(back, now)
        for event in events(receiver):
            if isinstance(event, MessageReceived):
                delivered.append(event)
        if any(isinstance(e, MessageSent) for e in events(sender)):
            break
        if not out and not back:
            now += 31.0  # a garbled ENQ/EOT left both sides waiting: let the timers run out
            sender.handle_timeout(now)
            receiver.handle_timeout(now)
        if sender.idle:  # aborted: an instrument sends the message again
            sender.send_message(msg, now)
    assert len(delivered) <= 1  # replies travel clean here, so no message can arrive twice
    if rate <= 0.3:
        assert delivered, "a moderately noisy link must still get the message through"
    for event in delivered:
        assert event.records == msg


@FAST
@given(st.lists(records, max_size=10))
def test_result_mapping_never_raises_on_odd_but_decodable_messages(body):
    from drivers.rapidtest import results_from_message

    msg = [Record("H", ("\\^&",))] + body + [Record("L", ("1", "N"))]
    results = results_from_message(msg, b"", encode_message(msg))
    assert len(results) == sum(r.type == "R" for r in body)
