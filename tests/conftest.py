"""Shared fixtures: run ``egw`` as a real subprocess from this checkout, thread-leak guard."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import settings

# Deadlines measure the machine, not the code: on a loaded CI box they fail at random. The
# examples themselves stay bounded (each codec test caps its input sizes).
settings.register_profile("egw", deadline=None, print_blob=True)
settings.load_profile("egw")

REPO = Path(__file__).resolve().parent.parent


def egw_env(**extra: str) -> dict[str, str]:
    """The environment for a child ``egw``: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EGW_KEY_PASSPHRASE", None)
    env.update(extra)
    return env


def run_egw(*args: str, env: dict[str, str] | None = None, timeout: float = 120, check: bool = False,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gateway ARGS`` and capture text output."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO, env=env or egw_env(), capture_output=True, text=True, timeout=timeout,
        input=input.decode() if input is not None else None,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"egw {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def spawn_egw(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[str]:
    """Start ``egw`` in the background (servers, simulators); the caller stops it."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, env=env or egw_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,  # type: ignore[arg-type]
    )


def run_egw_peak_rss(*args: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``egw ARGS`` to completion; also return its own peak RSS in bytes (VmHWM, sampled while it runs:
    ``wait4``'s figure would include this pytest process's size, see bench._common.PeakRss)."""
    from bench._common import PeakRss

    proc = spawn_egw(*args)
    peak = PeakRss(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"egw {' '.join(args)} did not finish within {timeout:g} s") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), peak.stop() * 1024


@pytest.fixture
def egw():
    return run_egw


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves non-daemon threads running (pymodbus's guard, adapted)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"test leaked threads: {still}"


def _interruptible() -> None:
    """SIGINT handled and unblocked in this process, so the egw processes tests start can be Ctrl-C'd.

    Started as a background job of a non-interactive shell (``./scripts/test &``, as a CI runner or
    ``nohup`` may do), a process begins with SIGINT ignored (POSIX), and every child inherits that
    across exec: each test that Ctrl-Cs an egw it started then waits for it forever (seen: two
    Ctrl-C tests hung 120 s and 300 s on one xdist worker)."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


_interruptible()  # every xdist worker imports this file before its first test


@pytest.fixture(autouse=True)
def children_can_be_interrupted(request: pytest.FixtureRequest):
    """Fail a test that leaves SIGINT ignored or blocked in this (worker) process, by name, and put it back:
    otherwise every later test in the worker that Ctrl-Cs an egw it started would hang (see ``_interruptible``)."""
    import signal

    yield
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    _interruptible()
    assert not (ignored or blocked), (f"{request.node.nodeid} left SIGINT {'ignored' if ignored else 'blocked'} in the test "
                                      "process: processes started by later tests could not be interrupted")
