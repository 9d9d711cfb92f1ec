"""CI smoke run of the fuzz harnesses (bench/fuzz.py): ~2,000 seeded inputs per codec.

Why: the long coverage-guided runs happen outside CI; this keeps the harness
code itself exercised and catches a codec regression that random bytes find
quickly. Deterministic: fixed seed, no clock-based decisions except the hang
alarm, which only fires on a real hang.
"""

from __future__ import annotations

import time

import pytest

from bench import fuzz
from bench._fuzz_support import check, codec_error_type

EXECS_PER_CODEC = 2000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("codec", fuzz.CODECS)
def test_harness_holds_the_invariant(codec: str) -> None:
    harness = fuzz.HARNESSES[codec]
    seeds = harness.seeds()
    assert seeds, f"{codec} has no seed vectors"
    for seed in seeds:  # the golden vectors themselves must pass the check
        assert fuzz.run_one(harness, seed, hang_seconds=5.0) is None, seed
    stats = fuzz.random_fuzz(harness, max_execs=EXECS_PER_CODEC, seed=9, max_len=1024, hang_seconds=5.0)
    assert stats.execs == EXECS_PER_CODEC
    report = stats.report(None)
    assert stats.crashes == {}, report
    assert report.splitlines()[-1] == f"fuzz {codec}: execs={EXECS_PER_CODEC} crashes=0"


def test_random_engine_is_deterministic() -> None:
    harness = fuzz.HARNESSES["r30x"]
    seen_a: list[bytes] = []
    seen_b: list[bytes] = []
    for seen in (seen_a, seen_b):
        wrapped = fuzz.Harness("r30x", harness.seeds, lambda data, s=seen: s.append(data), harness.modules)
        fuzz.random_fuzz(wrapped, max_execs=200, seed=3, hang_seconds=0)
    assert seen_a == seen_b and len(seen_a) == 200


def _boom(data: bytes) -> None:
    if data[:1] == b"\x01":
        raise IndexError("index out of range")
    raise codec_error_type()("fine")  # the codec's own error is allowed only inside the harness loop


def test_run_one_reports_a_foreign_exception_with_its_frame() -> None:
    harness = fuzz.Harness("fake", lambda: [b"\x01"], _boom, ())
    crash = fuzz.run_one(harness, b"\x01\x02")
    assert crash is not None
    assert crash.kind == "IndexError"
    assert "_boom" in crash.where
    assert crash.data == b"\x01\x02"


def test_run_one_detects_a_hang() -> None:
    def spin(data: bytes) -> None:
        while True:
            pass

    harness = fuzz.Harness("fake", lambda: [b""], spin, ())
    started = time.monotonic()
    crash = fuzz.run_one(harness, b"x", hang_seconds=0.2)
    assert crash is not None and crash.kind == "Hang"
    assert time.monotonic() - started < 2.0


def test_run_one_reports_an_invariant_violation() -> None:
    def hoard(data: bytes) -> None:
        check(len(data) < 4, "fake buffer holds too much")

    harness = fuzz.Harness("fake", lambda: [b""], hoard, ())
    assert fuzz.run_one(harness, b"abc") is None
    crash = fuzz.run_one(harness, b"abcd")
    assert crash is not None and crash.kind == "InvariantViolation"
    assert "too much" in crash.message


def test_stats_keep_distinct_crashes_and_the_smallest_reproducer() -> None:
    stats = fuzz.FuzzStats("fake", "test")
    a = fuzz.Crash("IndexError", "x.py:1 f", "m", b"long input")
    b = fuzz.Crash("IndexError", "x.py:1 f", "m", b"s")
    c = fuzz.Crash("KeyError", "x.py:2 g", "m", b"k")
    assert stats.record(a) is True
    assert stats.record(b) is False
    assert stats.record(c) is True
    assert len(stats.crashes) == 2
    assert stats.crashes[a.key].data == b"s"
    assert stats.report(None).splitlines()[-1] == "fuzz fake: execs=0 crashes=2"
