"""E1381 sender and receiver state machines: establishment, retries, timers, interrupts, contention.

Time is a number the test passes in; nothing here sleeps.
"""

from __future__ import annotations

import pytest

from firmware_bridge.astm import (
    ACK,
    ENQ,
    EOT,
    NAK,
    NEED_DATA,
    STX,
    AstmReceiver,
    AstmSender,
    ContentionLost,
    FrameRejected,
    FrameRetransmitted,
    LinkBusy,
    MessageReceived,
    MessageSent,
    MessageTooLarge,
    Record,
    SessionAborted,
    SessionEnded,
    assign_sequence_numbers,
    decode_frame,
    encode_frame,
)
from firmware_bridge.errors import LocalProtocolError


def events(endpoint) -> list:
    out = []
    while (event := endpoint.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def message(n_results: int = 2) -> tuple[Record, ...]:
    records = [Record.from_fields("H", {5: ("SIM", "1")}), Record("P", ("1",)), Record("O", ("1", "S1"))]
    records += [Record.from_fields("R", {2: "1", 3: ("", "", "", f"I{i}"), 4: str(i)}) for i in range(n_results)]
    records.append(Record("L", ("1", "N")))
    return tuple(assign_sequence_numbers(records))


def pump(sender: AstmSender, receiver: AstmReceiver, now: float = 0.0, corrupt=None, rounds: int | None = None) -> None:
    """Shuttle bytes both ways until neither side has anything to say (or for ``rounds`` exchanges)."""
    for _ in range(rounds or 1000):
        out = sender.data_to_send()
        if corrupt is not None and out:
            out = corrupt(out)
        if out:
            receiver.receive_data(out, now)
        back = receiver.data_to_send()
        if back:
            sender.receive_data(back, now)
        if not out and not back:
            return
    if rounds is None:
        raise AssertionError("the link never went quiet")


def test_clean_session_delivers_the_message_and_returns_both_sides_to_neutral():
    sender, receiver = AstmSender(), AstmReceiver()
    msg = message()
    sender.send_message(msg, 0.0)
    assert sender.deadline == 15.0
    pump(sender, receiver)
    assert events(sender) == [MessageSent(msg)]
    got = events(receiver)
    assert isinstance(got[0], MessageReceived) and got[0].records == msg
    assert got[1] == SessionEnded("EOT")
    assert sender.idle and not receiver.receiving and sender.deadline is None and receiver.deadline is None


def test_nak_resends_the_same_frame_with_the_same_fn():
    sender = AstmSender()
    sender.send_message(message(), 0.0)
    assert sender.data_to_send() == bytes([ENQ])
    sender.receive_data(bytes([ACK]), 1.0)
    first = sender.data_to_send()
    assert decode_frame(first).fn == 1
    sender.receive_data(bytes([NAK]), 2.0)
    assert sender.data_to_send() == first
    assert events(sender) == [FrameRetransmitted(1, 1)]
    assert sender.deadline == 17.0
    sender.receive_data(bytes([ACK]), 3.0)
    assert decode_frame(sender.data_to_send()).fn == 2


def test_any_reply_other_than_ack_counts_as_a_failure_and_six_failures_abort_with_eot():
    sender = AstmSender()
    msg = message()
    sender.send_message(msg, 0.0)
    assert sender.data_to_send() == bytes([ENQ])
    sender.receive_data(bytes([ACK]), 0.0)
    frame = sender.data_to_send()
    for attempt in range(1, 6):
        sender.receive_data(bytes([NAK]) if attempt % 2 else b"?", 0.0)
        assert sender.data_to_send() == frame
    sender.receive_data(bytes([NAK]), 0.0)
    assert sender.data_to_send() == bytes([EOT])
    got = events(sender)
    assert [type(e) for e in got] == [FrameRetransmitted] * 5 + [SessionAborted]
    assert got[-1].records == msg and "6 times" in got[-1].reason
    assert sender.idle


def test_sender_timer_15_s_for_enq_and_for_frames():
    sender = AstmSender()
    sender.send_message(message(), 100.0)
    sender.data_to_send()
    sender.handle_timeout(114.9)
    assert sender.data_to_send() == b"" and not sender.idle
    sender.handle_timeout(115.0)
    assert sender.data_to_send() == bytes([EOT])
    assert "ENQ" in events(sender)[0].reason
    sender.send_message(message(), 200.0)
    sender.receive_data(bytes([ACK]), 201.0)
    sender.data_to_send()
    assert sender.deadline == 216.0
    sender.expire_timer()
    assert sender.data_to_send() == bytes([EOT])
    assert "frame 1" in events(sender)[0].reason


def test_busy_receiver_nak_to_enq_means_retry_after_10_s():
    sender, receiver = AstmSender(), AstmReceiver()
    receiver.busy = True
    sender.send_message(message(), 0.0)
    pump(sender, receiver, 0.0)
    assert events(sender) == [LinkBusy(10.0)]
    assert sender.deadline == 10.0 and not receiver.receiving
    receiver.busy = False
    sender.handle_timeout(10.0)
    pump(sender, receiver, 10.0)
    assert isinstance(events(sender)[0], MessageSent)
    assert isinstance(events(receiver)[0], MessageReceived)


def test_contention_instrument_wins_and_the_computer_backs_off():
    instrument = AstmSender(priority=True)
    instrument.send_message(message(), 0.0)
    instrument.data_to_send()
    instrument.receive_data(bytes([ENQ]), 0.5)  # the computer wanted to talk too
    assert instrument.deadline == 1.5 and events(instrument) == []
    instrument.handle_timeout(1.5)
    assert instrument.data_to_send() == bytes([ENQ])

    computer = AstmSender(priority=False)
    computer.send_message(message(), 0.0)
    computer.data_to_send()
    computer.receive_data(bytes([ENQ]), 0.5)
    assert events(computer) == [ContentionLost(20.0)]
    assert computer.deadline == 20.5


def test_receiver_timer_30_s_discards_a_partial_message():
    sender, receiver = AstmSender(), AstmReceiver()
    sender.send_message(message(), 0.0)
    receiver.receive_data(sender.data_to_send(), 0.0)
    sender.receive_data(receiver.data_to_send(), 0.0)
    receiver.receive_data(sender.data_to_send(), 1.0)  # frame 1 (H)
    assert receiver.data_to_send() == bytes([ACK]) and receiver.deadline == 31.0
    receiver.handle_timeout(30.9)
    assert events(receiver) == []
    receiver.handle_timeout(31.0)
    got = events(receiver)
    assert isinstance(got[0], SessionAborted) and got[0].records[0].type == "H"
    assert not receiver.receiving
    # The sender's late frames fall on a neutral line and are ignored: no reply at all.
    sender.receive_data(bytes([ACK]), 40.0)
    receiver.receive_data(sender.data_to_send(), 40.0)
    assert receiver.data_to_send() == b"" and events(receiver) == []


def test_quiet_receiver_timeout_without_data_just_ends_the_session():
    receiver = AstmReceiver(timeout=5)
    receiver.receive_data(bytes([ENQ]), 0.0)
    receiver.expire_timer()
    assert events(receiver) == [SessionEnded("no frame or EOT within 5 s")]


def test_receiver_interrupt_eot_instead_of_ack_honoured_by_the_sender():
    sender, receiver = AstmSender(), AstmReceiver()
    msg = message()
    sender.send_message(msg, 0.0)
    pump(sender, receiver, rounds=2)   # ENQ/ACK, frame 1/ACK
    receiver.interrupt()
    pump(sender, receiver)
    got = events(sender)
    assert isinstance(got[0], SessionAborted) and "interrupt" in got[0].reason and got[0].records == msg
    assert isinstance(events(receiver)[0], SessionAborted)   # the partial message is dropped
    # Re-sent whole, it arrives once.
    sender.send_message(msg, 20.0)
    pump(sender, receiver, 20.0)
    assert isinstance(events(receiver)[0], MessageReceived)


def test_receiver_interrupt_ignored_by_a_sender_that_does_not_honour_it():
    sender, receiver = AstmSender(honour_interrupts=False), AstmReceiver()
    sender.send_message(message(), 0.0)
    pump(sender, receiver, rounds=2)
    receiver.interrupt()
    pump(sender, receiver)
    assert isinstance(events(sender)[0], MessageSent)
    assert isinstance(events(receiver)[0], MessageReceived)


def test_lost_ack_means_a_duplicate_frame_which_is_acked_but_taken_once():
    sender, receiver = AstmSender(), AstmReceiver()
    msg = message()
    sender.send_message(msg, 0.0)
    pump(sender, receiver, rounds=2)
    frame2 = sender.data_to_send()
    receiver.receive_data(frame2, 0.0)
    assert receiver.data_to_send() == bytes([ACK])     # this ACK is "lost"
    sender.receive_data(b"\x00", 0.0)                   # garbled reply → resend frame 2
    again = sender.data_to_send()
    assert again == frame2
    receiver.receive_data(again, 0.0)
    sender.receive_data(receiver.data_to_send(), 0.0)
    pump(sender, receiver)
    got = events(receiver)
    assert isinstance(got[0], MessageReceived) and got[0].records == msg


def test_out_of_sequence_frame_is_nakked():
    receiver = AstmReceiver()
    frames = [f for f in AstmSender().frames]  # empty: build frames directly
    assert frames == []
    sender = AstmSender()
    sender.send_message(message(), 0.0)
    all_frames = sender.frames
    receiver.receive_data(bytes([ENQ]) + all_frames[1], 0.0)
    assert receiver.data_to_send() == bytes([ACK, NAK])
    assert "expected 1" in events(receiver)[0].reason


def test_eot_mid_message_discards_the_partial_and_the_next_session_works():
    sender, receiver = AstmSender(), AstmReceiver()
    msg = message()
    sender.send_message(msg, 0.0)
    pump(sender, receiver, rounds=3)
    sender.abort(0.0)
    assert events(sender) == [SessionAborted("the sender aborted the message", msg)]
    pump(sender, receiver)
    got = events(receiver)
    assert isinstance(got[0], SessionAborted) and len(got[0].records) == 3
    assert got[0].transcript.startswith(bytes([ENQ, STX]))
    sender.send_message(msg, 1.0)
    pump(sender, receiver, 1.0)
    assert [type(e) for e in events(receiver)] == [MessageReceived, SessionEnded]


def test_enq_in_the_middle_of_a_message_restarts_the_session():
    sender, receiver = AstmSender(), AstmReceiver()
    msg = message()
    sender.send_message(msg, 0.0)
    pump(sender, receiver, rounds=3)
    sender2 = AstmSender()
    sender2.send_message(msg, 1.0)
    pump(sender2, receiver, 1.0)
    got = events(receiver)
    assert isinstance(got[0], SessionAborted) and "ENQ" in got[0].reason
    assert isinstance(got[1], MessageReceived) and got[1].records == msg


def test_noise_stx_fragment_gets_no_reply_and_an_overlong_frame_is_nakked():
    receiver = AstmReceiver()
    sender = AstmSender()
    sender.send_message(message(), 0.0)
    frame = sender.frames[0]
    receiver.receive_data(bytes([ENQ, STX]) + b"junk" + frame, 0.0)
    assert receiver.data_to_send() == bytes([ACK, ACK])
    assert isinstance(events(receiver)[0], FrameRejected)
    receiver.receive_data(bytes([STX]) + b"2" + b"x" * 400 + b"\r\n", 0.0)
    assert receiver.data_to_send() == bytes([NAK])
    assert "247" in events(receiver)[0].reason


def test_busy_receiver_naks_enq():
    receiver = AstmReceiver()
    receiver.busy = True
    receiver.receive_data(bytes([ENQ]), 0.0)
    assert receiver.data_to_send() == bytes([NAK]) and not receiver.receiving


def test_local_misuse_raises_local_protocol_error():
    sender = AstmSender()
    with pytest.raises(LocalProtocolError):
        sender.send_message((), 0.0)
    sender.send_message(message(), 0.0)
    with pytest.raises(LocalProtocolError):
        sender.send_message(message(), 0.0)
    with pytest.raises(LocalProtocolError):
        AstmReceiver(timeout=0)
    with pytest.raises(LocalProtocolError):
        Record("h")


def test_two_messages_in_one_session_each_get_their_transcript():
    receiver = AstmReceiver()
    first = AstmSender()
    first.send_message(message(1), 0.0)
    frames = list(first.frames)
    second = [f for f in AstmSender().frames]
    assert second == []
    from firmware_bridge.astm import message_frames
    frames += message_frames(message(2), first_fn=len(frames) + 1)
    wire = bytes([ENQ]) + b"".join(frames) + bytes([EOT])
    receiver.receive_data(wire, 0.0)
    got = events(receiver)
    assert [type(e) for e in got] == [MessageReceived, MessageReceived, SessionEnded]
    assert got[0].transcript + got[1].transcript + bytes([EOT]) == wire
    assert len(got[1].records) == len(message(2))


def test_receiver_can_hold_the_final_ack_until_the_result_is_stored():
    sender, receiver = AstmSender(), AstmReceiver(hold_message_ack=True)
    msg = message()
    sender.send_message(msg, 0.0)
    pump(sender, receiver)
    assert isinstance(events(receiver)[0], MessageReceived)
    assert receiver.awaiting_acknowledgement and not sender.idle
    # A retransmission of the final frame while the ACK is held gets no reply either.
    receiver.receive_data(sender.frames[-1], 1.0)
    assert receiver.data_to_send() == b""
    receiver.acknowledge_message()
    pump(sender, receiver)
    assert events(sender) == [MessageSent(msg)]
    assert not receiver.awaiting_acknowledgement and not receiver.receiving


def test_held_ack_is_dropped_when_the_sender_gives_up():
    sender, receiver = AstmSender(), AstmReceiver(hold_message_ack=True)
    msg = message()
    sender.send_message(msg, 0.0)
    pump(sender, receiver)
    sender.handle_timeout(15.0)
    pump(sender, receiver, 15.0)
    assert isinstance(events(sender)[-1], SessionAborted)
    assert not receiver.awaiting_acknowledgement
    receiver.acknowledge_message()
    assert receiver.data_to_send() == b""


def test_a_message_that_never_ends_is_refused_at_max_message():
    receiver = AstmReceiver(max_message=2000)
    receiver.receive_data(bytes([ENQ]), 0.0)
    fn = 1
    receiver.receive_data(encode_frame(fn, b"H|\\^&\r", True), 0.0)
    for _ in range(30):
        fn = (fn + 1) % 8
        receiver.receive_data(encode_frame(fn, b"C|1|I|" + b"x" * 200 + b"\r", True), 0.0)
    got = events(receiver)
    too_large = [e for e in got if isinstance(e, MessageTooLarge)]
    assert len(too_large) == 1 and "2000 bytes" in too_large[0].reason and too_large[0].limit == "bytes"
    assert isinstance(too_large[0], SessionAborted) and len(too_large[0].transcript) <= 1024
    replies = receiver.data_to_send()
    # Frames up to the limit were ACKed; the one that crossed it and every later one is NAKed, never ACKed.
    assert replies == bytes([ACK] * 11) + bytes([NAK] * 21)
    assert len(receiver._transcript) == 0  # refusing: nothing more is kept  # noqa: SLF001
    # The sender gives up (EOT); the next session is received normally.
    receiver.receive_data(bytes([EOT, ENQ]) + encode_frame(1, b"H|\\^&\r", True) + encode_frame(2, b"L|1|N\r", True), 0.0)
    assert [type(e) for e in events(receiver)] == [SessionEnded, MessageReceived]
    assert receiver.data_to_send() == bytes([ACK] * 3)


def test_a_giant_message_is_never_acknowledged_to_the_end():
    """Regression: past max_message the receiver used to keep ACKing the rest of the message, so an
    instrument sending one giant record got every ACK (MessageSent: it may delete the result) while
    the receiver had discarded it — a result lost without a trace on either side."""
    sender, receiver = AstmSender(), AstmReceiver(max_message=2000, hold_message_ack=True)
    giant = (Record.from_fields("H", {}), Record.from_fields("C", {2: "1", 3: "I", 4: "x" * 5000}), Record("L", ("1", "N")))
    sender.send_message(giant, 0.0)
    pump(sender, receiver)
    sent = events(sender)
    assert not any(isinstance(e, MessageSent) for e in sent)
    assert isinstance(sent[-1], SessionAborted)  # the instrument keeps the message and will try again
    got = events(receiver)
    assert any(isinstance(e, MessageTooLarge) for e in got) and not any(isinstance(e, MessageReceived) for e in got)


def test_a_message_with_too_many_records_is_refused():
    receiver = AstmReceiver(max_records=50)
    receiver.receive_data(bytes([ENQ]) + encode_frame(1, b"H|\\^&\r", True), 0.0)
    fn = 1
    for _ in range(10):  # 10 frames of 12 short records each (non-standard, but received)
        fn = (fn + 1) % 8
        receiver.receive_data(encode_frame(fn, b"C|1|I|x|G\r" * 12, True), 0.0)
    got = events(receiver)
    assert [type(e) for e in got if not isinstance(e, FrameRejected)] == [MessageTooLarge]
    assert got[0].limit == "records" and "50 records" in got[0].reason
    assert receiver.data_to_send() == bytes([ACK] * 6) + bytes([NAK] * 6)
    assert receiver._records == []  # noqa: SLF001


def test_receiver_limits_must_hold_a_frame():
    with pytest.raises(LocalProtocolError):
        AstmReceiver(max_message=100)
