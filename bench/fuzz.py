"""Fuzz every byte-level codec in ``firmware_bridge``: ``python bench/fuzz.py CODEC --seconds N``.

The invariant (issue 9): whatever bytes a peer sends, a decoder either
decodes them or raises the codec's :class:`~firmware_bridge.errors.ProtocolError`
— never another exception, never a hang, never memory that grows without
bound. Evidence software that dies on a malformed frame loses the evidence
behind it, so every crash found here is fixed in the codec with a regression
test (``tests/test_fuzz_regressions.py``).

One harness per codec (CODEC in r30x, astm, stu, bot, f9, usbip, all):

    r30x   R30xCodec.receive_data/next_event (both roles, with/without an
           address filter, lenient checksum), SystemParameters, unpack_image
    astm   decode_frame, decode_record/decode_message/check_structure,
           parse_timestamp, AstmReceiver and AstmSender fed hostile bytes
           with timeouts, interrupts and held ACKs interleaved
    stu    STU input/feature reports, PenReportDecoder, unflatten_image,
           ISO/IEC 19794-7 decode_record
    bot    CBW/CSW/sense/INQUIRY decoders, BotDeviceParser
    f9     vendor CDB, every IN response, ZFY_INFO (both layouts), times, passwords
    usbip  UsbIpConnection as server and as client (devlist, import, URBs)

The first byte(s) of an input choose the entry point and how the bytes are
chunked (whole, byte by byte, or random chunk sizes), so the same input
always takes the same path. Per input: length capped (``--max-len``), a
wall-clock alarm catches hangs (``--hang-seconds``), and each harness checks
that the codec's internal buffers stay within the protocol's own bounds and
that an incremental loop always makes progress. Where a codec has an
encoder, whatever was decoded must encode and decode back to the same value
(two known, deliberate asymmetries are skipped: an empty non-final R30x data
packet is accepted but never sent; a ZFY_INFO without a police number — an
unbound recorder — decodes but ``encode_zfy_info`` refuses to write one).
Under atheris the process also runs with ``-rss_limit_mb=2048``.

Engine: atheris (coverage-guided libFuzzer; `pip install -e .[fuzz]`) when it is importable; otherwise,
or with ``--engine random``, a coverage-less random + mutation fuzzer of our
own that keeps inputs producing a new outcome (event/exception kind). The
test suite (``tests/test_fuzz_smoke.py``) runs the same harness checks
through the random engine with a fixed seed.

Output: executions, executions/s, distinct crashes (exception type + top
frame) with a reproducer file each, and as the last line
``fuzz CODEC: execs=E crashes=C``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._fuzz_peripherals import PERIPHERAL_HARNESSES  # noqa: E402
from bench._fuzz_support import Harness, InvariantViolation  # noqa: E402
from bench._fuzz_usb import USB_HARNESSES  # noqa: E402

__all__ = [
    "CODECS",
    "Harness",
    "HARNESSES",
    "Crash",
    "InvariantViolation",
    "HangDetected",
    "run_one",
    "random_fuzz",
    "FuzzStats",
    "main",
]

CODECS = ("r30x", "astm", "stu", "bot", "f9", "usbip")


class HangDetected(BaseException):
    """Raised from the alarm handler; a BaseException so a codec's ``except Exception`` cannot eat it."""


# ---------------------------------------------------------------- engine

HARNESSES: dict[str, Harness] = {**PERIPHERAL_HARNESSES, **USB_HARNESSES}



@dataclass(frozen=True)
class Crash:
    """One distinct failure: the key is exception type + the innermost codec frame."""

    kind: str
    where: str
    message: str
    data: bytes

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.where)


def _where(tb: object) -> str:
    frames = traceback.extract_tb(tb)  # type: ignore[arg-type]
    codec = [f for f in frames if "firmware_bridge" in f.filename]
    if not (codec or frames):
        return "?"
    frame = (codec or frames)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"


def _on_alarm(signum: int, frame: object) -> None:
    raise HangDetected("input took longer than the hang limit")


