"""Fingerprint reader contract (drivers.fingerprint.FingerprintReader), once, over every backend.

Backends: ``fingerprint[pty]`` (the simulator on a pseudo-terminal, as a USB-serial
adapter appears), ``fingerprint[tcp]`` (``socket://``, a serial-over-IP converter), and
``fingerprint[real]`` when ``EGW_CONTRACT_FINGERPRINT_URL`` names a real module
(``EGW_CONTRACT_FINGERPRINT_PASSWORD``: its password in hex, default 0).

Backends this family cannot have:

* loopback (in-memory): the R30x driver speaks to a pyserial URL, not to a ``UsbDevice``;
  there is no in-memory serial port in the driver's public API, and a pty is already the
  cheapest real one.
* USB/IP: R30x modules are UART devices (a USB-serial bridge presents them as a tty), so
  USB/IP would only carry the bridge chip, which the driver never sees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from drivers.errors import DriverError
from drivers.fingerprint import (
    FingerprintReader,
    NoFingerError,
    PoorQualityError,
    WrongPasswordError,
    parse_iso_19794_4,
)
from simulators.fingerprint import FingerprintSimulator
from simulators.fingerprint.images import render_press
from tests.contract.backends import (
    REAL,
    backend_params,
    real_url,
    refuse_on_real,
    simulated_only,
)

FAMILY = "fingerprint"


class FingerprintBackend:
    """One backend: starts the simulator (or names the real module) and opens readers on it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sim: FingerprintSimulator | None = None
        self.url = (real_url(FAMILY) or "") if name == REAL else ""
        self.password = int(os.environ.get("EGW_CONTRACT_FINGERPRINT_PASSWORD", "0"), 16) if name == REAL else 0
        self._readers: list[FingerprintReader] = []

    def start(self, **options: Any) -> FingerprintSimulator | None:
        """Serve a simulator configured with ``options`` (unpaced: baud 0); None on the real module."""
        refuse_on_real(self.name, options)
        if self.name == REAL:
            return None
        self.sim = FingerprintSimulator(baud=0, **options)
        self.password = options.get("password", 0)
        self.url = self.sim.serve_pty() if self.name == "pty" else self.sim.serve_tcp(0)
        return self.sim

    def reader(self, **kwargs: Any) -> FingerprintReader:
        """Open the driver on this backend (closed when the test ends)."""
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("password", self.password)
        reader = FingerprintReader(self.url, **kwargs)
        self._readers.append(reader)
        return reader

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        if self.sim is not None:
            self.sim.stop()


@pytest.fixture(params=backend_params(FAMILY, ["pty", "tcp"]))
def device(request: pytest.FixtureRequest) -> Iterator[FingerprintBackend]:
    backend = FingerprintBackend(request.param)
    try:
        yield backend
    finally:
        backend.close()


def test_handshake_verifies_the_password_and_reads_the_parameters(device: FingerprintBackend) -> None:
    sim = device.start() if device.name == REAL else device.start(enrolled=2)
    reader = device.reader()
    params = reader.system_parameters()
    assert params.password_verified and params.packet_size in (32, 64, 128, 256) and params.library_size > 0
    used = reader.used_pages()
    assert reader.template_count() == len(used)
    assert 0 <= reader.random_number() <= 0xFFFFFFFF
    if sim is not None:
        assert params.library_size == 200 and params.packet_size == 128
        assert used == [0, 1] and reader.free_page() == 2


def test_capture_image_with_quality_png_and_iso(device: FingerprintBackend, tmp_path: Path) -> None:
    sim = device.start(finger="present", finger_id=3)
    reader = device.reader()
    image = reader.capture_image(timeout=2)
    assert image.shape == (288, 256) and image.dtype == np.uint8
    assert set(np.unique(image) % 17) == {0}  # 4-bit grey scaled by 17, as sent
    assert sim is not None
    assert np.array_equal(image, (render_press(3, 0.9, 1) >> 4) * 17)  # the exact pixels the module sent

    capture = reader.capture(timeout=2)
    assert capture.acceptable and capture.retry_prompt is None and capture.quality >= 60
    png = capture.save_png(tmp_path / "finger.png")
    stored = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert stored is not None and np.array_equal(stored, capture.image)
    record = capture.save_iso(tmp_path / "finger.fir", finger_position=2).read_bytes()
    assert record[:8] == b"FIR\x00010\x00" and len(record) == 32 + 14 + 288 * 256
    parsed = parse_iso_19794_4(record)
    assert (parsed.width, parsed.height, parsed.finger_position, parsed.quality) == (256, 288, 2, capture.quality)
    assert parsed.resolution_ppi == 500 and parsed.pixel_depth == 8
    assert np.array_equal(parsed.image, capture.image)
    png_record = parse_iso_19794_4(capture.iso_record(compression="png"))
    assert png_record.compression == 5 and np.array_equal(png_record.image, capture.image)


def test_poor_quality_prompts_a_retry(device: FingerprintBackend) -> None:
    device.start(finger="present", quality=0.35)
    reader = device.reader(quality_threshold=40)
    with pytest.raises(PoorQualityError) as info:
        reader.capture(timeout=2)
    capture = info.value.capture
    assert capture.quality < 40 and not capture.acceptable
    assert capture.retry_prompt is not None and "press" in capture.retry_prompt
    lenient = reader.capture(timeout=2, raise_on_poor=False)
    assert not lenient.acceptable and lenient.quality == capture.quality


def test_no_finger_times_out(device: FingerprintBackend) -> None:
    device.start(finger="absent")
    reader = device.reader()
    start = time.monotonic()
    with pytest.raises(NoFingerError, match="within 0.5 s") as info:
        reader.capture_image(timeout=0.5)
    assert time.monotonic() - start >= 0.5  # it waited the whole timeout before giving up
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, DriverError)
    assert reader.template_count() >= 0  # the link is still in step afterwards


def test_answers_with_a_bad_checksum_are_retried(device: FingerprintBackend) -> None:
    device.start(corrupt=0.3, seed=5, enrolled=1)
    reader = device.reader(retries=6, timeout=0.5)
    for _ in range(8):
        assert reader.template_count() == 1
    assert reader.packet_errors > 0


def test_wrong_password_is_a_clear_error(device: FingerprintBackend) -> None:
    simulated_only(device.name, "guessing passwords on a real module may lock it")
    device.start(password=0x1234ABCD)
    with pytest.raises(WrongPasswordError, match="rejected password 0x00000000"):
        device.reader(password=0)
    assert device.reader(password=0x1234ABCD).template_count() == 0
