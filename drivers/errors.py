"""Base of every driver error; each device family subclasses it in its own module.

Drivers wrap foreign exceptions (pyserial, pyusb, cv2) as
``raise <Family>Error(...) from exc`` so callers catch one tree per family.
"""

from __future__ import annotations

__all__ = ["DriverError"]


class DriverError(Exception):
    """A device driver failed; the message says what was wrong and what to do."""
