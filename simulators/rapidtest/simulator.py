"""A rapid-test analyzer on a real pty or TCP socket, speaking ASTM E1381/E1394 as the sender.

Every finished test becomes one message — H, P, O (the sample), one R per
test item with its C comments (judgement first, then the raw reading), L —
sent with :class:`firmware_bridge.astm.AstmSender`.  Like a real instrument it
never forgets a result: a session that aborts (NAKs exhausted, timeout,
receiver interrupt, deliberate abort) puts the message back at the head of
its queue and retries after ``retry_delay`` seconds.

Transports: a pty (the simulator holds only the master; until a host opens
the slave, reading the master fails with EIO, so the simulator knows nobody
is listening and sends nothing — like an instrument whose cable is not
plugged in) or a TCP server (one host at a time; a newer connection replaces
an older one).  After a host appears the first ENQ waits 0.3 s, because
pyserial flushes input while it opens a port.  Results made while no host is
there are queued, never dropped.

Fault switches (each can be combined; ``fault_rate`` is the per-frame
probability, ``fault_every`` picks the messages whose *first* attempt gets
the deterministic faults, starting with message number ``fault_from``
(default 1: the first message); each deterministic fault is played once per
selected message and the message is then sent again cleanly, like an
instrument that recovered or was fixed):

* ``noise``        random garbage between transmissions (never ENQ/EOT/STX/LF,
                   which would be protocol events rather than noise) and one
                   random byte changed inside ``fault_rate`` of the frames.
* ``bad-checksum`` ``fault_rate`` of the frames, plus the second frame of
                   each selected message, go out with a wrong checksum.
* ``nak-storm``    the second frame of each selected message is garbled on
                   consecutive attempts: alternately 3 times (recovers) and
                   ``max_failures`` times (the sender gives up and retries
                   the whole message later).
* ``stall``        the sender goes silent for ``stall_seconds`` after the
                   second frame of each selected message (longer than the
                   receiver's timer ⇒ the receiver discards the partial message).
* ``abort``        the sender sends EOT after the third frame of each selected
                   message and retries it later.

Hostile or broken instruments (for testing a host's limits):

* ``endless``      ENQ, the message's H frame, then an unbounded stream of
                   intermediate frames (ETB: one record that never ends),
                   written without waiting for replies and never ending with
                   EOT.  It stops when the host drops the link or after
                   ``flood_bytes`` (0 = never; then EOT and the message is
                   retried later).
* ``giant``        the message goes out with an extra C record of
                   ``giant_bytes`` (5 MiB: beyond the 4 MiB a gateway accepts),
                   properly framed and paced by ACKs.  A host that refuses it
                   NAKs (the instrument gives up and retries) or drops the link.
                   ``endless`` and ``giant`` on one message play on successive
                   attempts (endless first).
* ``unplug``       the cable is pulled after the third frame of each selected
                   message: the pty master (or the TCP connection and
                   listener) is closed and the ``link`` symlink removed; after
                   ``unplug_seconds`` a new pty (or the same TCP port) appears
                   and the symlink points at it again.  The instrument keeps
                   its queue, so the interrupted message is sent again.  On a
                   pty, give ``link`` (the stable path a host opens, like
                   udev's /dev/serial/by-id/…): the new pty has a new name.
"""

from __future__ import annotations

import os
import random
import select
import socket
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from firmware_bridge.astm import (
    ENQ,
    EOT,
    LF,
    MAX_FAILURES,
    NEED_DATA,
    STX,
    AstmSender,
    MessageSent,
    Record,
    Repeats,
    SessionAborted,
    assign_sequence_numbers,
    encode_frame,
    encode_record,
    format_timestamp,
)
from simulators.rapidtest.assays import (
    GOLD_ITEMS,
    INVALID,
    NEGATIVE,
    PESTICIDE_ITEM,
    POSITIVE,
    ANIMAL_SAMPLES,
    PRODUCE_SAMPLES,
    GoldSettings,
    PesticideSettings,
    TestItem,
    inhibition_percent,
    judge_gold,
    judge_inhibition,
    simulate_gold,
    simulate_pesticide,
)

