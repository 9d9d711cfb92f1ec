"""RapidTestAnalyzer against the simulator over a real pty and real TCP, with every fault switch."""

from __future__ import annotations

import socket
import time
from collections import Counter
from datetime import datetime

import pytest

from drivers.errors import DriverError
from drivers.rapidtest import (
    Judgement,
    RapidTestAnalyzer,
    RapidTestDisconnected,
    RapidTestError,
    RapidTestPortError,
    RapidTestResult,
    results_from_transcript,
)
from simulators.rapidtest import LINK_FAULTS, RapidTestSimulator

# Timers scaled down from 15 s / 30 s / 10 s so a fault costs a second, not a minute.
FAST = dict(interval=0, reply_timeout=0.4, retry_delay=0.05, busy_delay=0.2, stall_seconds=0.8)
RECEIVE_TIMEOUT = 0.5


def serve(sim: RapidTestSimulator, transport: str) -> str:
    return sim.serve_pty() if transport == "pty" else sim.serve_tcp()


def collect(analyzer: RapidTestAnalyzer, sim: RapidTestSimulator, messages: int, limit: float = 30) -> list[RapidTestResult]:
    """Read until results for ``messages`` samples have arrived (and the simulator saw them ACKed)."""
    results: list[RapidTestResult] = []
    until = time.monotonic() + limit
    for result in analyzer.results(timeout=limit):
        results.append(result)
        if len({r.sample_id for r in results}) == messages and result.result_index == result.results_in_message:
            analyzer.acknowledge()  # stopping early: confirm the last message explicitly
            break
        assert time.monotonic() < until, "results took too long"
    assert sim.wait_delivered(10), "the simulator never saw its last message acknowledged"
    # Anything still in flight would be a duplicate: give it a moment to show up.
    results.extend(analyzer.results(timeout=0.15))
    return results


def check_against_simulator(results: list[RapidTestResult], sim: RapidTestSimulator) -> None:
    keys = [(r.sample_id, r.item_code) for r in results]
    assert len(keys) == len(set(keys)), f"duplicated results: {[k for k, n in Counter(keys).items() if n > 1]}"
    assert [t.sample_id for t in sim.delivered] == sorted({r.sample_id for r in results})
    for test in sim.delivered:
        mine = [r for r in results if r.sample_id == test.sample_id]
        assert [r.judgement.value for r in mine] == list(test.judgements)
        assert [r.result_index for r in mine] == list(range(1, len(mine) + 1))
        assert len({r.message_digest for r in mine}) == 1


@pytest.mark.parametrize("transport", ["pty", "tcp"])
# No fault and bad-checksum: tests/contract/test_rapidtest_contract.py runs them over pty and TCP.
@pytest.mark.parametrize("fault", ["noise", "nak-storm", "stall", "abort", "all"])
def test_driver_receives_every_result_exactly_once_despite_faults(transport, fault):
    kind = "gold" if fault in ("noise", "stall", "all") and transport == "tcp" else "pesticide"
    aborts: list[str] = []
    faults = list(LINK_FAULTS) if fault == "all" else [fault]
    # nak-storm alternates a short (3) and a fatal (6) burst: it needs two selected messages.
    every = 2 if fault in ("nak-storm", "all") else 3
    sim = RapidTestSimulator(kind, tests=3, faults=faults, fault_rate=0.3, fault_every=every, seed=11, **FAST)
    try:
        url = serve(sim, transport)
        with RapidTestAnalyzer(url, receive_timeout=RECEIVE_TIMEOUT,
                               on_abort=lambda reason, raw: aborts.append(reason)) as analyzer:
            results = collect(analyzer, sim, 3)
            stats = analyzer.stats
    finally:
        sim.stop()
    check_against_simulator(results, sim)
    if fault == "noise":
        assert sim.frames_corrupted >= 1 and stats.rejected_frames >= 1
    elif fault == "nak-storm":
        assert stats.rejected_frames >= 3 + 6 and any("discarded" in a for a in aborts)
    elif fault == "stall":
        assert any("no frame or EOT" in a for a in aborts)
    elif fault == "abort":
        assert sum("EOT before" in a for a in aborts) >= 1
    elif fault == "all":
        assert stats.rejected_frames >= 9 and len(aborts) >= 3
    if fault in ("nak-storm", "stall", "abort", "all"):
        assert sim.aborted_sessions, "the fault must have cost the simulator a session"