def run_one(harness: Harness, data: bytes, hang_seconds: float = 2.0) -> Crash | None:
    """Run one input through a harness; None when the invariant held, else the Crash."""
    use_alarm = hang_seconds > 0 and hasattr(signal, "setitimer")
    if use_alarm:
        previous = signal.getsignal(signal.SIGALRM)
        if previous is not _on_alarm:
            signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, hang_seconds)
    try:
        harness.check(data)
        return None
    except HangDetected as exc:
        return Crash("Hang", _where(exc.__traceback__), f"no result within {hang_seconds} s", data)
    except InvariantViolation as exc:
        return Crash("InvariantViolation", str(exc).split(" ")[0] + " " + _where(exc.__traceback__), str(exc), data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - anything else is exactly what we hunt
        return Crash(type(exc).__name__, _where(exc.__traceback__), str(exc)[:200], data)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if previous is not _on_alarm:
                signal.signal(signal.SIGALRM, previous)


@dataclass
class FuzzStats:
    codec: str
    engine: str
    execs: int = 0
    seconds: float = 0.0
    crashes: dict[tuple[str, str], Crash] = field(default_factory=dict)
    crash_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    max_exec_seconds: float = 0.0

    def record(self, crash: Crash) -> bool:
        new = crash.key not in self.crashes
        if new or len(crash.data) < len(self.crashes[crash.key].data):
            self.crashes[crash.key] = crash  # keep the smallest reproducer
        self.crash_counts[crash.key] = self.crash_counts.get(crash.key, 0) + 1
        return new

    def report(self, crash_dir: Path | None) -> str:
        rate = self.execs / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"codec:      {self.codec} (engine: {self.engine})",
            f"executions: {self.execs} in {self.seconds:.1f} s = {rate:,.0f} exec/s",
            f"slowest input: {self.max_exec_seconds * 1000:.1f} ms",
            f"distinct crashes: {len(self.crashes)}",
        ]
        for key, crash in sorted(self.crashes.items()):
            path = ""
            if crash_dir is not None:
                crash_dir.mkdir(parents=True, exist_ok=True)
                name = f"{self.codec}-{crash.kind}-{abs(hash(key)) % 10**8:08d}.bin"
                (crash_dir / name).write_bytes(crash.data)
                path = f" -> {crash_dir / name}"
            lines.append(f"  {crash.kind} at {crash.where} (x{self.crash_counts[key]}): {crash.message}{path}")
        lines.append(f"fuzz {self.codec}: execs={self.execs} crashes={len(self.crashes)}")
        return "\n".join(lines)


