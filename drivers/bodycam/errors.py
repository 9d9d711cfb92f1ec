"""The body-camera driver's errors: every failure it reports is a ``DriverError`` subclass from here.

One module so the device, locator and volume modules raise the same classes and callers
catch them from ``drivers.bodycam`` whichever part failed."""

from __future__ import annotations

from firmware_bridge import bodycam_usb as f9
from firmware_bridge.bot import SenseData

from ..errors import DriverError


class BodyCamError(DriverError):
    """Base of the body-camera driver's errors."""


class UnsupportedDevice(BodyCamError):
    pass


class WrongPassword(BodyCamError):
    pass


class DeviceLocked(BodyCamError):
    pass


class CommandRejected(BodyCamError):
    def __init__(self, message: str, iret: f9.IRet | None = None, sense: SenseData | None = None) -> None:
        super().__init__(message)
        self.iret = iret
        self.sense = sense


class _CommandAborted(CommandRejected):
    """Sense key ABORTED COMMAND: the command may simply be retried."""


class EndpointStalled(BodyCamError):
    pass


class DeviceGone(BodyCamError):
    pass


class DeviceNotResponding(BodyCamError):
    pass


class BodyCamProtocolError(BodyCamError):
    pass


class VolumeNotFound(BodyCamError):
    pass


class HostileEntryError(BodyCamError):
    pass


class RecordingChanged(BodyCamError):
    pass
