"""Body-worn camera driver: GA/T 947.4 functions over BOT, then the recorder's volume.

Why it looks like this: a dock reads identity and clock, binds the officer,
switches the recorder to mass storage and copies recordings as evidence. The
USB side speaks bodycam-usb.md (vendor SCSI ``F9`` inside Bulk-Only
Transport) through any ``UsbDevice`` (real ``usb://``, ``usbip://``, or an
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
    ├── BodyCamProtocolError  the recorder sent bytes that break bodycam-usb.md
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
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
import struct
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

from firmware_bridge import bodycam_usb as f9
from firmware_bridge.bot import (
    CSW_LENGTH, CommandBlockWrapper, CommandStatusWrapper, CswStatus, InquiryData, SenseData, SenseKey,
    SENSE_LENGTH, INQUIRY_LENGTH, inquiry_cdb, request_sense_cdb, test_unit_ready_cdb,
)
from firmware_bridge.errors import BridgeError, ProtocolError, TransportClosed, TransportTimeout, UsbStall
from firmware_bridge.usb import UsbDevice

from .errors import DriverError

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


# ---- errors ---------------------------------------------------------------------------------


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


# ---- device table -------------------------------------------------------------------------

DEFAULT_NAME_PATTERN = r"(?P<serial>\d{7})_(?P<user_no>\d{6})_(?P<start>\d{14})_(?P<seq>\d{4})(?P<imp>_IMP)?\.(?P<ext>avi|mp4|wav|jpg)"


@dataclass(frozen=True)
class BodyCamModel:
    """Everything model-specific: a real recorder is one of these (plus a subclass if it must)."""

    vendor_id: int
    product_id: int
    name: str
    layout: f9.ZfyLayout = f9.ZFY_LAYOUT_94
    opcode: int = f9.VENDOR_OPCODE
    endpoint_in: int = 0x81
    endpoint_out: int = 0x02
    lun: int = 0
    name_pattern: str = DEFAULT_NAME_PATTERN
    default_password: str = f9.DEFAULT_PASSWORD


SIMULATOR_MODEL = BodyCamModel(0x1209, 0x0001, "egw simulated body camera (bodycam-usb.md)")
DEVICE_TABLE: dict[tuple[int, int], BodyCamModel] = {(SIMULATOR_MODEL.vendor_id, SIMULATOR_MODEL.product_id): SIMULATOR_MODEL}


def register_model(model: BodyCamModel) -> None:
    DEVICE_TABLE[(model.vendor_id, model.product_id)] = model


def lookup_model(vendor_id: int, product_id: int) -> BodyCamModel | None:
    return DEVICE_TABLE.get((vendor_id, product_id))


# ---- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageStatus:
    total_mib: int
    free_mib: int
    file_count: int


@dataclass(frozen=True)
class BodyCamInfo:
    """Identity and state read from the recorder in one go (for the manifest and the operator)."""

    model: str
    usb_serial: str | None
    id_code: str
    zfy: f9.ZfyInfo
    battery_percent: int
    resolution: tuple[int, int]
    storage: StorageStatus

    @property
    def serial(self) -> str:
        return self.zfy.serial

    @property
    def serial_consistent(self) -> bool:
        """USB iSerialNumber agrees with ZFY_INFO cSerial (a mismatch deserves an alarm)."""
        return self.usb_serial is None or self.usb_serial == self.zfy.serial


@dataclass(frozen=True)
class DeviceClockReading:
    """The recorder's clock against ours. ``offset`` > 0: the recorder is ahead.

    The device reports whole seconds and the reading is taken at the midpoint
    of the request, so ``offset`` is good to about ±1 s plus half ``round_trip``.
    """

    device_time: datetime  # naive, the recorder's local wall clock
    host_utc: datetime  # aware UTC, midpoint of the request
    zone_minutes: int
    round_trip: timedelta

    @property
    def device_utc(self) -> datetime:
        return (self.device_time - timedelta(minutes=self.zone_minutes)).replace(tzinfo=timezone.utc)

    @property
    def offset(self) -> timedelta:
        return self.device_utc - self.host_utc

    def to_host_utc(self, device_local: datetime) -> datetime:
        """Correct a device-local timestamp (e.g. a recording's start) to UTC by this reading."""
        return (device_local - timedelta(minutes=self.zone_minutes)).replace(tzinfo=timezone.utc) - self.offset


@dataclass(frozen=True)
class TimeSync:
    before: DeviceClockReading
    set_to: datetime  # the local time pushed
    zone_minutes: int
    after: DeviceClockReading


# ---- the USB side -------------------------------------------------------------------------------

_CLEAR_FEATURE = 0x01
_ENDPOINT_HALT = 0


class BodyCamera:
    """One recorder on USB in vendor (non-storage) mode.

    ``device`` is any pyusb-shaped ``UsbDevice``. ``model`` defaults to the
    device-table entry for the device's VID:PID. Every method raises a
    ``BodyCamError`` subclass, never a transport or codec exception.
    """

    # Officer and unit names that are not GBK are read with U+FFFD and flagged in ``ZfyInfo.lossy``
    # (their bytes stay in ``ZfyInfo.raw``), rather than refusing the recorder and its recordings:
    # serial and police number, which identify device and officer, are still checked strictly.
    zfy_text_errors = "replace"

    def __init__(self, device: UsbDevice, password: str | None = None, model: BodyCamModel | None = None,
                 timeout_ms: int = 5000, layout: f9.ZfyLayout | None = None) -> None:
        found = model or lookup_model(device.idVendor, device.idProduct)
        if found is None:
            raise UnsupportedDevice(
                f"USB device {device.idVendor:04x}:{device.idProduct:04x} is not in the body-camera device table; "
                "add a BodyCamModel with register_model() or pass model=")
        if layout is not None:
            found = replace(found, layout=layout)
        self.device = device
        self.model = found
        self.password = password if password is not None else found.default_password
        if not _valid_password(self.password):
            raise BodyCamError("a recorder password is 6 printable ASCII characters; check the configuration")
        self.timeout_ms = timeout_ms
        self.usb_serial: str | None = device.serial_number
        self._tag = 0
        self._closed = False

    @classmethod
    def open(cls, url: str, password: str | None = None, model: BodyCamModel | None = None,
             timeout_ms: int = 5000, layout: f9.ZfyLayout | None = None) -> "BodyCamera":
        """Open ``usbip://host:port/busid`` or ``usb://VID:PID[/serial]``."""
        try:
            from firmware_bridge.usb_transport import open_usb_device
        except ImportError as exc:
            raise BodyCamError(f"the USB transport (firmware_bridge.usb_transport) is not available: {exc}") from exc
        try:
            device = open_usb_device(url)
        except TransportClosed as exc:
            raise DeviceGone(f"cannot open {url}: {exc}; check the recorder is plugged in") from exc
        except BridgeError as exc:
            raise BodyCamError(f"cannot open {url}: {exc}; check the URL and that the recorder is attached") from exc
        except OSError as exc:
            raise BodyCamError(f"cannot open {url}: {exc}") from exc
        try:
            return cls(device, password=password, model=model, timeout_ms=timeout_ms, layout=layout)
        except BaseException:
            device.close()
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.device.close()
            except (BridgeError, OSError):
                pass

    def __enter__(self) -> "BodyCamera":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- high level -------------------------------------------------------------------------

    def info(self) -> BodyCamInfo:
        """ID code (Init_Device), ZFY_INFO, battery, resolution and storage."""
        id_code = self.init_device()
        return BodyCamInfo(
            model=self.model.name, usb_serial=self.usb_serial, id_code=id_code, zfy=self.zfy_info(),
            battery_percent=self.battery(), resolution=self.resolution(), storage=self.storage(),
        )

    def init_device(self) -> str:
        response = self._call_in(f9.Function.INIT_DEVICE)
        assert isinstance(response, f9.IdCodeResponse)
        return response.id_code

    def id_code(self) -> str:
        response = self._call_in(f9.Function.GET_ID_CODE)
        assert isinstance(response, f9.IdCodeResponse)
        return response.id_code

    def zfy_info(self) -> f9.ZfyInfo:
        response = self._call_in(f9.Function.GET_ZFY_INFO)
        assert isinstance(response, f9.ZfyInfoResponse)
        return response.info

    def battery(self) -> int:
        response = self._call_in(f9.Function.READ_BATTERY)
        assert isinstance(response, f9.BatteryResponse)
        return response.percent

    def resolution(self) -> tuple[int, int]:
        response = self._call_in(f9.Function.READ_RESOLUTION)
        assert isinstance(response, f9.ResolutionResponse)
        return response.width, response.height

    def storage(self) -> StorageStatus:
        response = self._call_in(f9.Function.GET_STORAGE)
        assert isinstance(response, f9.StorageResponse)
        return StorageStatus(response.total_mib, response.free_mib, response.file_count)

    def device_time(self, zone_minutes: int = 480) -> DeviceClockReading:
        """Read the recorder's clock; ``zone_minutes`` is the zone its local time is meant in."""
        t0 = time.monotonic()
        wall0 = datetime.now(timezone.utc)
        response = self._call_in(f9.Function.GET_DEV_TIME)
        t1 = time.monotonic()
        assert isinstance(response, f9.DeviceTimeResponse)
        rtt = timedelta(seconds=t1 - t0)
        return DeviceClockReading(response.time, wall0 + rtt / 2, zone_minutes, rtt)

    def sync_time(self, now: datetime | None = None, zone_minutes: int = 480) -> TimeSync:
        """Measure the drift, push ``now`` (aware; default: the host clock) as local time, measure again."""
        if now is not None and now.tzinfo is None:
            raise BodyCamError("sync_time(now=...) needs an aware datetime (e.g. datetime.now(timezone.utc))")
        before = self.device_time(zone_minutes)
        instant = now if now is not None else datetime.now(timezone.utc)
        local = instant.astimezone(timezone(timedelta(minutes=zone_minutes))).replace(tzinfo=None, microsecond=0)
        try:
            payload = f9.encode_sync_time(local, zone_minutes)
        except BridgeError as exc:
            raise BodyCamError(f"cannot encode the time to set: {exc}") from exc
        self._call_out(f9.Function.SYNC_DEV_TIME, payload)
        after = self.device_time(zone_minutes)
        return TimeSync(before=before, set_to=local, zone_minutes=zone_minutes, after=after)

    def write_info(self, info: f9.ZfyInfo | None = None, *, user_no: str | None = None, user_name: str | None = None,
                   unit_no: str | None = None, unit_name: str | None = None) -> f9.ZfyInfo:
        """Bind officer/unit (GBK text). Unchanged fields keep the recorder's values; the result is read back."""
        base = info if info is not None else self.zfy_info()
        changes = {k: v for k, v in (("user_no", user_no), ("user_name", user_name), ("unit_no", unit_no),
                                     ("unit_name", unit_name)) if v is not None}
        wanted = replace(base, **changes)
        try:
            payload = f9.encode_zfy_info(wanted, self.model.layout)
        except BridgeError as exc:
            raise BodyCamError(f"cannot write officer binding: {exc}") from exc
        self._call_out(f9.Function.WRITE_ZFY_INFO, payload)
        stored = self.zfy_info()
        if stored != wanted:
            raise CommandRejected(f"recorder accepted WriteZFYInfo but reads back {stored}, not {wanted}; retry the write")
        return stored

    def set_password(self, new_password: str) -> None:
        if not _valid_password(new_password):
            raise BodyCamError("a recorder password is 6 printable ASCII characters")
        self._call_out(f9.Function.SET_PASSWORD, f9.encode_password_payload(new_password))
        self.password = new_password

    def switch_to_mass_storage(self) -> str:
        """SetMSDC: the recorder leaves the bus and comes back as a volume. Returns its serial
        (to find the volume with ``open_storage``); this handle is closed afterwards."""
        serial = self.usb_serial or self.zfy_info().serial
        self._call_none(f9.Function.SET_MSDC)
        self.close()
        return serial

    def open_storage(self, locator: "VolumeLocator | str", timeout: float = 30.0) -> "RecorderVolume":
        """Find the volume of this recorder (after ``switch_to_mass_storage``)."""
        serial = self.usb_serial
        if serial is None:
            raise BodyCamError("the recorder's serial is unknown (no iSerialNumber); call open_storage(locator, serial)")
        return open_storage(locator, serial, timeout=timeout, model=self.model)

    def scsi_inquiry(self) -> InquiryData:
        data, csw = self._command(inquiry_cdb(), True, INQUIRY_LENGTH)
        if csw.status != CswStatus.PASSED:
            raise CommandRejected(f"INQUIRY failed: {self._request_sense()}")
        try:
            return InquiryData.from_bytes(data)
        except ProtocolError as exc:
            raise BodyCamProtocolError(f"bad INQUIRY data: {exc}") from exc

    def test_unit_ready(self) -> bool:
        _, csw = self._command(test_unit_ready_cdb(), False, 0)
        return csw.status == CswStatus.PASSED

    # ---- vendor functions ---------------------------------------------------------------------

    def _cdb(self, function: f9.Function) -> bytes:
        return f9.build_cdb(function, self.password, self.model.opcode)

    def _call_in(self, function: f9.Function) -> f9.Response:
        """An IN function; retried once when the recorder aborted it (a stalled data phase)."""
        try:
            return self._call_in_once(function)
        except _CommandAborted:
            return self._call_in_once(function)

    def _call_in_once(self, function: f9.Function) -> f9.Response:
        length = f9.response_length(function, self.model.layout)
        data, csw = self._command(self._cdb(function), True, length)
        meaningful = data[: max(0, length - csw.residue)] if csw.residue <= length else data
        if csw.status == CswStatus.FAILED:
            self._raise_failure(function, iret_hint=data[0] if data else None)
        try:
            response = f9.parse_response(function, meaningful, self.model.layout, text_errors=self.zfy_text_errors)
        except ProtocolError as exc:
            raise BodyCamProtocolError(f"recorder sent a malformed {function.name} response: {exc}") from exc
        if isinstance(response, f9.FunctionRefused):
            self._raise_iret(function, response.iret, None)
        return response

    def _call_out(self, function: f9.Function, payload: bytes) -> None:
        _, csw = self._command(self._cdb(function), False, len(payload), payload)
        if csw.status == CswStatus.FAILED:
            self._raise_failure(function, None)

    def _call_none(self, function: f9.Function) -> None:
        _, csw = self._command(self._cdb(function), False, 0)
        if csw.status == CswStatus.FAILED:
            self._raise_failure(function, None)

    def _raise_failure(self, function: f9.Function, iret_hint: int | None) -> None:
        sense = self._request_sense()
        if sense.key == SenseKey.ABORTED_COMMAND:
            raise _CommandAborted(f"recorder {self._who()} aborted {function.name}; retry it", sense=sense)
        if sense.key == SenseKey.ILLEGAL_REQUEST and sense.asc == f9.ASC_BODYCAM:
            if sense.ascq == f9.ASCQ_LOCKED:
                raise DeviceLocked(
                    f"recorder {self._who()} is locked after five wrong passwords; unplug it and plug it back in, "
                    "then use the right password")
            try:
                iret = f9.IRet(sense.ascq)
            except ValueError:
                raise CommandRejected(f"{function.name} failed with unknown code ASCQ 0x{sense.ascq:02X}", sense=sense) from None
            self._raise_iret(function, iret, sense)
        if sense.key == SenseKey.ILLEGAL_REQUEST and sense.asc == f9.ASC_INVALID_PARAMETER:
            raise CommandRejected(f"recorder {self._who()} refused the data sent with {function.name} "
                                  "(invalid field in parameter list); check the values", sense=sense)
        if sense.key == SenseKey.ILLEGAL_REQUEST and sense.asc in (f9.ASC_INVALID_FIELD_IN_CDB, 0x20):
            raise CommandRejected(f"recorder {self._who()} does not support {function.name} as sent "
                                  f"(sense {sense.key:X}/{sense.asc:02X}/{sense.ascq:02X}); check the device-table entry",
                                  sense=sense)
        if iret_hint is not None and iret_hint in f9.FAILURE_CODES:
            self._raise_iret(function, f9.IRet(iret_hint), sense)
        raise CommandRejected(f"{function.name} failed on recorder {self._who()} "
                              f"(sense {sense.key:X}/{sense.asc:02X}/{sense.ascq:02X})", sense=sense)

    def _raise_iret(self, function: f9.Function, iret: f9.IRet, sense: SenseData | None) -> None:
        if iret is f9.IRet.PASSWORD_WRONG:
            raise WrongPassword(
                f"recorder {self._who()} rejected the password for {function.name}; check the configured password "
                "(five wrong passwords in a row lock the recorder until it is re-plugged)")
        raise CommandRejected(f"recorder {self._who()} refused {function.name}: iRet {int(iret)} ({iret.name})",
                              iret=iret, sense=sense)

    def _who(self) -> str:
        return self.usb_serial or f"{self.device.idVendor:04x}:{self.device.idProduct:04x}"

    def _request_sense(self) -> SenseData:
        data, csw = self._command(request_sense_cdb(SENSE_LENGTH), True, SENSE_LENGTH)
        if csw.status != CswStatus.PASSED:
            return SenseData(SenseKey.NO_SENSE)
        try:
            return SenseData.from_bytes(data)
        except ProtocolError as exc:
            raise BodyCamProtocolError(f"recorder sent malformed sense data: {exc}") from exc

    # ---- Bulk-Only Transport, host side -------------------------------------------------------

    def _command(self, cb: bytes, data_in: bool, length: int, out: bytes = b"") -> tuple[bytes, CommandStatusWrapper]:
        """One BOT command: CBW, data phase, CSW (BOT 5.3). Returns (data-IN bytes, CSW)."""
        if self._closed:
            raise DeviceGone("this recorder handle is closed (the recorder was unplugged or switched to mass "
                             "storage); open it again once it is back in vendor mode")
        self._tag = (self._tag + 1) & 0xFFFFFFFF
        tag = self._tag
        cbw = CommandBlockWrapper(tag=tag, data_length=length, data_in=data_in, lun=self.model.lun, cb=cb)
        self._bulk_write(cbw.to_bytes())
        data = b""
        if length and data_in:
            data = self._read_data(length)
        elif length:
            self._bulk_write(out)
        csw = self._read_csw()
        if csw.tag != tag:
            self._reset_recovery()
            raise BodyCamProtocolError(f"CSW tag {csw.tag} does not match CBW tag {tag}; the pipe was reset")
        if csw.status == CswStatus.PHASE_ERROR:
            self._reset_recovery()
            raise BodyCamProtocolError("recorder reported a BOT phase error; the pipe was reset, retry the command")
        return data, csw

    def _read_data(self, length: int) -> bytes:
        got = bytearray()
        while len(got) < length:
            want = length - len(got)
            try:
                chunk = self._transfer(lambda: self.device.read(self.model.endpoint_in, want, self.timeout_ms))
            except UsbStall:
                # BOT: the device ended the data phase with a stall; clear it and read the CSW.
                self._clear_halt(self.model.endpoint_in)
                break
            got += chunk
            if len(chunk) < want and len(chunk) % 512:
                break  # short packet: data phase over
            if not chunk:
                break
        return bytes(got)

    def _read_csw(self) -> CommandStatusWrapper:
        for attempt in range(2):
            try:
                raw = self._transfer(lambda: self.device.read(self.model.endpoint_in, CSW_LENGTH, self.timeout_ms))
            except UsbStall as exc:
                if attempt:
                    self._reset_recovery(quiet=True)
                    raise EndpointStalled(
                        f"bulk IN 0x{self.model.endpoint_in:02x} of recorder {self._who()} stays stalled after "
                        "clearing it; re-plug the recorder") from exc
                self._clear_halt(self.model.endpoint_in)
                continue
            try:
                return CommandStatusWrapper.from_bytes(bytes(raw))
            except ProtocolError as exc:
                self._reset_recovery(quiet=True)
                raise BodyCamProtocolError(f"recorder sent an invalid CSW ({exc}); the pipe was reset") from exc
        raise AssertionError("unreachable")

    def _bulk_write(self, data: bytes) -> None:
        try:
            self._transfer(lambda: self.device.write(self.model.endpoint_out, data, self.timeout_ms))
        except UsbStall as exc:
            self._clear_halt(self.model.endpoint_out)
            try:
                self._transfer(lambda: self.device.write(self.model.endpoint_out, data, self.timeout_ms))
            except UsbStall:
                raise EndpointStalled(
                    f"bulk OUT 0x{self.model.endpoint_out:02x} of recorder {self._who()} stays stalled after clearing "
                    "it; re-plug the recorder") from exc

    def _clear_halt(self, endpoint: int) -> None:
        try:
            self._transfer(lambda: self.device.ctrl_transfer(0x02, _CLEAR_FEATURE, _ENDPOINT_HALT, endpoint, None, self.timeout_ms))
        except UsbStall as exc:
            raise EndpointStalled(f"recorder {self._who()} refused to clear the halt on 0x{endpoint:02x}") from exc

    def _reset_recovery(self, quiet: bool = False) -> None:
        """BOT 5.3.4: Bulk-Only Mass Storage Reset, then clear both halts."""
        try:
            self._transfer(lambda: self.device.ctrl_transfer(0x21, 0xFF, 0, 0, None, self.timeout_ms))
            self._clear_halt(self.model.endpoint_in)
            self._clear_halt(self.model.endpoint_out)
        except BodyCamError:
            if not quiet:
                raise

    def _transfer(self, call: Callable[[], object]) -> bytes:
        """Run one transfer; map transport failures onto the driver's errors (UsbStall passes through)."""
        try:
            result = call()
        except UsbStall:
            raise
        except TransportClosed as exc:
            self._closed = True
            raise DeviceGone(f"recorder {self._who()} went away mid-command ({exc}); re-plug it and retry") from exc
        except TransportTimeout as exc:
            raise DeviceNotResponding(f"recorder {self._who()} did not answer in {self.timeout_ms} ms ({exc})") from exc
        except BridgeError as exc:
            if "timeout" in str(exc).lower():
                raise DeviceNotResponding(f"recorder {self._who()} did not answer ({exc})") from exc
            raise DeviceGone(f"USB transfer to recorder {self._who()} failed ({exc}); re-plug it and retry") from exc
        except Exception as exc:  # pyusb's USBError / USBTimeoutError and OSError, classified by errno
            number = getattr(exc, "errno", None) or getattr(exc, "backend_error_code", None)
            name = type(exc).__name__
            if number in (errno.EPIPE, -9):  # -9: LIBUSB_ERROR_PIPE
                raise UsbStall(str(exc)) from exc
            if "Timeout" in name or number in (errno.ETIMEDOUT, -7):
                raise DeviceNotResponding(f"recorder {self._who()} did not answer in {self.timeout_ms} ms ({exc})") from exc
            if isinstance(exc, OSError) or "USBError" in name:
                self._closed = number in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN, -4)
                raise DeviceGone(f"USB transfer to recorder {self._who()} failed ({exc}); re-plug it and retry") from exc
            raise
        if isinstance(result, (bytes, bytearray, memoryview)):
            return bytes(result)
        if isinstance(result, int):
            return b""
        return bytes(result)  # type: ignore[call-overload, no-any-return]  # pyusb's array('B')


