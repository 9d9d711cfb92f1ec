"""FingerprintReader against the simulator over real ptys and real TCP on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.fingerprint import (
    CaptureCancelled,
    DeviceGoneError,
    DeviceNotRespondingError,
    EnrollmentError,
    FingerprintError,
    FingerprintReader,
    ModuleError,
    PacketError,
    WrongPasswordError,
    iso_19794_4_record,
    quality_score,
)
from firmware_bridge.r30x import ConfirmationCode, Instruction
from simulators.fingerprint import FingerprintSimulator
from simulators.fingerprint.images import blank_sensor, render_press

Serve = Callable[..., tuple[FingerprintSimulator, str]]


@pytest.fixture(params=["pty", "tcp"])
def serve(request: pytest.FixtureRequest) -> Iterator[Serve]:
    """Start simulators on the parametrised transport; stop them all afterwards."""
    started: list[FingerprintSimulator] = []

    def start(**kwargs: object) -> tuple[FingerprintSimulator, str]:
        kwargs.setdefault("baud", 0)
        sim = FingerprintSimulator(**kwargs)  # type: ignore[arg-type]
        started.append(sim)
        url = sim.serve_pty() if request.param == "pty" else sim.serve_tcp(0)
        return sim, url

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def reader_for() -> Iterator[Callable[..., FingerprintReader]]:
    opened: list[FingerprintReader] = []

    def open_(url: str, **kwargs: object) -> FingerprintReader:
        kwargs.setdefault("timeout", 1.0)
        reader = FingerprintReader(url, **kwargs)  # type: ignore[arg-type]
        opened.append(reader)
        return reader

    yield open_
    for reader in opened:
        reader.close()






def test_iso_record_header_bytes() -> None:
    img = np.zeros((2, 4), dtype=np.uint8)
    record = iso_19794_4_record(img, quality=77, finger_position=7)
    assert len(record) == 32 + 14 + 8
    assert record[8:14] == (54).to_bytes(6, "big")
    assert record[18:20] == b"\x01\x01" and record[20:28] == (500).to_bytes(2, "big") * 4
    assert record[28:30] == b"\x08\x00"
    assert record[32:36] == (22).to_bytes(4, "big")
    assert record[36:41] == bytes([7, 1, 1, 77, 0]) and record[41:45] == b"\x00\x04\x00\x02"


def test_enrol_then_identify(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    sim, url = serve(enrolled=3)
    reader = reader_for(url)
    sim.press_finger(21)
    enrollment = reader.enroll(timeout=2, wait_for_lift=False)
    assert enrollment.page == 3 and reader.template_count() == 4
    sim.press_finger(21)  # a new placement of the same finger
    result = reader.search(timeout=2, with_image=True)
    assert result.matched and result.page == 3 and result.score >= 80
    assert result.capture is not None and result.capture.acceptable
    sim.press_finger(2)  # pre-enrolled officer at page 1
    assert reader.search(timeout=2).page == 1
    sim.press_finger(99)
    unknown = reader.search(timeout=2)
    assert not unknown.matched and unknown.page is None


def test_enrol_waits_for_the_lift_and_rejects_two_fingers(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    sim, url = serve()
    reader = reader_for(url)
    start = time.monotonic()
    sim.press_finger(30, duration=0.3)
    second = threading.Timer(0.6, sim.press_finger, args=(31,))  # another finger: the merge must fail
    second.start()
    try:
        with pytest.raises(EnrollmentError, match="same finger"):
            reader.enroll(page=5, timeout=3)
        assert time.monotonic() - start >= 0.6  # it really waited for the lift and the second press
    finally:
        second.join()
    assert reader.template_count() == 0




def test_module_that_wants_a_password_we_skipped(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    sim, url = serve(password=0x42)
    reader = reader_for(url, verify=False)
    with pytest.raises(WrongPasswordError, match="verified first"):
        reader.template_count()




def test_finger_after_n_seconds(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    start = time.monotonic()  # before the simulator exists: its 0.8 s count from later
    sim, url = serve(finger=0.8)
    reader = reader_for(url)
    assert not reader.read_image()
    reader.wait_for_finger(timeout=5)
    assert time.monotonic() - start >= 0.8
    assert reader.download_image().shape == (288, 256)




def test_quality_score_ranks_clean_above_degraded() -> None:
    clean = render_press(8, 1.0, 1)
    blurred = cv2.GaussianBlur(clean, (0, 0), 3.0)
    noisy = np.clip(clean + np.random.default_rng(3).normal(0, 60, clean.shape), 0, 255).astype(np.uint8)
    q_clean, q_blur, q_noise = quality_score(clean), quality_score(blurred), quality_score(noisy)
    assert q_clean > 80
    assert q_clean > q_blur + 25 and q_clean > q_noise + 25
    assert quality_score(blank_sensor()) == 0
    assert quality_score(render_press(8, 0.9, 1)) > quality_score(render_press(8, 0.5, 1))
    assert all(0 <= q <= 100 for q in (q_clean, q_blur, q_noise))


def test_noise_between_packets_is_hunted_past(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    sim, url = serve(finger="present", noise=0.5, seed=1)
    reader = reader_for(url)
    image = reader.capture_image(timeout=2)
    assert image.shape == (288, 256)
    assert reader.codec.discarded > 0




def test_reported_packet_error_is_retried_then_given_up(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    sim, url = serve()
    reader = reader_for(url, retries=2)
    sim.inject_error(ConfirmationCode.PACKET_RECEIVE_ERROR, 2)
    assert reader.template_count() == 0
    sim.inject_error(ConfirmationCode.PACKET_RECEIVE_ERROR, 3)
    with pytest.raises(PacketError, match="TEMPLATE_NUM to .* failed 3 times"):
        reader.template_count()
    sim.inject_error(ConfirmationCode.FLASH_WRITE_ERROR)
    with pytest.raises(ModuleError) as info:
        reader.empty_library()
    assert info.value.code is ConfirmationCode.FLASH_WRITE_ERROR


def test_lost_reply_is_retried_and_silence_is_reported(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    sim, url = serve()
    reader = reader_for(url, timeout=0.3, retries=1)
    sim.drop_replies(1)
    assert reader.template_count() == 0
    sim.drop_replies(2)
    with pytest.raises(DeviceNotRespondingError, match="did not answer TEMPLATE_NUM"):
        reader.template_count()
    assert sim.commands_seen().count(Instruction.TEMPLATE_NUM) == 4  # 1 lost + 1 answered, then 2 lost


def test_wrong_address_gets_no_answer(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    sim, url = serve(address=0x0000ABCD)
    with pytest.raises(DeviceNotRespondingError, match="0xFFFFFFFF"):
        reader_for(url, timeout=0.2, retries=0)
    assert reader_for(url, address=0x0000ABCD).template_count() == 0


def test_device_gone(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    sim, url = serve()
    reader = reader_for(url, retries=0, timeout=0.5)
    sim.stop()
    with pytest.raises(DeviceGoneError, match="went away"):
        reader.template_count()


def test_missing_port_is_device_gone(tmp_path: Path) -> None:
    with pytest.raises(DeviceGoneError, match="cannot open"):
        FingerprintReader(str(tmp_path / "ttyUSB9"))
    with pytest.raises(FingerprintError):
        FingerprintReader("socket://127.0.0.1:9", timeout=0.5)


def _settled(sim: FingerprintSimulator) -> int:
    """The simulator's byte count once it stopped changing for 0.1 s (at most 5 s)."""
    deadline, last = time.monotonic() + 5, -1
    while time.monotonic() < deadline:
        now = sim.bytes_sent
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return sim.bytes_sent


