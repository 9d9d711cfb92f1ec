"""The strip reader's errors: each says what to do about the photo (see the package docstring's tree).

Every refusal also carries a ``reason``, a short code naming what was not found or not good enough
(``no_cassette``, ``no_window``, ``no_orientation``, ``blurred``, ``dark``, ``overexposed``, ``uneven``,
``too_small``, ``lines``, ``compressed``, ``image``, ``capture``): the message is for the integrator,
the code is what the officer-facing text (translated, ``gateway/commands/strip.py``) is chosen by."""

from __future__ import annotations

from ..errors import DriverError

REASONS = ("image", "compressed", "capture", "no_cassette", "no_window", "no_orientation", "too_small", "blurred",
           "dark", "overexposed", "uneven", "lines")


class StripReadError(DriverError):
    """A strip photo could not be read."""

    default_reason = "lines"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason
        assert self.reason in REASONS, self.reason


class StripImageError(StripReadError):
    """The input is not a usable colour image."""

    default_reason = "image"


class StripNotFoundError(StripReadError):
    """No test cassette (no result window of the profile's shape) was found in the photo."""

    default_reason = "no_window"


class StripLinesError(StripReadError):
    """The window was found but could not be measured."""

    default_reason = "lines"


class StripCaptureError(StripReadError):
    """The camera or video source could not be opened or gave no frame."""

    default_reason = "capture"


class StripProfileError(DriverError):
    """A cassette profile file is missing, malformed or describes a cassette the reader cannot read."""
