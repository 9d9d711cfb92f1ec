"""Simulated Wacom STU-540 signature pad (USB HID over USB/IP) with scripted signers."""

from .model import STU540_CAPABILITY, StuPadModel
from .signer import PenSample, SignerScriptError, detect_buttons, load_script, name_script

__all__ = ["StuPadModel", "STU540_CAPABILITY", "PenSample", "SignerScriptError", "detect_buttons",
           "load_script", "name_script"]
