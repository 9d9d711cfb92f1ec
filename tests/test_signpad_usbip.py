"""End-to-end over real USB/IP: ``egw simulate signpad`` in a child process, the driver over TCP.

Not collected yet (no ``test_`` prefix) because ``firmware_bridge.usbip_server``
and ``usb_transport`` live on the usbip branch. After both branches are merged:
``git mv tests/signpad_usbip_e2e.py tests/test_signpad_usbip.py``. Verified
against the usbip branch at 0a50752 (about 6 s a signature, real 200 Hz timing).
"""

from __future__ import annotations

import subprocess

import pytest

from drivers.signpad import SignaturePad, SigningCancelled, SignPadUnplugged
from tests.conftest import spawn_egw


def _serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = spawn_egw("simulate", "signpad", *args)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("usbip://127.0.0.1:") and url.endswith("/1-1"), (url, proc.stderr.read() if proc.poll() else "")
    return proc, url


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.timeout(60)
def test_sign_over_usbip_at_real_rate():
    proc, url = _serve("--signer", "Jane Doe")
    try:
        with SignaturePad.open(url) as pad:
            assert pad.identity.model_name == "STU-540" and pad.identity.serial_number == "SIM540-0001"
            capture = pad.capture(30, title="Notice", signer="Jane Doe")
        assert capture.timestamps == "pad" and len(capture.samples) > 300
        assert capture.iso_record[:8] == b"SDI\x00 10\x00" and capture.png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        _stop(proc)
    assert proc.returncode == 0


@pytest.mark.timeout(60)
def test_cancel_and_unplug_over_usbip():
    proc, url = _serve("--finish", "cancel")
    try:
        with SignaturePad.open(url) as pad, pytest.raises(SigningCancelled):
            pad.capture(30)
    finally:
        _stop(proc)
    proc, url = _serve("--unplug-mid-signature")
    try:
        with SignaturePad.open(url) as pad, pytest.raises(SignPadUnplugged):
            pad.capture(30)
    finally:
        _stop(proc)
