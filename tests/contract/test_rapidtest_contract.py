"""Rapid-test analyzer contract (drivers.rapidtest.RapidTestAnalyzer), once, over every backend.

Backends: ``rapidtest[pty]`` (the simulator on a pseudo-terminal, as an RS-232 adapter
appears), ``rapidtest[tcp]`` (``socket://``, a serial device server), and ``rapidtest[real]``
when ``EGW_CONTRACT_RAPIDTEST_URL`` names a real analyzer (``/dev/ttyUSB0``,
``socket://host:port``); run a test on the instrument while the suite waits
(``EGW_CONTRACT_RAPIDTEST_WAIT`` seconds, default 120).

Backends this family cannot have:

* loopback (in-memory): the driver opens a pyserial URL; pyserial's ``loop://`` echoes the
  host's own bytes back and cannot hold an instrument, and the simulator serves only a pty
  or TCP, so there is no in-memory instrument to connect to.
* USB/IP: the analyzers speak ASTM E1381 on a UART; USB/IP would carry only the
  USB-serial bridge chip, which the driver never sees.

Timers are the instrument's own (15 s reply, 10 s retry) scaled down, so a fault costs
tenths of a second, not a minute.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.rapidtest import RapidTestAnalyzer, RapidTestResult
from simulators.rapidtest import RapidTestSimulator
from tests.contract.backends import REAL, backend_params, real_url, refuse_on_real

FAMILY = "rapidtest"
ENQ = 0x05
FAST: dict[str, Any] = {"interval": 0, "reply_timeout": 0.4, "retry_delay": 0.05, "busy_delay": 0.2, "stall_seconds": 0.8}
RECEIVE_TIMEOUT = 0.5
REAL_WAIT = float(os.environ.get("EGW_CONTRACT_RAPIDTEST_WAIT", "120"))


class RapidTestBackend:
    """One backend: starts the instrument simulator (or names the real analyzer) and opens the driver."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sim: RapidTestSimulator | None = None
        self.url = (real_url(FAMILY) or "") if name == REAL else ""
        self._analyzers: list[RapidTestAnalyzer] = []

    @property
    def wait(self) -> float:
        """How long to wait for a result: a person runs the test on a real analyzer."""
        return REAL_WAIT if self.name == REAL else 10.0

    def start(self, **options: Any) -> RapidTestSimulator | None:
        """Serve a simulated instrument configured with ``options`` (fast timers); None on a real one."""
        refuse_on_real(self.name, options)
        if self.name == REAL:
            return None
        self.sim = RapidTestSimulator(**{"tests": 1, "seed": 1, **FAST, **options})
        self.url = self.sim.serve_pty() if self.name == "pty" else self.sim.serve_tcp()
        return self.sim

    def analyzer(self, **kwargs: Any) -> RapidTestAnalyzer:
        """Open the driver on this backend (closed when the test ends)."""
        kwargs.setdefault("receive_timeout", RECEIVE_TIMEOUT)
        analyzer = RapidTestAnalyzer(self.url, **kwargs)
        self._analyzers.append(analyzer)
        return analyzer

    def close(self) -> None:
        for analyzer in self._analyzers:
            analyzer.close()
        if self.sim is not None:
            self.sim.stop()


@pytest.fixture(params=backend_params(FAMILY, ["pty", "tcp"]))
def device(request: pytest.FixtureRequest) -> Iterator[RapidTestBackend]:
    backend = RapidTestBackend(request.param)
    try:
        yield backend
    finally:
        backend.close()


def collect(analyzer: RapidTestAnalyzer, sim: RapidTestSimulator, messages: int) -> list[RapidTestResult]:
    """Read until results for ``messages`` samples have arrived and the simulator saw them all ACKed;
    then whatever is still in flight, which would be a duplicate."""
    results: list[RapidTestResult] = []
    for result in analyzer.results(timeout=30):
        results.append(result)
        if len({r.sample_id for r in results}) == messages and result.result_index == result.results_in_message:
            analyzer.acknowledge()  # stopping early: confirm the last message explicitly
            break
    assert sim.wait_delivered(10), "the simulator never saw its last message acknowledged"
    results.extend(analyzer.results(timeout=0.15))
    return results


