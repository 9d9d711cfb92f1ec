"""ASTM E1381 (CLSI LIS1-A) link layer and ASTM E1394 (CLSI LIS2-A2) records, sans-IO.

Rapid-test analyzers (pesticide-residue enzyme-inhibition readers, colloidal
gold strip readers) report results the way clinical analyzers do: E1394
records carried in E1381 frames over RS-232 or TCP.  This package is pure byte
arithmetic: it never reads a clock, sleeps or touches a port.  The caller
passes the current time (any monotonic float, in seconds) into every call
that can start or restart a timer, reads :attr:`deadline`, and calls
``handle_timeout(now)`` once that moment has passed (or ``expire_timer()`` if
it keeps its own timers).

Frame (one record, or one ≤240-byte piece of a long record)::

    +-----+----+------------------+---------+----+----+----+----+
    | STX | FN | text (≤240 B)    | ETB|ETX | C1 | C2 | CR | LF |
    | 02  |'1' | 'H|\\^&|…' CR    | 17 | 03 | 'B'| '2'| 0D | 0A |
    +-----+----+------------------+---------+----+----+----+----+
            \\______ checksum: sum of FN … ETB/ETX mod 256, as two
                      uppercase hex digits C1 C2 ______/

    FN   '1' for a session's first frame, then 2..7, 0, 1, … (mod 8);
         a retransmitted frame keeps its FN.
    ETB  more of this record follows in the next frame; ETX: record ends here.
    Max frame = 1 + 1 + 240 + 1 + 2 + 2 = 247 bytes.

Session (sender = instrument, receiver = computer)::

    sender    ENQ          STX 1 … ETX C1 C2 CR LF        STX 2 …        EOT
    receiver       ACK                               ACK         ACK
                   NAK = busy (retry ENQ after 10 s); ENQ = contention
                   (the instrument wins); NAK to a frame = send it again,
                   6 failures = abort with EOT; EOT instead of ACK =
                   "receiver interrupt" (please stop).
    timers    sender waits 15 s for any reply, receiver 30 s for the next
              frame or EOT; expiry aborts the session.

Records (E1394): one per line, CR-terminated, fields split by the delimiters
declared in the header itself (``H|\\^&``: field ``|``, repeat ``\\``,
component ``^``, escape ``&``)::

    H|\\^&|||RAPIDSIM^1.0|||||||P|LIS2-A2|20240101120000
    P|1
    O|1|S000001||^^^OPPEST|R
    R|1|^^^OPPEST|62.5|%|0^50|H||F||||20240101121500
    C|1|I|positive|G
    L|1|N

    nesting H → P → O → R → C, closed by L; every sequence number restarts
    at 1 under its parent (L is always 1).

Field values in :class:`Record` are modelled as::

    Field = str                       plain text            "62.5"
          | tuple[str, ...]           components (≥2)       ("", "", "", "OPPEST")
          | Repeats                   repeated values       Repeats(("a", ("b", "c")))

Decoding always yields this canonical form (trailing empty fields dropped);
``decode_record(encode_record(r)) == r`` for every canonical record.

Driving a state machine (the receiver here; the sender is symmetrical, with
``send_message(records, now)`` to start)::

    rx = AstmReceiver()
    while True:
        data = port.read_some(timeout=...)            # the caller's I/O
        rx.receive_data(data, now())
        if rx.deadline is not None and now() >= rx.deadline:
            rx.handle_timeout(now())
        port.write(rx.data_to_send())                  # ACK / NAK / EOT
        while (event := rx.next_event()) is not NEED_DATA:
            ...                                        # MessageReceived, SessionAborted, …

Layout, one module per layer (as h11 splits events, readers, writers and
state): ``records`` (E1394 text), ``frames`` (E1381 frames), ``events`` (what
the link reports), ``receiver`` and ``sender`` (the two E1381 state
machines, both :class:`firmware_bridge.sansio.TimedCodec`), ``constants``.
Import from the package: this ``__init__`` is the public API.

Errors (all from :mod:`firmware_bridge.errors`): ``FrameError`` (structure,
bad record type, undecodable text), ``ChecksumError``, ``LengthError``;
``LocalProtocolError`` when *our* caller asks for something unsendable.  The
link state machines never raise on remote input: a bad frame is NAKed and
reported as a :class:`FrameRejected` event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from firmware_bridge.astm.constants import (
    ACK,
    BUSY_DELAY,
    CR,
    ENQ,
    EOT,
    ETB,
    ETX,
    LF,
    MAX_FAILURES,
    MAX_FRAME,
    MAX_MESSAGE,
    MAX_RECORDS,
    MAX_TEXT,
    NAK,
    RECEIVER_TIMEOUT,
    SENDER_TIMEOUT,
    STX,
)
from firmware_bridge.astm.events import (
    ContentionLost,
    Event,
    FrameRejected,
    FrameRetransmitted,
    LinkBusy,
    MessageReceived,
    MessageSent,
    MessageTooLarge,
    SessionAborted,
    SessionEnded,
)
from firmware_bridge.astm.frames import Frame, checksum, decode_frame, encode_frame, message_frames
from firmware_bridge.astm.receiver import AstmReceiver
from firmware_bridge.astm.records import (
    DEFAULT_DELIMITERS,
    Delimiters,
    Field,
    Record,
    Repeats,
    assign_sequence_numbers,
    check_structure,
    decode_message,
    decode_record,
    encode_message,
    encode_record,
    format_timestamp,
    parse_timestamp,
)
from firmware_bridge.astm.sender import AstmSender
from firmware_bridge.sansio import NEED_DATA, NeedData, TimedCodec

__all__ = [
    # control bytes and limits
    "ENQ", "ACK", "NAK", "EOT", "STX", "ETX", "ETB", "CR", "LF",
    "MAX_TEXT", "MAX_FRAME", "MAX_MESSAGE", "MAX_RECORDS",
    "SENDER_TIMEOUT", "RECEIVER_TIMEOUT", "BUSY_DELAY", "MAX_FAILURES",
    # records
    "Delimiters", "DEFAULT_DELIMITERS", "Repeats", "Field", "Record",
    "encode_record", "decode_record", "encode_message", "decode_message",
    "format_timestamp", "parse_timestamp",
    "assign_sequence_numbers", "check_structure",
    # frames
    "Frame", "checksum", "encode_frame", "decode_frame", "message_frames",
    # link state machines and their events
    "NEED_DATA", "NeedData", "Event",
    "MessageReceived", "MessageSent", "SessionAborted", "MessageTooLarge", "SessionEnded",
    "FrameRejected", "FrameRetransmitted", "LinkBusy", "ContentionLost",
    "AstmReceiver", "AstmSender",
]


if TYPE_CHECKING:
    def _are_timed_codecs(rx: AstmReceiver, tx: AstmSender) -> tuple[TimedCodec[Event], TimedCodec[Event]]:
        return rx, tx  # mypy proves both link state machines keep the shared sans-IO shape