_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0D, 0x0A, 0x15, 0x17, 0xEF)
_INTERESTING_WORDS = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
                      b"\x00\x00\x01\x00", b"\x00\x00\xff\xff", b"\x01\x11", b"USBC", b"\xef\x01")


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int) -> bytes:
    """One to four stacked mutations: flips, interesting values, inserts, deletes, splices, repeats."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2 and buf:
            buf[rng.randrange(len(buf))] = rng.choice(_INTERESTING)
        elif op == 3:
            word = rng.choice(_INTERESTING_WORDS)
            buf[pos:pos + len(word)] = word
        elif op == 4:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 5 and buf:
            n = rng.randint(1, max(1, len(buf) // 4))
            del buf[pos:pos + n]
        elif op == 6 and corpus:
            other = rng.choice(corpus)
            a = rng.randrange(len(other) + 1)
            buf[pos:] = other[a:a + rng.randint(0, 512)]
        elif op == 7 and buf:
            a = rng.randrange(len(buf))
            piece = bytes(buf[a:a + rng.randint(1, 64)])
            buf[pos:pos] = piece * rng.randint(1, 8)
        elif op == 8 and len(buf) > 2:
            buf[0] = rng.randrange(256)
            buf[1] = rng.randrange(256)
        elif op == 9:
            buf = bytearray(buf[:pos])
    return bytes(buf[:max_len])


def _outcome(harness: Harness, data: bytes) -> tuple[int, int]:
    """A cheap behaviour signature for corpus feedback: (selector, input length bucket)."""
    return (data[0] if data else -1, len(data).bit_length())


def random_fuzz(
    harness: Harness,
    *,
    seconds: float | None = None,
    max_execs: int | None = None,
    seed: int = 0,
    max_len: int = 4096,
    hang_seconds: float = 2.0,
    on_new_crash: Callable[[Crash], None] | None = None,
) -> FuzzStats:
    """Our own coverage-less fuzzer: seeds, then mutations of seeds and of inputs with a new outcome."""
    rng = random.Random(seed)
    stats = FuzzStats(harness.name, "random+mutation")
    corpus = list(harness.seeds())
    seen: set[tuple[int, int]] = set()
    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else None
    queue = list(corpus)
    while True:
        if max_execs is not None and stats.execs >= max_execs:
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
        if queue:
            data = queue.pop()
        elif rng.randrange(16) == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        else:
            data = mutate(rng, rng.choice(corpus), corpus, max_len)
        t0 = time.perf_counter()
        crash = run_one(harness, data, hang_seconds)
        stats.max_exec_seconds = max(stats.max_exec_seconds, time.perf_counter() - t0)
        stats.execs += 1
        if crash is not None:
            if stats.record(crash) and on_new_crash is not None:
                on_new_crash(crash)
            continue
        sig = _outcome(harness, data)
        if sig not in seen and len(corpus) < 4096:
            seen.add(sig)
            corpus.append(data)
    stats.seconds = time.perf_counter() - started
    return stats


def _atheris_fuzz(harness: Harness, seconds: float, max_len: int, hang_seconds: float, crash_dir: Path) -> None:
    """Coverage-guided run under atheris; prints the report and exits the process when time is up."""
    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["firmware_bridge"]):
        for module in harness.modules:
            __import__(module)
    stats = FuzzStats(harness.name, f"atheris {getattr(atheris, '__version__', '')}".strip())
    started = time.perf_counter()
    deadline = started + seconds

    def finish() -> None:
        stats.seconds = time.perf_counter() - started
        sys.stderr.flush()
        print(stats.report(crash_dir), flush=True)
        os._exit(0)

    def one_input(data: bytes) -> None:
        if time.perf_counter() >= deadline:
            finish()
        t0 = time.perf_counter()
        crash = run_one(harness, data, hang_seconds)
        stats.max_exec_seconds = max(stats.max_exec_seconds, time.perf_counter() - t0)
        stats.execs += 1
        if crash is not None and stats.record(crash):
            print(f"NEW CRASH {crash.kind} at {crash.where}: {crash.message}", file=sys.stderr, flush=True)

    corpus_dir = Path(tempfile.mkdtemp(prefix=f"egw-fuzz-{harness.name}-"))
    for i, seed in enumerate(harness.seeds()):
        (corpus_dir / f"seed-{i:03d}").write_bytes(seed)
    atheris.Setup(
        [sys.argv[0], f"-max_len={max_len}", "-len_control=0", "-timeout=0", "-rss_limit_mb=2048",
         f"-max_total_time={int(seconds) + 30}", "-print_final_stats=0", str(corpus_dir)],
        one_input,
    )
    atheris.Fuzz()
    finish()


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("codec", choices=(*CODECS, "all"))
    parser.add_argument("--seconds", type=float, default=60.0, help="run time per codec")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--max-len", type=int, default=8192, help="largest input in bytes")
    parser.add_argument("--hang-seconds", type=float, default=2.0, help="an input slower than this is a hang")
    parser.add_argument("--seed", type=int, default=None, help="random engine seed (default: time)")
    parser.add_argument("--crash-dir", type=Path, default=Path(tempfile.gettempdir()) / "egw-fuzz-crashes")
    args = parser.parse_args(argv)

    if args.codec == "all":
        total_execs = total_crashes = 0
        for codec in CODECS:
            cmd = [sys.executable, str(Path(__file__).resolve()), codec, "--seconds", str(args.seconds),
                   "--engine", args.engine, "--max-len", str(args.max_len),
                   "--hang-seconds", str(args.hang_seconds), "--crash-dir", str(args.crash_dir)]
            if args.seed is not None:
                cmd += ["--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            print(proc.stdout, end="", flush=True)
            last = (proc.stdout.strip().splitlines() or [""])[-1]
            if not last.startswith(f"fuzz {codec}:"):
                print(proc.stderr[-2000:], file=sys.stderr)
                print(f"fuzz {codec}: harness died (exit {proc.returncode})")
                total_crashes += 1
                continue
            fields = dict(part.split("=") for part in last.split(": ", 1)[1].split())
            total_execs += int(fields["execs"])
            total_crashes += int(fields["crashes"])
        print(f"fuzz all: execs={total_execs} crashes={total_crashes}")
        return 1 if total_crashes else 0

    harness = HARNESSES[args.codec]
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _have_atheris() else "random"
    if engine == "atheris":
        _atheris_fuzz(harness, args.seconds, args.max_len, args.hang_seconds, args.crash_dir)
        return 0  # not reached: _atheris_fuzz exits
    seed = args.seed if args.seed is not None else int(time.time())
    stats = random_fuzz(
        harness, seconds=args.seconds, seed=seed, max_len=args.max_len, hang_seconds=args.hang_seconds,
        on_new_crash=lambda c: print(f"NEW CRASH {c.kind} at {c.where}: {c.message}", file=sys.stderr, flush=True),
    )
    print(f"seed: {seed}")
    print(stats.report(args.crash_dir))
    return 1 if stats.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