__all__ = ["FAULTS", "HOSTILE_FAULTS", "KINDS", "LINK_FAULTS", "RapidTestSimulator", "SimulatedTest"]

LINK_FAULTS = ("noise", "nak-storm", "bad-checksum", "stall", "abort")  # E1381 recovers from these by itself
HOSTILE_FAULTS = ("endless", "giant", "unplug")  # the host must refuse, reset or re-open
FAULTS = LINK_FAULTS + HOSTILE_FAULTS
KINDS = ("pesticide", "gold")
_NOISE_ALPHABET = bytes(b for b in range(256) if b not in (ENQ, EOT, STX, LF))


@dataclass(frozen=True)
class SimulatedTest:
    """One finished test as the instrument saw it, before it is put on the wire."""

    number: int
    sample_id: str
    records: tuple[Record, ...]
    judgements: tuple[str, ...]


@dataclass
class _Queued:
    test: SimulatedTest
    not_before: float = 0.0
    attempts: int = 0
    faulted: set[str] = field(default_factory=set)   # deterministic faults already played on it


@dataclass
class _Plan:
    """Faults for one attempt at one message."""

    stall: bool = False
    abort: bool = False
    endless: bool = False
    giant: bool = False
    unplug: bool = False
    storm: int = 0
    bad_checksum_frame: int | None = None
    storm_done: int = 0
    transmissions: dict[int, int] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)   # the message's record of faults played


