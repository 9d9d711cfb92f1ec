"""The fingerprint-reader driver's errors: one ``FingerprintError`` tree for the reader, the image and
the ISO record code, so a caller catches one base whichever part failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from firmware_bridge.r30x import ConfirmationCode

from ..errors import DriverError

if TYPE_CHECKING:
    from .results import FingerCapture


class FingerprintError(DriverError):
    """Base of every fingerprint-reader error."""


class DeviceGoneError(FingerprintError):
    """The serial port could not be opened, disappeared, or the connection closed."""


class DeviceNotRespondingError(FingerprintError):
    """No reply within the timeout, even after retries."""


class PacketError(FingerprintError):
    """Replies kept arriving garbled (checksum / framing errors) after retries."""


class WrongPasswordError(FingerprintError):
    """The module rejected the password, or requires one that was not given."""


class NoFingerError(FingerprintError, TimeoutError):
    """No finger was placed on the sensor within the timeout."""


class PoorQualityError(FingerprintError):
    """The image is below the quality threshold; ask the person to press again.

    The capture is attached (``.capture``) so a caller may still keep it.
    """

    def __init__(self, message: str, capture: FingerCapture) -> None:
        super().__init__(message)
        self.capture = capture


class EnrollmentError(FingerprintError):
    """Enrolment failed: the presses came from different fingers, or no free page."""


class ImageEncodingError(FingerprintError):
    """The image could not be encoded (PNG) or did not fit an ISO record."""


class CaptureCancelled(FingerprintError):
    """The caller cancelled a wait for a finger (its ``cancel`` event was set)."""


class ModuleError(FingerprintError):
    """The module answered with a confirmation code the operation cannot continue from."""

    def __init__(self, message: str, code: ConfirmationCode) -> None:
        super().__init__(message)
        self.code = code
