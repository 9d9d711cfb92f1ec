"""A simulated body-worn camera: the USB device model and its mass-storage volume.

The recorder speaks docs/protocols/bodycam-usb.md: Bulk-Only Transport on bulk IN 0x81 /
OUT 0x02, the SCSI basics, and the vendor ``F9`` GA/T 947.4 functions. It
is served to hosts by the USB/IP server (``usbip://``) or driven in-process
through ``LoopbackUsbDevice`` in tests.

State machine of one plug-in (a re-plug starts a fresh one)::

    plugged (vendor mode) ──SetMSDC, CSW read──► mounted (volume at <volumes>/<serial>)
        │  5 wrong passwords                        │ eject() / unplug() / replug()
        ▼                                           ▼
    locked (every F9 fails) ──replug()──► plugged   unplugged (every USB call → TransportClosed)

BOT per command: CBW → (data OUT | data IN | none) → CSW. The data-IN bytes
and the CSW are queued as separate transfers so a host never gets both in
one read (a real device ends the data phase with a short packet).

The volume: recordings are generated once into a private staging directory
(``media_dir``) and hard-linked (or copied) into ``<volumes>/.<serial>.mounting``,
which is then renamed to ``<volumes>/<serial>`` so a host never sees a half
populated volume. Faults that damage files on "unplug" first give the
staging copy a fresh inode, so the recorder's own copy survives a yank.

Load (constructor): ``tiny_recordings=N`` adds N valid 52-byte WAV recordings,
one a minute, for docks stressed by file count rather than size.

Faults (constructor ``faults=`` and methods for tests):

* ``stall_endpoint`` — that endpoint stalls every transfer, even after
  CLEAR_FEATURE(HALT) (a wedged device); ``halt(ep)`` stalls it once, clearable.
* ``unplug_after_usb_bytes`` — the device vanishes once that many bulk bytes
  moved (mid-command when K falls inside one).
* ``slow_bytes_per_s`` — bulk transfers take len/rate seconds.
* ``locked`` — starts locked out, as after five wrong passwords.
* ``hostile_names`` — the volume also holds a symlink posing as a recording
  that points outside, a symlinked directory pointing at ``/``, names with
  control characters, backslash/drive-letter paths, a name that is not valid
  UTF-8, a 250-byte name and a FIFO (opening it would block a naive reader).
  Relative links also lead out of the volume into bait files kept next to
  it (``outside_path`` = ``<volumes>/.outside-<serial>/``): a file link
  posing as a recording and a link posing as a day directory, plus a second
  name (link) for a real recording. A host that follows links would copy the
  bait as evidence (or delete it); ``outside_files`` lists the bait.
* ``flood_entries`` — the volume also holds ``MISC/`` with that many entries,
  each a 255-byte name (the Linux maximum; over the driver's 200), written
  one at a time when the volume mounts (hard links to an empty file every
  50 000, so 100 000 entries take seconds and almost no disk), and GetStorage
  advertises 4 294 967 295 files. Drivers must cap what they list.
* ``zfy_invalid_gbk`` — GetZFYInfo sends officer and unit names that are not
  GBK (``INVALID_GBK_USER_NAME``, ``INVALID_GBK_UNIT_NAME``: "张" then
  ``FF 80``; "杭州" then a lead byte cut off); serial and police number
  stay valid.
* ``truncated_video`` — one video is cut to 60 % of its bytes.
* ``changing_file`` — while mounted, the newest video keeps growing (a
  thread appends 4 KiB every 20 ms), like a file still being written.
* ``unplug_after_mount_seconds`` — ``unplug()`` fires that long after the volume
  appears (with a big ``fill_mb`` file this lands mid-copy; for an exact byte
  position call ``unplug()`` yourself between reads).
* ``unplug()`` — yank the cable: every volume file is truncated to 0 bytes
  (a reader holding it open sees EOF before the size it was promised, as the
  kernel would give EIO), the volume directory disappears, USB calls raise
  ``TransportClosed``. Call it between reads to simulate "unplugged after K
  bytes of file transfer"; the CLI accepts ``unplug BUSID`` on stdin.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from firmware_bridge import bodycam_usb as f9
from firmware_bridge.bot import (
    NEED_DATA,
    SENSE_LENGTH,
    BotDeviceParser,
    CommandBlock,
    CommandBlockWrapper,
    CommandStatusWrapper,
    CswStatus,
    DataOut,
    InquiryData,
    ScsiOpcode,
    SenseData,
    SenseKey,
)
from firmware_bridge.errors import ProtocolError, TransportClosed, UsbStall
from firmware_bridge.usb import EndpointSpec, InterfaceSpec, SetupPacket, UsbDeviceBase

from .media import RecordingSpec
from .volume import RecorderStorage

__all__ = ["BodyCamSimulator", "BodyCamFaults", "EP_IN", "EP_OUT"]

EP_IN = 0x81
EP_OUT = 0x02
LOCKOUT_AFTER = 5
_BOT_RESET = 0xFF
_GET_MAX_LUN = 0xFE


@dataclass
class BodyCamFaults:
    stall_endpoint: int | None = None
    unplug_after_usb_bytes: int | None = None
    slow_bytes_per_s: float | None = None
    locked: bool = False
    hostile_names: bool = False
    truncated_video: bool = False
    changing_file: bool = False
    unplug_after_mount_seconds: float | None = None
    flood_entries: int = 0
    zfy_invalid_gbk: bool = False

# What ``zfy_invalid_gbk`` sends in place of the officer's and the unit's name: "张" then 0xFF (no GBK
# byte) and 0x80 (not a lead byte); "杭州" then a lead byte whose second byte the firmware cut off.
INVALID_GBK_USER_NAME = "张".encode("gbk") + b"\xff\x80"
INVALID_GBK_UNIT_NAME = "杭州".encode("gbk") + b"\xd5"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _checked_identity(info: f9.ZfyInfo, layout: f9.ZfyLayout, password: str) -> f9.ZfyInfo:
    """The identity as given, once it is valid and fits the layout: a bad one raises now rather than on the wire."""
    problems = info.problems()
    if problems:
        raise ValueError("invalid recorder identity: " + "; ".join(problems))
    f9.encode_zfy_info(info, layout)  # fits the layout, or raises now rather than on the wire
    f9.encode_password_payload(password)
    return info


class BodyCamSimulator(RecorderStorage, UsbDeviceBase):
    """One recorder. Thread-safe: the USB/IP server may call it from its own threads."""

    vendor_id = 0x1209
    product_id = 0x0001
    speed = 3
    manufacturer = "egw"
    product = "EGW simulated body camera"
    interface_specs = (InterfaceSpec(0x08, 0x06, 0x50, (EndpointSpec(EP_IN, 2, 512), EndpointSpec(EP_OUT, 2, 512))),)

    def __init__(
        self,
        serial: str = "1000001",
        *,
        user_no: str = "100001",
        user_name: str = "张三",
        unit_no: str = "330100000000",
        unit_name: str = "杭州市市场监督管理局",
        password: str = f9.DEFAULT_PASSWORD,
        battery: int = 87,
        id_code: str = "EGW01",
        drift_seconds: float = 0.0,
        zone_minutes: int = 480,
        frame_size: tuple[int, int] = (1280, 720),
        fps: float = 10.0,
        video_seconds: float = 2.0,
        recordings: int | Sequence[RecordingSpec] = 4,
        fill_mb: float = 0,
        tiny_recordings: int = 0,
        video_container: str = "avi",
        layout: f9.ZfyLayout = f9.ZFY_LAYOUT_94,
        opcode: int = f9.VENDOR_OPCODE,
        volumes_dir: str | os.PathLike[str] | None = None,
        media_dir: str | os.PathLike[str] | None = None,
        storage_total_mib: int = 32768,
        faults: BodyCamFaults | None = None,
        clock: Callable[[], datetime] = _utc_now,
        on_mass_storage: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.serial = serial
        self.info = _checked_identity(f9.ZfyInfo(serial, user_no, user_name, unit_no, unit_name), layout, password)
        self.password = password
        self.battery = battery
        self.id_code = id_code
        self.zone_minutes = zone_minutes
        self.frame_size = frame_size
        self.fps = fps
        self.video_seconds = video_seconds
        self.video_container = video_container
        self.layout = layout
        self.opcode = opcode
        self.storage_total_mib = storage_total_mib
        self.faults = faults or BodyCamFaults()
        self.clock = clock
        self.on_mass_storage = on_mass_storage
        # device local time = host UTC + offset (zone plus the recorder's drift)
        self._offset = timedelta(minutes=zone_minutes, seconds=drift_seconds)
        self._lock = threading.RLock()
        self._init_storage(media_dir, volumes_dir, recordings, fill_mb, tiny_recordings)
        self._plug_in()

    # ---- lifecycle ------------------------------------------------------------------

    def _plug_in(self) -> None:
        self.attached = True
        self.mounted = False
        self.locked = self.faults.locked
        self.wrong_passwords = 0
        self.usb_bytes = 0
        self.configuration = 0
        self.halted = set()
        self._parser = BotDeviceParser(max_data_out=4096)
        self._in_queue: deque[bytes] = deque()
        self._data_phase_tag: int | None = None  # tag of the CBW whose data-IN bytes head the queue
        self._pending_out: CommandBlockWrapper | None = None
        self._sense = SenseData(SenseKey.NO_SENSE)
        self._mount_after_csw = False

    def device_time(self) -> datetime:
        """The recorder's wall clock (naive local time), drift included."""
        return (self.clock() + self._offset).replace(tzinfo=None, microsecond=0)

    def set_device_time(self, local: datetime, zone_minutes: int | None = None) -> None:
        with self._lock:
            now = self.clock().replace(tzinfo=None)
            self._offset = local - now
            if zone_minutes is not None:
                self.zone_minutes = zone_minutes

    def replug(self) -> None:
        """Pull the cable and plug it back: volume gone, lockout cleared, vendor mode again."""
        with self._lock:
            self._yank()
            self._plug_in()

    def unplug(self) -> None:
        """Yank the cable (a fault): open volume files go short, the volume vanishes, USB calls fail."""
        with self._lock:
            self._yank()

    def eject(self) -> None:
        """The host unmounted the volume cleanly; the recorder stays off the bus until re-plugged."""
        with self._lock:
            timer, self._yank_timer = self._yank_timer, None
            if timer is not None:
                timer.cancel()
            self._stop_grower()
            if self.mounted and self.volume_path is not None:
                self._sync_deletions()
                gone = self.volume_path.with_name(f".{self.serial}.ejected")
                os.replace(self.volume_path, gone)
                shutil.rmtree(gone, ignore_errors=True)
            self.mounted = False
            self.attached = False

    def close(self) -> None:
        """Stop threads, remove the volume and (if we made it) the staging directory."""
        with self._lock:
            self._yank()
            if self._own_media:
                shutil.rmtree(self.media_dir, ignore_errors=True)
            if self.outside_files and self.outside_path is not None:
                shutil.rmtree(self.outside_path, ignore_errors=True)

    def halt(self, endpoint: int) -> None:
        """Stall ``endpoint`` until the host sends CLEAR_FEATURE(ENDPOINT_HALT)."""
        with self._lock:
            self.halted.add(endpoint)
    def zfy_bytes(self) -> bytes:
        """ZFY_INFO as this recorder sends it (with the ``zfy_invalid_gbk`` fault: names that are not GBK)."""
        raw = f9.encode_zfy_info(self.info, self.layout)
        if not self.faults.zfy_invalid_gbk:
            return raw
        fields, offset = {}, 0
        for name, size in self.layout.fields:
            fields[name], offset = raw[offset:offset + size], offset + size
        fields["user_name"] = INVALID_GBK_USER_NAME.ljust(self.layout.user_name, b"\0")  # fits either layout
        fields["unit_name"] = INVALID_GBK_UNIT_NAME.ljust(self.layout.unit_name, b"\0")
        return b"".join(fields[name] for name, _ in self.layout.fields)

    # ---- USB entry points ---------------------------------------------------------------

    def control(self, setup: SetupPacket, data: bytes) -> bytes:
        with self._lock:
            self._check_attached()
            return super().control(setup, data)

    def class_control(self, setup: SetupPacket, data: bytes) -> bytes:
        if setup.request_type == 0x21 and setup.request == _BOT_RESET:
            self._parser.reset()
            self._in_queue.clear()
            self._data_phase_tag = None
            self._pending_out = None
            return b""
        if setup.request_type == 0xA1 and setup.request == _GET_MAX_LUN:
            return b"\x00"[: setup.length]
        return super().class_control(setup, data)

    def bulk_out(self, endpoint: int, data: bytes) -> None:
        with self._lock:
            self._check_attached()
            self._check_endpoint(endpoint, EP_OUT)
            self._account(len(data))
            self._parser.receive_data(data)
            while True:
                try:
                    event = self._parser.next_event()
                except ProtocolError as exc:
                    self.halted.update({EP_IN, EP_OUT})
                    raise UsbStall(f"invalid CBW, stalling until a mass-storage reset: {exc}") from None
                if event is NEED_DATA:
                    return
                if isinstance(event, CommandBlock):
                    self._on_cbw(event.cbw)
                elif isinstance(event, DataOut):
                    cbw, self._pending_out = self._pending_out, None
                    assert cbw is not None
                    self._finish(cbw, self._execute(cbw, event.data))

    def bulk_in(self, endpoint: int, length: int) -> bytes | None:
        with self._lock:
            self._check_attached()
            try:
                self._check_endpoint(endpoint, EP_IN)
            except UsbStall:
                self._abort_data_phase()
                raise
            if not self._in_queue:
                return None
            head = self._in_queue[0]
            chunk, rest = head[:length], head[length:]
            if rest:
                self._in_queue[0] = rest
            else:
                self._in_queue.popleft()
                self._data_phase_tag = None if len(self._in_queue) <= 1 else self._data_phase_tag
            self._account(len(chunk))
            if not self._in_queue and self._mount_after_csw:
                self._mount_after_csw = False
                self._mount()
            return chunk

    def interrupt_in(self, endpoint: int, length: int) -> bytes | None:
        with self._lock:
            self._check_attached()
            raise UsbStall(f"the recorder has no interrupt endpoint 0x{endpoint:02x}")

    def _check_attached(self) -> None:
        if not self.attached:
            raise TransportClosed(f"recorder {self.serial} is not on the bus (unplugged or in mass-storage mode)")

    def _check_endpoint(self, endpoint: int, expected: int) -> None:
        if endpoint != expected:
            raise UsbStall(f"the recorder has no endpoint 0x{endpoint:02x} in that direction")
        if endpoint in self.halted or endpoint == self.faults.stall_endpoint:
            raise UsbStall(f"endpoint 0x{endpoint:02x} is halted")

    def _account(self, count: int) -> None:
        rate = self.faults.slow_bytes_per_s
        if rate:
            time.sleep(count / rate)
        self.usb_bytes += count
        budget = self.faults.unplug_after_usb_bytes
        if budget is not None and self.usb_bytes > budget:
            self._yank()
            raise TransportClosed(f"recorder {self.serial} unplugged after {budget} bytes")

    # ---- BOT ------------------------------------------------------------------------------

    def _on_cbw(self, cbw: CommandBlockWrapper) -> None:
        if not cbw.data_in and cbw.data_length:
            self._pending_out = cbw
            return
        self._finish(cbw, self._execute(cbw, None))

    def _finish(self, cbw: CommandBlockWrapper, result: tuple[bytes, CswStatus]) -> None:
        data, status = result
        residue = cbw.data_length
        if cbw.data_in and cbw.data_length:
            sent = data[: cbw.data_length]
            if len(data) > cbw.data_length:
                status = CswStatus.PHASE_ERROR  # BOT case 7: the device has more than the host asked for
            residue = cbw.data_length - len(sent)
            # BOT case 5 (host expects more than the device has): pad, and say so in the residue,
            # so the host never reads the CSW where it expected data.
            self._in_queue.append(sent.ljust(cbw.data_length, b"\0"))
            self._data_phase_tag = cbw.tag
        elif not cbw.data_in and cbw.data_length:
            residue = 0  # we consumed every OUT byte
        self._in_queue.append(CommandStatusWrapper(cbw.tag, residue, status).to_bytes())

    def _abort_data_phase(self) -> None:
        """A stall on bulk IN ends the data phase (BOT 6.7.2): drop the data, fail the command."""
        if self._data_phase_tag is None or len(self._in_queue) < 2:
            return
        data = self._in_queue.popleft()
        self._in_queue.popleft()  # the CSW that claimed success
        self._in_queue.appendleft(CommandStatusWrapper(self._data_phase_tag, len(data), CswStatus.FAILED).to_bytes())
        self._sense = SenseData(SenseKey.ABORTED_COMMAND)
        self._data_phase_tag = None

    def _fail(self, key: int, asc: int, ascq: int = 0, data: bytes = b"") -> tuple[bytes, CswStatus]:
        self._sense = SenseData(key, asc, ascq)
        return data, CswStatus.FAILED

    def _execute(self, cbw: CommandBlockWrapper, out: bytes | None) -> tuple[bytes, CswStatus]:
        cb = cbw.cb
        op = cb[0]
        if op == ScsiOpcode.REQUEST_SENSE:
            sense, self._sense = self._sense, SenseData(SenseKey.NO_SENSE)
            return sense.to_bytes()[: cb[4] if len(cb) > 4 else SENSE_LENGTH], CswStatus.PASSED
        self._sense = SenseData(SenseKey.NO_SENSE)
        if op == ScsiOpcode.TEST_UNIT_READY:
            return b"", CswStatus.PASSED
        if op == ScsiOpcode.INQUIRY:
            alloc = int.from_bytes(cb[3:5], "big") if len(cb) >= 5 else 36
            data = InquiryData("EGW", "BodyCam " + self.serial, "0100").to_bytes()
            return data[:alloc], CswStatus.PASSED
        if op == self.opcode:
            return self._vendor(cbw, out)
        return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_INVALID_OPCODE)

    def _vendor(self, cbw: CommandBlockWrapper, out: bytes | None) -> tuple[bytes, CswStatus]:
        try:
            cmd = f9.parse_cdb(cbw.cb, self.opcode)
        except ProtocolError:
            return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_INVALID_FIELD_IN_CDB)
        try:
            function = f9.Function(cmd.function)
        except ValueError:
            return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_INVALID_FIELD_IN_CDB)
        spec = f9.FUNCTION_SPECS[function]
        length = f9.response_length(function, self.layout)
        want_in = spec.direction is f9.Direction.IN
        if (spec.direction is f9.Direction.NONE and cbw.data_length) or \
                (spec.direction is not f9.Direction.NONE and (cbw.data_in != want_in or cbw.data_length != length)):
            return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_INVALID_FIELD_IN_CDB)
        pad = bytes(length) if want_in else b""
        if self.locked:
            return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_BODYCAM, f9.ASCQ_LOCKED, pad)
        if not f9.check_password(cmd.password, self.password):
            self.wrong_passwords += 1
            if self.wrong_passwords >= LOCKOUT_AFTER:
                self.locked = True
            refusal = f9.encode_refusal(function, f9.IRet.PASSWORD_WRONG, self.layout) if want_in else b""
            return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_BODYCAM, f9.IRet.PASSWORD_WRONG, refusal)
        self.wrong_passwords = 0
        return self._run(function, out)

    def _run(self, function: f9.Function, out: bytes | None) -> tuple[bytes, CswStatus]:
        answer = self._answer_query(function)
        if answer is not None:
            return answer
        assert out is not None or function is f9.Function.SET_MSDC
        return self._apply_write(function, out)

    def _answer_query(self, function: f9.Function) -> tuple[bytes, CswStatus] | None:
        """The functions that only read the recorder's state; None for the others."""
        F = f9.Function
        ok = f9.IRet.NONE
        if function in (F.INIT_DEVICE, F.GET_ID_CODE):
            code = f9.IRet.CONNECT_OK if function is F.INIT_DEVICE else ok
            return f9.encode_response(function, f9.IdCodeResponse(code, self.id_code)), CswStatus.PASSED
        if function is F.GET_ZFY_INFO:
            return bytes([ok]) + self.zfy_bytes(), CswStatus.PASSED
        if function is F.GET_DEV_TIME:
            return f9.encode_response(function, f9.DeviceTimeResponse(ok, self.device_time())), CswStatus.PASSED
        if function is F.READ_RESOLUTION:
            w, h = self.frame_size
            return f9.encode_response(function, f9.ResolutionResponse(ok, w, h)), CswStatus.PASSED
        if function is F.READ_BATTERY:
            return f9.encode_response(function, f9.BatteryResponse(ok, self.battery)), CswStatus.PASSED
        if function is F.GET_STORAGE:
            self.prepare()
            used = sum((self.media_dir / n).stat().st_size for n in self.files)
            used_mib = -(-used // (1 << 20))
            total = max(self.storage_total_mib, used_mib)
            count = 0xFFFFFFFF if self.faults.flood_entries else len(self.files)  # "4 Gi files": believe it who will
            response = f9.StorageResponse(ok, total, total - used_mib, count)
            return f9.encode_response(function, response), CswStatus.PASSED
        return None

    def _apply_write(self, function: f9.Function, out: bytes | None) -> tuple[bytes, CswStatus]:
        """The functions that change the recorder: identity, clock, password, and the switch to mass storage."""
        F = f9.Function
        if function is F.WRITE_ZFY_INFO:
            try:
                info = f9.decode_zfy_info(out or b"", self.layout)
            except ProtocolError:
                return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_INVALID_PARAMETER)
            if info.serial != self.info.serial or info.problems():
                return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_INVALID_PARAMETER)
            self.info = info
            return b"", CswStatus.PASSED
        if function is F.SYNC_DEV_TIME:
            try:
                when, zone = f9.decode_sync_time(out or b"")
            except ProtocolError:
                return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_BODYCAM, f9.IRet.TIME_SET_FAILED)
            self.set_device_time(when, zone)
            return b"", CswStatus.PASSED
        if function is F.SET_PASSWORD:
            try:
                self.password = f9.decode_password_payload(out or b"")
            except ProtocolError:
                return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_INVALID_PARAMETER)
            return b"", CswStatus.PASSED
        # SetMSDC: answer first; the switch happens once the host has read the CSW.
        if self.volumes_dir is None:
            return self._fail(SenseKey.ILLEGAL_REQUEST, f9.ASC_BODYCAM, f9.IRet.MSC_FAILED)
        self._mount_after_csw = True
        return b"", CswStatus.PASSED
    # ---- for tests and the CLI --------------------------------------------------------------

    def describe(self) -> dict[str, str]:
        return {"serial": self.serial, "user_no": self.info.user_no, "password": self.password,
                "drift_s": f"{(self._offset - timedelta(minutes=self.zone_minutes)).total_seconds():+.0f}"}