class _Link:
    """The instrument's end of the wire: a pty master fd or a connected socket."""

    def __init__(self, fd: int | None = None, sock: socket.socket | None = None) -> None:
        self.fd = fd
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else int(self.fd)  # type: ignore[arg-type]

    def read(self) -> bytes:
        if self.sock is not None:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("the host closed the connection")
            return data
        assert self.fd is not None
        try:
            return os.read(self.fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:  # EIO: nobody has the slave open any more
            raise ConnectionError("the host closed the pty") from exc

    def write(self, data: bytes) -> None:
        if self.sock is not None:
            self.sock.sendall(data)
            return
        assert self.fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def write_some(self, data: bytes | memoryview) -> int:
        """Write what fits now without blocking; raises OSError when the host is gone."""
        try:
            if self.sock is not None:
                return self.sock.send(data, socket.MSG_DONTWAIT)
            assert self.fd is not None
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Close a socket; a pty master stays open (the simulator owns it) for the next host."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


class RapidTestSimulator:
    """A pesticide-residue analyzer or colloidal-gold strip reader on a pty or TCP.

    ``tests=None`` runs forever, one test every ``interval`` seconds.  Use
    :meth:`serve_pty` or :meth:`serve_tcp` to start it (each returns the URL to
    give the driver), :meth:`wait_delivered` to wait for the host to take
    every result, :meth:`stop` to end it.  ``delivered`` lists the tests the
    host acknowledged, in order.
    """

    def __init__(self, kind: str = "pesticide", *, tests: int | None = None, interval: float = 3.0,
                 faults: Iterable[str] = (), fault_rate: float = 0.1, fault_every: int = 3,
                 seed: int | None = None, reply_timeout: float = 15.0, retry_delay: float = 10.0,
                 busy_delay: float = 10.0, stall_seconds: float = 35.0, baud: int | None = None,
                 fault_from: int = 1, flood_bytes: int = 0, giant_bytes: int = 5 * 1024 * 1024,
                 unplug_seconds: float = 2.0, link: str | None = None,
                 encoding: str = "latin-1", pesticide: PesticideSettings = PesticideSettings(),
                 gold: GoldSettings = GoldSettings(), operator: str = "inspector01",
                 instrument_id: str | None = None, clock: Callable[[], datetime] = datetime.now,
                 log: Callable[[str], None] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown analyzer kind {kind!r}; choose one of {', '.join(KINDS)}")
        faults = tuple(faults)
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
        if tests is not None and tests < 0:
            raise ValueError("tests must be ≥ 0 (or None for forever)")
        if interval < 0 or not 0 <= fault_rate <= 1 or fault_every < 1 or fault_from < 1:
            raise ValueError("interval ≥ 0, 0 ≤ fault_rate ≤ 1, fault_every ≥ 1 and fault_from ≥ 1 are required")
        if flood_bytes < 0 or giant_bytes < 1 or unplug_seconds < 0:
            raise ValueError("flood_bytes ≥ 0, giant_bytes ≥ 1 and unplug_seconds ≥ 0 are required")
        self.kind = kind
        self.tests = tests
        self.interval = interval
        self.faults = frozenset(faults)
        self.fault_rate = fault_rate
        self.fault_every = fault_every
        self.fault_from = fault_from
        self.flood_bytes = flood_bytes
        self.giant_bytes = giant_bytes
        self.unplug_seconds = unplug_seconds
        self.link = link
        self.floods = 0  # endless floods played (each ends when the host drops the link or at flood_bytes)
        self.replugs = 0  # times the cable went back in after an unplug
        self.reply_timeout = reply_timeout
        self.retry_delay = retry_delay
        self.busy_delay = busy_delay
        self.stall_seconds = stall_seconds
        self.baud = baud
        self.encoding = encoding
        self.pesticide = pesticide
        self.gold = gold
        self.operator = operator
        self.model = "RAPIDSIM-PR" if kind == "pesticide" else "RAPIDSIM-AU"
        self.instrument_id = instrument_id or ("RT-PR-0001" if kind == "pesticide" else "RT-AU-0001")
        self.clock = clock
        self.log = log
        self._rng = random.Random(seed)
        self._fault_rng = random.Random(None if seed is None else seed + 1)
        self._queue: deque[_Queued] = deque()
        self._produced = 0
        self._next_due = 0.0
        self._storms = 0
        self.delivered: list[SimulatedTest] = []
        self.aborted_sessions: list[str] = []
        self.frames_corrupted = 0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: _Link | None = None
        self._server: socket.socket | None = None
        self._pty: int | None = None
        self._tcp_address: tuple[str, int] | None = None
        self._settle_until = 0.0
        self.url: str | None = None

    # ------------------------------------------------------------ lifecycle

    def serve_pty(self) -> str:
        """Open a pty, start sending; returns the slave's path (the device to open).

        The simulator does not keep the slave open itself: reading the master
        then fails with EIO until a host opens the slave, which is how it
        knows someone is listening (like a TCP accept) and avoids ENQs that
        pyserial would flush on open.
        """
        self._open_pty()
        self._start()
        return self.link or self.url  # type: ignore[return-value]

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline, before any byte flows
        self.url = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(master, False)
        self._pty = master
        if self.link:  # like udev's stable by-id symlink: replaced atomically
            temporary = f"{self.link}.{os.getpid()}.tmp"
            os.symlink(self.url, temporary)
            os.replace(temporary, self.link)

    def _remove_link(self) -> None:
        if self.link and self.url and os.path.islink(self.link) and os.readlink(self.link) == self.url:
            os.unlink(self.link)

    def serve_tcp(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Listen on TCP (port 0: any free port); returns ``socket://host:port``."""
        self._listen(host, port)
        self._start()
        return self.url  # type: ignore[return-value]

    def _listen(self, host: str, port: int) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen(2)
        self._server = server
        bound_host, bound_port = server.getsockname()[:2]
        self._tcp_address = (bound_host, bound_port)
        self.url = f"socket://{bound_host}:{bound_port}"

    def _start(self) -> None:
        if self.tests == 0:
            self._done.set()
        self._thread = threading.Thread(target=self._run, name=f"rapidtest-sim-{self.kind}", daemon=True)
        self._thread.start()

    def wait_delivered(self, timeout: float | None = None) -> bool:
        """Block until all ``tests`` were acknowledged by the host (False on timeout)."""
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """End the simulation: abort any session with EOT, close the link, join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close_all()

    def __enter__(self) -> RapidTestSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_all(self) -> None:
        if self._link is not None and self._link.sock is not None:
            self._link.close()
        self._link = None
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._pty is not None:
            try:
                os.close(self._pty)
            except OSError:
                pass
            self._pty = None
        self._remove_link()

    def _unplug(self) -> None:
        """Pull the cable for ``unplug_seconds``, then plug it back in (see ``unplug``)."""
        was_pty = self._pty is not None
        self._drop_link()
        self._close_all()
        if self._stop.wait(self.unplug_seconds):
            return
        if was_pty:
            self._open_pty()
        else:
            assert self._tcp_address is not None
            self._listen(*self._tcp_address)
        self.replugs += 1
        self._say(f"plugged back in at {self.link or self.url}")

    # ------------------------------------------------------------ tests → messages

    def make_test(self) -> SimulatedTest:
        """Run one simulated test and build its ASTM message."""
        self._produced += 1
        number = self._produced
        now = self.clock().replace(microsecond=0)
        started = now - timedelta(minutes=3 if self.kind == "pesticide" else 10)
        pool = PRODUCE_SAMPLES if self.kind == "pesticide" else ANIMAL_SAMPLES
        sample_name, category = pool[self._rng.randrange(len(pool))]
        sample_id = f"S{number:06d}"
        description = f"{sample_name} ({category}), market stall {self._rng.randint(1, 40)}"
        rows: list[tuple[TestItem, str, str, str, str, list[str]]] = []  # item, value, range, flag, status, comments
        judgements: list[str] = []
        if self.kind == "pesticide":
            reading = simulate_pesticide(self._rng)
            inhibition = inhibition_percent(reading.delta_control, reading.delta_sample)
            judgement = judge_inhibition(inhibition, self.pesticide)
            value = "" if inhibition is None else f"{inhibition:.1f}"
            flag = {POSITIVE: "H", NEGATIVE: "N"}.get(judgement, "")
            comments = [judgement,
                        f"dA control {reading.delta_control:.3f} sample {reading.delta_sample:.3f}; "
                        f"positive when inhibition {'>=' if self.pesticide.inclusive else '>'} "
                        f"{self.pesticide.limit:g} %"]
            if not 0.3 <= reading.delta_control <= 0.8:
                comments.append("control dA outside 0.3-0.8: enzyme activity suspect")
            rows.append((PESTICIDE_ITEM, value, f"0^{self.pesticide.limit:g}", flag,
                         "X" if judgement == INVALID else "F", comments))
            judgements.append(judgement)
        else:
            count = self._rng.choice((1, 1, 2, 3))
            items = self._rng.sample(GOLD_ITEMS, count)
            for item in items:
                gold_reading = simulate_gold(self._rng)
                value_f, judgement = judge_gold(gold_reading, self.gold)
                unit = "T/C" if self.gold.method == "T/C" else "T"
                flag = {POSITIVE: "A", NEGATIVE: "N"}.get(judgement, "A" if judgement != INVALID else "")
                rows.append((item, f"{value_f:.3f}", f"{self.gold.positive_max:g}^{self.gold.negative_min:g}",
                             flag, "X" if judgement == INVALID else "F",
                             [judgement, gold_reading.describe()]))
                judgements.append(judgement)
        ts_done = format_timestamp(now)
        ts_start = format_timestamp(started)
        records: list[Record] = [
            Record.from_fields("H", {3: f"M{number:06d}", 5: (self.model, "1.0", self.instrument_id),
                                     12: "P", 13: "LIS2-A2", 14: ts_done}),
            Record.from_fields("P", {2: "1"}),
        ]
        test_ids = [("", "", "", row[0].code, row[0].name) for row in rows]
        records.append(Record.from_fields("O", {
            2: "1", 3: sample_id, 5: test_ids[0] if len(test_ids) == 1 else Repeats(tuple(test_ids)),
            6: "R", 8: ts_start, 12: "N", 16: description, 26: "F"}))
        for item, value, ref_range, flag, status, comments in rows:
            low, high = ref_range.split("^")
            records.append(Record.from_fields("R", {
                2: "1", 3: ("", "", "", item.code, item.name, item.method, item.standard), 4: value,
                5: item.unit if value else "", 6: (low, high), 7: flag, 9: status, 11: self.operator,
                12: ts_start, 13: ts_done, 14: self.instrument_id}))
            for text in comments:
                records.append(Record.from_fields("C", {2: "1", 3: "I", 4: text, 5: "G"}))
        records.append(Record.from_fields("L", {2: "1", 3: "N"}))
        return SimulatedTest(number, sample_id, tuple(assign_sequence_numbers(records)), tuple(judgements))

    # ------------------------------------------------------------ the instrument loop

    def _say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    def _new_sender(self) -> AstmSender:
        return AstmSender(reply_timeout=self.reply_timeout, busy_delay=self.busy_delay, priority=True,
                          max_failures=MAX_FAILURES, encoding=self.encoding)

    def _produce(self, now: float) -> None:
        while ((self.tests is None or self._produced < self.tests) and now >= self._next_due
               and len(self._queue) < 64):
            self._queue.append(_Queued(self.make_test()))
            self._next_due = now + self.interval
            if self.interval > 0:
                break

    def _plan_for(self, queued: _Queued) -> _Plan:
        """Deterministic faults for this attempt: each is played once per selected message."""
        plan = _Plan(applied=queued.faulted)
        number = queued.test.number
        if number >= self.fault_from and (number - self.fault_from) % self.fault_every == 0:
            todo = self.faults - queued.faulted
            if "endless" in todo or "giant" in todo:  # a hostile attempt carries nothing else
                plan.endless = "endless" in todo
                plan.giant = not plan.endless
                return plan
            plan.unplug = "unplug" in todo
            plan.stall = "stall" in todo
            plan.abort = "abort" in todo
            if "nak-storm" in todo:
                if "storm-length" not in queued.faulted:
                    self._storms += 1
                    queued.faulted.add("storm-length")
                plan.storm = MAX_FAILURES if self._storms % 2 == 0 else 3
            if "bad-checksum" in todo:
                plan.bad_checksum_frame = 1
        return plan

    def _run(self) -> None:
        sender = self._new_sender()
        current: _Queued | None = None
        plan = _Plan()
        pending_stall = False
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._produce(now)
                if self._link is None:
                    if current is not None:
                        # The host went away mid-session: keep the result for the next one.
                        current.not_before = now + self.retry_delay
                        self._queue.appendleft(current)
                        current = None
                        sender = self._new_sender()
                    self._accept(0.05)
                    continue
                if (sender.idle and current is None and self._queue and self._queue[0].not_before <= now
                        and now >= self._settle_until):
                    current = self._queue.popleft()
                    current.attempts += 1
                    plan = self._plan_for(current)
                    pending_stall = plan.stall
                    if plan.endless:
                        current.faulted.add("endless")
                        self._flood(current)
                        current.not_before = time.monotonic() + self.retry_delay
                        self._queue.appendleft(current)
                        current = None
                        continue
                    records = current.test.records
                    if plan.giant:
                        current.faulted.add("giant")
                        records = self._with_giant_record(records)
                        self._say(f"fault giant: a {self.giant_bytes}-byte record in {current.test.sample_id}")
                    sender.send_message(records, now)
                if sender.deadline is not None and now >= sender.deadline:
                    sender.handle_timeout(now)
                self._flush(sender, plan)
                current = self._handle_events(sender, current)
                waits = [0.2]
                if sender.deadline is not None:
                    waits.append(sender.deadline - now)
                if self.tests is None or self._produced < self.tests:
                    waits.append(self._next_due - now)
                if sender.idle and self._queue:
                    waits.append(max(self._queue[0].not_before, self._settle_until) - now)
                wait = max(0.0, min(waits))
                fds = [self._link.fileno()] + ([self._server.fileno()] if self._server is not None else [])
                readable, _, _ = select.select(fds, [], [], wait)
                if self._server is not None and self._server.fileno() in readable:
                    self._accept(0)
                    continue
                if self._link is None or self._link.fileno() not in readable:
                    continue
                try:
                    data = self._link.read()
                except (OSError, ConnectionError):
                    self._drop_link()
                    continue
                if not data:
                    continue
                if pending_stall and current is not None and not sender.idle and sender.frame_index == 1:
                    pending_stall = False
                    current.faulted.add("stall")
                    self._say(f"fault stall: silent for {self.stall_seconds:g} s in {current.test.sample_id}")
                    if self._stop.wait(self.stall_seconds):
                        break
                if plan.unplug and current is not None and not sender.idle and sender.frame_index == 2:
                    plan.unplug = False
                    current.faulted.add("unplug")
                    self._say(f"fault unplug: cable out for {self.unplug_seconds:g} s in {current.test.sample_id}")
                    self._unplug()
                    continue
                if plan.abort and current is not None and not sender.idle and sender.frame_index == 2:
                    plan.abort = False
                    current.faulted.add("abort")
                    self._say(f"fault abort: EOT in the middle of {current.test.sample_id}")
                    sender.abort(time.monotonic(), "fault: the instrument aborted mid-message")
                    self._flush(sender, plan)
                    current = self._handle_events(sender, current)
                    continue
                sender.receive_data(data, time.monotonic())
                self._flush(sender, plan)
                current = self._handle_events(sender, current)
            # Stopping: leave the link neutral so the host drops any partial message cleanly.
            if not sender.idle and self._link is not None:
                sender.abort(time.monotonic(), "simulator stopped")
                try:
                    self._flush(sender, _Plan())
                except OSError:
                    pass
        except Exception as exc:  # the instrument thread must say why it died
            self._say(f"simulator failed: {exc!r}")
            raise

    def _with_giant_record(self, records: tuple[Record, ...]) -> tuple[Record, ...]:
        giant = Record.from_fields("C", {2: "1", 3: "I", 4: "x" * self.giant_bytes, 5: "G"})
        return (*records[:-1], giant, records[-1])

    def _flood(self, queued: _Queued) -> None:
        """The ``endless`` fault: ENQ, H, then intermediate frames without end (see the module doc)."""
        self._say(f"fault endless: frames without end in {queued.test.sample_id}")
        self.floods += 1
        header = encode_record(queued.test.records[0]).encode(self.encoding) + b"\r"
        opening = bytes([ENQ]) + encode_frame(1, header, True) + encode_frame(2, b"C|1|I|", False)
        # Frame numbers cycle mod 8, so 8 × 32 frames starting at FN 3 can be repeated verbatim.
        batch = b"".join(encode_frame((3 + k) % 8, b"x" * 240, False) for k in range(8 * 32))
        pending, sent = memoryview(opening), 0
        while not self._stop.is_set() and self._link is not None:
            if self.flood_bytes and sent >= self.flood_bytes:
                try:
                    self._link.write(bytes([EOT]))
                except OSError:
                    self._drop_link()
                self._say(f"flood ended after {sent} bytes; {queued.test.sample_id} will be sent again")
                return
            readable, writable, _ = select.select([self._link], [self._link], [], 0.2)
            try:
                if readable:
                    self._link.read()  # ACK/NAK/EOT from the host: ignored
                if writable:
                    written = self._link.write_some(pending)
                    sent += written
                    pending = pending[written:] if written < len(pending) else memoryview(batch)
            except (OSError, ConnectionError):
                self._drop_link()
        self._say(f"the host dropped the link after {sent} flood bytes; {queued.test.sample_id} will be sent again")

    def _accept(self, wait: float) -> None:
        """Wait for a host: a TCP connection, or someone opening the pty slave."""
        if self._server is None:
            if self._pty is None:
                self._stop.wait(wait)
                return
            try:
                os.read(self._pty, 4096)   # a stray byte from a host that just opened: drop it
            except BlockingIOError:
                pass                       # the slave is open and quiet: a host is there
            except OSError:
                self._stop.wait(max(wait, 0.02))  # EIO: nobody has the slave open yet
                return
            self._link = _Link(fd=self._pty)
            self._settle_until = time.monotonic() + 0.3  # pyserial flushes input while opening
            self._say("host opened the pty")
            return
        readable, _, _ = select.select([self._server], [], [], wait)
        if not readable:
            return
        conn, peer = self._server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._link is not None:
            self._say("a new host connected; dropping the previous connection")
            self._drop_link()
        self._link = _Link(sock=conn)
        # pyserial's socket:// handler discards whatever is waiting right after it
        # connects; give the host a moment so the first ENQ is not thrown away.
        self._settle_until = time.monotonic() + 0.3
        self._say(f"host connected from {peer[0]}:{peer[1]}")

    def _drop_link(self) -> None:
        if self._link is None:
            return
        self._link.close()
        self._link = None
        self._say("host disconnected")

    def _handle_events(self, sender: AstmSender, current: _Queued | None) -> _Queued | None:
        while True:
            event = sender.next_event()
            if event is NEED_DATA:
                return current
            if isinstance(event, MessageSent) and current is not None:
                with self._lock:
                    self.delivered.append(current.test)
                    if self.tests is not None and len(self.delivered) >= self.tests:
                        self._done.set()
                self._say(f"sent {current.test.sample_id}: {', '.join(current.test.judgements)}")
                current = None
            elif isinstance(event, SessionAborted) and current is not None:
                self.aborted_sessions.append(event.reason)
                self._say(f"session aborted ({event.reason}); {current.test.sample_id} will be sent again")
                current.not_before = time.monotonic() + self.retry_delay
                self._queue.appendleft(current)
                current = None

    # ------------------------------------------------------------ the wire, with faults

    def _flush(self, sender: AstmSender, plan: _Plan) -> None:
        data = sender.data_to_send()
        if not data or self._link is None:
            return
        out = bytearray()
        i = 0
        while i < len(data):
            if data[i] == STX:
                end = data.find(b"\n", i)
                end = len(data) if end < 0 else end + 1
                out += self._fault_frame(data[i:end], sender, plan)
                i = end
            else:
                if "noise" in self.faults and self._fault_rng.random() < self.fault_rate:
                    out += self._garbage()
                out.append(data[i])
                i += 1
        try:
            self._pace_write(bytes(out))
        except OSError:
            self._drop_link()

    def _garbage(self) -> bytes:
        return bytes(self._fault_rng.choice(_NOISE_ALPHABET) for _ in range(self._fault_rng.randint(1, 8)))

    def _fault_frame(self, frame: bytes, sender: AstmSender, plan: _Plan) -> bytes:
        index = sender.frame_index
        attempt = plan.transmissions.get(index, 0)
        plan.transmissions[index] = attempt + 1
        rng = self._fault_rng
        if plan.storm and index == 1 and plan.storm_done < plan.storm:
            plan.storm_done += 1
            if plan.storm_done == plan.storm:
                plan.applied.add("nak-storm")
            self.frames_corrupted += 1
            return self._bad_checksum(frame)
        if plan.bad_checksum_frame == index and attempt == 0:
            plan.applied.add("bad-checksum")
            self.frames_corrupted += 1
            return self._bad_checksum(frame)
        if "bad-checksum" in self.faults and rng.random() < self.fault_rate:
            self.frames_corrupted += 1
            return self._bad_checksum(frame)
        if "noise" in self.faults:
            prefix = self._garbage() if rng.random() < self.fault_rate else b""
            if rng.random() < self.fault_rate and len(frame) > 3:
                self.frames_corrupted += 1
                position = rng.randrange(1, len(frame) - 2)  # anything but STX and the final LF
                changed = bytearray(frame)
                changed[position] = (changed[position] + rng.randrange(1, 256)) & 0xFF
                frame = bytes(changed)
            return prefix + frame
        return frame

    @staticmethod
    def _bad_checksum(frame: bytes) -> bytes:
        good = int(frame[-4:-2], 16)
        return frame[:-4] + b"%02X" % ((good + 0x5A) & 0xFF) + frame[-2:]

    def _pace_write(self, data: bytes) -> None:
        link = self._link
        if link is None:
            return
        if not self.baud:
            link.write(data)
            return
        chunk = max(1, self.baud // 100)  # ~10 ms of line time per write
        for i in range(0, len(data), chunk):
            piece = data[i : i + chunk]
            link.write(piece)
            time.sleep(len(piece) * 10 / self.baud)  # 8N1: 10 bits per byte