def test_upload_is_paced_at_the_configured_baud(reader_for: Callable[..., FingerprintReader]) -> None:
    """Correctness of pacing (not a speed test): the image cannot arrive faster than the line allows."""
    baud = 921600
    with FingerprintSimulator(baud=baud, finger="present") as sim:
        reader = reader_for(sim.serve_pty(), baudrate=baud)
        assert reader.read_image()
        sent_before = _settled(sim)  # the simulator counts a packet after writing it: the reader can be faster
        start = time.monotonic()
        image = reader.download_image()
        elapsed = time.monotonic() - start
        expected = 12 + 288 * (11 + 128)  # ack + 288 data packets of 128 bytes
        wire_bytes = _settled(sim) - sent_before
        assert image.shape == (288, 256)
        assert wire_bytes == expected
        assert elapsed >= wire_bytes * 10 / baud  # 10 bits per byte on a UART: ≥ 0.434 s


def test_waiting_can_be_cancelled(serve: Serve, reader_for: Callable[..., FingerprintReader]) -> None:
    sim, url = serve(finger="absent")
    reader = reader_for(url)
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(CaptureCancelled):
            reader.capture(timeout=10, cancel=cancel)
    finally:
        timer.join()
    assert time.monotonic() - start < 5
    assert reader.template_count() == 0  # the link is still in step afterwards
