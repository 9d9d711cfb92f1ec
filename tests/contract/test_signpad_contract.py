"""Signature pad contract (drivers.signpad.SignaturePad), once, over every backend.

Backends: ``signpad[loopback]`` (the STU-540 model in memory through ``LoopbackUsbDevice``,
on a clock shared by pad and driver that moves only when someone sleeps: seconds of
signing cost milliseconds), ``signpad[usbip]`` (the same model exported by a USB/IP
server on 127.0.0.1, at its real 200 reports/s), and ``signpad[real]`` when
``EGW_CONTRACT_SIGNPAD_URL`` names a real pad (``usb://056a:00a8``, ``usbip://…``): sign
and press OK when the suite waits (``EGW_CONTRACT_SIGNPAD_WAIT`` seconds, default 60).

Backends this family cannot have:

* pty / TCP (``socket://``): the STU pads are USB HID devices with no serial interface;
  the driver talks to a ``UsbDevice``, never to a pyserial URL.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from drivers.errors import DriverError
from drivers.signpad import (
    SAMPLE_DTYPE,
    SignaturePad,
    SigningCancelled,
    SignPadError,
    SignPadTimeout,
    SignPadUnplugged,
)
from firmware_bridge.usb import LoopbackUsbDevice
from firmware_bridge.usbip_server import UsbIpServer
from simulators.signpad import StuPadModel, name_script
from tests.contract.backends import (
    REAL,
    backend_params,
    real_url,
    refuse_on_real,
    simulated_only,
)
from tests.signpad_helpers import FakeClock

FAMILY = "signpad"
BUSID = "1-1"
REAL_WAIT = float(os.environ.get("EGW_CONTRACT_SIGNPAD_WAIT", "60"))
SIGNER = "Al"  # two letters: a real-time signature over USB/IP stays under a second or two


class SignPadBackend:
    """One backend: puts a scripted pad model on it (or names the real pad) and opens the driver."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model: StuPadModel | None = None
        self._server: UsbIpServer | None = None
        self._pads: list[SignaturePad] = []
        self._clock: FakeClock | None = None

    @property
    def wait(self) -> float:
        """The capture timeout for a signature that completes: a person signs a real pad."""
        return REAL_WAIT if self.name == REAL else 60.0

    @property
    def now(self) -> Callable[[], float]:
        """The clock the pad's session runs on (the fake one on loopback)."""
        return self._clock if self._clock is not None else time.monotonic

    def plug(self, script: list[dict[str, Any]] | None = None) -> StuPadModel | None:
        """Plug in a pad whose signer follows ``script``; on the real backend the person is the script."""
        refuse_on_real(self.name, {"script": script} if script is not None else {})
        if self.name == REAL:
            return None
        if self.name == "loopback":
            self._clock = FakeClock()
            self.model = StuPadModel(script, clock=self._clock)
            return self.model
        self.model = StuPadModel(script)
        self._server = server = UsbIpServer()
        server.add_device(BUSID, self.model)
        self.model.on_unplug.append(lambda: _forget(server, BUSID))  # the pad leaves the bus, as the CLI does
        server.start()
        return self.model

    def pad(self) -> SignaturePad:
        """Open the driver on this backend (closed when the test ends)."""
        if self.name == "loopback":
            assert self.model is not None and self._clock is not None
            pad = SignaturePad(LoopbackUsbDevice(self.model, serial_number=self.model.serial),
                               clock=self._clock, sleep=self._clock.sleep)
        else:
            pad = SignaturePad.open(self._server.url(BUSID) if self._server else real_url(FAMILY) or "")
        self._pads.append(pad)
        return pad

    def close(self) -> None:
        for pad in self._pads:
            pad.close()
        if self._server is not None:
            self._server.stop()


def _forget(server: UsbIpServer, busid: str) -> None:
    try:
        server.remove_device(busid)
    except KeyError:
        pass  # already gone


@pytest.fixture(params=backend_params(FAMILY, ["loopback", "usbip"]))
def device(request: pytest.FixtureRequest) -> Iterator[SignPadBackend]:
    backend = SignPadBackend(request.param)
    try:
        yield backend
    finally:
        backend.close()


