"""The E1381 sender state machine (the instrument side of the link): one message per session."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from firmware_bridge.astm.constants import ACK, BUSY_DELAY, ENQ, EOT, MAX_FAILURES, MAX_TEXT, NAK, SENDER_TIMEOUT
from firmware_bridge.astm.events import ContentionLost, Endpoint, FrameRetransmitted, LinkBusy, MessageSent, SessionAborted
from firmware_bridge.astm.frames import message_frames
from firmware_bridge.astm.records import DEFAULT_DELIMITERS, Delimiters, Record
from firmware_bridge.errors import LocalProtocolError


class _TxState(enum.Enum):
    IDLE = "idle"
    ESTABLISHING = "establishing"   # ENQ sent, waiting for ACK/NAK/ENQ
    TRANSFERRING = "transferring"   # a frame sent, waiting for its reply
    WAITING = "waiting"             # backing off before the next ENQ


class AstmSender(Endpoint):
    """E1381 sender (the instrument side): one message per session.

    State machine::

        IDLE ──send_message──► ENQ ► ESTABLISHING
        ESTABLISHING ──ACK──► frame 1 ► TRANSFERRING
                     ──NAK──► WAITING (busy_delay, 10 s) ──► ENQ again
                     ──ENQ──► contention: priority → WAITING 1 s → ENQ;
                              no priority → ContentionLost, WAITING 20 s
                     ──15 s──► EOT, SessionAborted (caller may queue again)
        TRANSFERRING ──ACK──► next frame, or EOT + MessageSent after the last
                     ──EOT──► receiver interrupt: honoured → EOT, SessionAborted;
                              ignored → taken as ACK
                     ──NAK / any other byte──► resend the same frame (same FN);
                              the 6th failure → EOT, SessionAborted
                     ──15 s──► EOT, SessionAborted
        WAITING ──deadline──► ENQ ► ESTABLISHING

    ``SessionAborted.records`` carries the message back, so an instrument
    that must never lose a result re-queues it.
    """

    def __init__(self, *, reply_timeout: float = SENDER_TIMEOUT, busy_delay: float = BUSY_DELAY,
                 priority: bool = True, max_failures: int = MAX_FAILURES, honour_interrupts: bool = True,
                 delimiters: Delimiters = DEFAULT_DELIMITERS, encoding: str = "latin-1",
                 max_text: int = MAX_TEXT) -> None:
        super().__init__()
        if reply_timeout <= 0 or busy_delay < 0 or max_failures < 1:
            raise LocalProtocolError("reply_timeout must be > 0, busy_delay ≥ 0 and max_failures ≥ 1")
        self.reply_timeout = reply_timeout
        self.busy_delay = busy_delay
        self.priority = priority
        self.contention_delay = 1.0 if priority else 20.0
        self.max_failures = max_failures
        self.honour_interrupts = honour_interrupts
        self.delimiters = delimiters
        self.encoding = encoding
        self.max_text = max_text
        self._state = _TxState.IDLE
        self._message: tuple[Record, ...] = ()
        self._frames: list[bytes] = []
        self._index = 0
        self._failures = 0

    @property
    def idle(self) -> bool:
        """True when a new message may be handed to :meth:`send_message`."""
        return self._state is _TxState.IDLE

    @property
    def current_message(self) -> tuple[Record, ...]:
        """The message being sent (empty when idle)."""
        return self._message

    @property
    def frames(self) -> tuple[bytes, ...]:
        """The encoded frames of the current message."""
        return tuple(self._frames)

    @property
    def frame_index(self) -> int:
        """Index of the frame awaiting its reply (meaningful while transferring)."""
        return self._index

    def send_message(self, records: Sequence[Record], now: float) -> None:
        """Start a session for *records*: ENQ goes out, the 15 s timer starts."""
        if not self.idle:
            raise LocalProtocolError("a message is already being sent; wait for MessageSent or SessionAborted")
        if not records:
            raise LocalProtocolError("a message needs at least one record")
        self._frames = message_frames(records, delimiters=self.delimiters, encoding=self.encoding,
                                      max_text=self.max_text)
        self._message = tuple(records)
        self._establish(now)

    def abort(self, now: float, reason: str = "the sender aborted the message") -> None:
        """Give up the current session: EOT goes out, SessionAborted carries the message back."""
        if self.idle:
            return
        if self._state is not _TxState.WAITING:
            self._out.append(EOT)
        self._finish_abort(reason)

    def receive_data(self, data: bytes, now: float) -> None:
        for b in data:
            if self._state is _TxState.ESTABLISHING:
                if b == ACK:
                    self._state = _TxState.TRANSFERRING
                    self._index = 0
                    self._failures = 0
                    self._send_frame(now)
                elif b == NAK:
                    self._wait(now, self.busy_delay)
                    self._events.append(LinkBusy(self.busy_delay))
                elif b == ENQ:
                    self._wait(now, self.contention_delay)
                    if not self.priority:
                        self._events.append(ContentionLost(self.contention_delay))
                # anything else: noise; the reply timer still runs
            elif self._state is _TxState.TRANSFERRING:
                if b == ACK or (b == EOT and not self.honour_interrupts):
                    self._index += 1
                    self._failures = 0
                    if self._index >= len(self._frames):
                        self._out.append(EOT)
                        message = self._message
                        self._go_idle()
                        self._events.append(MessageSent(message))
                        return  # bytes after the last reply belong to no session of ours
                    self._send_frame(now)
                elif b == EOT:
                    if self._index + 1 >= len(self._frames):
                        # The interrupt also acknowledges the last frame: the message is through.
                        message = self._message
                        self._go_idle()
                        self._events.append(MessageSent(message))
                        return
                    self._out.append(EOT)
                    self._finish_abort("the receiver asked to interrupt (EOT instead of ACK)")
                    return
                else:
                    self._failures += 1
                    if self._failures >= self.max_failures:
                        self._out.append(EOT)
                        self._finish_abort(f"frame {self._current_fn()} failed {self._failures} times "
                                           "(NAK or garbled reply); session aborted")
                        return
                    self._events.append(FrameRetransmitted(self._current_fn(), self._failures))
                    self._send_frame(now)
            # IDLE / WAITING: replies to nothing of ours are ignored

    def handle_timeout(self, now: float) -> None:
        if self._deadline is None or now < self._deadline:
            return
        if self._state is _TxState.WAITING:
            self._establish(now)
        elif self._state is _TxState.ESTABLISHING:
            self._out.append(EOT)
            self._finish_abort(f"no reply to ENQ within {self.reply_timeout:g} s")
        elif self._state is _TxState.TRANSFERRING:
            self._out.append(EOT)
            self._finish_abort(f"no reply to frame {self._current_fn()} within {self.reply_timeout:g} s")

    # -- internals

    def _current_fn(self) -> int:
        return self._frames[self._index][1] - 0x30

    def _establish(self, now: float) -> None:
        self._state = _TxState.ESTABLISHING
        self._out.append(ENQ)
        self._deadline = now + self.reply_timeout

    def _wait(self, now: float, delay: float) -> None:
        self._state = _TxState.WAITING
        self._deadline = now + delay

    def _send_frame(self, now: float) -> None:
        self._out += self._frames[self._index]
        self._deadline = now + self.reply_timeout

    def _go_idle(self) -> None:
        self._state = _TxState.IDLE
        self._deadline = None
        self._message = ()
        self._frames = []
        self._index = 0
        self._failures = 0

    def _finish_abort(self, reason: str) -> None:
        message = self._message
        self._go_idle()
        self._events.append(SessionAborted(reason, message))
