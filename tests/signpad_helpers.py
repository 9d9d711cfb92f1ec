"""Shared pieces for the signature pad tests: a fake clock both ends can share."""

from __future__ import annotations

from typing import Any

from firmware_bridge.usb import LoopbackUsbDevice
from simulators.signpad import StuPadModel


class FakeClock:
    """Monotonic seconds that only move when someone sleeps: the model and driver share it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += max(seconds, 0.0)


def pad_and_model(script: list[dict[str, Any]] | None, **model_kwargs: Any):
    """(SignaturePad, StuPadModel, FakeClock) wired in-process through LoopbackUsbDevice."""
    from drivers.signpad import SignaturePad

    clock = FakeClock()
    model = StuPadModel(script, clock=clock, **model_kwargs)
    device = LoopbackUsbDevice(model, serial_number=model.serial)
    return SignaturePad(device, clock=clock, sleep=clock.sleep), model, clock
