"""Simulated R30x fingerprint module (ZFM-20 / R307 / AS608 protocol).

``FingerprintSimulator(...).serve_pty()`` or ``.serve_tcp()`` gives a URL a
driver opens like real hardware; ``press_finger()`` / ``lift_finger()``
script the finger. ``egw simulate fingerprint`` runs it standalone.
"""

from simulators.fingerprint.device import FingerprintModule, Press
from simulators.fingerprint.server import FingerprintSimulator

__all__ = ["FingerprintSimulator", "FingerprintModule", "Press"]