def test_result_fields_are_complete():
    sim = RapidTestSimulator("pesticide", tests=1, seed=3, clock=lambda: datetime(2024, 1, 1, 12, 15, 0), **FAST)
    try:
        with RapidTestAnalyzer(sim.serve_pty(), receive_timeout=RECEIVE_TIMEOUT) as analyzer:
            (result,) = collect(analyzer, sim, 1)
    finally:
        sim.stop()
    assert result.instrument_id == "RT-PR-0001"
    assert (result.instrument_model, result.instrument_version) == ("RAPIDSIM-PR", "1.0")
    assert result.message_id == "M000001"
    assert result.sample_id == "S000001" and "market stall" in result.sample_description
    assert (result.item_code, result.item_name) == ("OPPEST", "Organophosphate and carbamate pesticides")
    assert (result.method, result.standard) == ("enzyme inhibition", "GB/T 5009.199-2003")
    assert result.unit == "%" and result.reference_range == "0^50" and result.cutoff == "50"
    assert result.numeric_value is not None and float(result.value) == float(result.numeric_value)
    assert result.judgement in (Judgement.POSITIVE, Judgement.NEGATIVE, Judgement.INVALID)
    assert result.judgement.value == sim.delivered[0].judgements[0]
    assert result.operator == "inspector01"
    assert result.tested_at == datetime(2024, 1, 1, 12, 15, 0)
    assert result.started_at == datetime(2024, 1, 1, 12, 12, 0)
    assert result.comments[0] == result.judgement.value and result.status in ("F", "X")
    assert result.termination_code == "N"
    assert result.transcript.startswith(b"\x05\x021H|\\^&|M000001||RAPIDSIM-PR^1.0^RT-PR-0001")
    assert result.message_text.startswith(b"H|\\^&|") and result.message_text.endswith(b"L|1|N\r")
    # The transcript alone is enough to re-derive the result (offline verification).
    assert results_from_transcript(result.transcript) == [result]
    with pytest.raises(Exception):
        result.value = "0"  # frozen


def test_a_thousand_results_over_a_noisy_pty_arrive_once_each():
    sim = RapidTestSimulator("pesticide", tests=1000, faults=["noise"], fault_rate=0.05, seed=5, **FAST)
    start = time.monotonic()
    try:
        with RapidTestAnalyzer(sim.serve_pty(), receive_timeout=2.0) as analyzer:
            results = collect(analyzer, sim, 1000, limit=60)
            stats = analyzer.stats
    finally:
        sim.stop()
    elapsed = time.monotonic() - start
    ids = [r.sample_id for r in results]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    assert sorted(ids) == [f"S{n:06d}" for n in range(1, 1001)]
    assert sim.frames_corrupted >= 100 and stats.rejected_frames >= 100
    assert elapsed < 60


def test_baud_rate_pacing_takes_real_line_time():
    baud = 4800
    sim = RapidTestSimulator("pesticide", tests=1, baud=baud, seed=8, **FAST)
    try:
        with RapidTestAnalyzer(sim.serve_tcp(), baudrate=baud, receive_timeout=5) as analyzer:
            started = time.monotonic()
            result = next(analyzer.results(timeout=20))
            elapsed = time.monotonic() - started
    finally:
        sim.stop()
    line_time = len(result.transcript) * 10 / baud   # 8N1: ten bit times per byte
    assert line_time > 0.8
    assert elapsed >= 0.9 * line_time, f"{len(result.transcript)} bytes in {elapsed:.2f} s beats {baud} baud"


