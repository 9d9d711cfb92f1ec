"""Root of every driver error.

Each device family defines its own subtree under ``DriverError`` in its
driver module (e.g. ``drivers.bodycam.BodyCamError``) and wraps foreign
exceptions (pyserial, pyusb, cv2, ``firmware_bridge`` errors) with
``raise …Error(...) from exc``, so the gateway catches one family per device
and still sees the cause.
"""

from __future__ import annotations

__all__ = ["DriverError"]


class DriverError(Exception):
    """A device did not do what the driver asked; the message says what and what to do."""