def _valid_password(password: str) -> bool:
    return isinstance(password, str) and len(password) == 6 and all(0x21 <= ord(c) <= 0x7E for c in password)


# ---- finding the volume ---------------------------------------------------------------------------


@runtime_checkable
class VolumeLocator(Protocol):
    def locate(self, serial: str) -> Path | None:
        """The mounted volume of the recorder with this serial, or None while it is not there."""
        ...


@dataclass(frozen=True)
class TemplateLocator:
    """``/run/egw/volumes/{serial}`` style: for simulators and udev rules that mount by serial."""

    template: str

    def locate(self, serial: str) -> Path | None:
        if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", serial):
            raise HostileEntryError(f"recorder serial {serial!r} is not safe to put in a path")
        path = Path(self.template.format(serial=serial))
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return path if stat.S_ISDIR(st.st_mode) else None


@dataclass(frozen=True)
class LinuxMountLocator:
    """The kernel's view: ``/dev/disk/by-id/usb-<vendor>_<model>_<serial>-0:0[-partN]`` → device
    node → mount point in ``/proc/mounts``. Paths are parameters so tests use real files."""

    by_id_dir: str = "/dev/disk/by-id"
    mounts_file: str = "/proc/mounts"

    def locate(self, serial: str) -> Path | None:
        try:
            names = sorted(os.listdir(self.by_id_dir))
        except OSError:
            return None
        nodes: list[str] = []
        for name in names:
            if name.startswith("usb-") and f"_{serial}-" in name:
                nodes.append(os.path.realpath(os.path.join(self.by_id_dir, name)))
        if not nodes:
            return None
        try:
            with open(self.mounts_file, encoding="utf-8", errors="surrogateescape") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return None
        for line in lines:
            parts = line.split()
            if len(parts) < 2:
                continue
            device = _unescape_mount(parts[0])
            if os.path.realpath(device) in nodes or device in nodes:
                return Path(_unescape_mount(parts[1]))
        return None


