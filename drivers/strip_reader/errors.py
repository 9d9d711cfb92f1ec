"""The strip reader's errors: each says what to do about the photo (see the package docstring's tree)."""

from __future__ import annotations

from ..errors import DriverError


class StripReadError(DriverError):
    """A strip photo could not be read."""


class StripImageError(StripReadError):
    """The input is not a usable colour image."""


class StripNotFoundError(StripReadError):
    """No test cassette of the expected design was found in the photo."""


class StripLinesError(StripReadError):
    """The cassette was found but its window could not be measured."""


class StripCaptureError(StripReadError):
    """The camera or video source could not be opened or gave no frame."""
