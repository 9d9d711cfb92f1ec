"""The one sans-IO shape every wire codec in ``firmware_bridge`` follows (as h11 does).

A codec owns no socket, serial port, thread or clock.  The caller feeds it the
bytes it read (``receive_data``), pulls what those bytes meant
(``next_event`` until it returns :data:`NEED_DATA`) and writes whatever the
codec hands back.  Keeping I/O out is what lets the same codec run in the
drivers, the simulators, the fuzzer and the golden-vector tests byte for byte.

Three shapes, because three kinds of protocol exist here:

* :class:`Decoder` — bytes in, events out, nothing to answer on the same
  stream (STU pen reports, the BOT device's bulk OUT pipe).
* :class:`Codec` — a :class:`Decoder` that also frames what it sends
  (R30x packets, USB/IP): ``send(event) -> bytes``.
* :class:`TimedCodec` — a link-layer state machine whose answers depend on
  time as well as bytes (ASTM E1381's receiver and sender have 15 s and 30 s
  timers).  The caller passes its clock reading with every call, so the
  codec never reads a clock itself, and collects the bytes it must write with
  ``data_to_send()`` (one event can require several writes, and a timer can
  require a write with no event at all).

Both return the same :data:`NEED_DATA` object, defined here once, so
``event is NEED_DATA`` means the same thing for every protocol.
"""

from __future__ import annotations

from typing import Final, Protocol, TypeVar, final

__all__ = ["NEED_DATA", "NeedData", "Decoder", "Codec", "TimedCodec"]


@final
class NeedData:
    """Type of :data:`NEED_DATA`: ``next_event`` has nothing until more bytes (or time) arrive.

    A singleton, so identity (``is NEED_DATA``) and ``isinstance(e, NeedData)``
    agree, even for a copy made by ``copy`` or ``pickle``.
    """

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"

    def __reduce__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

EventT_co = TypeVar("EventT_co", covariant=True)
EventT_contra = TypeVar("EventT_contra", contravariant=True)


class Decoder(Protocol[EventT_co]):
    """Feed bytes, pull events."""

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the wire (``b""`` means end of stream where the codec cares)."""

    def next_event(self) -> EventT_co | NeedData:
        """The next complete event, or :data:`NEED_DATA` when the buffer holds none."""


class Codec(Decoder[EventT_co], Protocol[EventT_co, EventT_contra]):
    """A :class:`Decoder` that also turns outgoing events into wire bytes."""

    def send(self, event: EventT_contra) -> bytes:
        """The wire bytes for ``event``; raises ``LocalProtocolError`` when it may not be sent now."""


class TimedCodec(Protocol[EventT_co]):
    """A link-layer state machine driven by bytes and the caller's clock."""

    @property
    def deadline(self) -> float | None:
        """When (in the caller's clock) ``handle_timeout`` must be called; ``None``: no timer."""

    def receive_data(self, data: bytes, now: float) -> None:
        """Process bytes read from the link at time ``now``."""

    def next_event(self) -> EventT_co | NeedData:
        """The next event, or :data:`NEED_DATA`."""

    def handle_timeout(self, now: float) -> None:
        """The caller's clock reached :attr:`deadline`."""

    def data_to_send(self) -> bytes:
        """Bytes the caller must write to the link now (may be empty)."""