def _unescape_mount(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def open_storage(locator: VolumeLocator | str, serial: str, timeout: float = 30.0,
                 model: BodyCamModel = SIMULATOR_MODEL, poll: float = 0.05) -> "RecorderVolume":
    """Wait up to ``timeout`` seconds for the recorder's volume, then open it read-only."""
    loc: VolumeLocator = TemplateLocator(locator) if isinstance(locator, str) else locator
    deadline = time.monotonic() + timeout
    while True:
        path = loc.locate(serial)
        if path is not None:
            return RecorderVolume(path, serial, model=model)
        if time.monotonic() >= deadline:
            raise VolumeNotFound(f"the volume of recorder {serial} did not appear within {timeout:g} s "
                                 f"(looked with {loc!r}); check the recorder switched to mass storage and is mounted")
        time.sleep(poll)


# ---- the volume ---------------------------------------------------------------------------------------

MAX_NAME_BYTES = 200
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}


def unsafe_name_reason(name: str) -> str | None:
    """Why a directory entry name from a device must not be used, or None if it is plain data we accept.

    Cheap checks first: a volume may list up to ``max_entries`` names, and a printable name
    (``str.isprintable``: no control, format, surrogate or unassigned characters) needs no
    per-character look-up.
    """
    if name in ("", ".", ".."):
        return "dot or empty name"
    if _over_long(name):
        return f"name is longer than {MAX_NAME_BYTES} bytes"
    if "/" in name or "\\" in name:
        return "name contains a path separator"
    if re.match(r"[A-Za-z]:", name):
        return "name looks like an absolute (drive letter) path"
    if name.isprintable():
        return None
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in name):
        return "name is not valid UTF-8"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "name contains control characters"
    if any(c in _BIDI for c in name):
        return "name contains bidirectional override characters"
    return None


