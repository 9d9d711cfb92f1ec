"""Fault campaign: the whole station on loopback under injected faults, ending in a counting report.

``python bench/faults.py [--trials N] [--faults kill,platform,broker,unplug,disk,clock,net] [--seed S]``

Each trial starts a fresh reference platform (fixed port, so it can be killed and restarted
on the same address), a PRIVATE Mosquitto on a free port (never the machine's shared broker),
two simulated body-worn cameras over USB/IP (small real recordings plus one bulk ``--fill-mb``
file each, so faults land mid-copy and mid-upload), a rapid-test analyzer on TCP and
``egw run -c CONFIG`` as a child process. Every selected fault fires once per trial at a
random moment (seeded), is healed, and the system is left to settle until everything the
devices created carries a platform receipt, the recorders are released and the gateway's MQTT
outbox is empty (or a timeout). Then the trial is counted the way
Azure IoT Edge's test coordinator counts: what the devices created (recordings hashed from
the recorders' own storage before docking; results the analyzer says the host acknowledged)
against what the platform holds (by digest) and what the gateway holds.

Why a volume poller: "deleted before receipt" is the one failure a count at the end cannot
see (the file is gone). A thread lists every recorder volume every 100 ms and, whenever a
recording disappears from a volume that is still mounted, checks at that moment whether the
platform holds a receipt for the recording's digest.

The faults: ``kill`` (SIGKILL of ``egw run``, restarted after 0.2-1.5 s), ``platform`` (SIGKILL of the
reference platform, restarted on the same port), ``broker`` (SIGKILL of the private Mosquitto for
``--broker-down`` seconds), ``unplug`` (a recorder yanked off the USB/IP bus mid-copy and replugged),
``disk`` (the gateway's data disk, a small tmpfs, filled for 2-5 s; needs root), ``net`` (the gRPC uplink
through a proxy that delays every chunk 50-300 ms and drops connections, for 3-8 s) and ``clock``:

Clock: the gateway's wall clock jumps by +1 h or -1 h (seeded coin) mid-copy (when a partial blob passes
a random size, as for unplug: a jump on an idle gateway proves little) and jumps back 5-15 s later, as a
bad NTP step or an operator setting the time would do. It is done for real, below Python: every
``egw run`` of a trial with this fault (including the restarts after ``kill``) runs under libfaketime (Debian
``faketime``; LD_PRELOAD of libfaketime.so.1) with ``FAKETIME_TIMESTAMP_FILE`` pointing at a per-trial
file that the harness rewrites atomically (``+0``, ``+3600`` or ``-3600``) and ``FAKETIME_NO_CACHE=1``,
so time(), gettimeofday() and clock_gettime(CLOCK_REALTIME) of the running process (Python, SQLite,
gRPC's BoringSSL alike) move at once. ``FAKETIME_DONT_FAKE_MONOTONIC=1``: a real wall-clock step does
not move CLOCK_MONOTONIC. But libfaketime 0.9.10 (Debian bookworm) still rewrites the deadlines of
monotonic waits (wolfcw/libfaketime#426, #503): every time.sleep() of Python 3.11 fails with EINVAL and
monotonic condition-variable waits (gRPC, the GIL) return at once, even with a zero offset. A real step
does neither, so a small shim (bench/faketime_monotonic_fix.c, built with ``cc`` on first use) is
preloaded in front of libfaketime and sends monotonic sleeps and waits straight to glibc.
``NO_FAKE_STAT=1``: a real step does not rewrite the timestamps of files already on disk, least of all
those on a recorder, whose own clock did not jump. Only the gateway jumps: the platform, the broker and
the devices are other machines. Proof that the jump landed is in the trial's events (gateway log lines,
custody entries and manifests stamped with the jumped time: a jump must be visible in the evidence,
never hidden or "corrected").

TLS under a -1 h jump: the trial's PKI is minutes old (the platform CA, the platform's server and
receipt-signing certificate and the gateway's certificate are issued at trial start, notBefore = issue
time - 5 min), so to a gateway whose clock reads an hour early they are not yet valid. Seen in trials:
new gRPC connections fail their TLS handshake ("certificate is not yet valid"); a receipt that arrives
on a connection opened before the jump is refused as well (its signer certificate is checked at the
gateway's time; seen in early runs). Both errors name the clock. The items stay queued and are delivered
on the uploader's next retry once the clock is back (the platform already holds the bytes: QueryUpload
returns the receipt): a few seconds later with the uploader's RetrySchedule (60 s before it). That is
correct, not a stall: a gateway must not accept a receipt signed with a certificate it cannot show was
valid, and the reference platform's 5-minute backdating of notBefore is kept on purpose (real
certificates are months old; backdating further would only hide this path from the campaign). What the
fault proves is that the gateway resumes by itself once its clock is right, loses nothing and duplicates
nothing.

Out of order: the gateway promises per-lane FIFO on MQTT (gateway/uplink/outbox.py: each lane is sent
in outbox-id order and re-sent from its oldest un-acknowledged message after a reconnect or restart,
so a subscriber may see duplicates but never a newer message of a lane before an older one that it
sees for the first time later). The subscriber can check that because every publish over MQTT 5
carries the message's outbox id as the user property ``egw-seq`` (increasing within a lane, not
contiguous; the payloads' UUIDv7 ids and timestamps cannot be used: they follow the wall clock, which
the clock fault moves backwards). The harness subscribes (MQTT 5) to the ``results`` and ``evidence``
lanes; for each lane it keeps the highest ``egw-seq`` seen, and a message arriving for the first time
(by ``egw-seq``) with a lower ``egw-seq`` than that is counted out of order. Redeliveries of a message
already seen are duplicates (counted by message id), not disorder. Messages the subscriber never saw
(it reconnects after a broker restart with a clean session) are not counted here: missing results
are counted from the platform's receipts. A first arrival without ``egw-seq`` (an MQTT 3.1.1 link)
is counted as unsequenced, so a zero out-of-order count is never vacuous.

The last line is exactly ``missing=M corrupted=C deleted_before_receipt=X duplicates=N custody=ok|FAIL``;
out-of-order counts go on the lines before it. A trial passes (exit status 0 only when all pass) when
missing, corrupted, deleted-before-receipt and out-of-order are 0 and custody verifies; duplicates
(QoS 1 redeliveries, by message id; one source held as two gateway items, or more platform receipts
for a digest than gateway items with it) are counted, not failed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["ALL_FAULTS", "TrialOptions", "TrialReport", "run_trial", "run_campaign", "summary_line", "out_of_order_line",
           "faketime_env", "main"]

ALL_FAULTS = ("kill", "platform", "broker", "unplug", "disk", "clock", "net")
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


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EGW_KEY_PASSPHRASE", None)
    env.update(extra)
    return env


def _egw(*args: str) -> list[str]:
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
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env or _env(), text=True, stdout=subprocess.PIPE, stderr=self.log,
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


# ---- what the devices created, what the platform holds -------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def platform_receipts(platform_data: Path) -> list[dict[str, Any]]:
    from simulators.platform.cli import list_received

    for _ in range(20):
        try:
            return list_received(platform_data)
        except sqlite3.OperationalError:  # the platform is mid-write or mid-restart
            time.sleep(0.05)
    return list_received(platform_data)


class VolumeWatch:
    """Polls the recorders' volumes every 100 ms; a recording that vanishes from a still-mounted volume
    must already have a platform receipt for its digest."""

    def __init__(self, volumes: Path, expected: dict[str, str], platform_data: Path, period: float = 0.1) -> None:
        self.volumes = volumes
        self.expected = expected  # "serial/relpath" -> sha256
        self.platform_data = platform_data
        self.period = period
        self.seen: set[str] = set()
        self.deleted: dict[str, bool] = {}  # key -> had a receipt when noticed
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="volume-watch")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a watcher error must show up in the report, not kill it
                self.violations.append(f"watcher error {exc!r}")

    def poll(self) -> None:
        if not self.volumes.is_dir():
            return
        for vol in self.volumes.iterdir():
            if vol.name.startswith(".") or not vol.is_dir():
                continue
            try:
                present = {f"{vol.name}/{p.relative_to(vol).as_posix()}" for p in vol.rglob("*") if p.is_file()}
            except OSError:
                continue  # vanished mid-listing: an unplug
            if not vol.is_dir():
                continue  # the volume went away (unplug/eject) while we listed it: not a deletion
            mine = {k for k in self.expected if k.startswith(vol.name + "/")}
            self.seen |= present & mine
            gone = {k for k in mine if k not in present and k not in self.deleted and k in self.seen}
            # Files absent at a (re)mount were deleted during an earlier mount, synced at the yank.
            if gone:
                receipted = {r["sha256"] for r in platform_receipts(self.platform_data)}
                for key in sorted(gone):
                    ok = self.expected[key] in receipted
                    self.deleted[key] = ok
                    if not ok:
                        self.violations.append(f"{key} (sha256 {self.expected[key][:12]}…) deleted from the recorder "
                                               f"with no platform receipt for its digest")


def recorder_originals(media_root: Path) -> dict[str, str]:
    """serial/relpath -> sha256 of every recording on the recorders' own storage (their staging dirs),
    hashed before any docking. The simulators create them in TMPDIR as egw-bodycam-SERIAL-*."""
    out: dict[str, str] = {}
    for media in sorted(media_root.glob("egw-bodycam-*")):
        serial = media.name.split("-")[2]
        for p in sorted(media.rglob("*")):
            if p.is_file():
                out[f"{serial}/{p.relative_to(media).as_posix()}"] = sha256_file(p)
    return out


def gateway_rows(data_dir: Path) -> list[dict[str, Any]]:
    db = data_dir / "state.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT id, sha256, kind, source_path, state, device_id FROM evidence")]
    finally:
        con.close()


def outbox_backlog(data_dir: Path) -> int:
    """MQTT messages the gateway still owes the broker (parked ones excluded: they wait for an operator)."""
    db = data_dir / "state.db"
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(con.execute("SELECT COUNT(*) FROM outbox WHERE parked_reason IS NULL").fetchone()[0])
    except sqlite3.OperationalError:  # no outbox table yet
        return 0
    finally:
        con.close()


# ---- one trial --------------------------------------------------------------------------------


class Trial:
    def __init__(self, index: int, root: Path, opts: TrialOptions, rng: random.Random, say: Any) -> None:
        self.index = index
        self.dir = root / f"trial-{index:03d}"
        self.logs = self.dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.opts = opts
        self.rng = rng
        self.say = say
        self.report = TrialReport(index, list(opts.faults))
        self.children: list[Child] = []
        self.platform: Child | None = None
        self.gateway: Child | None = None
        self.broker: Broker | None = None
        self.proxy: FaultyProxy | None = None
        self.mounted_disk: Path | None = None
        self.mqtt_seen: list[tuple[str, bytes, int | None]] = []  # (topic, payload, egw-seq) in arrival order
        self.clock_file: Path | None = None  # libfaketime's FAKETIME_TIMESTAMP_FILE when the clock fault is on
        self.started = time.monotonic()
        self.started_wall = time.time()

    def event(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {text}"
        self.report.events.append(line)
        self.say(f"  trial {self.index}: {line}")

    # -- set-up

    def start_platform(self) -> None:
        self.platform = Child("platform", _egw("simulate", "platform", "--data", str(self.platform_data),
                                               "--listen", f"127.0.0.1:{self.platform_port}"), self.logs)
        address = self.platform.line(0)
        self.platform.line(1)
        assert address.endswith(f":{self.platform_port}"), address

    def start_gateway(self) -> None:
        # Every start (the first and each restart after a kill) runs under the trial's clock.
        self.gateway = Child("gateway", _egw("run", "-c", str(self.config)), self.logs, env=_env(**self._clock_env()))
        self.gateway.line(0, timeout=60)

    def _clock_env(self) -> dict[str, str]:
        """libfaketime for the gateway: its wall clock follows ``clock_file``, re-read on every call."""
        if self.clock_file is None:
            return {}
        return faketime_env(timestamp_file=self.clock_file)

    def _set_clock(self, offset_s: int) -> None:
        """Move the gateway's wall clock to real time + ``offset_s``: one atomic rename, so a reader sees the
        old offset or the new one, never an empty file."""
        assert self.clock_file is not None
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+d}\n")
        os.replace(tmp, self.clock_file)

    def setup(self) -> None:
        from gateway.evidence.identity import init_identity
        from gateway.uplink.enroll import enroll
        from simulators.platform.cli import issue_token

        self.platform_data = self.dir / "platform"
        self.platform_port = free_port()
        self.start_platform()
        if "disk" in self.opts.faults:
            disk = self.dir / "disk"
            disk.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.opts.disk_mb}m", "tmpfs", str(disk)], check=True)
            self.mounted_disk = disk
            self.data = disk / "gw"
        else:
            self.data = self.dir / "gw"
        if "clock" in self.opts.faults:
            self.clock_file = self.dir / "faketime.rc"
            self._set_clock(0)
        init_identity(self.data, gateway_id=f"gw-faults-{self.index}")
        address = f"127.0.0.1:{self.platform_port}"
        enroll(self.data, address, issue_token(self.platform_data)["token"])
        if "net" in self.opts.faults:
            self.proxy = FaultyProxy(self.platform_port, self.rng)
            address = f"127.0.0.1:{self.proxy.port}"
        self.broker = Broker(self.dir)
        self.broker.start()
        self._subscribe()
        self.volumes = self.dir / "volumes"
        self.simtmp = self.dir / "recorder-storage"
        self.simtmp.mkdir()
        serial_base = 2000001 + self.index * 10 + self.rng.randrange(0, 5)
        recorders = Child("bodycams", _egw("simulate", "bodycam", "--listen", "127.0.0.1:0", "--volumes", str(self.volumes),
                                           "--count", str(self.opts.recorders), "--recordings", str(self.opts.recordings),
                                           "--small", "--minutes", "0.05", "--fill-mb", str(self.opts.fill_mb),
                                           "--serial-base", str(serial_base)),
                          self.logs, stdin=True, env=_env(TMPDIR=str(self.simtmp)))
        self.children.append(recorders)
        self.recorders = recorders
        usbip = recorders.line(0, timeout=60)
        for i in range(self.opts.recorders):
            recorders.line(1 + i)
        self.expected = recorder_originals(self.simtmp)  # before anything docked
        analyzer = Child("analyzer", _egw("simulate", "rapidtest", "--tests", str(self.opts.tests), "--tcp", "0",
                                          "--interval", "0.5", "--reply-timeout", "2", "--retry-delay", "0.2"), self.logs)
        self.children.append(analyzer)
        self.analyzer = analyzer
        analyzer_url = analyzer.line(0)
        self.config = self.dir / "gateway.toml"
        self.config.write_text(f"""
