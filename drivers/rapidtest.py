"""Rapid-test analyzers (food-safety quick testers) that report over ASTM E1381/E1394.

The analyzer is the E1381 *sender*; this driver is the host-side *receiver*:
it ACKs good frames, NAKs damaged ones, reassembles each message and turns
every R (result) record into one :class:`RapidTestResult`::

    with RapidTestAnalyzer("/dev/ttyUSB0") as analyzer:      # or a pty path, or socket://host:port
        for result in analyzer.results(timeout=60):         # ends after 60 s without a result
            print(result.sample_id, result.item_name, result.value, result.unit, result.judgement)

Robustness: line noise, bad checksums and retransmissions are handled by
the receiver state machine (damaged frames are NAKed and resent, a
retransmitted frame is taken once); a message that the instrument abandons
(EOT before its L record, a stall past the 30 s receiver timer) is dropped
whole — its partial records never become results — and reported to
``on_abort`` with the raw bytes, and the next message is received normally.
An instrument that re-sends a message it already delivered (its last ACK
was lost) is recognised by the SHA-256 of the message text and not
reported twice (``dedupe``).

A broken or hostile instrument cannot exhaust memory: a message beyond
``max_message`` bytes or ``max_records`` records (4 MiB / 10,000 by default;
an endless stream of frames, one giant record) is refused — its frames are
NAKed, never ACKed, so the instrument keeps it — and :meth:`results` /
:meth:`poll` raise :class:`RapidTestOverflow` once every result received
before it has been handed over, and on every call after that: close the
analyzer and open it again (a clean link for both ends).  The gateway does
that with backoff and raises an alarm.

Nothing is confirmed before it is stored: the ACK of a message's last frame
is held until the consumer of :meth:`RapidTestAnalyzer.results` asks for the
item after that message's last result (or calls ``acknowledge()``).  The
instrument keeps a message until that ACK, so a gateway that dies while
storing a result gets it again after restart (at-least-once; deduplicate
on ``message_digest``).  Hold the iterator for less than the instrument's
15 s timer.

Errors::

    DriverError                    (drivers.errors)
    └── RapidTestError
        ├── RapidTestPortError     the port / URL cannot be opened
        ├── RapidTestDisconnected  the port went away while in use (unplugged, peer closed)
        └── RapidTestOverflow      the instrument sent a message beyond the receiver's limits

Mapping from records (what the simulator sends and most instruments fill):

    H.3  message control ID → message_id      H.5  model^version^serial
    O.3  specimen ID → sample_id              O.16 specimen descriptor → sample_description
    R.3  ^^^code^name^method^standard         R.4 value   R.5 unit   R.6 range (low^high)
    R.7  abnormal flag   R.9 status   R.11 operator   R.12 started   R.13 completed   R.14 instrument ID
    C    after an R: comments; a comment that is exactly a judgement word
         (positive/negative/suspicious/invalid, 阳性/阴性/可疑/无效, 合格/不合格)
         gives the judgement, otherwise it is derived from R.9/R.7.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import Enum

import serial

from drivers.errors import DriverError
from firmware_bridge.astm import (
    MAX_MESSAGE,
    MAX_RECORDS,
    NEED_DATA,
    RECEIVER_TIMEOUT,
    AstmReceiver,
    FrameRejected,
    MessageReceived,
    MessageTooLarge,
    Record,
    SessionAborted,
    parse_timestamp,
)
from firmware_bridge.errors import BridgeError, ProtocolError
from firmware_bridge.transports import open_transport

__all__ = [
    "Judgement",
    "RapidTestResult",
    "RapidTestStats",
    "RapidTestAnalyzer",
    "RapidTestError",
    "RapidTestPortError",
    "RapidTestDisconnected",
    "RapidTestOverflow",
    "results_from_message",
    "results_from_transcript",
]


class RapidTestError(DriverError):
    """Anything that went wrong talking to a rapid-test analyzer."""


class RapidTestPortError(RapidTestError):
    """The port or URL could not be opened (wrong path, no permission, nothing listening)."""


class RapidTestDisconnected(RapidTestError):
    """The port disappeared while in use (USB unplugged, pty closed, TCP peer gone)."""


class RapidTestOverflow(RapidTestError):
    """The instrument sent more than the receiver accepts in one message (bytes or records).

    The message was refused (never acknowledged: the instrument still holds
    it); the link must be reset before anything else is received.
    """


# At most this much is read from the port per poll: one chunk is what the receiver
# may hold beyond its message limit before it notices.
READ_CHUNK = 64 * 1024


class Judgement(str, Enum):  # noqa: UP042 - StrEnum changes str(member) from "Judgement.X" to its value
    """The instrument's verdict on one item.  ``str`` so it serialises as its value."""

    POSITIVE = "positive"        # residue / analyte found: 不合格
    NEGATIVE = "negative"        # not found: 合格
    SUSPICIOUS = "suspicious"    # between the gold-strip thresholds: 可疑, re-test
    INVALID = "invalid"          # the test itself failed (no C line, dead enzyme, > 100 %)
    UNKNOWN = "unknown"          # the message did not say and flags do not tell