def _over_long(name: str) -> bool:
    """More than ``MAX_NAME_BYTES`` as the file system stores it (the bytes a non-UTF-8 name came as)?"""
    if len(name) * 4 <= MAX_NAME_BYTES:
        return False  # four bytes per character at most
    try:
        return len(os.fsencode(name)) > MAX_NAME_BYTES
    except UnicodeEncodeError:  # a lone surrogate that no file system name decodes to
        return len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES


def _display(name: str) -> str:
    """A printable, unambiguous rendering for logs and operators (never for paths)."""
    return ascii(name)[1:-1] if not name.isprintable() or any(0xDC80 <= ord(c) <= 0xDCFF for c in name) else name


@dataclass(frozen=True)
class RecordingName:
    serial: str
    user_no: str
    start: datetime  # device local time, as in the name
    seq: int
    important: bool
    ext: str

    @property
    def media_kind(self) -> str:
        return {"avi": "video", "mp4": "video", "wav": "audio", "jpg": "photo"}.get(self.ext, "other")


def parse_recording_name(name: str, pattern: str = DEFAULT_NAME_PATTERN) -> RecordingName | str:
    """The parsed name, or a string saying why it does not parse (the file is kept as unparsed)."""
    match = re.fullmatch(pattern, name, flags=re.IGNORECASE)
    if match is None:
        return "name does not follow <serial>_<userNo>_<YYYYMMDDhhmmss>_<nnnn>[_IMP].<ext>"
    try:
        start = datetime.strptime(match["start"], "%Y%m%d%H%M%S")
    except ValueError:
        return f"start time {match['start']} is not a calendar time"
    return RecordingName(serial=match["serial"], user_no=match["user_no"], start=start, seq=int(match["seq"]),
                         important=bool(match["imp"]), ext=match["ext"].lower())


