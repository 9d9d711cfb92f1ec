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
from datetime import datetime

from firmware_bridge.astm import (
    MAX_FAILURES,
    NEED_DATA,
    AstmSender,
    MessageSent,
    SessionAborted,
)
from simulators.rapidtest.assays import GoldSettings, PesticideSettings
from simulators.rapidtest.faults import (
    FAULTS,
    FaultPlan,
    WireFaults,
)
from simulators.rapidtest.messages import Analyzer, SimulatedTest, build_test

__all__ = ["KINDS", "RapidTestSimulator"]

KINDS = ("pesticide", "gold")


def _check_settings(kind: str, faults: tuple[str, ...], tests: int | None, interval: float, fault_rate: float,
                    fault_every: int, fault_from: int, flood_bytes: int, giant_bytes: int, unplug_seconds: float) -> None:
    """Refuse settings the instrument cannot run with, each with the rule it broke."""
    if kind not in KINDS:
        raise ValueError(f"unknown analyzer kind {kind!r}; choose one of {', '.join(KINDS)}")
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    if tests is not None and tests < 0:
        raise ValueError("tests must be ≥ 0 (or None for forever)")
    if interval < 0 or not 0 <= fault_rate <= 1 or fault_every < 1 or fault_from < 1:
        raise ValueError("interval ≥ 0, 0 ≤ fault_rate ≤ 1, fault_every ≥ 1 and fault_from ≥ 1 are required")
    if flood_bytes < 0 or giant_bytes < 1 or unplug_seconds < 0:
        raise ValueError("flood_bytes ≥ 0, giant_bytes ≥ 1 and unplug_seconds ≥ 0 are required")


@dataclass
class _Queued:
    test: SimulatedTest
    not_before: float = 0.0
    attempts: int = 0
    faulted: set[str] = field(default_factory=set)   # deterministic faults already played on it


@dataclass
class _Session:
    """The instrument loop's state: the ASTM sender, the message it is sending and that attempt's faults."""

    sender: AstmSender
    current: _Queued | None = None
    plan: FaultPlan = field(default_factory=FaultPlan)
    pending_stall: bool = False


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



class RapidTestSimulator(WireFaults):
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
        faults = tuple(faults)
        _check_settings(kind, faults, tests, interval, fault_rate, fault_every, fault_from, flood_bytes, giant_bytes,
                        unplug_seconds)
        self.kind = kind
        self.tests = tests
        self._init_faults(faults, fault_rate, fault_every, fault_from, flood_bytes, giant_bytes, seed)
        self.interval = interval
        self.unplug_seconds = unplug_seconds
        self.link = link
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
        self._queue: deque[_Queued] = deque()
        self._produced = 0
        self._next_due = 0.0
        self.delivered: list[SimulatedTest] = []
        self.aborted_sessions: list[str] = []
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
        analyzer = Analyzer(self.kind, self.model, self.instrument_id, self.operator, self.pesticide, self.gold)
        return build_test(analyzer, self._produced, self.clock().replace(microsecond=0), self._rng)

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

    def _run(self) -> None:
        s = _Session(self._new_sender())
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                self._produce(now)
                if self._link is None:
                    self._requeue_current(s, now)
                    self._accept(0.05)
                    continue
                if self._begin_next(s, now):
                    continue  # the attempt was an endless flood, played to its end
                if s.sender.deadline is not None and now >= s.sender.deadline:
                    s.sender.handle_timeout(now)
                self._flush(s.sender, s.plan)
                s.current = self._handle_events(s.sender, s.current)
                data = self._read_host(s.sender, now)
                if not data:
                    continue
                if self._play_stall(s):
                    break
                if self._play_cut(s):
                    continue
                s.sender.receive_data(data, time.monotonic())
                self._flush(s.sender, s.plan)
                s.current = self._handle_events(s.sender, s.current)
            self._leave_neutral(s.sender)
        except Exception as exc:  # the instrument thread must say why it died
            self._say(f"simulator failed: {exc!r}")
            raise

    def _requeue_current(self, s: _Session, now: float) -> None:
        """The host went away mid-session: keep the result for the next one."""
        if s.current is not None:
            s.current.not_before = now + self.retry_delay
            self._queue.appendleft(s.current)
            s.current = None
            s.sender = self._new_sender()

    def _begin_next(self, s: _Session, now: float) -> bool:
        """Start sending the next queued message when the link is free; True when the attempt was an endless
        flood (already played: the message goes back to the queue)."""
        if not (s.sender.idle and s.current is None and self._queue and self._queue[0].not_before <= now
                and now >= self._settle_until):
            return False
        current = s.current = self._queue.popleft()
        current.attempts += 1
        s.plan = self._plan_for(current)
        s.pending_stall = s.plan.stall
        if s.plan.endless:
            current.faulted.add("endless")
            self._flood(current)
            current.not_before = time.monotonic() + self.retry_delay
            self._queue.appendleft(current)
            s.current = None
            return True
        records = current.test.records
        if s.plan.giant:
            current.faulted.add("giant")
            records = self._with_giant_record(records)
            self._say(f"fault giant: a {self.giant_bytes}-byte record in {current.test.sample_id}")
        s.sender.send_message(records, now)
        return False

    def _read_host(self, sender: AstmSender, now: float) -> bytes:
        """Wait for the host's bytes until the next thing to do (a reply deadline, the next test, a retry);
        b"" when nothing came (or a new host connected, or this one left)."""
        assert self._link is not None
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
            return b""
        if self._link is None or self._link.fileno() not in readable:
            return b""
        try:
            return self._link.read()
        except (OSError, ConnectionError):
            self._drop_link()
            return b""

    def _play_stall(self, s: _Session) -> bool:
        """The ``stall`` fault (silence after the first frame's reply); True when the simulator was stopped
        during it."""
        if s.pending_stall and s.current is not None and not s.sender.idle and s.sender.frame_index == 1:
            s.pending_stall = False
            s.current.faulted.add("stall")
            self._say(f"fault stall: silent for {self.stall_seconds:g} s in {s.current.test.sample_id}")
            return self._stop.wait(self.stall_seconds)
        return False

    def _play_cut(self, s: _Session) -> bool:
        """The ``unplug`` and ``abort`` faults in the middle of a message; True when one was played."""
        plan, current, sender = s.plan, s.current, s.sender
        if plan.unplug and current is not None and not sender.idle and sender.frame_index == 2:
            plan.unplug = False
            current.faulted.add("unplug")
            self._say(f"fault unplug: cable out for {self.unplug_seconds:g} s in {current.test.sample_id}")
            self._unplug()
            return True
        if plan.abort and current is not None and not sender.idle and sender.frame_index == 2:
            plan.abort = False
            current.faulted.add("abort")
            self._say(f"fault abort: EOT in the middle of {current.test.sample_id}")
            sender.abort(time.monotonic(), "fault: the instrument aborted mid-message")
            self._flush(sender, plan)
            s.current = self._handle_events(sender, current)
            return True
        return False

    def _leave_neutral(self, sender: AstmSender) -> None:
        """Stopping: leave the link neutral so the host drops any partial message cleanly."""
        if not sender.idle and self._link is not None:
            sender.abort(time.monotonic(), "simulator stopped")
            try:
                self._flush(sender, FaultPlan())
            except OSError:
                pass


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
