"""Fault campaign harness: the trial's options and report, and the processes a trial runs (children whose
output is read by a thread, the private Mosquitto, the lossy uplink proxy, libfaketime for the gateway).

Kept apart from bench/faults.py (the trial and its command line) so each part reads on its own; see that
module's docstring for what the campaign proves.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import child_env as common_child_env

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))),
                   Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"))
MONOTONIC_FIX = Path(__file__).resolve().parent / "faketime_monotonic_fix.c"
CLOCK_JUMP_S = 3600
MQTT_LANES = {"results": "results/", "evidence": "evidence/"}  # lane -> topic prefix under egw/v1/<gw>/


@dataclass
class TrialOptions:
    faults: tuple[str, ...] = ("kill", "platform", "broker", "unplug")
    recorders: int = 2
    recordings: int = 3
    fill_mb: float = 48.0
    tests: int = 4
    broker_down_s: float = 30.0
    fault_window_s: float = 8.0
    settle_timeout_s: float = 120.0
    disk_mb: int = 320
    clock_jumps_s: tuple[int, ...] = (CLOCK_JUMP_S, -CLOCK_JUMP_S)  # the clock fault picks one (seeded)


@dataclass
class TrialReport:
    trial: int
    faults: list[str]
    expected: int = 0
    delivered: int = 0
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    deleted_before_receipt: list[str] = field(default_factory=list)
    gateway_items: int = 0
    gateway_unreceipted: int = 0
    mqtt_results: int = 0
    mqtt_evidence: int = 0          # distinct evidence-state messages the subscriber saw
    mqtt_duplicates: int = 0        # redeliveries, by message id (both lanes)
    mqtt_out_of_order: int = 0      # first arrivals older (egw-seq) than one already seen on the same lane
    mqtt_sequenced: int = 0         # first arrivals that carried egw-seq (what the order check covered)
    mqtt_unsequenced: int = 0       # first arrivals without egw-seq (not checkable)
    clock_stamped: dict[str, int] = field(default_factory=dict)  # gateway records stamped with the jumped time
    custody_ok: bool = False
    stranded_mounts: list[str] = field(default_factory=list)  # recorders left mounted and never re-adopted
    custody_detail: str = ""
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0
    settled: bool = False

    @property
    def passed(self) -> bool:
        return (not self.missing and not self.corrupted and not self.deleted_before_receipt and self.custody_ok
                and not self.mqtt_out_of_order)



# ---- processes --------------------------------------------------------------------------------


def _monotonic_fix() -> Path:
    """Build (once per source version) the shim preloaded in front of libfaketime: see its source."""
    source = MONOTONIC_FIX.read_bytes()
    built = Path(tempfile.gettempdir()) / f"egw-faketime-monotonic-fix-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if built.is_file():
        return built
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("the clock fault needs a C compiler to build bench/faketime_monotonic_fix.c "
                           "(a fix for libfaketime 0.9.10's monotonic waits): apt-get install gcc")
    partial = built.with_suffix(f".{os.getpid()}.part")
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(MONOTONIC_FIX), "-ldl"], check=True,
                   capture_output=True)
    os.replace(partial, built)
    return built


def faketime_env(*, timestamp_file: Path | None = None, offset: str | None = None) -> dict[str, str]:
    """Environment for a child whose wall clock is faked (libfaketime) and nothing else: CLOCK_MONOTONIC, sleeps,
    timed waits and file timestamps stay real, as under a real clock step. ``timestamp_file`` (re-read on every
    call) lets the harness move the clock of a running process; ``offset`` (e.g. ``"-1h"``) fixes it instead."""
    if not LIBFAKETIME.is_file():
        raise RuntimeError(f"{LIBFAKETIME} is missing: apt-get install faketime")
    env = {"LD_PRELOAD": f"{_monotonic_fix()} {LIBFAKETIME}", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"}
    if timestamp_file is not None:
        env.update(FAKETIME_TIMESTAMP_FILE=str(timestamp_file), FAKETIME_NO_CACHE="1")
    if offset is not None:
        env["FAKETIME"] = offset
    return env


def child_env(**extra: str) -> dict[str, str]:
    env = common_child_env(**extra)
    env.pop("EGW_KEY_PASSPHRASE", None)
    return env


def egw_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Child:
    """One child process: stdout lines collected by a thread (so it never blocks), stderr to a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, stdin: bool = False, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self.log = open(log_dir / f"{name}.log", "a")
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env or child_env(), text=True, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        threading.Thread(target=self._drain, daemon=True, name=f"drain-{name}").start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()

    def line(self, index: int, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.lines) <= index:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and len(self.lines) <= index):
                    raise RuntimeError(f"{self.name} printed no line {index + 1}; see {self.log.name}")
                self._cv.wait(min(left, 0.2))
            return self.lines[index]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.log.closed:
            self.log.write("".join(f"stdout: {line}\n" for line in self.lines))
            self.log.close()
        return self.proc.returncode


class Broker:
    """A private Mosquitto on a fixed free port; stopped by SIGKILL of its own pid, restarted on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n")
        self.log = workdir / "logs" / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        if not _wait_port(self.port):
            raise RuntimeError(f"mosquitto did not start on {self.port}; see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


class FaultyProxy:
    """A TCP forwarder between gateway and platform. While ``bad`` is set it delays every chunk and
    drops connections at random (both sides closed), as a lossy uplink would."""

    def __init__(self, upstream_port: int, rng: random.Random) -> None:
        self.upstream_port = upstream_port
        self.rng = rng
        self.bad = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                down.close()
                continue
            with self._lock:
                self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.bad.is_set():
                    time.sleep(self.rng.uniform(0.05, 0.3))
                    if self.rng.random() < 0.05:
                        self.dropped += 1
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def drop_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.dropped += len(conns) // 2

    def close(self) -> None:
        self.server.close()
        self.drop_all()