@dataclass(frozen=True)
class VolumeFile:
    """A regular file on the volume. ``parts`` are validated names, never a joined host path."""

    parts: tuple[str, ...]
    size: int
    mtime_ns: int
    dev: int
    ino: int
    recording: RecordingName | None
    parse_error: str | None = None

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def device_path(self) -> str:
        """The path as the recorder names it (``DCIM/20260101/…``), for manifests."""
        return "/".join(self.parts)

    @property
    def parsed(self) -> bool:
        return self.recording is not None


@dataclass(frozen=True)
class HostileEntry:
    """An entry reported and never opened or followed: a bad name, a link, a special file."""

    parent: tuple[str, ...]
    raw_name: bytes  # the name's bytes as the filesystem gave them
    reason: str
    kind: str  # name | symlink | special | too_deep | too_many
    link_target: bytes | None = None

    @property
    def display(self) -> str:
        return "/".join((*self.parent, _display(os.fsdecode(self.raw_name))))


@dataclass(frozen=True)
class VolumeScan:
    recordings: list[VolumeFile] = field(default_factory=list)  # parsed names
    unparsed: list[VolumeFile] = field(default_factory=list)  # regular files whose names do not parse: kept
    hostile: list[HostileEntry] = field(default_factory=list)  # the first ``max_hostile_listed``, and any cut
    hostile_counts: dict[str, int] = field(default_factory=dict)  # every refused entry, by kind

    @property
    def hostile_total(self) -> int:
        return sum(self.hostile_counts.values())

    @property
    def files(self) -> list[VolumeFile]:
        return self.recordings + self.unparsed


