"""Simulated body-worn cameras (docs/protocols/bodycam-usb.md): USB device model, media, CLI."""

from .device import EP_IN, EP_OUT, BodyCamFaults, BodyCamSimulator
from .media import RecordingSpec, recording_name
from .volume import default_plan

__all__ = ["BodyCamSimulator", "BodyCamFaults", "RecordingSpec", "recording_name", "default_plan", "EP_IN", "EP_OUT"]