_JUDGEMENT_WORDS: dict[str, Judgement] = {
    "positive": Judgement.POSITIVE, "pos": Judgement.POSITIVE, "阳性": Judgement.POSITIVE,
    "不合格": Judgement.POSITIVE, "fail": Judgement.POSITIVE, "unqualified": Judgement.POSITIVE,
    "negative": Judgement.NEGATIVE, "neg": Judgement.NEGATIVE, "阴性": Judgement.NEGATIVE,
    "合格": Judgement.NEGATIVE, "pass": Judgement.NEGATIVE, "qualified": Judgement.NEGATIVE,
    "suspicious": Judgement.SUSPICIOUS, "可疑": Judgement.SUSPICIOUS, "doubtful": Judgement.SUSPICIOUS,
    "invalid": Judgement.INVALID, "无效": Judgement.INVALID,
}
_POSITIVE_FLAGS = frozenset({"H", "HH", "A", "AA", ">"})


@dataclass(frozen=True)
class RapidTestResult:
    """One test item's result, with everything needed to make it evidence.

    Text fields are exactly as the instrument sent them (unescaped), ``''``
    when absent.  ``value`` stays text so nothing is lost to float rounding;
    :attr:`numeric_value` parses it.  Times are the instrument's own clock,
    naive (E1394 carries no zone) — correct them with the device's clock
    offset before trusting them.  ``transcript`` is every byte received for
    the message (ENQ through the frame carrying L, noise and retransmissions
    included), identical for all results of one message; ``message_digest``
    (SHA-256 hex of the reassembled record text) identifies the message.
    """

    instrument_id: str           # R.14, else the serial in H.5 (model^version^serial)
    instrument_model: str        # H.5 component 1
    instrument_version: str      # H.5 component 2
    message_id: str              # H.3 message control ID
    sample_id: str               # O.3 specimen ID (else P.3 / P.4)
    sample_description: str      # O.16 specimen descriptor (components joined by ' ')
    item_code: str               # R.3 component 4 (local test code), e.g. 'OPPEST'
    item_name: str               # R.3 component 5
    method: str                  # R.3 component 6, e.g. 'enzyme inhibition', 'colloidal gold T/C'
    standard: str                # R.3 component 7, e.g. 'GB/T 5009.199-2003'
    value: str                   # R.4, e.g. '62.5'; '' when the test was invalid
    unit: str                    # R.5, e.g. '%', 'T/C'
    reference_range: str         # R.6 as sent, components joined by '^', e.g. '0^50'
    cutoff: str                  # the decision limit: R.6's upper bound (low^high), e.g. '50'
    abnormal_flag: str           # R.7: N, H, A, L …
    status: str                  # R.9: F final, X cannot be done, …
    judgement: Judgement
    operator: str                # R.11
    started_at: datetime | None  # R.12
    tested_at: datetime | None   # R.13, else R.12, else H.14
    comments: tuple[str, ...]    # C records under this R, in order
    result_index: int            # 1-based position of this R in the message
    results_in_message: int
    termination_code: str        # L.3: N normal; T/R/E mean the message ended abnormally
    message_digest: str
    message_text: bytes          # reassembled record text, CR-separated
    transcript: bytes

    @property
    def numeric_value(self) -> Decimal | None:
        """``value`` as a Decimal, or None when it is not a plain number (e.g. '<5.0', '')."""
        try:
            number = Decimal(self.value)
        except (InvalidOperation, ValueError):
            return None
        return number if number.is_finite() else None


