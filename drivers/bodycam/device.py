"""The recorder on USB in vendor mode: GA/T 947.4 functions (vendor SCSI ``F9``) over Bulk-Only Transport.

Why it looks like this: a dock reads identity and clock, binds the officer and switches the
recorder to mass storage; the bytes are those of docs/protocols/bodycam-usb.md, spoken through
any ``UsbDevice`` (real ``usb://``, ``usbip://``, or an in-process loopback). Every transport
or codec failure leaves as a ``BodyCamError`` subclass."""

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from types import TracebackType

from firmware_bridge import bodycam_usb as f9
from firmware_bridge.bot import (
    CSW_LENGTH,
    INQUIRY_LENGTH,
    SENSE_LENGTH,
    CommandBlockWrapper,
    CommandStatusWrapper,
    CswStatus,
    InquiryData,
    SenseData,
    SenseKey,
    inquiry_cdb,
    request_sense_cdb,
    test_unit_ready_cdb,
)
from firmware_bridge.errors import BridgeError, ProtocolError, TransportClosed, TransportTimeout, UsbStall
from firmware_bridge.usb import UsbDevice

from .errors import (
    BodyCamError,
    BodyCamProtocolError,
    CommandRejected,
    DeviceGone,
    DeviceLocked,
    DeviceNotResponding,
    EndpointStalled,
    UnsupportedDevice,
    WrongPassword,
    _CommandAborted,
)
from .locators import VolumeLocator, open_storage
from .models import BodyCamModel, lookup_model
from .volume import RecorderVolume


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
        return (self.device_time - timedelta(minutes=self.zone_minutes)).replace(tzinfo=UTC)

    @property
    def offset(self) -> timedelta:
        return self.device_utc - self.host_utc

    def to_host_utc(self, device_local: datetime) -> datetime:
        """Correct a device-local timestamp (e.g. a recording's start) to UTC by this reading."""
        return (device_local - timedelta(minutes=self.zone_minutes)).replace(tzinfo=UTC) - self.offset


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
        wall0 = datetime.now(UTC)
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
        instant = now if now is not None else datetime.now(UTC)
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
        wanted = replace(base, user_no=base.user_no if user_no is None else user_no,
                         user_name=base.user_name if user_name is None else user_name,
                         unit_no=base.unit_no if unit_no is None else unit_no,
                         unit_name=base.unit_name if unit_name is None else unit_name)
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

    def _transfer(self, call: Callable[[], bytes | int]) -> bytes:
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
        if isinstance(result, int):
            return b""  # a write's or a control request's byte count
        return bytes(result)  # also a raw pyusb device's array('B')


def _valid_password(password: str) -> bool:
    return isinstance(password, str) and len(password) == 6 and all(0x21 <= ord(c) <= 0x7E for c in password)
