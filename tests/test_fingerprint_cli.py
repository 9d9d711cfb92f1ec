"""``egw simulate fingerprint`` as a real subprocess, driven by the real driver."""

from __future__ import annotations

import select
import signal
import subprocess

import pytest

from drivers.fingerprint import FingerprintReader, WrongPasswordError
from tests.conftest import spawn_egw


def first_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the simulator printed no endpoint"
    return proc.stdout.readline().strip()


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_simulate_fingerprint_on_a_pty(sig: int) -> None:
    proc = spawn_egw("simulate", "fingerprint", "--baud", "0", "--finger", "present", "--enrolled", "2",
                     "--finger-id", "2")
    try:
        endpoint = first_line(proc)
        assert endpoint.startswith("/dev/")
        with FingerprintReader(endpoint, timeout=2) as reader:
            assert reader.capture_image(timeout=5).shape == (288, 256)
            assert reader.search(timeout=5).page == 1
    finally:
        code = stop(proc, sig)
    assert code == 0, proc.stderr.read() if proc.stderr else ""


def test_simulate_fingerprint_on_tcp_with_a_password() -> None:
    proc = spawn_egw("simulate", "fingerprint", "--baud", "0", "--tcp", "0", "--password", "C0FFEE")
    try:
        endpoint = first_line(proc)
        assert endpoint.startswith("socket://127.0.0.1:") and not endpoint.endswith(":0")
        with pytest.raises(WrongPasswordError):
            FingerprintReader(endpoint, timeout=2)
        with FingerprintReader(endpoint, password=0xC0FFEE, timeout=2) as reader:
            assert reader.system_parameters().password_verified
    finally:
        code = stop(proc)
    assert code == 0


def test_bad_option_is_explained() -> None:
    proc = spawn_egw("simulate", "fingerprint", "--finger", "sometimes")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "after:SECONDS" in err
