"""A broken or hostile analyzer against RapidTestAnalyzer over a real pty and real TCP.

The simulator's ``endless`` / ``giant`` / ``unplug`` faults: the driver refuses a message
past its limit (never acknowledging it), raises RapidTestOverflow after every result
received before it, and a re-opened port receives the instrument's next results, each
once.  Limits are scaled down (64 KiB) so a flood costs milliseconds; ``egw run`` is
tested with the real 4 MiB limit in test_run_hostile.py.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from drivers.rapidtest import RapidTestAnalyzer, RapidTestDisconnected, RapidTestError, RapidTestOverflow, RapidTestResult
from simulators.rapidtest import RapidTestSimulator
from tests.test_rapidtest_driver import FAST, RECEIVE_TIMEOUT, check_against_simulator, collect, serve

LIMIT = 64 * 1024


def _until_error(analyzer: RapidTestAnalyzer, results: list[RapidTestResult]) -> RapidTestError:
    try:
        for result in analyzer.results(timeout=15):
            results.append(result)
    except RapidTestError as exc:
        return exc
    raise AssertionError(f"the driver never raised; got {[r.sample_id for r in results]}")


@pytest.mark.parametrize("transport", ["pty", "tcp"])
@pytest.mark.parametrize("fault", ["endless", "giant"])
def test_a_hostile_message_is_refused_and_the_next_results_arrive_after_a_reset(transport, fault):
    # On a pty the instrument cannot see the host close and reopen the port at once (a serial
    # line has no connection), so the flood must end by itself; over TCP the reset ends it.
    flood = 8 * LIMIT if transport == "pty" else 0
    sim = RapidTestSimulator("pesticide", tests=4, faults=[fault], fault_from=3, fault_every=100, seed=5,
                             giant_bytes=3 * LIMIT, flood_bytes=flood, **FAST)
    results: list[RapidTestResult] = []
    try:
        url = serve(sim, transport)
        with RapidTestAnalyzer(url, receive_timeout=RECEIVE_TIMEOUT, max_message=LIMIT) as analyzer:
            error = _until_error(analyzer, results)
            assert analyzer.stats.bytes_received > LIMIT
        assert isinstance(error, RapidTestOverflow) and f"more than {LIMIT} bytes" in str(error)
        assert "still holds it" in str(error) and url in str(error)
        # Everything acknowledged before the burst was handed over first, and nothing of the refused message.
        assert [r.sample_id for r in results] == ["S000001", "S000002"]
        assert [t.sample_id for t in sim.delivered] == ["S000001", "S000002"]  # S000003 was never ACKed to the end
        with RapidTestAnalyzer(url, receive_timeout=RECEIVE_TIMEOUT, max_message=LIMIT) as analyzer:  # the reset
            results += collect(analyzer, sim, 2)
    finally:
        sim.stop()
    check_against_simulator(results, sim)
    assert [t.sample_id for t in sim.delivered] == ["S000001", "S000002", "S000003", "S000004"]
    if fault == "endless":
        assert sim.floods == 1


def test_after_an_overflow_every_call_raises_until_the_port_is_reopened():
    """The receiver never holds more than the limit, and a refused link is not read again: the
    caller must reset it (close, open) rather than keep draining a flood."""
    sim = RapidTestSimulator("gold", tests=1, faults=["endless"], seed=2, **FAST)
    try:
        url = sim.serve_tcp()
        with RapidTestAnalyzer(url, receive_timeout=RECEIVE_TIMEOUT, max_message=LIMIT) as analyzer:
            receiver = analyzer._receiver  # noqa: SLF001 - the bound is the point of this test
            with pytest.raises(RapidTestOverflow):
                for _ in range(10_000):
                    analyzer.poll()
                    assert len(receiver._transcript) <= LIMIT and len(receiver._text) <= LIMIT  # noqa: SLF001
            received = analyzer.stats.bytes_received
            for _ in range(3):
                with pytest.raises(RapidTestOverflow):
                    analyzer.poll()
                with pytest.raises(RapidTestOverflow):
                    next(analyzer.results(timeout=0.1))
            assert analyzer.stats.bytes_received == received
    finally:
        sim.stop()


def test_a_tcp_analyzer_is_read_in_chunks():
    """Regression: pyserial's socket:// in_waiting is 0 or 1, so the driver read two bytes per poll
    (a TCP analyzer topped out near 160 KB/s and a flood kept a CPU busy)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        opened, sent = threading.Event(), threading.Event()

        def talk() -> None:
            conn, _ = server.accept()
            with conn:
                opened.wait(10)  # pyserial discards whatever arrives while it opens the port
                conn.sendall(b"line noise outside any session " * 4000)  # ~124 KB, no ENQ: ignored
                sent.set()
                conn.recv(1)  # until the driver closes

        thread = threading.Thread(target=talk, daemon=True)
        thread.start()
        with RapidTestAnalyzer(f"socket://127.0.0.1:{port}") as analyzer:
            opened.set()
            assert sent.wait(10)
            for _ in range(4):
                analyzer.poll()
            assert analyzer.stats.bytes_received >= 64 * 1024
        thread.join(5)


def test_a_pty_analyzer_unplugged_mid_message_and_replugged_resends_it(tmp_path):
    link = tmp_path / "ttyANALYZER"
    sim = RapidTestSimulator("gold", tests=4, faults=["unplug"], fault_from=3, fault_every=100, seed=9,
                             unplug_seconds=0.5, link=str(link), **FAST)
    results: list[RapidTestResult] = []
    try:
        assert sim.serve_pty() == str(link) and os.readlink(link) == sim.url
        with RapidTestAnalyzer(str(link), receive_timeout=RECEIVE_TIMEOUT) as analyzer:
            error = _until_error(analyzer, results)
        assert isinstance(error, RapidTestDisconnected)
        assert sorted({r.sample_id for r in results}) == ["S000001", "S000002"]
        deadline = time.monotonic() + 10
        while not sim.replugs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim.replugs == 1 and os.readlink(link) == sim.url  # plugged back in (the pty may reuse its name)
        with RapidTestAnalyzer(str(link), receive_timeout=RECEIVE_TIMEOUT) as analyzer:
            results += collect(analyzer, sim, 2)
    finally:
        sim.stop()
    check_against_simulator(results, sim)
    assert not link.exists()  # the simulator removes its symlink when it stops, as udev does on unplug
