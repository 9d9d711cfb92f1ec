"""What the E1381 link state machines report: one event type per outcome of a session.

Also :class:`Endpoint`, the plumbing the receiver and the sender share
(outgoing buffer, event queue, deadline).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from firmware_bridge.astm.records import Record
from firmware_bridge.sansio import NEED_DATA, NeedData


@dataclass(frozen=True)
class MessageReceived:
    """A whole message (H … L) arrived.

    ``transcript`` is every byte received from the ENQ that opened the session
    (or from the end of the previous message in the same session) through
    the frame carrying the L record, noise and retransmissions included —
    the wire as it was.  ``text`` is the reassembled record text (CR-separated).
    """

    records: tuple[Record, ...]
    transcript: bytes
    text: bytes


@dataclass(frozen=True)
class MessageSent:
    """The receiver acknowledged every frame of the message."""

    records: tuple[Record, ...]


@dataclass(frozen=True)
class SessionAborted:
    """A session ended without a complete message; ``records`` holds what was lost.

    On the receiver: the partial records and the bytes received so far.  On the
    sender: the whole message, so the caller can queue it again.
    """

    reason: str
    records: tuple[Record, ...] = ()
    transcript: bytes = b""


@dataclass(frozen=True)
class MessageTooLarge(SessionAborted):
    """The sender passed the receiver's limit (``max_message`` bytes or ``max_records``
    records) before finishing a message: a broken or hostile instrument.

    The partial message is discarded and, unlike other aborts, every further
    frame of the session is refused with NAK — never ACKed, so the sender
    cannot believe the message was delivered — until it ends the session (EOT),
    starts a new one (ENQ) or the receiver timer expires.  ``records`` is empty
    and ``transcript`` holds only the first bytes (for diagnosis): keeping more
    is what the limit prevents.  ``limit`` is ``"bytes"`` or ``"records"``.  A
    sender that keeps going after the NAKs ignores the protocol; reset the link.
    """

    limit: str = "bytes"


@dataclass(frozen=True)
class SessionEnded:
    """The link returned to neutral with nothing pending (EOT, or a quiet timeout)."""

    reason: str


@dataclass(frozen=True)
class FrameRejected:
    """The receiver NAKed a frame (or dropped a fragment); the sender should resend.

    Consecutive rejections not yet collected by ``next_event`` are merged
    (``count`` grows, ``reason``/``frame`` are the latest), so a burst of line
    noise costs one event, not one per stray STX.
    """

    reason: str
    frame: bytes
    count: int = 1


@dataclass(frozen=True)
class FrameRetransmitted:
    """The sender is sending frame ``fn`` again after failure number ``failures``."""

    fn: int
    failures: int


@dataclass(frozen=True)
class LinkBusy:
    """The receiver answered ENQ with NAK; the sender retries after ``retry_in`` seconds."""

    retry_in: float


@dataclass(frozen=True)
class ContentionLost:
    """Both sides sent ENQ and the other side has priority: feed its bytes to a receiver."""

    retry_in: float


Event = (
    MessageReceived | MessageSent | SessionAborted | MessageTooLarge | SessionEnded | FrameRejected
    | FrameRetransmitted | LinkBusy | ContentionLost
)


class Endpoint:
    """Shared plumbing: outgoing buffer, event queue, deadline."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        """When (in the caller's clock) ``handle_timeout`` must be called; None = no timer."""
        return self._deadline

    def data_to_send(self) -> bytes:
        """Bytes the caller must write to the link now (may be empty)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | NeedData:
        return self._events.popleft() if self._events else NEED_DATA

    def handle_timeout(self, now: float) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def expire_timer(self) -> None:
        """The caller's own timer for :attr:`deadline` fired."""
        if self._deadline is not None:
            self.handle_timeout(self._deadline)