@dataclass
class RapidTestStats:
    """Counters for monitoring a link (not evidence)."""

    messages: int = 0
    results: int = 0
    duplicates: int = 0
    aborted_sessions: int = 0
    rejected_frames: int = 0
    bytes_received: int = 0


def _timestamp(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return parse_timestamp(text[:14])
    except ProtocolError:
        return None


def _judgement(result: Record, comments: Sequence[str]) -> Judgement:
    for comment in comments:
        word = _JUDGEMENT_WORDS.get(comment.strip().lower())
        if word is not None:
            return word
    if result.component(9).upper() == "X":
        return Judgement.INVALID
    flag = result.component(7).upper()
    if flag in _POSITIVE_FLAGS:
        return Judgement.POSITIVE
    if flag == "N":
        return Judgement.NEGATIVE
    return Judgement.UNKNOWN


def results_from_message(records: Sequence[Record], transcript: bytes = b"", text: bytes = b"") -> list[RapidTestResult]:
    """Map one decoded message (H … L) to its results, one per R record."""
    header = records[0] if records and records[0].type == "H" else Record("H")
    terminator = next((r for r in records if r.type == "L"), Record("L"))
    digest = hashlib.sha256(text).hexdigest()
    rows = _result_rows(records)
    results: list[RapidTestResult] = []
    for index, (r, o, p, comments) in enumerate(rows, start=1):
        sample_id = o.component(3) if o is not None else ""
        if not sample_id and p is not None:
            sample_id = p.component(3) or p.component(4)
        low, high = r.component(6, 1), r.component(6, 2)
        tested_at = _timestamp(r.component(13)) or _timestamp(r.component(12)) or _timestamp(header.component(14))
        results.append(RapidTestResult(
            instrument_id=r.component(14) or header.component(5, 3),
            instrument_model=header.component(5, 1),
            instrument_version=header.component(5, 2),
            message_id=header.component(3),
            sample_id=sample_id,
            sample_description=o.text(16) if o is not None else "",
            item_code=r.component(3, 4) or r.component(3, 1),
            item_name=r.component(3, 5),
            method=r.component(3, 6),
            standard=r.component(3, 7),
            value=r.text(4),
            unit=r.text(5),
            reference_range=r.text(6, "^"),
            cutoff=high if high else low,
            abnormal_flag=r.component(7),
            status=r.component(9),
            judgement=_judgement(r, comments),
            operator=r.text(11),
            started_at=_timestamp(r.component(12)),
            tested_at=tested_at,
            comments=tuple(comments),
            result_index=index,
            results_in_message=len(rows),
            termination_code=terminator.component(3),
            message_digest=digest,
            message_text=text,
            transcript=transcript,
        ))
    return results


def _result_rows(records: Sequence[Record]) -> list[tuple[Record, Record | None, Record | None, list[str]]]:
    """Each R record with the O and P records it falls under and the C comments that follow it."""
    patient: Record | None = None
    order: Record | None = None
    rows: list[tuple[Record, Record | None, Record | None, list[str]]] = []
    for record in records:
        if record.type == "P":
            patient, order = record, None
        elif record.type == "O":
            order = record
        elif record.type == "R":
            rows.append((record, order, patient, []))
        elif record.type == "C" and rows and rows[-1][0] is not None:
            # A comment belongs to the latest R only if no O/P came after that R.
            last_r, last_o, last_p, comments = rows[-1]
            if last_o is order and last_p is patient:
                comments.append(record.text(4))
    return rows


def results_from_transcript(transcript: bytes, encoding: str = "latin-1") -> list[RapidTestResult]:
    """Re-derive results from stored raw bytes (e.g. to verify evidence offline)."""
    receiver = AstmReceiver(encoding=encoding)
    receiver.receive_data(transcript, 0.0)
    results: list[RapidTestResult] = []
    while (event := receiver.next_event()) is not NEED_DATA:
        if isinstance(event, MessageReceived):
            results.extend(results_from_message(event.records, event.transcript, event.text))
    return results


class RapidTestAnalyzer:
    """Host side of an ASTM rapid-test analyzer on any byte-stream transport URL.

    ``url``: a device path (``/dev/ttyUSB0``), a pty slave path, or a
    ``firmware_bridge.transports`` URL (``socket://127.0.0.1:7001``, ``loop://``).
    ``receive_timeout``: the E1381 receiver timer (30 s).  ``dedupe``: how
    many recent message digests to remember (0 = report re-sent messages
    again).  ``on_abort(reason, transcript)`` hears about every discarded
    partial message (a refused oversized one raises :class:`RapidTestOverflow`
    instead).  ``max_message`` / ``max_records``: the largest message
    accepted (see :class:`RapidTestOverflow`).  Opening raises
    :class:`RapidTestPortError`.
    """

    def __init__(self, url: str, *, baudrate: int = 9600, encoding: str = "latin-1",
                 receive_timeout: float = RECEIVER_TIMEOUT, dedupe: int = 256,
                 on_abort: Callable[[str, bytes], None] | None = None, poll_interval: float = 0.05,
                 max_message: int = MAX_MESSAGE, max_records: int = MAX_RECORDS) -> None:
        self.url = url
        self.encoding = encoding
        self.on_abort = on_abort
        self.stats = RapidTestStats()
        self._poll_interval = poll_interval
        self._receiver = AstmReceiver(timeout=receive_timeout, encoding=encoding, hold_message_ack=True,
                                      max_message=max_message, max_records=max_records)
        self._overflow: RapidTestOverflow | None = None  # raised once the results before it are out
        self._held_digest: str | None = None
        self._pending: deque[RapidTestResult] = deque()
        self._seen: deque[str] = deque(maxlen=dedupe) if dedupe > 0 else deque(maxlen=0)
        self._dedupe = dedupe > 0
        try:
            self._port: serial.SerialBase | None = open_transport(
                url, baudrate=baudrate, timeout=poll_interval, write_timeout=5)
        except BridgeError as exc:
            raise RapidTestPortError(
                f"cannot open rapid-test analyzer port {url!r}: {exc}; check the device path or URL, "
                "that the analyzer (or simulator) is running, and that no other program holds the port"
            ) from exc

    # ------------------------------------------------------------ public API

    def results(self, timeout: float | None = None) -> Iterator[RapidTestResult]:
        """Yield results as they arrive.

        ``timeout=None`` waits forever; otherwise the iterator ends once
        ``timeout`` seconds pass without a new result.  Raises
        :class:`RapidTestDisconnected` if the port goes away.

        Delivery is at-least-once: the instrument gets the ACK for a message
        only when this iterator is asked for the next item after the
        message's last result (or you call :meth:`acknowledge`), so store
        each result before moving on.  Stop iterating without acknowledging
        (a crash, a ``break``) and the message is never confirmed: a new
        ``results()`` iterator drops what is left of it, the instrument
        re-sends it after its timer, and you see it again, whole, with the
        same ``message_digest`` — deduplicate on that.
        """
        if self._held_digest is not None:
            self._abandon_held()
        idle_until = None if timeout is None else time.monotonic() + timeout
        owed = False
        while True:
            while self._pending:
                result = self._pending.popleft()
                owed = True
                yield result
                if timeout is not None:
                    idle_until = time.monotonic() + timeout
            if owed:
                self.acknowledge()
                owed = False
            if idle_until is not None and time.monotonic() >= idle_until:
                return
            self._pending.extend(self._poll(hold=True))

    def acknowledge(self) -> None:
        """Tell the instrument the results yielded so far are stored (releases the held final ACK)."""
        if self._held_digest is None:
            return
        # Stored by the consumer: never report it again, even if the instrument,
        # tired of waiting, already gave up and will re-send it.
        self._seen.append(self._held_digest)
        self._held_digest = None
        if self._receiver.awaiting_acknowledgement:
            self._receiver.acknowledge_message()
            self._write(self._receiver.data_to_send())

    def _abandon_held(self) -> None:
        """Forget an unconfirmed message; its ACK is never sent, so the instrument re-sends it."""
        dropped, self._held_digest = self._held_digest, None
        self._pending = deque(r for r in self._pending if r.message_digest != dropped)

    def poll(self) -> list[RapidTestResult]:
        """Read what is there (waiting up to ``poll_interval``), answer it; return new results.

        For callers that drive their own loop; results returned here are
        acknowledged to the instrument at once.
        """
        if self._held_digest is not None:
            self._abandon_held()
        return self._poll(hold=False)

    def interrupt(self) -> None:
        """Ask the instrument to pause (E1381 receiver interrupt: EOT instead of the next ACK)."""
        self._receiver.interrupt()

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass

    def __enter__(self) -> RapidTestAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _require_open(self) -> serial.SerialBase:
        if self._port is None:
            raise RapidTestError(f"the analyzer on {self.url!r} is closed; create a new RapidTestAnalyzer")
        return self._port

    def _write(self, data: bytes) -> None:
        if not data:
            return
        port = self._require_open()
        try:
            port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise RapidTestDisconnected(
                f"rapid-test analyzer port {self.url!r} failed while writing: {exc}; "
                "check the cable / that the analyzer is on, then open the port again"
            ) from exc

    def _read_available(self, port: serial.SerialBase) -> bytes:
        """Wait up to ``poll_interval`` for a byte, then take whatever else is there (≤ READ_CHUNK)."""
        data = port.read(1)
        if not data:
            return data
        waiting = port.in_waiting
        return data + port.read(min(waiting, READ_CHUNK - 1)) if waiting else data

    def _poll(self, hold: bool) -> list[RapidTestResult]:
        port = self._require_open()
        if self._overflow is not None:
            raise self._overflow
        try:
            data = self._read_available(port)
        except (serial.SerialException, OSError) as exc:
            raise RapidTestDisconnected(
                f"rapid-test analyzer port {self.url!r} failed while reading: {exc}; "
                "check the cable / that the analyzer is on, then open the port again"
            ) from exc
        now = time.monotonic()
        if data:
            self.stats.bytes_received += len(data)
            self._receiver.receive_data(data, now)
        deadline = self._receiver.deadline
        if deadline is not None and now >= deadline:
            self._receiver.handle_timeout(now)
        new = self._collect(hold)
        if self._held_digest is not None and not self._receiver.awaiting_acknowledgement:
            # The instrument gave up waiting for our ACK: it will send the message
            # again, so drop what is still queued of it rather than deliver it twice.
            dropped = self._held_digest
            self._abandon_held()
            new = [r for r in new if r.message_digest != dropped]
        self._write(self._receiver.data_to_send())  # the NAK refusing an oversized message included
        overflow = self._overflow_found()  # _collect() may have set it since the check above
        if overflow is not None and not new:
            raise overflow
        return new

    def _overflow_found(self) -> RapidTestOverflow | None:
        return self._overflow

    def _collect(self, hold: bool) -> list[RapidTestResult]:
        new: list[RapidTestResult] = []
        while (event := self._receiver.next_event()) is not NEED_DATA:
            if isinstance(event, MessageReceived):
                digest = hashlib.sha256(event.text).hexdigest()
                if self._dedupe and digest in self._seen:
                    self.stats.duplicates += 1
                    self._receiver.acknowledge_message()   # already stored once: just confirm
                    continue
                self.stats.messages += 1
                results = results_from_message(event.records, event.transcript, event.text)
                self.stats.results += len(results)
                if hold and results:
                    self._held_digest = digest
                else:
                    self._receiver.acknowledge_message()
                    self._seen.append(digest)
                new.extend(results)
            elif isinstance(event, SessionAborted):
                self.stats.aborted_sessions += 1
                if self.on_abort is not None and not isinstance(event, MessageTooLarge):
                    self.on_abort(event.reason, event.transcript)
                if isinstance(event, MessageTooLarge) and self._overflow is None:
                    self._overflow = RapidTestOverflow(
                        f"rapid-test analyzer on {self.url!r}: {event.reason}. It was not acknowledged, so "
                        "the instrument still holds it; close and reopen the port to reset the link. If it "
                        "happens again the instrument is faulty or misconfigured: check its firmware and "
                        "output settings, and re-run or delete that test on the instrument")
            elif isinstance(event, FrameRejected):
                self.stats.rejected_frames += event.count
        return new