def test_info_identifies_the_pad(device: SignPadBackend) -> None:
    model = device.plug()
    pad = device.pad()
    ident = pad.identity
    assert (ident.vendor_id, ident.model_name) == (0x056A, pad.information.model_name)
    assert ident.model_name.startswith("STU-") and ident.serial_number and ident.firmware
    assert ident.digitizer_info.startswith(f"STU;'{ident.model_name}';{ident.firmware};")
    caps = pad.capability
    assert caps.screen_width > 0 and caps.screen_height > 0 and caps.tablet_max_pressure > 0
    assert set(pad.buttons()) >= {"ok", "cancel", "clear"}
    if model is not None:
        assert (ident.product_id, ident.model_name, ident.firmware) == (0x00A8, "STU-540", "1.04")
        assert ident.uid2 == model.uid2 and ident.serial_number == model.serial
        assert (caps.screen_width, caps.screen_height) == (800, 480)


def test_a_signature_arrives_with_its_pen_samples(device: SignPadBackend) -> None:
    model = device.plug(name_script(SIGNER)) if device.name != REAL else device.plug()
    pad = device.pad()
    started = device.now()
    capture = pad.capture(device.wait, title="Notice 2026-0042", signer="Jane Doe")
    samples = capture.samples
    assert samples.dtype == SAMPLE_DTYPE and len(samples) > 50
    assert samples["t_ms"][0] == 0 and (np.diff(samples["t_ms"]) >= 0).all()
    assert 0 < capture.duration_ms / 1000 <= device.now() - started  # pad time within the session
    assert capture.stroke_count >= 1
    assert samples["pressure"].max() <= pad.capability.tablet_max_pressure and (samples["pressure"] > 0).sum() > 20
    assert capture.iso_record[:8] == b"SDI\x00 10\x00" and capture.png[:8] == b"\x89PNG\r\n\x1a\n"
    meta = capture.metadata()
    assert meta["samples"] == len(samples) and meta["title"] == "Notice 2026-0042" and meta["signer"] == "Jane Doe"
    assert meta["device"]["serial_number"] == pad.identity.serial_number
    assert capture.started_at <= capture.finished_at
    if model is not None:
        assert capture.timestamps == "pad" and np.median(np.diff(samples["t_ms"])) == 5.0  # 200 reports/s
        assert not model.inking and (model.screen == 255).all()  # the pad was left tidy
        assert model.uploads == 1 and not model.signer_problems


def test_cancel_raises_and_tidies_the_pad(device: SignPadBackend) -> None:
    model = device.plug(name_script(SIGNER, finish="cancel"))
    assert model is not None
    with pytest.raises(SigningCancelled, match="Cancel"):
        device.pad().capture(device.wait)
    assert not model.inking and (model.screen == 255).all()


def test_no_ok_within_the_timeout(device: SignPadBackend) -> None:
    model = device.plug([{"sign": SIGNER}])  # signs, never taps OK
    assert model is not None
    pad = device.pad()
    # Over USB/IP the pad signs in real time: on a loaded machine the scripted signature alone can take
    # longer than 3 s, so the timeout leaves it room (the loopback pad's clock is the driver's own).
    limit = 3 if device.name == "loopback" else 10
    started = device.now()
    with pytest.raises(SignPadTimeout, match=f"within {limit} s"):
        pad.capture(limit)
    waited = device.now() - started
    assert waited >= limit
    if device.name == "loopback":  # the shared clock moves only by the driver's sleeps: exact, not timed
        assert waited < limit + 0.5
    assert model.signer_done and not model.inking


def test_unplug_mid_capture_is_a_clear_error(device: SignPadBackend) -> None:
    simulated_only(device.name, "the cable is pulled by the simulator")
    model = device.plug(name_script(SIGNER, unplug_mid_signature=True))
    assert model is not None
    with pytest.raises(SignPadUnplugged, match="reconnect") as info:
        device.pad().capture(device.wait)
    assert isinstance(info.value, SignPadError) and isinstance(info.value, DriverError)
    assert model.unplugged and model.reports_sent > 50  # it really was mid-signature
