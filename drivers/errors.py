"""Root of every driver error tree.

Each driver module (``drivers/<family>.py``) derives its own errors from
``DriverError`` so the gateway can catch "any device failed" in one place,
while a workflow can still tell an unplugged pad from a cancelled signature.
Foreign exceptions (pyserial, pyusb, cv2, byte-level ``BridgeError``) are
wrapped with ``raise …Error(...) from exc`` so the cause stays visible.
"""

from __future__ import annotations

__all__ = ["DriverError"]


class DriverError(Exception):
    """A device driver failed; the message says what went wrong and what to do."""