def test_interrupt_request_makes_the_instrument_pause_and_resend():
    sim = RapidTestSimulator("pesticide", tests=2, seed=2, **FAST)
    try:
        with RapidTestAnalyzer(sim.serve_tcp(), receive_timeout=RECEIVE_TIMEOUT) as analyzer:
            analyzer.interrupt()
            results = collect(analyzer, sim, 2)
    finally:
        sim.stop()
    check_against_simulator(results, sim)
    assert any("interrupt" in reason for reason in sim.aborted_sessions)


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_port_that_disappears_raises_disconnected(transport):
    sim = RapidTestSimulator("pesticide", tests=None, interval=0.05, seed=1,
                             **{k: v for k, v in FAST.items() if k != "interval"})
    url = serve(sim, transport)
    analyzer = RapidTestAnalyzer(url, receive_timeout=RECEIVE_TIMEOUT)
    try:
        results = analyzer.results(timeout=10)
        assert next(results).sample_id == "S000001"
        sim.stop()
        with pytest.raises(RapidTestDisconnected) as info:
            for _ in results:
                pass
        assert isinstance(info.value, RapidTestError) and isinstance(info.value, DriverError)
        assert url in str(info.value)
    finally:
        analyzer.close()
        sim.stop()
    with pytest.raises(RapidTestError, match="closed"):
        next(analyzer.results(timeout=0.1))


def test_port_that_cannot_be_opened_raises_port_error(tmp_path):
    with pytest.raises(RapidTestPortError, match="cannot open"):
        RapidTestAnalyzer(str(tmp_path / "ttyUSB-missing"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RapidTestPortError) as info:
        RapidTestAnalyzer(f"socket://127.0.0.1:{port}")
    assert isinstance(info.value.__cause__, Exception)


def test_timeout_ends_the_iterator_when_nothing_arrives():
    sim = RapidTestSimulator("gold", tests=0, **FAST)
    try:
        with RapidTestAnalyzer(sim.serve_pty()) as analyzer:
            start = time.monotonic()
            assert list(analyzer.results(timeout=0.3)) == []
            assert 0.25 <= time.monotonic() - start < 3
    finally:
        sim.stop()


def test_a_message_is_acknowledged_only_after_the_consumer_moved_on():
    """At-least-once: stop without acknowledging and the instrument sends the message again."""
    sim = RapidTestSimulator("gold", tests=1, seed=6, **FAST)
    try:
        with RapidTestAnalyzer(sim.serve_pty(), receive_timeout=RECEIVE_TIMEOUT) as analyzer:
            first = next(analyzer.results(timeout=10))
            # Leftover results of that message (gold may carry several) are still queued;
            # we drop the iterator instead, as a crashing consumer would.
            assert not sim.finished
            time.sleep(FAST["reply_timeout"] + 0.2)          # the instrument's timer runs out
            assert not sim.finished and sim.aborted_sessions  # nothing was confirmed
            again = [r for r in analyzer.results(timeout=3) if r.result_index == 1]
            assert again and again[0].sample_id == first.sample_id
            assert again[0].message_digest == first.message_digest
            assert sim.wait_delivered(5)
    finally:
        sim.stop()


def test_a_slow_consumer_that_outlives_the_instrument_timer_gets_each_message_once():
    sim = RapidTestSimulator("pesticide", tests=2, seed=12, **FAST)
    seen: list[str] = []
    try:
        with RapidTestAnalyzer(sim.serve_pty(), receive_timeout=RECEIVE_TIMEOUT) as analyzer:
            for result in analyzer.results(timeout=5):
                seen.append(result.sample_id)
                if len(seen) == 1:
                    time.sleep(FAST["reply_timeout"] + 0.3)  # storing took longer than the sender waits
                if len(set(seen)) == 2:
                    analyzer.acknowledge()
                    break
            assert sim.wait_delivered(5)
            seen += [r.sample_id for r in analyzer.results(timeout=0.5)]
            assert analyzer.stats.duplicates >= 1   # the re-sent first message was recognised
    finally:
        sim.stop()
    assert seen == ["S000001", "S000002"]
