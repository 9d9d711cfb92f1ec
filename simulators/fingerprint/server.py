"""Serve a simulated fingerprint module over a pty or TCP, paced like a real UART.

Why pace: a pty is thousands of times faster than 57600 baud, and a driver
that only ever saw instant replies hides its timeout bugs. With ``baud``
set, every reply packet leaves no earlier than a real line would have
finished sending it (10 bits per byte: start, 8 data, stop); ``baud=0``
turns pacing off for fast tests.

Faults on request: ``noise`` is the chance that garbage bytes precede a
reply packet (the driver must hunt past them); ``corrupt`` the chance that
one byte of a reply packet is flipped (the driver sees a checksum error
and must retry). :meth:`FingerprintSimulator.inject_error` answers the next
commands with a given confirmation code; :meth:`drop_replies` makes the
module stay silent.

One worker thread per simulator owns the link; everything it shares with
the caller (finger state, faults) goes through a lock.
"""

from __future__ import annotations

import errno
import os
import random
import select
import socket
import threading
import time
import tty
from types import TracebackType

from firmware_bridge.r30x import DEFAULT_ADDRESS, ConfirmationCode, Instruction

from simulators.fingerprint.device import FingerprintModule, Press

__all__ = ["FingerprintSimulator"]


class FingerprintSimulator:
    """A fingerprint module on a pty or a TCP port.

    ``finger``: "absent", "present", or seconds after start when a finger
    arrives (``after:S`` on the command line). ``enrolled`` pre-fills library
    pages 0..N-1 with fingers ``enrolled_ids`` (default 1..N), so a search
    finds an officer without an enrolment ceremony.
    """

    def __init__(
        self,
        *,
        baud: int = 57600,
        password: int = 0,
        address: int = DEFAULT_ADDRESS,
        finger: str | float = "absent",
        finger_id: int = 1,
        quality: float = 0.9,
        quality_spread: float = 0.0,
        noise: float = 0.0,
        corrupt: float = 0.0,
        library_size: int = 200,
        packet_size: int = 128,
        enrolled: int = 0,
        enrolled_ids: list[int] | None = None,
        lenient_checksum: bool = False,
        seed: int | None = None,
    ) -> None:
        if baud < 0:
            raise ValueError("baud must be 0 (no pacing) or a positive rate such as 57600")
        if not 0.0 <= noise <= 1.0 or not 0.0 <= corrupt <= 1.0:
            raise ValueError("noise and corrupt are probabilities per reply packet, 0..1")
        self.baud = baud
        self.rng = random.Random(seed)
        self._lock = threading.RLock()
        self._finger_id = finger_id
        self._quality = quality
        self.quality_spread = quality_spread
        self._press_quality = quality
        self._press_no = 0
        self._finger_at: float | None = None
        self._lift_at: float | None = None
        self.noise = noise
        self.corrupt = corrupt
        baud_n = max(1, min(12, round(baud / 9600))) if baud else 6
        self.module = FingerprintModule(
            self._finger_now,
            address=address,
            password=password,
            library_size=library_size,
            packet_size=packet_size,
            baud_n=baud_n,
            lenient_checksum=lenient_checksum,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        ids = enrolled_ids if enrolled_ids is not None else list(range(1, enrolled + 1))
        for page, fid in enumerate(ids):
            self.module.enroll_synthetic(page, fid)
        if finger == "present":
            self.press_finger()
        elif finger != "absent":
            self.press_finger(after=float(finger))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: list[int] = []
        self._listener: socket.socket | None = None
        self._line_free_at = 0.0
        self.bytes_sent = 0
        self.endpoint: str | None = None

    # -- the finger ------------------------------------------------------
    def press_finger(
        self,
        finger_id: int | None = None,
        quality: float | None = None,
        *,
        after: float = 0.0,
        duration: float | None = None,
    ) -> None:
        """Put a finger on the sensor (``after`` seconds from now, for ``duration`` seconds).

        ``quality`` 0..1 (1 = perfect) sets this and later presses; with
        ``quality_spread`` each press varies by up to ± that much.
        """
        with self._lock:
            if finger_id is not None:
                self._finger_id = finger_id
            if quality is not None:
                self._quality = quality
            self._press_no += 1
            # each placement is a little better or worse, as with real people
            spread = self.quality_spread * (2 * self.rng.random() - 1) if self.quality_spread else 0.0
            self._press_quality = min(1.0, max(0.0, self._quality + spread))
            self._finger_at = time.monotonic() + after
            self._lift_at = None if duration is None else self._finger_at + duration

    def lift_finger(self) -> None:
        with self._lock:
            self._finger_at = None
            self._lift_at = None

    def _finger_now(self) -> Press | None:
        with self._lock:
            now = time.monotonic()
            if self._finger_at is None or now < self._finger_at:
                return None
            if self._lift_at is not None and now >= self._lift_at:
                return None
            return Press(self._finger_id, self._press_quality, self._press_no)

    @property
    def finger_present(self) -> bool:
        return self._finger_now() is not None

    # -- faults -------------------------------------------------------------
    def inject_error(self, code: ConfirmationCode, count: int = 1) -> None:
        """Answer the next ``count`` commands with ``code`` instead of doing them."""
        with self._lock:
            self.module.injected.extend([code] * count)

    def drop_replies(self, count: int = 1) -> None:
        """Stay silent for the next ``count`` commands (a lost packet)."""
        with self._lock:
            self.module.silent_commands += count

    def commands_seen(self) -> list[Instruction]:
        with self._lock:
            return list(self.module.commands_seen)

    # -- serving ------------------------------------------------------------
    def serve_pty(self) -> str:
        """Open a pty, serve on its master side, return the slave path for the driver."""
        master, slave = os.openpty()
        tty.setraw(slave)  # raw before any byte flows: no echo, no CR/LF mangling
        os.set_blocking(master, False)
        self._fds = [master, slave]
        self.endpoint = os.ttyname(slave)
        self._start(self._run_pty, master)
        return self.endpoint

    def serve_tcp(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Listen on TCP; return the pyserial URL ``socket://HOST:PORT`` (port 0 → the real port)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1)
        listener.setblocking(False)
        self._listener = listener
        self.endpoint = f"socket://{host}:{listener.getsockname()[1]}"
        self._start(self._run_tcp, listener)
        return self.endpoint

    def _start(self, target: object, arg: object) -> None:
        if self._thread is not None:
            raise RuntimeError("this simulator is already serving; make another one")
        self._thread = threading.Thread(target=target, args=(arg,), name="fingerprint-sim", daemon=True)  # type: ignore[arg-type]
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the worker to finish (safe in a signal handler); stop() then releases everything."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release the pty / socket. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> FingerprintSimulator:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def wait(self) -> None:
        """Block until stop() is called from another thread or a signal handler."""
        while not self._stop.wait(0.2):
            pass

    # -- worker side ----------------------------------------------------------
    def _replies(self, data: bytes) -> list[bytes]:
        with self._lock:
            packets = self.module.receive(data)
        out: list[bytes] = []
        for packet in packets:
            if self.noise and self.rng.random() < self.noise:
                out.append(bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 8))))
            if self.corrupt and self.rng.random() < self.corrupt and len(packet) > 9:
                i = self.rng.randrange(9, len(packet))
                packet = packet[:i] + bytes([packet[i] ^ (1 << self.rng.randrange(8))]) + packet[i + 1:]
            out.append(packet)
        return out

    def _pace(self, n: int) -> bool:
        """Sleep until ``n`` more bytes would have left a real UART; False if stopped meanwhile."""
        if not self.baud:
            return not self._stop.is_set()
        now = time.monotonic()
        self._line_free_at = max(now, self._line_free_at) + n * 10 / self.baud
        while True:
            left = self._line_free_at - time.monotonic()
            if left <= 0:
                return not self._stop.is_set()
            if self._stop.wait(min(left, 0.05)):
                return False

    def _run_pty(self, master: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # nobody has the slave open right now
                    self._stop.wait(0.05)
                    continue
                return
            for chunk in self._replies(data):
                if not self._pace(len(chunk)) or not self._write_fd(master, chunk):
                    return

    def _write_fd(self, fd: int, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                return False
            _, writable, _ = select.select([], [fd], [], 0.05)
            if not writable:
                continue
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                continue
            except OSError:
                return False
            view = view[n:]
            self.bytes_sent += n
        return True

    def _run_tcp(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([listener], [], [], 0.05)
            if not ready:
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._serve_conn(conn)
            with self._lock:
                # like a serial-to-TCP bridge: the module keeps power, only half-received bytes go
                self.module.codec.clear()

    def _serve_conn(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        while not self._stop.is_set():
            ready, _, _ = select.select([conn], [], [], 0.05)
            if not ready:
                continue
            try:
                data = conn.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            for chunk in self._replies(data):
                if not self._pace(len(chunk)) or not self._send_sock(conn, chunk):
                    return

    def _send_sock(self, conn: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                return False
            _, writable, _ = select.select([], [conn], [], 0.05)
            if not writable:
                continue
            try:
                n = conn.send(view)
            except BlockingIOError:
                continue
            except OSError:
                return False
            view = view[n:]
            self.bytes_sent += n
        return True