@dataclass(frozen=True)
class ContainerCheck:
    status: str  # ok | truncated | unknown
    detail: str


_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


_T = TypeVar("_T")


def _holding_lock(method: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(method)
    def locked(self: "RecorderVolume", *args: object, **kwargs: object) -> _T:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class RecorderVolume:
    """A recorder's mounted volume, read-only, walked by directory file descriptors.

    Every name is checked before use and only ever passed as a single
    component relative to an already-open directory (``dir_fd``), opened with
    ``O_NOFOLLOW``; symlinks and special files are reported, not touched.
    """

    def __init__(self, root: Path | str, serial: str, model: BodyCamModel = SIMULATOR_MODEL,
                 max_depth: int = 8, max_entries: int = 100_000, max_hostile_listed: int = 1000) -> None:
        self.root = Path(root)
        self.serial = serial
        self.model = model
        self.max_depth = max_depth
        self.max_entries = max_entries
        self.max_hostile_listed = max_hostile_listed  # refused entries kept one by one; all are counted
        # Held while the root handle is in use and when it is closed: present() may close it from the
        # thread following the recorder while another lists or releases, and a closed descriptor's
        # number is soon another file's.
        self._lock = threading.RLock()
        self._fd = -1
        try:
            self._fd = os.open(self.root, _OPEN_DIR)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and self.root.is_symlink()):
                raise HostileEntryError(f"volume root {self.root} is a symbolic link; refusing to follow it") from exc
            raise DeviceGone(f"volume of recorder {serial} at {self.root} cannot be opened: {exc}") from exc

    @_holding_lock
    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        # A dropped volume must not keep its (deleted) directory open for the process's life.
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finaliser (possibly at interpreter exit) must not raise
            pass

    def __enter__(self) -> "RecorderVolume":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @_holding_lock
    def present(self) -> bool:
        """Still mounted where it was found (same directory)?

        Once the answer is no it stays no (a re-plugged recorder mounts a new directory), so the
        handle on the old one is closed right here: a dock follows its recorder with ``present()``
        until it is gone and may never call ``close()``, and every handle left open pins a deleted
        directory (one per dock, for the life of the service)."""
        if self._fd < 0:
            return False
        try:
            now = os.lstat(self.root)
            mine = os.fstat(self._fd)
        except OSError:
            self.close()
            return False
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            self.close()
            return False
        return True

    def _root_fd(self) -> int:
        if self._fd < 0:
            raise DeviceGone(f"volume of recorder {self.serial} at {self.root} is gone (or closed); re-plug it")
        return self._fd

    @_holding_lock
    def scan(self) -> VolumeScan:
        """Every entry, classified: recordings, unparsed regular files, hostile entries."""
        result = VolumeScan()
        root = self._root_fd()
        try:
            self._walk(root, (), 0, result, [0])
        except OSError as exc:
            raise DeviceGone(f"volume of recorder {self.serial} vanished while listing it ({exc})") from exc
        if not self.present():
            raise DeviceGone(f"volume of recorder {self.serial} vanished while listing it")
        result.recordings.sort(key=lambda f: f.parts)
        result.unparsed.sort(key=lambda f: f.parts)
        return result

    def _walk(self, dir_fd: int, parent: tuple[str, ...], depth: int, out: VolumeScan, counter: list[int]) -> bool:
        """List one directory into ``out``; False once the entry limit stopped the walk.

        ``counter`` counts names *read*, not names processed: a directory reads at most what is
        left of ``max_entries``, so a recorder that lists millions of entries (or names far longer
        than ours) costs at most ``max_entries`` names of memory, never what it advertises.
        """
        left = self.max_entries - counter[0]
        names: list[str] = []
        overflow = False
        with os.scandir(dir_fd) as it:
            for entry in it:
                if len(names) >= left:
                    overflow = True
                    break
                names.append(entry.name)
        counter[0] += len(names)
        names.sort()
        for name in names:
            if not self._visit(dir_fd, parent, depth, name, out, counter):
                return False
        if overflow:
            where = _display("/".join(parent)) if parent else "the volume root"
            self._refuse(out, HostileEntry(
                parent[:-1], os.fsencode(parent[-1]) if parent else b".",
                f"{where} holds more entries than the limit of {self.max_entries} for a whole volume; "
                "listing stopped there", "too_many"))
            return False
        return True

    def _visit(self, dir_fd: int, parent: tuple[str, ...], depth: int, name: str, out: VolumeScan,
               counter: list[int]) -> bool:
        """Classify one entry (recursing into a directory); False once the entry limit was reached."""
        raw = os.fsencode(name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return True  # vanished between listing and stat; the final presence check decides
        reason = unsafe_name_reason(name)
        if stat.S_ISLNK(st.st_mode):
            try:
                target: bytes | None = os.readlink(raw, dir_fd=dir_fd)
            except OSError:
                target = None
            self._refuse(out, HostileEntry(parent, raw, "symbolic link (not followed)" + (f"; {reason}" if reason else ""),
                                            "symlink", target))
            return True
        if reason is not None:
            self._refuse(out, HostileEntry(parent, raw, reason, "name"))
            return True
        if stat.S_ISDIR(st.st_mode):
            if depth + 1 > self.max_depth:
                self._refuse(out, HostileEntry(parent, raw, f"directory nested deeper than {self.max_depth}", "too_deep"))
                return True
            try:
                child = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    self._refuse(out, HostileEntry(parent, raw, "became a symbolic link", "symlink"))
                    return True
                raise
            try:
                return self._walk(child, (*parent, name), depth + 1, out, counter)
            finally:
                os.close(child)
        if not stat.S_ISREG(st.st_mode):
            self._refuse(out, HostileEntry(parent, raw, f"special file ({_kind(st.st_mode)}), not opened", "special"))
            return True
        parsed = parse_recording_name(name, self.model.name_pattern)
        entry = VolumeFile(parts=(*parent, name), size=st.st_size, mtime_ns=st.st_mtime_ns, dev=st.st_dev,
                           ino=st.st_ino, recording=parsed if isinstance(parsed, RecordingName) else None,
                           parse_error=parsed if isinstance(parsed, str) else None)
        (out.recordings if entry.parsed else out.unparsed).append(entry)
        return True

    def _refuse(self, out: VolumeScan, entry: HostileEntry) -> None:
        """Count every refused entry; keep the first ``max_hostile_listed`` (and a cut, always), so a
        volume of 100 000 bad names costs counters, not 100 000 records."""
        out.hostile_counts[entry.kind] = out.hostile_counts.get(entry.kind, 0) + 1
        if len(out.hostile) < self.max_hostile_listed or entry.kind == "too_many":
            out.hostile.append(entry)

    @_holding_lock
    def open(self, item: VolumeFile) -> "RecordingReader":
        """Open a listed file read-only, without following links, checking it is the file listed."""
        for part in item.parts:
            reason = unsafe_name_reason(part)
            if reason is not None:
                raise HostileEntryError(f"refusing to open {_display('/'.join(item.parts))}: {reason}")
        fd = self._root_fd()
        opened: list[int] = []
        try:
            for part in item.parts[:-1]:
                fd = os.open(part, _OPEN_DIR, dir_fd=fd)
                opened.append(fd)
            part = item.parts[-1]
            file_fd = os.open(part, _OPEN_FILE, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                raise HostileEntryError(f"{_display(item.device_path)} goes through a symbolic link; not followed") from exc
            if exc.errno == errno.ELOOP:
                raise HostileEntryError(f"{_display(item.device_path)} is a symbolic link; not followed") from exc
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EIO, errno.ENODEV):
                raise DeviceGone(f"{item.device_path} is no longer on recorder {self.serial}'s volume ({exc})") from exc
            raise BodyCamError(f"cannot open {item.device_path}: {exc}") from exc
        finally:
            for d in opened:
                os.close(d)
        st = os.fstat(file_fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(file_fd)
            raise HostileEntryError(f"{item.device_path} is now a {_kind(st.st_mode)}, not a regular file; not read")
        if (st.st_dev, st.st_ino) != (item.dev, item.ino):
            os.close(file_fd)
            raise RecordingChanged(f"{item.device_path} was replaced since it was listed; scan the volume again")
        os.set_blocking(file_fd, True)
        return RecordingReader(file_fd, item, st, self)

    @_holding_lock
    def delete(self, item: VolumeFile) -> None:
        """Remove one recording from the recorder: the dock's "release", the only write this
        class makes. Call it only after the platform's receipt for this exact file verified.
        Refuses when the entry is no longer the file listed (inode, size, mtime)."""
        for part in item.parts:
            reason = unsafe_name_reason(part)
            if reason is not None:
                raise HostileEntryError(f"refusing to delete {_display('/'.join(item.parts))}: {reason}")
        fd = self._root_fd()
        opened: list[int] = []
        try:
            for part in item.parts[:-1]:
                fd = os.open(part, _OPEN_DIR, dir_fd=fd)
                opened.append(fd)
            st = os.stat(item.parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise HostileEntryError(f"{item.device_path} is now a {_kind(st.st_mode)}; not deleted")
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (item.dev, item.ino, item.size, item.mtime_ns):
                raise RecordingChanged(f"{item.device_path} changed since it was listed; not deleted")
            os.unlink(item.parts[-1], dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise BodyCamError(f"recorder {self.serial} does not let the host delete {item.device_path} ({exc}); "
                                   "leave the file on the device") from exc
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EIO, errno.ENODEV):
                raise DeviceGone(f"{item.device_path} is no longer on recorder {self.serial}'s volume ({exc})") from exc
            raise BodyCamError(f"cannot delete {item.device_path}: {exc}") from exc
        finally:
            for d in opened:
                os.close(d)

    def check_container(self, item: VolumeFile) -> ContainerCheck:
        """Cheap structural check of the container (RIFF size, JPEG end marker, MP4 boxes).
        Truncated media is still evidence: this informs, it does not filter."""
        with self.open(item) as fh:
            size = fh.size
            head = os.pread(fh.fileno(), 12, 0)
            if head[:4] == b"RIFF" and len(head) >= 8:
                declared = struct.unpack("<I", head[4:8])[0] + 8
                if declared > size:
                    return ContainerCheck("truncated", f"RIFF declares {declared} bytes, file has {size}")
                return ContainerCheck("ok", f"RIFF {head[8:12].decode('latin-1')} complete ({declared} bytes)")
            if head[:2] == b"\xff\xd8":
                tail = os.pread(fh.fileno(), 2, max(0, size - 2))
                return ContainerCheck("ok", "JPEG ends with EOI") if tail == b"\xff\xd9" else \
                    ContainerCheck("truncated", "JPEG has no end-of-image marker")
            if head[4:8] == b"ftyp":
                offset = 0
                while offset < size:
                    box = os.pread(fh.fileno(), 16, offset)
                    if len(box) < 8:
                        return ContainerCheck("truncated", f"MP4 box header cut at {offset}")
                    length = struct.unpack(">I", box[:4])[0]
                    if length == 1 and len(box) >= 16:
                        length = struct.unpack(">Q", box[8:16])[0]
                    elif length == 0:
                        length = size - offset
                    if length < 8 or offset + length > size:
                        return ContainerCheck("truncated", f"MP4 box at {offset} runs past the end of the file")
                    offset += length
                return ContainerCheck("ok", "MP4 boxes complete")
            return ContainerCheck("unknown", "not a RIFF, JPEG or MP4 container")


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"


class RecordingReader:
    """A read-only handle on one recording that notices the device going away or the file changing.

    It promises exactly the size seen at open: reaching EOF early means the
    volume went away (``DeviceGone``); a different size or mtime at the end
    means the file changed under us (``RecordingChanged``). Callers hash what
    ``read`` returns and discard it if either error is raised.
    """

    def __init__(self, fd: int, item: VolumeFile, st: os.stat_result, volume: RecorderVolume) -> None:
        self._fd = fd
        self.item = item
        self.size = st.st_size
        self._mtime_ns = st.st_mtime_ns
        self._volume = volume
        self.position = 0

    def fileno(self) -> int:
        return self._fd

    def read(self, n: int = 1 << 20) -> bytes:
        """Up to ``n`` bytes; ``b""`` only at the promised end (after checking the file did not change)."""
        if self._fd < 0:
            raise ValueError("read from a closed recording")
        remaining = self.size - self.position
        if remaining <= 0:
            self._check_unchanged()
            return b""
        try:
            data = os.read(self._fd, min(n, remaining))
        except OSError as exc:
            raise self._io_error(exc) from exc
        if not data:
            raise self._short_read_error()
        self.position += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Like ``read`` but into a caller's buffer, without an extra copy (for hashing at speed)."""
        if self._fd < 0:
            raise ValueError("read from a closed recording")
        remaining = self.size - self.position
        if remaining <= 0:
            self._check_unchanged()
            return 0
        view = memoryview(buffer).cast("B")[: min(len(buffer), remaining)]
        try:
            count = os.readv(self._fd, [view])
        except OSError as exc:
            raise self._io_error(exc) from exc
        if count == 0:
            raise self._short_read_error()
        self.position += count
        return count

    def _io_error(self, exc: OSError) -> BodyCamError:
        return DeviceGone(f"reading {self.item.device_path} failed at byte {self.position} ({exc}); "
                          "the recorder was probably unplugged")

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        while True:
            data = self.read(size)
            if not data:
                return
            yield data

    def _short_read_error(self) -> BodyCamError:
        try:
            now = os.fstat(self._fd)
        except OSError:
            now = None
        if now is not None and now.st_size < self.size and self._volume.present() and now.st_size > 0:
            return RecordingChanged(f"{self.item.device_path} shrank from {self.size} to {now.st_size} bytes while being read")
        return DeviceGone(f"{self.item.device_path} ended at byte {self.position} of {self.size}: "
                          f"the volume of recorder {self._volume.serial} went away mid-read; re-plug and copy again")

    def _check_unchanged(self) -> None:
        now = os.fstat(self._fd)
        if now.st_size != self.size or now.st_mtime_ns != self._mtime_ns:
            raise RecordingChanged(
                f"{self.item.device_path} changed while being read (size {self.size} → {now.st_size}); "
                "the recorder may still be writing it: copy it again later")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RecordingReader":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