def assert_complete_and_in_order(results: list[RapidTestResult], sim: RapidTestSimulator) -> None:
    """Every result the instrument delivered, once, in the order it sent them."""
    keys = [(r.sample_id, r.item_code) for r in results]
    assert len(keys) == len(set(keys)), f"duplicated results: {[k for k, n in Counter(keys).items() if n > 1]}"
    assert [r.sample_id for r in results] == sorted(r.sample_id for r in results)  # arrival order = send order
    assert [t.sample_id for t in sim.delivered] == sorted({r.sample_id for r in results})
    for test in sim.delivered:
        mine = [r for r in results if r.sample_id == test.sample_id]
        assert [r.judgement.value for r in mine] == list(test.judgements)
        assert [r.result_index for r in mine] == list(range(1, len(mine) + 1))
        assert all(r.results_in_message == len(mine) for r in mine)
        assert len({r.message_digest for r in mine}) == 1


def test_results_arrive_complete_and_in_order(device: RapidTestBackend) -> None:
    # gold messages carry several results each: their order inside a message is checked too
    sim = device.start(kind="gold", tests=3, seed=11)
    assert sim is not None
    analyzer = device.analyzer()
    results = collect(analyzer, sim, 3)
    assert_complete_and_in_order(results, sim)
    assert any(r.results_in_message > 1 for r in results)
    assert analyzer.stats.rejected_frames == 0 and analyzer.stats.aborted_sessions == 0


def test_the_ack_of_the_last_result_is_held_until_acknowledge(device: RapidTestBackend) -> None:
    # a long reply timer: the instrument must still be waiting for that ACK when we give it
    sim = device.start(kind="pesticide", tests=1, seed=6, reply_timeout=10)
    assert sim is not None
    analyzer = device.analyzer()
    last = next(analyzer.results(timeout=device.wait))
    assert last.result_index == last.results_in_message == 1
    assert not sim.wait_delivered(0.3), "the instrument got its ACK before the consumer stored the result"
    assert not sim.aborted_sessions
    analyzer.acknowledge()
    assert sim.wait_delivered(5), "acknowledge() did not release the held ACK"
    assert [t.sample_id for t in sim.delivered] == [last.sample_id]
    assert list(analyzer.results(timeout=0.3)) == []  # confirmed: never delivered again


def test_a_frame_with_a_bad_checksum_is_naked_and_sent_again(device: RapidTestBackend) -> None:
    sim = device.start(kind="pesticide", tests=3, faults=["bad-checksum"], fault_rate=0.3, fault_every=3, seed=11)
    assert sim is not None
    analyzer = device.analyzer()
    results = collect(analyzer, sim, 3)
    assert sim.frames_corrupted >= 1 and analyzer.stats.rejected_frames >= 1
    assert_complete_and_in_order(results, sim)  # the re-sent frame completed its message, once


def test_the_instrument_speaks_first_at_connect(device: RapidTestBackend) -> None:
    """An ASTM instrument starts each session itself (ENQ): the host only answers, and a result
    already waiting when the host connects arrives without the host asking."""
    sim = device.start()
    analyzer = device.analyzer()
    result = next(analyzer.results(timeout=device.wait))
    assert result.transcript[0] == ENQ, "the session did not start with the instrument's ENQ"
    assert result.message_text.startswith(b"H|") and result.sample_id
    analyzer.acknowledge()
    assert analyzer.stats.aborted_sessions == 0
    if sim is not None:
        assert sim.wait_delivered(5) and not sim.aborted_sessions  # no contention: the host never sent ENQ
        assert sim.delivered[0].sample_id == result.sample_id
