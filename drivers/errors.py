"""Root of every driver error.

Each device family defines its own subtree in its module (e.g.
``drivers.fingerprint.FingerprintError``), and wraps foreign exceptions
(pyserial, pyusb, cv2) with ``raise … from exc`` so callers catch one tree
and still see the cause.
"""

from __future__ import annotations

__all__ = ["DriverError"]


class DriverError(Exception):
    """A device could not do what was asked; the message says what to do next."""
