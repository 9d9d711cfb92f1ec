"""``egw simulate rapidtest`` as a real subprocess, read by the driver."""

from __future__ import annotations

import os
import signal

import pytest

from drivers.rapidtest import RapidTestAnalyzer, RapidTestDisconnected
from tests.conftest import run_egw, spawn_egw


def _stop(proc, signum: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=15)
    except Exception:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err


def test_egw_simulate_rapidtest_over_tcp_three_tests():
    proc = spawn_egw("simulate", "rapidtest", "--tests", "3", "--tcp", "0", "--interval", "0.2",
                     "--reply-timeout", "2", "--retry-delay", "0.2", "--seed", "4")
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("socket://127.0.0.1:") and not url.endswith(":0")
        samples: list[str] = []
        with RapidTestAnalyzer(url) as analyzer:
            try:
                for result in analyzer.results(timeout=30):
                    samples.append(result.sample_id)
                    assert result.item_code == "OPPEST" and result.unit in ("%", "")
            except RapidTestDisconnected:
                pass  # the simulator exits once all three were acknowledged
        assert sorted(set(samples)) == ["S000001", "S000002", "S000003"] and len(samples) == 3
        proc.wait(timeout=15)
        code, err = _stop(proc)
        assert code == 0, err
        assert "stopped after 3 acknowledged" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_egw_simulate_rapidtest_pty_forever_ends_cleanly_on_signal(signum):
    proc = spawn_egw("simulate", "rapidtest", "--kind", "gold", "--interval", "0.1", "--fault", "noise,bad-checksum",
                     "--fault-rate", "0.2", "--reply-timeout", "1", "--retry-delay", "0.1")
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/") and os.path.exists(path)
        with RapidTestAnalyzer(path) as analyzer:
            first = next(analyzer.results(timeout=20))
        assert first.sample_id == "S000001" and first.unit == "T/C"
        code, err = _stop(proc, signum)
        assert code == 0, err
        assert "stopped after" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("args", [["--kind", "blood"], ["--fault", "gremlins"], ["--link", "/tmp/x", "--tcp", "0"],
                                  ["--fault-from", "0"], ["--giant-bytes", "0"]])
def test_bad_arguments_are_refused(args):
    proc = run_egw("simulate", "rapidtest", *args, timeout=60)
    assert proc.returncode == 2
    assert any(why in proc.stderr for why in ("invalid choice", "unknown fault", "cannot be used with --tcp", "required"))


def test_help_documents_the_hostile_faults():
    text = run_egw("simulate", "rapidtest", "--help", check=True).stdout
    for word in ("endless", "giant", "unplug", "--flood-bytes", "--giant-bytes", "--unplug-seconds", "--link", "--fault-from"):
        assert word in text
