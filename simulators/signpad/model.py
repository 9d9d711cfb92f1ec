"""A Wacom STU-540 as a USB device model: HID reports, a screen, a scripted signer.

What the host sees (USB 2.0 full speed, VID 0x056A / PID 0x00A8):

* one HID interface (class 03, no boot protocol) with an HID descriptor and
  a vendor-page report descriptor listing every report's size, fetched by
  GET_DESCRIPTOR type 0x22 on the interface;
* interrupt IN endpoint 0x81 carrying pen reports (0x01, 0x30 or 0x34
  depending on PenDataOptionMode) at 200 reports/s;
* feature reports over control transfers: GET_REPORT (A1 01) and
  SET_REPORT (21 09), wValue = 0x0300 | report id. A report the pad does
  not accept stalls EP0 and sets Status.lastResultCode, as the real pad does.

Timing is real but testable: the model reads an injectable clock
(default ``time.monotonic``); ``interrupt_in`` answers ``None`` (NAK) until
the next 5 ms slot is due, so over USB/IP a host sees 200 reports/s, and a
test can drive a fake clock instead of sleeping. Pen reports carry the
*scheduled* time in timeCount, so a host that polls late gets a burst of
correctly time-stamped reports, like the pad's FIFO would deliver.

The uploaded screen is kept decoded (``uploaded_image``: the last committed
image as sent; ``screen``: what the LCD shows, with ink when inking is on).
Fault switches: a script step ``{"unplug": true}`` or ``unplug()`` makes the
model vanish — every later request raises ``TransportClosed`` and the
``on_unplug`` callbacks run, so a USB/IP server can drop the device.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from firmware_bridge import stu_hid as stu
from firmware_bridge.errors import ProtocolError, TransportClosed, UsbStall
from firmware_bridge.usb import EndpointSpec, InterfaceSpec, SetupPacket, UsbDeviceBase

from .signer import UNPLUG, PenSample, build_phase

__all__ = ["StuPadModel", "STU540_CAPABILITY", "report_descriptor", "hid_descriptor"]

STU540_CAPABILITY = stu.Capability(
    tablet_max_x=10800, tablet_max_y=6480, tablet_max_pressure=1023, screen_width=800, screen_height=480,
    max_report_rate=200, resolution=2540,
    encoding_flag=stu.ENCODING_FLAG_1BIT | stu.ENCODING_FLAG_16BIT | stu.ENCODING_FLAG_24BIT,
)
SUPPORTED_MODES = {stu.ENCODING_MODE_1BIT: stu.ENCODING_FLAG_1BIT, stu.ENCODING_MODE_16BIT: stu.ENCODING_FLAG_16BIT,
                   stu.ENCODING_MODE_24BIT: stu.ENCODING_FLAG_24BIT}
DESC_HID, DESC_REPORT = 0x21, 0x22
INK_BGR = (90, 30, 10)


def report_descriptor() -> bytes:
    """Vendor-page HID report descriptor: one 8-bit array item per report, sized as REPORT_SIZES."""
    out = bytearray(b"\x06\x00\xff\x09\x01\xa1\x01\x15\x00\x26\xff\x00\x75\x08")
    for report_id, size in sorted(stu.REPORT_SIZES.items()):
        main = 0x81 if report_id in stu.INPUT_REPORT_IDS else 0xB1  # Input / Feature (Data, Var, Abs)
        out += bytes([0x85, report_id, 0x09, report_id, 0x95, size - 1, main, 0x02])
    out += b"\xc0"
    return bytes(out)


def hid_descriptor(report_length: int) -> bytes:
    """HID 1.11 descriptor: bcdHID 1.11, no country, one report descriptor."""
    return struct.pack("<BBHBBBH", 9, DESC_HID, 0x0111, 0, 1, DESC_REPORT, report_length)


_REPORT_DESCRIPTOR = report_descriptor()


class StuPadModel(UsbDeviceBase):
    """An STU-540 signature pad with a scripted person in front of it."""

    vendor_id = 0x056A
    product_id = 0x00A8
    bcd_device = 0x0104
    speed = 2  # full speed, as the real pad
    manufacturer = "Wacom Co.,Ltd."
    product = "STU-540"
    interface_specs = (
        InterfaceSpec(0x03, 0x00, 0x00, (EndpointSpec(0x81, 3, 64, 1),), extra=hid_descriptor(len(_REPORT_DESCRIPTOR))),
    )

    def __init__(
        self,
        script: list[dict[str, Any]] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        capability: stu.Capability = STU540_CAPABILITY,
        model_name: str = "STU-540",
        firmware: tuple[int, int] = (0x01, 0x04),
        uid2: str = "5SIM000001",
        serial: str = "SIM540-0001",
        reaction_s: float = 0.25,
        repeat: bool = False,
    ) -> None:
        super().__init__()
        self.serial = serial
        self.clock = clock
        self.capability = capability
        self.information = stu.Information(model_name, firmware[0], firmware[1], 0, b"\x00\x00\x00\x00")
        self.uid2 = uid2
        self.reaction_s = reaction_s
        self.repeat = repeat  # play the script again for the next session (standalone simulator)
        self.period_ms = max(1, round(1000 / capability.max_report_rate))
        self._lock = threading.RLock()
        self._boot = clock()
        self.script: list[dict[str, Any]] = list(script or [])
        self._step = 0
        self._waiting_for_screen = True
        self._events: deque[Any] = deque()
        self._next_ms = 0  # pad time (ms since power-up) of the next report slot
        self._sequence = 0
        self._last_touch: tuple[int, int] | None = None
        self.option_mode = stu.PEN_OPTION_NONE
        self.inking = False
        self.status_code = stu.STATUS_READY
        self.last_result = stu.RESULT_NONE
        self.capture_session: int | None = None
        self._image_mode: int | None = None
        self._image_data = bytearray()
        blank = np.full((capability.screen_height, capability.screen_width, 3), 255, np.uint8)
        self.screen = blank
        self.uploaded_image: np.ndarray | None = None
        self.uploads = 0
        self.reports_sent = 0
        self.signer_problems: list[str] = []
        self.unplugged = False
        self.on_unplug: list[Callable[[], None]] = []

    # ---- fault switches ---------------------------------------------------------

    def unplug(self) -> None:
        """Pull the cable: from now on every request raises TransportClosed."""
        with self._lock:
            if self.unplugged:
                return
            self.unplugged = True
            self._events.clear()
        for callback in list(self.on_unplug):
            callback()

    @property
    def signer_done(self) -> bool:
        """True once the script has been played to its end."""
        with self._lock:
            return not self._events and self._step >= len(self.script)

    def _check_present(self) -> None:
        if self.unplugged:
            raise TransportClosed("the STU pad was unplugged")

    # ---- control requests ---------------------------------------------------------

    def control(self, setup: SetupPacket, data: bytes) -> bytes:
        self._check_present()
        with self._lock:
            return super().control(setup, data)

    def standard_control(self, setup: SetupPacket, data: bytes) -> bytes:
        if setup.request == 0x06 and setup.request_type == 0x81:  # GET_DESCRIPTOR, interface recipient
            kind = setup.value >> 8
            if kind == DESC_REPORT:
                return _REPORT_DESCRIPTOR[: setup.length]
            if kind == DESC_HID:
                return self.interface_specs[0].extra[: setup.length]
        return super().standard_control(setup, data)

    def class_control(self, setup: SetupPacket, data: bytes) -> bytes:
        if setup.request_type == stu.HID_REQ_TYPE_SET and setup.request == stu.HID_SET_IDLE:
            return b""
        report_type, report_id = setup.value >> 8, setup.value & 0xFF
        if setup.request_type == stu.HID_REQ_TYPE_GET and setup.request == stu.HID_GET_REPORT:
            if report_type != stu.REPORT_TYPE_FEATURE:
                raise UsbStall(f"GET_REPORT of report type {report_type} is not supported (feature reports only)")
            return self._get_feature(report_id)[: setup.length]
        if setup.request_type == stu.HID_REQ_TYPE_SET and setup.request == stu.HID_SET_REPORT:
            if report_type != stu.REPORT_TYPE_FEATURE:
                raise UsbStall(f"SET_REPORT of report type {report_type} is not supported (feature reports only)")
            if not data or data[0] != report_id:
                self.last_result = stu.RESULT_WRONG_REPORT_ID
                raise UsbStall(f"SET_REPORT data must start with the report id 0x{report_id:02x}")
            self._set_feature(bytes(data))
            return b""
        raise UsbStall(f"HID request 0x{setup.request:02x} (type 0x{setup.request_type:02x}) is not supported")

    def _get_feature(self, report_id: int) -> bytes:
        if report_id == stu.REPORT_CAPABILITY:
            return self.capability.encode()
        if report_id == stu.REPORT_INFORMATION:
            return self.information.encode()
        if report_id == stu.REPORT_UID2:
            return stu.Uid2(self.uid2).encode()
        if report_id == stu.REPORT_STATUS:
            return stu.Status(self.status_code, self.last_result, 0).encode()
        if report_id == stu.REPORT_INKING_MODE:
            return stu.InkingMode(int(self.inking)).encode()
        if report_id == stu.REPORT_PEN_DATA_OPTION_MODE:
            return stu.PenDataOptionMode(self.option_mode).encode()
        self.last_result = stu.RESULT_WRONG_REPORT_ID
        raise UsbStall(f"feature report 0x{report_id:02x} cannot be read from this pad")

    def _set_feature(self, raw: bytes) -> None:
        try:
            report = stu.decode_feature_report(raw)
        except ProtocolError as exc:
            self.last_result = stu.RESULT_WRONG_REPORT_ID
            raise UsbStall(f"bad SET_REPORT: {exc}") from exc
        if isinstance(report, stu.Reset):
            self._reset()
        elif isinstance(report, stu.StartCapture):
            self.capture_session = report.session_id
        elif isinstance(report, stu.EndCapture):
            self.capture_session = None
        elif isinstance(report, stu.ClearScreen):
            self.screen = np.full_like(self.screen, 255)
        elif isinstance(report, stu.InkingMode):
            self.inking = bool(report.value)
        elif isinstance(report, stu.PenDataOptionMode):
            self.option_mode = report.value
        elif isinstance(report, stu.StartImageData):
            self._start_image(report.value)
        elif isinstance(report, stu.ImageDataBlock):
            self._image_block(report.data)
        elif isinstance(report, stu.EndImageData):
            self._end_image(report.value)
        else:
            self.last_result = stu.RESULT_WRONG_REPORT_ID
            raise UsbStall(f"feature report 0x{raw[0]:02x} cannot be written on this pad")
        self.last_result = stu.RESULT_NONE

    def _reset(self) -> None:
        self.inking = False
        self.option_mode = stu.PEN_OPTION_NONE
        self._image_mode = None
        self._image_data.clear()
        self.status_code = stu.STATUS_READY
        self.screen = np.full_like(self.screen, 255)

    def _start_image(self, mode: int) -> None:
        flag = SUPPORTED_MODES.get(mode)
        if flag is None or not self.capability.encoding_flag & flag:
            self.last_result = stu.RESULT_GRAPHICS_WRONG_ENCODING_TYPE
            raise UsbStall(f"image encoding mode 0x{mode:02x} is not supported by this pad")
        self._image_mode = mode
        self._image_data.clear()
        self.status_code = stu.STATUS_IMAGE

    def _image_block(self, data: bytes) -> None:
        if self._image_mode is None:
            self.last_result = stu.RESULT_WRONG_STATE
            raise UsbStall("ImageDataBlock without StartImageData")
        caps = self.capability
        if len(self._image_data) + len(data) > stu.image_size(self._image_mode, caps.screen_width, caps.screen_height):
            self.last_result = stu.RESULT_GRAPHICS_IMAGE_TOO_LONG
            raise UsbStall("image data longer than the screen")
        self._image_data += data

    def _end_image(self, flag: int) -> None:
        mode, data = self._image_mode, bytes(self._image_data)
        self._image_mode = None
        self._image_data.clear()
        self.status_code = stu.STATUS_READY
        if flag == 1:  # abandon
            return
        if mode is None:
            self.last_result = stu.RESULT_WRONG_STATE
            raise UsbStall("EndImageData without StartImageData")
        caps = self.capability
        try:
            image = stu.unflatten_image(data, mode, caps.screen_width, caps.screen_height)
        except ProtocolError as exc:
            self.last_result = stu.RESULT_GRAPHICS_WRONG_PARAMETERS
            raise UsbStall(f"image rejected: {exc}") from exc
        self.uploaded_image = image
        self.screen = image.copy()
        self.uploads += 1
        if self.repeat and self.script and self._step >= len(self.script):
            # A fresh prompt after the whole script ran is a new session: the
            # person steps up again (any trailing hover of the last one is dropped).
            self._events.clear()
            self._step, self._waiting_for_screen = 0, True
        if self._waiting_for_screen and self._step < len(self.script):
            events, self._step = build_phase(self.script, self._step, image, self.signer_problems)
            self._events.extend(events)
            self._waiting_for_screen = self._step < len(self.script)
            self._next_ms = math.ceil((self.clock() - self._boot + self.reaction_s) * 1000)

    # ---- pen data -------------------------------------------------------------------

    def interrupt_in(self, endpoint: int, length: int) -> bytes | None:
        self._check_present()
        if endpoint != 0x81:
            raise UsbStall(f"no interrupt IN endpoint 0x{endpoint:02x}")
        unplug_now = False
        with self._lock:
            now_ms = (self.clock() - self._boot) * 1000
            while self._events and now_ms >= self._next_ms:
                event = self._events.popleft()
                due = self._next_ms
                self._next_ms += self.period_ms
                if event is UNPLUG:
                    unplug_now = True
                    break
                if event is None:
                    continue
                return self._pen_report(event, due)
        if unplug_now:
            # The slot's URB goes unanswered (NAK); the on_unplug callbacks let a
            # server drop the device (-ENODEV), and every later call raises.
            self.unplug()
        return None

    def _pen_report(self, sample: PenSample, due_ms: int) -> bytes:
        caps = self.capability
        x = min(caps.tablet_max_x, max(0, round(sample.x * caps.tablet_max_x / caps.screen_width)))
        y = min(caps.tablet_max_y, max(0, round(sample.y * caps.tablet_max_y / caps.screen_height)))
        pressure = round(sample.pressure * caps.tablet_max_pressure) if sample.touching else 0
        sw = 1 if sample.touching else 0
        self._ink(sample)
        time_count = due_ms & 0xFFFF
        sequence = self._sequence
        self._sequence = (self._sequence + 1) & 0xFFFF
        self.reports_sent += 1
        rdy = sample.in_range
        if self.option_mode == stu.PEN_OPTION_TIME_COUNT_SEQUENCE:
            return stu.PenDataTimeCountSequence(rdy, sw, pressure, x, y, time_count, sequence).encode()
        if self.option_mode == stu.PEN_OPTION_TIME_COUNT:
            return stu.PenDataOption(rdy, sw, pressure, x, y, time_count).encode()
        if self.option_mode == stu.PEN_OPTION_SEQUENCE:
            return stu.PenDataOption(rdy, sw, pressure, x, y, sequence).encode()
        return stu.PenData(rdy, sw, pressure, x, y).encode()

    def _ink(self, sample: PenSample) -> None:
        point = (int(round(sample.x)), int(round(sample.y)))
        if self.inking and sample.touching:
            cv2.line(self.screen, self._last_touch or point, point, INK_BGR, 2, cv2.LINE_AA)
            self._last_touch = point
        else:
            self._last_touch = None
