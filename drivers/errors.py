"""Root of every driver error.

Each device family defines its own subtree in ``drivers/<family>.py``
(e.g. ``RapidTestError(DriverError)``) and wraps foreign exceptions
(pyserial, pyusb, cv2) with ``raise …Error(...) from exc``, so callers catch
one family's errors, or all of them, without importing pyserial or pyusb.
"""

from __future__ import annotations

__all__ = ["DriverError"]


class DriverError(Exception):
    """A device could not be opened, went away, or did not behave as its protocol says."""
