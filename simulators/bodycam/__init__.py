"""Simulated body-worn cameras (bodycam-usb.md): USB device model, media, CLI."""

from .device import EP_IN, EP_OUT, BodyCamFaults, BodyCamSimulator, default_plan
from .media import RecordingSpec, recording_name

__all__ = ["BodyCamSimulator", "BodyCamFaults", "RecordingSpec", "recording_name", "default_plan", "EP_IN", "EP_OUT"]
