"""Body-worn camera driver: GA/T 947.4 functions over BOT, then the recorder's volume.

Why it looks like this: a dock reads identity and clock, binds the officer,
switches the recorder to mass storage and copies recordings as evidence. The
USB side speaks docs/protocols/bodycam-usb.md (vendor SCSI ``F9`` inside
Bulk-Only Transport) through any ``UsbDevice`` (real ``usb://``, ``usbip://``, or an
in-process loopback); a real model is one ``BodyCamModel`` table entry.
The volume side treats every name on the device as hostile data: nothing is
joined into a path, nothing is followed, special files are never opened.

Errors (all ``DriverError``)::

    BodyCamError
    ├── UnsupportedDevice     VID:PID not in the device table (pass model=)
    ├── WrongPassword         the recorder rejected the password (iRet 4 / ASCQ 4)
    ├── DeviceLocked          five wrong passwords in a row: locked until re-plugged
    ├── CommandRejected       the recorder refused a function (other iRet / sense)
    ├── EndpointStalled       a bulk endpoint stays stalled after a clear-halt
    ├── DeviceGone            unplugged / disconnected, including mid-command or mid-read
    ├── DeviceNotResponding   no answer within the timeout
    ├── BodyCamProtocolError  the recorder sent bytes that break docs/protocols/bodycam-usb.md
    ├── VolumeNotFound        the mass-storage volume did not appear in time
    ├── HostileEntryError     asked to open an entry that is not a safe regular file
    └── RecordingChanged      a file was replaced, grew or shrank while being read

Usage::

    with BodyCamera.open("usbip://127.0.0.1:3240/1-1", password="000000") as cam:
        info = cam.info()
        sync = cam.sync_time()                  # sync.before.offset = the drift found
        serial = cam.switch_to_mass_storage()
    with open_storage("/run/egw/volumes/{serial}", serial, timeout=30) as volume:
        scan = volume.scan()
        for rec in scan.recordings:
            with volume.open(rec) as fh:
                for chunk in fh.chunks():
                    ...

Modules: ``device`` (the USB driver, ``BodyCamera``), ``models`` (the device table),
``locators`` (finding the mounted volume), ``names`` (which names from a device are
refused and why), ``volume`` (the read-only walker and reader), ``errors``.
"""


from .device import BodyCamera, BodyCamInfo, DeviceClockReading, StorageStatus, TimeSync
from .errors import (
    BodyCamError,
    BodyCamProtocolError,
    CommandRejected,
    DeviceGone,
    DeviceLocked,
    DeviceNotResponding,
    EndpointStalled,
    HostileEntryError,
    RecordingChanged,
    UnsupportedDevice,
    VolumeNotFound,
    WrongPassword,
)
from .locators import LinuxMountLocator, TemplateLocator, VolumeLocator, open_storage
from .models import DEVICE_TABLE, SIMULATOR_MODEL, BodyCamModel, lookup_model, register_model
from .names import DEFAULT_NAME_PATTERN, MAX_NAME_BYTES, RecordingName, parse_recording_name, unsafe_name_reason
from .volume import ContainerCheck, HostileEntry, RecorderVolume, RecordingReader, VolumeFile, VolumeScan

__all__ = [
    "BodyCamError", "UnsupportedDevice", "WrongPassword", "DeviceLocked", "CommandRejected", "EndpointStalled",
    "DeviceGone", "DeviceNotResponding", "BodyCamProtocolError", "VolumeNotFound", "HostileEntryError",
    "RecordingChanged",
    "BodyCamModel", "DEVICE_TABLE", "SIMULATOR_MODEL", "register_model", "lookup_model", "DEFAULT_NAME_PATTERN",
    "BodyCamera", "BodyCamInfo", "StorageStatus", "DeviceClockReading", "TimeSync",
    "VolumeLocator", "TemplateLocator", "LinuxMountLocator", "open_storage",
    "RecorderVolume", "VolumeScan", "VolumeFile", "RecordingName", "HostileEntry", "RecordingReader",
    "ContainerCheck", "unsafe_name_reason", "parse_recording_name", "MAX_NAME_BYTES",
]
