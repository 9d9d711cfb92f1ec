"""The E1381 receiver state machine (the computer side of the link)."""

from __future__ import annotations

import enum
from typing import Final, Literal

from firmware_bridge.astm.constants import ACK, ENQ, EOT, LF, MAX_FRAME, MAX_MESSAGE, MAX_RECORDS, NAK, RECEIVER_TIMEOUT, STX
from firmware_bridge.astm.events import Endpoint, FrameRejected, MessageReceived, MessageTooLarge, SessionAborted, SessionEnded
from firmware_bridge.astm.frames import decode_frame
from firmware_bridge.astm.records import DEFAULT_DELIMITERS, Delimiters, Record, decode_record
from firmware_bridge.errors import FrameError, LocalProtocolError, ProtocolError

_TOO_LARGE_HEAD: Final = 1024  # bytes of an oversized message kept for diagnosis


class _RxState(enum.Enum):
    IDLE = "idle"
    RECEIVING = "receiving"


class AstmReceiver(Endpoint):
    """E1381 receiver (the computer side): ACKs good frames, NAKs bad ones, reassembles messages.

    State machine::

        IDLE ──ENQ──► (busy? NAK : ACK) ──► RECEIVING
        RECEIVING ──frame ok, FN expected──► ACK, keep text; ETX ends a record;
                                             an L record completes the message
                  ──frame ok, FN = previous──► ACK again (our ACK was lost), ignore
                  ──bad checksum / FN / form──► NAK (FrameRejected)
                  ──EOT──────────────────────► IDLE (partial message → SessionAborted)
                  ──ENQ──────────────────────► sender restarted: drop partial, ACK
                  ──30 s without frame/EOT───► IDLE, partial discarded
                  ──> max_message bytes or───► REFUSING (partial → MessageTooLarge;
                    max_records records          the frame that crossed the limit is NAKed)
        REFUSING  ──any frame────────────────► NAK, content dropped unread
                  ──EOT / ENQ / timer────────► as in RECEIVING (the refusal ends with the session)

    Bytes outside frames that are not ENQ/EOT are line noise and ignored; an
    STX inside a frame restarts the frame.  Nothing here ever raises on
    remote input.

    ``hold_message_ack=True`` withholds the ACK of the frame that completes a
    message until the caller calls :meth:`acknowledge_message` — i.e. until
    it has safely stored the result.  The instrument keeps the message until
    that ACK, so a crash in between costs a re-send, never a result.  If the
    sender gives up first (EOT after its 15 s timer), the held ACK is dropped
    and the instrument will send the message again.

    Memory is bounded by ``max_message`` (bytes received since the previous
    message ended, noise and retransmissions included) and ``max_records``
    (records of the message so far).  A message beyond either is refused, not
    truncated and never ACKed to the end: ACKing the rest would let the
    instrument think a discarded result was delivered and delete it.
    """

    def __init__(self, *, timeout: float = RECEIVER_TIMEOUT, encoding: str = "latin-1",
                 hold_message_ack: bool = False, max_message: int = MAX_MESSAGE,
                 max_records: int = MAX_RECORDS) -> None:
        super().__init__()
        if timeout <= 0:
            raise LocalProtocolError("receiver timeout must be positive")
        if max_message < MAX_FRAME or max_records < 2:
            raise LocalProtocolError(f"max_message must be ≥ {MAX_FRAME} bytes and max_records ≥ 2")
        "x".encode(encoding)  # fail early (LookupError) on an unknown codec name
        self.timeout = timeout
        self.encoding = encoding
        self.busy = False
        self.hold_message_ack = hold_message_ack
        self.max_message = max_message
        self.max_records = max_records
        self._refusing = False
        self._held = False
        self._interrupt = False
        self._state = _RxState.IDLE
        self._frame: bytearray | None = None
        self._frame_len = 0
        self._reset_session()

    # -- public API

    @property
    def receiving(self) -> bool:
        return self._state is _RxState.RECEIVING

    @property
    def awaiting_acknowledgement(self) -> bool:
        """A completed message's final ACK is being held for :meth:`acknowledge_message`."""
        return self._held

    def acknowledge_message(self) -> None:
        """Release the held ACK of the last completed message (no-op when nothing is held)."""
        if self._held:
            self._held = False
            self._reply_ok()

    def interrupt(self) -> None:
        """Ask the sender to stop: the next good frame is answered with EOT instead of ACK."""
        self._interrupt = True

    def receive_data(self, data: bytes, now: float) -> None:
        i = 0
        n = len(data)
        while i < n:
            if self._state is _RxState.IDLE:
                j = data.find(ENQ, i)
                if j < 0:
                    return
                i = j + 1
                self._start_session(now)
                continue
            if self._frame is not None:
                i = self._continue_frame(data, i, now)
                continue
            b = data[i]
            if not self._refusing:
                self._transcript.append(b)
            i += 1
            if b == STX:
                self._frame = bytearray([STX])
                self._frame_len = 1
            elif b == EOT:
                self._end_session("EOT")
            elif b == ENQ:
                if self._has_partial():
                    self._abort("the sender started a new session (ENQ) in the middle of a message")
                self._start_session(now)
            # anything else between frames is line noise
        if len(self._transcript) > self.max_message:  # noise or a frame still arriving
            self._refuse("bytes")

    def handle_timeout(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if not self._refusing and (self._has_partial() or self._frame is not None):
            self._abort(f"no frame or EOT within {self.timeout:g} s; the partial message was discarded")
        else:
            self._events.append(SessionEnded(f"no frame or EOT within {self.timeout:g} s"))
        self._go_idle()

    # -- internals

    def _reset_session(self) -> None:
        self._held = False
        self._refusing = False
        self._last_fn: int | None = None
        self._text = bytearray()
        self._transcript = bytearray()
        self._reset_message()

    def _reset_message(self) -> None:
        self._records: list[Record] = []
        self._message_text = bytearray()
        self._delimiters = DEFAULT_DELIMITERS
        self._discarding = False

    def _has_partial(self) -> bool:
        return bool(self._records or self._text or self._discarding)

    def _start_session(self, now: float) -> None:
        self._reset_session()
        self._frame = None
        self._transcript.append(ENQ)
        if self.busy:
            self._out.append(NAK)
            self._go_idle()
            return
        self._out.append(ACK)
        self._state = _RxState.RECEIVING
        self._deadline = now + self.timeout

    def _go_idle(self) -> None:
        self._state = _RxState.IDLE
        self._deadline = None
        self._frame = None
        self._reset_session()

    def _end_session(self, why: str) -> None:
        if self._has_partial():
            self._abort(f"{why} before the message's L record; the partial message was discarded")
        else:
            self._events.append(SessionEnded(why))
        self._go_idle()

    def _abort(self, reason: str) -> None:
        self._events.append(SessionAborted(reason, tuple(self._records), bytes(self._transcript)))
        self._text.clear()
        self._reset_message()
        self._transcript.clear()

    def _refuse(self, limit: Literal["bytes", "records"]) -> None:
        """Drop the message in progress and refuse the rest of the session (see the state machine)."""
        if limit == "bytes":
            reason = (f"the instrument sent more than {self.max_message} bytes without finishing a message "
                      f"({len(self._records)} records so far)")
        else:
            reason = f"the instrument sent more than {self.max_records} records in one message"
        self._events.append(MessageTooLarge(reason + "; the message was refused", (),
                                            bytes(self._transcript[:_TOO_LARGE_HEAD]), limit))
        self._text.clear()
        self._reset_message()
        self._transcript.clear()
        self._refusing = True

    def _continue_frame(self, data: bytes, i: int, now: float) -> int:
        assert self._frame is not None
        n = len(data)
        lf = data.find(LF, i)
        stop = lf if lf >= 0 else n
        stx = data.find(STX, i, stop)
        if stx >= 0:
            # A new STX before this frame ended: the fragment was noise or a truncated
            # frame.  No reply: E1381 answers complete frames only, and a NAK here
            # would be a second reply to the one frame the sender is waiting on.
            self._append_frame_bytes(data[i:stx])
            if not self._refusing:
                self._transcript += data[i:stx]
            self._add_rejection(FrameRejected(f"frame cut short by a new STX after {self._frame_len} bytes",
                                              bytes(self._frame)))
            if not self._refusing:
                self._transcript.append(STX)
            self._frame = bytearray([STX])
            self._frame_len = 1
            return stx + 1
        if lf < 0:
            self._append_frame_bytes(data[i:])
            if not self._refusing:
                self._transcript += data[i:]
            return n
        self._append_frame_bytes(data[i : lf + 1])
        if not self._refusing:
            self._transcript += data[i : lf + 1]
        raw = bytes(self._frame)
        length = self._frame_len
        self._frame = None
        if not self._refusing and len(self._transcript) > self.max_message:
            self._refuse("bytes")  # this frame crossed the limit: NAK it below, never ACK
        if self._refusing:
            self._reject("the message in progress was refused for its size; frames are NAKed until the "
                          "sender ends the session", raw[:MAX_FRAME], now)
        elif length > MAX_FRAME:
            self._reject(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte maximum", raw, now)
        else:
            self._complete_frame(raw, now)
        return lf + 1

    def _append_frame_bytes(self, chunk: bytes) -> None:
        assert self._frame is not None
        self._frame_len += len(chunk)
        room = MAX_FRAME + 1 - len(self._frame)
        if room > 0:
            self._frame += chunk[:room]

    def _add_rejection(self, event: FrameRejected) -> None:
        last = self._events[-1] if self._events else None
        if isinstance(last, FrameRejected):
            self._events[-1] = FrameRejected(event.reason, event.frame, last.count + event.count)
        else:
            self._events.append(event)

    def _reject(self, reason: str, raw: bytes, now: float) -> None:
        self._add_rejection(FrameRejected(reason, raw))
        self._out.append(NAK)
        self._deadline = now + self.timeout

    def _reply_ok(self) -> None:
        if self._interrupt:
            self._interrupt = False
            self._out.append(EOT)
        else:
            self._out.append(ACK)

    def _complete_frame(self, raw: bytes, now: float) -> None:
        try:
            frame = decode_frame(raw)
        except ProtocolError as exc:
            self._reject(str(exc), raw, now)
            return
        self._deadline = now + self.timeout
        if self._last_fn is not None and frame.fn == self._last_fn:
            if not self._held:  # (while an ACK is held the sender must keep waiting for it)
                self._reply_ok()  # a retransmission of a frame we already took: our ACK was lost
            return
        expected = 1 if self._last_fn is None else (self._last_fn + 1) % 8
        if frame.fn != expected:
            self._reject(f"frame number {frame.fn}, expected {expected}", raw, now)
            return
        self._last_fn = frame.fn
        self._text += frame.text
        completed = self._take_records() if frame.final else False
        if self._refusing:  # this frame's records went past max_records
            self._out.append(NAK)
        elif completed and self.hold_message_ack:
            self._held = True
        else:
            self._reply_ok()

    def _take_records(self) -> bool:
        """Decode the records of a finished ETX frame; True when one completed a message."""
        completed = False
        text = bytes(self._text)
        self._text.clear()
        lines = text.split(b"\r")
        for line in lines:
            if not line:
                continue
            if self._discarding and not line.startswith(b"H"):
                continue
            try:
                decoded = line.decode(self.encoding)
                if decoded.startswith("H"):
                    if self._records:
                        self._abort("a new H record arrived before the L record of the previous message")
                    self._reset_message()
                    self._delimiters = Delimiters.from_header(decoded)
                elif not self._records:
                    raise FrameError(f"{decoded[:1]!r} record before any H header record")
                record = decode_record(decoded, self._delimiters)
            except (UnicodeDecodeError, LookupError) as exc:
                self._abort(f"record text is not valid {self.encoding}: {exc}")
                self._discarding = True
                continue
            except ProtocolError as exc:
                self._abort(f"malformed record: {exc}")
                self._discarding = True
                continue
            self._discarding = False
            if len(self._records) >= self.max_records:
                self._refuse("records")
                break
            self._records.append(record)
            self._message_text += line + b"\r"
            if record.type == "L":
                self._events.append(MessageReceived(tuple(self._records), bytes(self._transcript),
                                                    bytes(self._message_text)))
                self._transcript.clear()
                self._reset_message()
                completed = True
        return completed