data_dir = "{self.data}"
log_format = "json"
[platform]
address = "{address}"
parallel_uploads = 2
[mqtt]
url = "{self.broker.url}"
[ingest]
reserve_mb = 4
[screen]
listen = ""
[metrics]
listen = ""
[defaults]
inspector_id = "inspector-7"
[[devices]]
kind = "bodycam"
name = "dock"
usbip = "{usbip.removeprefix('usbip://')}"
volumes = "{self.volumes}/{{serial}}"
[[devices]]
kind = "rapidtest"
name = "analyzer"
port = "{analyzer_url}"
""")
        self.watch = VolumeWatch(self.volumes, self.expected, self.platform_data)
        self.watch.start()
        self.start_gateway()
        self.event(f"started: {len(self.expected)} recordings on {self.opts.recorders} recorders, "
                   f"{self.opts.tests} rapid tests; faults {','.join(self.opts.faults) or 'none'}")

    def _subscribe(self) -> None:
        import paho.mqtt.client as mqtt

        assert self.broker is not None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"faults-{os.getpid()}-{self.index}",
                             protocol=mqtt.MQTTv5)  # MQTT 5: the user property egw-seq is what the order check reads

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            if m.retain:
                return
            seq = None
            for key, value in getattr(getattr(m, "properties", None), "UserProperty", None) or []:
                if key == "egw-seq":
                    seq = int(value)
            self.mqtt_seen.append((m.topic, bytes(m.payload), seq))

        client.on_message = on_message
        client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(
            [(f"egw/v1/+/{prefix}#", 1) for prefix in MQTT_LANES.values()])
        client.connect_async("127.0.0.1", self.broker.port)
        client.reconnect_delay_set(0.2, 1)
        client.loop_start()
        self.mqtt = client

    # -- faults

    def _fault_kill(self) -> None:
        assert self.gateway is not None
        self.gateway.kill()
        self.gateway.stop()
        self.event("SIGKILL egw run")
        time.sleep(self.rng.uniform(0.2, 1.5))
        self.start_gateway()
        self.event("egw run restarted")

    def _fault_platform(self) -> None:
        assert self.platform is not None
        self.platform.kill()
        self.platform.stop()
        self.event("SIGKILL platform")
        time.sleep(self.rng.uniform(0.5, 3.0))
        for attempt in range(20):
            try:
                self.start_platform()
                break
            except (RuntimeError, AssertionError):
                time.sleep(0.5)  # the port may still be held by a connection in TIME_WAIT
        self.event("platform restarted on the same port")

    def _fault_broker(self) -> None:
        assert self.broker is not None
        self.broker.kill()
        self.event(f"mosquitto stopped for {self.opts.broker_down_s:g} s")
        time.sleep(self.opts.broker_down_s)
        self.broker.start()
        self.event("mosquitto restarted")

    def _wait_mid_copy(self, timeout: float = 30.0) -> tuple[bool, int]:
        """Wait for a partial blob past a random size (a moment in the middle of the work, not a random time);
        returns (found, threshold in bytes)."""
        partial = self.data / "blobs" / "tmp"
        threshold = int(self.rng.uniform(0.5, max(1.0, self.opts.fill_mb * 0.6)) * (1 << 20))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in list(partial.glob("*.part")):
                try:
                    if p.stat().st_size > threshold:
                        return True, threshold
                except OSError:
                    pass
            time.sleep(0.002)
        return False, threshold

    def _fault_unplug(self) -> None:
        mid_copy, threshold = self._wait_mid_copy()
        busid = f"1-{self.rng.randrange(1, self.opts.recorders + 1)}"
        self.recorders.send(f"unplug {busid}")
        self.event(f"unplug {busid} ({'mid-copy, partial blob > %d MB' % (threshold >> 20) if mid_copy else 'no copy in flight'})")
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.recorders.send(f"replug {busid}")
        self.event(f"replug {busid}")

    def _fault_disk(self) -> None:
        assert self.mounted_disk is not None
        from bench._common import fill_disk

        filler = self.mounted_disk / "filler"
        written = fill_disk(filler)
        self.event(f"disk full ({written >> 20} MB filler on the {self.opts.disk_mb} MB data disk)")
        time.sleep(self.rng.uniform(2.0, 5.0))
        filler.unlink()
        self.event("disk given room (filler deleted)")

    def _fault_clock(self) -> None:
        assert self.clock_file is not None
        # Like unplug, at a moment in the middle of the work (a partial blob past a random size): a jump that
        # lands on an idle gateway proves little.
        mid_copy, threshold = self._wait_mid_copy(timeout=20.0)
        offset = self.rng.choice(self.opts.clock_jumps_s)
        hold = self.rng.uniform(5.0, 15.0)
        self._set_clock(offset)
        when = f"mid-copy, partial blob > {threshold >> 20} MB" if mid_copy else "no copy in flight"
        self.event(f"gateway clock jumped {offset / 3600:+.0f} h for {hold:.1f} s ({when})")
        time.sleep(hold)
        self._set_clock(0)
        self.event("gateway clock back to real time")

    def _fault_net(self) -> None:
        assert self.proxy is not None
        self.proxy.bad.set()
        self.proxy.drop_all()
        self.event("uplink degraded: 50-300 ms per chunk, random drops")
        time.sleep(self.rng.uniform(3.0, 8.0))
        self.proxy.bad.clear()
        self.event(f"uplink healed ({self.proxy.dropped} connections dropped)")

    def inject(self) -> None:
        # unplug and clock fire on their own trigger (a partial blob of random size), the others at a random moment
        plan = sorted((0.0 if f in ("unplug", "clock") else self.rng.uniform(0.5, self.opts.fault_window_s), f)
                      for f in self.opts.faults)
        threads = []
        t0 = time.monotonic()
        for at, fault in plan:
            def fire(at: float = at, fault: str = fault) -> None:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                try:
                    getattr(self, f"_fault_{fault}")()
                except Exception as exc:  # noqa: BLE001 - an injection that failed is reported, not fatal
                    self.event(f"fault {fault} could not be injected: {exc!r}")
            # kill and platform restarts must not interleave with each other's process handles: one thread each.
            t = threading.Thread(target=fire, daemon=True, name=f"fault-{fault}")
            t.start()
            threads.append(t)
        for t in threads:
            t.join(self.opts.broker_down_s + 60)

    # -- settle and count

    def pending(self) -> str:
        """Why the trial has not settled yet ("" once it has)."""
        receipted = {r["sha256"] for r in platform_receipts(self.platform_data)}
        left = set(self.expected.values()) - receipted
        if left:
            return f"{len(left)} recording digest(s) without a platform receipt"
        if self.analyzer.proc.poll() is None:
            return "the analyzer is still sending results"
        rows = gateway_rows(self.data)
        busy = sum(1 for r in rows if r["state"] in ("ingested", "queued", "uploading"))
        if busy:
            return f"{busy} gateway item(s) not receipted"
        queued = outbox_backlog(self.data)
        if queued:  # counted only once the outbox is drained: what the subscriber saw is then all it can see
            return f"{queued} MQTT message(s) still in the gateway's outbox"
        on_volumes = sorted({p.relative_to(self.volumes).parts[0] for p in self.volumes.rglob("*") if p.is_file()}) \
            if self.volumes.is_dir() else []
        if on_volumes:
            return "recordings still on the mounted volume of " + ", ".join(on_volumes)
        return ""

    def _mounted_serials(self) -> list[str]:
        if not self.volumes.is_dir():
            return []
        # a mounted volume that still holds recordings (an emptied one is just a recorder waiting to be unplugged)
        return sorted(v.name for v in self.volumes.iterdir() if v.is_dir() and not v.name.startswith(".")
                      and any(p.is_file() for p in v.rglob("*")))

    def settle(self) -> None:
        deadline = time.monotonic() + self.opts.settle_timeout_s
        why, since = "", time.monotonic()
        busids = {line.split()[1].split("=")[1]: line.split()[0] for line in self.recorders.lines if " serial=" in line}
        while time.monotonic() < deadline:
            try:
                now_why = self.pending()
            except sqlite3.Error as exc:
                now_why = f"database busy ({exc})"
            if not now_why:
                self.report.settled = True
                self.event("settled: everything receipted, recorders released, MQTT outbox drained")
                return
            if now_why != why:
                why, since = now_why, time.monotonic()
            elif "kill" in self.opts.faults and time.monotonic() - since > 15 and (mounted := self._mounted_serials()):
                # No progress for 15 s while a recorder sits in mass-storage mode: a recorder that was mounted when
                # egw run was killed is never adopted by the restarted gateway (it is off the USB/IP bus), so what it
                # still holds is neither collected nor released. Counted (stranded_mounts) and healed the way an
                # officer would: re-dock it. Only where egw run was killed: otherwise a mounted recorder is just
                # waiting for its receipts (e.g. refused while the gateway's clock was an hour early).
                for serial in mounted:
                    self.report.stranded_mounts.append(serial)
                    busid = busids.get(serial)
                    if busid:
                        self.recorders.send(f"unplug {busid}")
                        time.sleep(0.5)
                        self.recorders.send(f"replug {busid}")
                        self.event(f"recorder {serial} stranded in mass-storage mode ({why}): re-docked {busid}")
                why = ""
            time.sleep(0.5)
        self.event(f"did not settle within {self.opts.settle_timeout_s:g} s: {why}")

    def count(self) -> None:
        r = self.report
        receipts = platform_receipts(self.platform_data)
        by_sha: dict[str, int] = {}
        for rec in receipts:
            by_sha[rec["sha256"]] = by_sha.get(rec["sha256"], 0) + 1
        # corrupted: a blob whose bytes do not hash to its digest, or a recording whose name reached the
        # platform/gateway with bytes that differ from the recorder's original
        for rec in receipts:
            blob = Path(rec["blob"])
            if not blob.is_file() or sha256_file(blob) != rec["sha256"]:
                r.corrupted.append(f"platform blob {rec['sha256'][:12]}… does not match its digest")
        rows = gateway_rows(self.data)
        r.gateway_items = len(rows)
        r.gateway_unreceipted = sum(1 for x in rows if x["state"] not in ("receipted", "released"))
        originals = set(self.expected.values())
        for row in rows:
            if row["kind"] in ("video", "audio", "photo", "other", "file") or (row["device_id"] or "").isdigit():
                name = row["source_path"]
                key = next((k for k in self.expected if name.endswith(k.split("/", 1)[1])), None)
                if key is not None and row["sha256"] != self.expected[key]:
                    r.corrupted.append(f"gateway holds {name} with sha256 {row['sha256'][:12]}… ≠ recorder's "
                                       f"{self.expected[key][:12]}…")
        # recordings
        for key, sha in sorted(self.expected.items()):
            if sha in by_sha:
                r.delivered += 1
            else:
                r.missing.append(f"recording {key} (sha256 {sha[:12]}…)")
        # Two recorders may hold byte-identical files (silent audio): distinct items, same digest. A duplicate is
        # the SAME source (device, path) held as two items, whatever their digests (a rapid-test result re-sent by
        # the instrument differs from the first in its received_at), or more platform receipts than items with
        # that digest.
        same_source: dict[tuple[str, str], list[str]] = {}
        for row in rows:
            same_source.setdefault((row["device_id"] or "", row["source_path"]), []).append(row["sha256"])
        for (device, path), shas in same_source.items():
            if len(shas) > 1:
                r.duplicated.append(f"gateway holds {device}:{path} as {len(shas)} evidence items "
                                    f"({', '.join(sha[:12] + '…' for sha in shas)})")
        gw_items_per_sha: dict[str, int] = {}
        for shas in same_source.values():
            for sha in set(shas):
                gw_items_per_sha[sha] = gw_items_per_sha.get(sha, 0) + 1
        for sha, n in by_sha.items():
            if n > gw_items_per_sha.get(sha, 1):
                r.duplicated.append(f"platform holds {n} receipts for {sha[:12]}… (gateway items with it: "
                                    f"{gw_items_per_sha.get(sha, 0)})")
        # rapid-test results: what the analyzer says the host acknowledged, against result documents on the platform
        log = Path(self.analyzer.log.name).read_text(errors="replace")
        acked = sorted({line.split("sent ", 1)[1].split(":", 1)[0] for line in log.splitlines() if "rapidtest: sent " in line})
        on_platform: dict[str, set[str]] = {}
        for rec in receipts:
            try:
                doc = json.loads(Path(rec["blob"]).read_bytes()[:1 << 20])
            except (OSError, ValueError):
                continue
            sample = doc.get("sample", {}).get("id") if isinstance(doc, dict) and isinstance(doc.get("sample"), dict) else None
            if sample:
                on_platform.setdefault(sample, set()).add(rec["sha256"])
        r.expected = len(self.expected) + len(acked)
        for sample in acked:
            if sample in on_platform:
                r.delivered += 1
            else:
                r.missing.append(f"rapid-test result {sample} (acknowledged to the analyzer)")
        self.count_mqtt()
        if self.clock_file is not None:
            self.count_clock_stamps()
        r.deleted_before_receipt = list(self.watch.violations)
        custody = subprocess.run(_egw("custody", "verify", "--data-dir", str(self.data), "--json"), cwd=REPO, env=_env(),
                                 capture_output=True, text=True, timeout=120)
        try:
            r.custody_ok = custody.returncode == 0 and bool(json.loads(custody.stdout).get("ok"))
        except ValueError:
            r.custody_ok = False
        r.custody_detail = (custody.stdout.strip() or custody.stderr.strip())[-400:]

    def count_mqtt(self) -> None:
        """Per lane, in arrival order: a redelivery (same message id) is a duplicate; a first arrival with a lower
        egw-seq than one already seen on its lane is out of order (see the module docstring)."""
        r = self.report
        seen_ids: dict[str, int] = {}
        highest: dict[str, int] = {}
        first_seqs: set[tuple[str, int]] = set()
        for topic, payload, seq in list(self.mqtt_seen):
            lane = next((name for name, prefix in MQTT_LANES.items() if topic.split("/", 3)[-1].startswith(prefix)), None)
            if lane is None:
                continue
            try:
                msg = json.loads(payload)
            except ValueError:
                msg = {}
            mid = str(msg.get("messageId") or msg.get("message_id") or hashlib.sha256(payload).hexdigest())
            seen_ids[mid] = seen_ids.get(mid, 0) + 1
            if seen_ids[mid] > 1:
                continue  # a QoS 1 redelivery: a duplicate, not disorder
            if lane == "results":
                r.mqtt_results += 1
            else:
                r.mqtt_evidence += 1
            if seq is None:
                r.mqtt_unsequenced += 1
                continue
            if (lane, seq) in first_seqs:
                continue  # the same outbox row under another message id cannot happen; never count it twice
            first_seqs.add((lane, seq))
            r.mqtt_sequenced += 1
            if seq < highest.get(lane, -1):
                r.mqtt_out_of_order += 1
                if r.mqtt_out_of_order <= 5:
                    self.event(f"out of order on lane {lane}: egw-seq {seq} ({topic}) after {highest[lane]}")
            highest[lane] = max(highest.get(lane, -1), seq)
        r.mqtt_duplicates = sum(n - 1 for n in seen_ids.values())

    def count_clock_stamps(self) -> None:
        """How many gateway records carry the jumped wall clock: proof the jump landed, and that the evidence
        shows it rather than hiding it (custody entries' ``at``, manifests' ``ingested_at``, log lines' ``ts``)."""
        from datetime import datetime

        end = time.time()

        def jumped(ts: float) -> bool:  # outside the trial's real time span by more than half a jump
            return ts < self.started_wall - CLOCK_JUMP_S / 2 or ts > end + CLOCK_JUMP_S / 2

        stamps = {"log_lines": 0, "custody_entries": 0, "manifests": 0}
        for line in Path(self.logs / "gateway.log").read_text(errors="replace").splitlines():
            try:
                ts = float(json.loads(line).get("ts"))
            except (ValueError, TypeError, AttributeError):
                continue
            stamps["log_lines"] += jumped(ts)
        con = sqlite3.connect(f"file:{self.data / 'state.db'}?mode=ro", uri=True, timeout=10)
        try:
            for (at,) in con.execute("SELECT at FROM custody"):
                stamps["custody_entries"] += jumped(float(at))
            for (raw,) in con.execute("SELECT manifest FROM evidence"):
                try:
                    manifest = json.loads(base64.b64decode(json.loads(raw)["payload"]))
                    ingested = datetime.fromisoformat(manifest["ingested_at"].replace("Z", "+00:00")).timestamp()
                except (ValueError, KeyError, TypeError):
                    continue
                stamps["manifests"] += jumped(ingested)
        finally:
            con.close()
        self.report.clock_stamped = stamps

    def teardown(self) -> None:
        try:
            self.watch.stop()
        except AttributeError:
            pass
        if self.gateway is not None:
            self.gateway.stop()
        for child in reversed(self.children):
            child.stop()
        if self.platform is not None:
            self.platform.stop()
        if getattr(self, "mqtt", None) is not None:
            self.mqtt.loop_stop()
            self.mqtt.disconnect()
        if self.broker is not None:
            self.broker.kill()
        if self.proxy is not None:
            self.proxy.close()
        if self.mounted_disk is not None:
            if not self.report.passed:  # keep the gateway's database for the post-mortem
                shutil.copytree(self.data, self.dir / "gw-copy", ignore=shutil.ignore_patterns("blobs"), dirs_exist_ok=True)
            subprocess.run(["umount", "-l", str(self.mounted_disk)], check=False)

    def run(self) -> TrialReport:
        try:
            self.setup()
            self.inject()
            self.settle()
            if self.gateway is not None:
                self.gateway.stop()  # a clean stop, so custody verification reads a quiet log
            self.watch.stop()
            self.count()
        except Exception as exc:  # noqa: BLE001 - a harness failure fails the trial visibly
            self.event(f"harness error: {exc!r}")
            self.report.missing.append(f"trial aborted: {exc!r}")
        finally:
            self.teardown()
            self.report.seconds = round(time.monotonic() - self.started, 1)
        return self.report


def run_trial(index: int, root: Path, opts: TrialOptions, rng: random.Random, say: Any = print) -> TrialReport:
    return Trial(index, root, opts, rng, say).run()


def summary_line(reports: list[TrialReport]) -> str:
    missing = sum(len(r.missing) for r in reports)
    corrupted = sum(len(r.corrupted) for r in reports)
    deleted = sum(len(r.deleted_before_receipt) for r in reports)
    duplicates = sum(len(r.duplicated) + r.mqtt_duplicates for r in reports)
    custody = "ok" if reports and all(r.custody_ok for r in reports) else "FAIL"
    return f"missing={missing} corrupted={corrupted} deleted_before_receipt={deleted} duplicates={duplicates} custody={custody}"


def out_of_order_line(reports: list[TrialReport]) -> str:
    """The ordering check over all trials (the line before the totals' last line)."""
    return (f"out_of_order={sum(r.mqtt_out_of_order for r in reports)} "
            f"sequenced={sum(r.mqtt_sequenced for r in reports)} unsequenced={sum(r.mqtt_unsequenced for r in reports)} "
            f"(MQTT first arrivals older than one already seen on their lane, by egw-seq)")


def print_report(r: TrialReport, out: Any = print) -> None:
    out(f"trial {r.trial} [{','.join(r.faults)}] {r.seconds:.1f} s {'PASS' if r.passed else 'FAIL'}: "
        f"expected={r.expected} delivered={r.delivered} missing={len(r.missing)} duplicated={len(r.duplicated)} "
        f"corrupted={len(r.corrupted)} deleted_before_receipt={len(r.deleted_before_receipt)} "
        f"gateway_items={r.gateway_items} gateway_unreceipted={r.gateway_unreceipted} "
        f"mqtt_results={r.mqtt_results} mqtt_evidence={r.mqtt_evidence} mqtt_duplicates={r.mqtt_duplicates} "
        f"out_of_order={r.mqtt_out_of_order} (of {r.mqtt_sequenced} sequenced, {r.mqtt_unsequenced} unsequenced) "
        f"stranded_mounts={len(r.stranded_mounts)} "
        f"settled={'yes' if r.settled else 'no'} custody={'ok' if r.custody_ok else 'FAIL'}")
    for label, items in (("missing", r.missing), ("corrupted", r.corrupted), ("deleted before receipt", r.deleted_before_receipt),
                         ("duplicated", r.duplicated)):
        for item in items:
            out(f"    {label}: {item}")
    if not r.custody_ok:
        out(f"    custody: {r.custody_detail}")
    if r.clock_stamped:
        out("    clock: gateway records stamped with the jumped time: "
            + " ".join(f"{k}={v}" for k, v in r.clock_stamped.items()))


def run_campaign(trials: int, opts: TrialOptions, seed: int, root: Path, say: Any = print) -> list[TrialReport]:
    rng = random.Random(seed)
    reports = []
    for i in range(1, trials + 1):
        report = run_trial(i, root, opts, random.Random(rng.getrandbits(64)), say)
        print_report(report, say)
        reports.append(report)
    return reports


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/faults.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--faults", default=",".join(ALL_FAULTS),
                   help=f"comma-separated, from {','.join(ALL_FAULTS)} (clock: ±1 h jumps of the gateway's wall clock "
                        "under libfaketime, Debian package faketime)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--broker-down", type=float, default=30.0, help="seconds the broker stays down (issue 9: 30)")
    p.add_argument("--fill-mb", type=float, default=48.0, help="bulk file per recorder, so faults land mid-copy")
    p.add_argument("--settle-timeout", type=float, default=150.0)
    p.add_argument("--workdir", type=Path, default=None, help="keep logs and data here (default: a temp dir, removed on pass)")
    args = p.parse_args(argv)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in ALL_FAULTS]
    if unknown:
        p.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(ALL_FAULTS)}")
    if "clock" in faults:
        try:
            faketime_env(offset="+0")
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            p.error(f"the clock fault runs the gateway under libfaketime: {exc} (or leave 'clock' out of --faults)")
    if "disk" in faults and os.geteuid() != 0:
        p.error("the disk fault mounts a small tmpfs and needs root; leave 'disk' out of --faults")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="egw-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    opts = TrialOptions(faults=faults, broker_down_s=args.broker_down, fill_mb=args.fill_mb, settle_timeout_s=args.settle_timeout)
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through each trial's teardown: children stopped, tmpfs unmounted

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    print(f"fault campaign: {args.trials} trials, faults {','.join(faults)}, seed {seed}, workdir {root}", flush=True)
    reports = run_campaign(args.trials, opts, seed, root, lambda s: print(s, flush=True))
    passed = sum(r.passed for r in reports)
    print(f"totals: expected={sum(r.expected for r in reports)} delivered={sum(r.delivered for r in reports)} "
          f"gateway_items={sum(r.gateway_items for r in reports)} mqtt_results={sum(r.mqtt_results for r in reports)} "
          f"mqtt_evidence={sum(r.mqtt_evidence for r in reports)} mqtt_duplicates={sum(r.mqtt_duplicates for r in reports)} "
          f"stranded_mounts={sum(len(r.stranded_mounts) for r in reports)} (recorders left mounted by a killed egw run "
          f"and never re-adopted; re-docked by the harness) unsettled={sum(not r.settled for r in reports)}")
    print(out_of_order_line(reports))
    print(f"{passed}/{len(reports)} trials passed in {time.monotonic() - started:.0f} s (seed {seed}); logs in {root}")
    print(summary_line(reports), flush=True)
    ok = passed == len(reports)
    if ok and args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
