"""Wacom STU signature pads (STU-430/530/540 family) over any ``UsbDevice``.

The pad has a screen and a pen but no buttons: we draw the prompt (document
title, signer name, OK / Clear / Cancel) with OpenCV, upload it, and decide
a button press from where the pen lifts. A press counts when the pen went
down *and* lifted inside the same button (as Wacom's own dialogs do); pen
strokes that start outside the buttons are signature ink.

    pad = SignaturePad.open("usbip://127.0.0.1:3240/1-1")
    capture = pad.capture(timeout=120, title="Notice 2026-0042", signer="Jane Doe")
    capture.samples        # structured array: t_ms, x, y, pressure (tablet units)
    capture.iso_record     # ISO/IEC 19794-7:2007 record (X, Y, T, F)
    capture.png            # rendered signature, stroke width from pressure

Timestamps: when the pad accepts PenDataOptionMode 3 it sends report 0x34
with its own 1 ms time count, and ``t_ms`` comes from the pad
(``timestamps == "pad"``); otherwise from the host clock at reception
(``"host"``), which is only as good as the USB scheduling.

Errors (all ``SignPadError``, a ``DriverError``)::

    SignPadError
    ├── SignPadUnplugged      the pad vanished (cable, USB/IP link); no partial result
    ├── SignPadTimeout        no OK before the deadline; no partial result
    ├── SigningCancelled      the signer tapped Cancel
    └── SignPadProtocolError  the pad answered with something the protocol forbids
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np

from drivers.errors import DriverError
from firmware_bridge import stu_hid as stu
from firmware_bridge.errors import (
    BridgeError,
    ProtocolError,
    TransportClosed,
    TransportTimeout,
    UsbError,
    UsbStall,
)
from firmware_bridge.iso19794_7 import SignatureTimeSeries, encode_record
from firmware_bridge.usb import UsbDevice

__all__ = [
    "SignPadError", "SignPadUnplugged", "SignPadTimeout", "SigningCancelled", "SignPadProtocolError",
    "PadIdentity", "SignatureCapture", "SignaturePad", "SAMPLE_DTYPE", "BUTTON_LABELS",
    "button_layout", "render_prompt", "render_signature_png", "STU_VENDOR_ID", "STU_PRODUCT_IDS",
]

STU_VENDOR_ID = 0x056A
STU_PRODUCT_IDS = {0xA1: "STU-500", 0xA2: "STU-300", 0xA3: "STU-520A", 0xA4: "STU-430", 0xA5: "STU-530",
                   0xA6: "STU-430V", 0xA8: "STU-540", 0xA9: "STU-541"}
PEN_ENDPOINT = 0x81
SAMPLE_DTYPE = np.dtype([("t_ms", "f8"), ("x", "i4"), ("y", "i4"), ("pressure", "i4")])
BUTTON_LABELS = {"ok": "OK", "clear": "Clear", "cancel": "Cancel"}
_HOVER_KEEP = 400  # hover samples kept before a stroke (2 s at 200 Hz)


# ---- errors -------------------------------------------------------------------------

class SignPadError(DriverError):
    """The signature pad failed; the message says what happened and what to do."""


class SignPadUnplugged(SignPadError):
    """The pad disappeared (unplugged, USB/IP link lost). Nothing was captured."""


class SignPadTimeout(SignPadError):
    """The signer did not tap OK in time. Nothing was captured."""


class SigningCancelled(SignPadError):
    """The signer tapped Cancel."""


class SignPadProtocolError(SignPadError):
    """The pad sent or demanded something the STU protocol does not allow."""


# ---- results --------------------------------------------------------------------------

@dataclass(frozen=True)
class PadIdentity:
    vendor_id: int
    product_id: int
    model_name: str
    firmware: str
    uid2: str | None
    serial_number: str | None

    @property
    def digitizer_info(self) -> str:
        """Wacom's ``STU;'<model>';<fw>;<uid2>`` string, as its signature SDK records it."""
        return f"STU;'{self.model_name}';{self.firmware};{self.uid2 or ''}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "digitizer_info": self.digitizer_info}


@dataclass(frozen=True)
class SignatureCapture:
    """One completed signature (the signer tapped OK)."""

    samples: np.ndarray  # SAMPLE_DTYPE; t_ms from the first sample; pressure 0 = pen up (hover)
    iso_record: bytes  # ISO/IEC 19794-7:2007, channels X, Y, T, F
    png: bytes  # the signature rendered, cropped to the ink
    identity: PadIdentity
    capability: stu.Capability
    timestamps: str  # "pad" (report 0x34 time count) or "host"
    clears: int  # how often the signer tapped Clear first
    title: str  # what the prompt on the pad said
    signer: str
    started_at: datetime  # UTC, when the prompt went up
    finished_at: datetime  # UTC, when OK was tapped

    @property
    def duration_ms(self) -> float:
        return float(self.samples["t_ms"][-1]) if len(self.samples) else 0.0

    def metadata(self) -> dict[str, Any]:
        """JSON-ready description for an evidence manifest (no pen data, no image)."""
        return {
            "device": self.identity.to_dict(),
            "capability": asdict(self.capability),
            "title": self.title,
            "signer": self.signer,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "samples": int(len(self.samples)),
            "strokes": self.stroke_count,
            "duration_ms": self.duration_ms,
            "timestamps": self.timestamps,
            "clears": self.clears,
            "iso_19794_7": {"version": "2007", "channels": ["X", "Y", "T", "F"]},
        }

    @property
    def stroke_count(self) -> int:
        down = self.samples["pressure"] > 0
        return int(np.count_nonzero(down[1:] & ~down[:-1]) + (1 if len(down) and down[0] else 0))


# ---- screen layout ---------------------------------------------------------------------

def button_layout(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """Button rectangles (x0, y0, x1, y1) in screen pixels: OK, Clear, Cancel along the bottom."""
    margin = max(4, round(0.02 * width))
    button_h = max(20, round(0.13 * height))
    y1 = height - margin
    y0 = y1 - button_h
    button_w = (width - 4 * margin) // 3
    rects = {}
    for i, name in enumerate(("ok", "clear", "cancel")):
        x0 = margin + i * (button_w + margin)
        rects[name] = (x0, y0, x0 + button_w, y1)
    return rects


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only; anything else shows as '?'."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def _put_fitted(img: np.ndarray, text: str, org_y: int, max_w: int, scale: float, thickness: int,
                x: int | None = None, font: int = cv2.FONT_HERSHEY_SIMPLEX) -> None:
    text = _ascii(text)
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    if tw > max_w:
        scale *= max_w / tw
        (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    left = x if x is not None else (img.shape[1] - tw) // 2
    cv2.putText(img, text, (left, org_y), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)


def render_prompt(width: int, height: int, title: str, signer: str) -> np.ndarray:
    """The signing screen as a BGR image: title, signer, a signing line and the three buttons."""
    img = np.full((height, width, 3), 255, np.uint8)
    unit = height / 480
    _put_fitted(img, title, round(42 * unit), width - 40, 0.9 * unit, max(1, round(2 * unit)))
    if signer:
        _put_fitted(img, f"Signer: {signer}", round(80 * unit), width - 40, 0.7 * unit, max(1, round(unit)))
    buttons = button_layout(width, height)
    top = min(r[1] for r in buttons.values())
    line_y = top - round(40 * unit)
    x0, x1 = round(0.08 * width), round(0.92 * width)
    cv2.line(img, (x0, line_y), (x1, line_y), (120, 120, 120), 1, cv2.LINE_AA)
    cv2.putText(img, "x", (x0 - round(18 * unit), line_y - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * unit,
                (120, 120, 120), 1, cv2.LINE_AA)
    for name, (bx0, by0, bx1, by1) in buttons.items():
        cv2.rectangle(img, (bx0, by0), (bx1 - 1, by1 - 1), (215, 215, 215), -1)
        cv2.rectangle(img, (bx0, by0), (bx1 - 1, by1 - 1), (0, 0, 0), 2)
        label = BUTTON_LABELS[name]
        scale = 0.9 * unit
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(2 * unit)))
        org = (bx0 + (bx1 - bx0 - tw) // 2, by0 + (by1 - by0 + th) // 2)
        cv2.putText(img, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(1, round(2 * unit)),
                    cv2.LINE_AA)
    return img


def render_signature_png(samples: np.ndarray, capability: stu.Capability, *, margin: int = 12) -> bytes:
    """Draw the strokes at screen resolution, line width from pressure (1–4 px), crop to the ink."""
    w, h = capability.screen_width, capability.screen_height
    img = np.full((h, w), 255, np.uint8)
    sx = w / max(1, capability.tablet_max_x)
    sy = h / max(1, capability.tablet_max_y)
    max_p = max(1, capability.tablet_max_pressure)
    prev: tuple[int, int] | None = None
    for t_ms, x, y, p in samples.tolist():
        point = (int(round(x * sx)), int(round(y * sy)))
        if p > 0:
            thickness = 1 + int(round(3 * p / max_p))
            cv2.line(img, prev or point, point, 0, thickness, cv2.LINE_AA)
            prev = point
        else:
            prev = None
    ink = np.argwhere(img < 128)
    if len(ink):
        (r0, c0), (r1, c1) = ink.min(axis=0), ink.max(axis=0)
        img = img[max(0, r0 - margin):r1 + margin + 1, max(0, c0 - margin):c1 + margin + 1]
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise SignPadError("OpenCV could not encode the signature PNG")
    return png.tobytes()


# ---- the driver -------------------------------------------------------------------------

def _pyusb_errno(exc: BaseException) -> int | None:
    value = getattr(exc, "errno", None)
    return value if isinstance(value, int) else None


def _serial_of(device: UsbDevice) -> str | None:
    """The USB serial string; pyusb raises when it cannot read string descriptors (permissions)."""
    try:
        value = getattr(device, "serial_number", None)
    except Exception:
        return None
    return str(value) if value is not None else None


class SignaturePad:
    """One STU pad. Not thread-safe: one thread drives it (the gateway's per-device thread)."""

    def __init__(self, device: UsbDevice, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, interface: int = 0, poll_ms: int = 50) -> None:
        self.device = device
        self._clock = clock
        self._sleep = sleep
        self._interface = interface
        self._poll_ms = poll_ms
        self.capability: stu.Capability = self._get(stu.REPORT_CAPABILITY, stu.Capability)
        self.information: stu.Information = self._get(stu.REPORT_INFORMATION, stu.Information)
        try:
            uid2: str | None = self._get(stu.REPORT_UID2, stu.Uid2).uid2
        except SignPadProtocolError:
            uid2 = None  # older pads have no Uid2 report
        self.identity = PadIdentity(
            vendor_id=int(device.idVendor), product_id=int(device.idProduct),
            model_name=self.information.model_name, firmware=self.information.firmware,
            uid2=uid2, serial_number=_serial_of(device),
        )
        caps = self.capability
        if not caps.tablet_max_x or not caps.tablet_max_y or not caps.screen_width or not caps.screen_height:
            raise SignPadProtocolError(f"the pad reported an unusable capability {caps}; is it an STU pad?")
        self._prompt: tuple[str, str] = ("Please sign", "")

    @classmethod
    def open(cls, url: str, **kwargs: Any) -> SignaturePad:
        """Open a pad by URL (``usbip://host:port/busid``, ``usb://056a:00a8``…)."""
        try:
            from firmware_bridge.usb_transport import open_usb_device
        except ImportError as exc:
            raise SignPadError("the USB transport (firmware_bridge.usb_transport) is not installed; "
                               "update the gateway") from exc
        try:
            device = open_usb_device(url)
        except ValueError as exc:
            raise SignPadError(f"{url!r} is not a signature pad URL ({exc}); use usbip://HOST:PORT/BUSID or "
                               "usb://056a:00a8") from exc
        except (BridgeError, OSError) as exc:
            raise SignPadUnplugged(f"cannot open signature pad {url}: {exc}; check the cable / USB/IP server") from exc
        try:
            return cls(device, **kwargs)
        except BaseException:
            device.close()
            raise

    def close(self) -> None:
        self.device.close()

    def __enter__(self) -> SignaturePad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- low level -------------------------------------------------------------------

    def _wrap(self, exc: BaseException, doing: str) -> SignPadError:
        """Map a transport or pyusb failure to our tree (the caller raises it ``from exc``)."""
        if isinstance(exc, UsbStall):
            return SignPadProtocolError(f"the pad refused {doing} (stall): {exc}")
        if isinstance(exc, ProtocolError):
            return SignPadProtocolError(f"the pad sent a malformed report while {doing}: {exc}")
        if _pyusb_errno(exc) == errno.EPIPE:
            return SignPadProtocolError(f"the pad refused {doing} (stall): {exc}")
        if isinstance(exc, TransportTimeout):
            return SignPadTimeout(f"the pad did not answer in time while {doing}: {exc}; check the cable or "
                                  "USB/IP server and try again")
        if isinstance(exc, (TransportClosed, UsbError, BridgeError)) or _pyusb_errno(exc) in (errno.ENODEV, errno.EIO):
            return SignPadUnplugged(
                f"lost the signature pad while {doing}: {exc}; reconnect it and start the signature again")
        return SignPadError(f"unexpected failure while {doing}: {exc!r}")

    def _get(self, report_id: int, cls: Any) -> Any:
        size = stu.REPORT_SIZES[report_id]
        try:
            raw = self.device.ctrl_transfer(stu.HID_REQ_TYPE_GET, stu.HID_GET_REPORT, stu.feature_value(report_id),
                                            self._interface, size, 1000)
            return cls.decode(bytes(raw))
        except Exception as exc:
            raise self._wrap(exc, f"reading report 0x{report_id:02x}") from exc

    def _set(self, report: stu.FeatureReport) -> None:
        raw = report.encode()
        try:
            self.device.ctrl_transfer(stu.HID_REQ_TYPE_SET, stu.HID_SET_REPORT, stu.feature_value(raw[0]),
                                      self._interface, raw, 1000)
        except Exception as exc:
            raise self._wrap(exc, f"writing report 0x{raw[0]:02x}") from exc

    def _read_report(self) -> bytes | None:
        """One interrupt IN transfer, or None when nothing arrived within poll_ms."""
        try:
            return bytes(self.device.read(PEN_ENDPOINT, 64, self._poll_ms))
        except TransportTimeout:
            return None
        except UsbStall as exc:
            raise self._wrap(exc, "reading pen data") from exc
        except UsbError as exc:
            if "timeout" in str(exc).lower() or "timed out" in str(exc).lower():
                return None
            raise self._wrap(exc, "reading pen data") from exc
        except BridgeError as exc:
            raise self._wrap(exc, "reading pen data") from exc
        except Exception as exc:  # pyusb on real hardware
            if _pyusb_errno(exc) == errno.ETIMEDOUT or "timeout" in type(exc).__name__.lower():
                return None
            raise self._wrap(exc, "reading pen data") from exc

    def _wait_ready(self, timeout: float = 5.0) -> None:
        deadline = self._clock() + timeout
        while True:
            status = self._get(stu.REPORT_STATUS, stu.Status)
            if status.status_code == stu.STATUS_READY:
                return
            if self._clock() >= deadline:
                raise SignPadTimeout(f"the pad stayed busy (status 0x{status.status_code:02x}) for {timeout} s; "
                                     "power-cycle it")
            self._sleep(0.01)

    # ---- screen ------------------------------------------------------------------------

    def encoding_mode(self) -> int:
        """The richest image encoding the Capability allows (0 means an old pad: 1-bit only)."""
        flag = self.capability.encoding_flag
        if flag & stu.ENCODING_FLAG_24BIT:
            return stu.ENCODING_MODE_24BIT
        if flag & stu.ENCODING_FLAG_16BIT:
            return stu.ENCODING_MODE_16BIT
        return stu.ENCODING_MODE_1BIT

    def upload_image(self, bgr: np.ndarray) -> None:
        """Show a full-screen BGR image: StartImageData, 253-byte blocks, EndImageData (commit)."""
        caps = self.capability
        if bgr.shape[:2] != (caps.screen_height, caps.screen_width):
            bgr = cv2.resize(bgr, (caps.screen_width, caps.screen_height), interpolation=cv2.INTER_AREA)
        mode = self.encoding_mode()
        data = stu.flatten_image(bgr, mode)
        self._wait_ready()
        self._set(stu.StartImageData(mode))
        try:
            for block in stu.image_blocks(data):
                self._set(block)
        except SignPadProtocolError:
            self._set_quietly(stu.EndImageData(1))
            raise
        self._set(stu.EndImageData(0))
        self._wait_ready()

    def show_prompt(self, title: str, signer: str = "") -> None:
        """Draw and upload the signing screen, then let the pad ink the pen locally."""
        self._prompt = (title, signer)
        caps = self.capability
        self._set(stu.InkingMode(0))
        self.upload_image(render_prompt(caps.screen_width, caps.screen_height, title, signer))
        self._set(stu.InkingMode(1))

    def buttons(self) -> dict[str, tuple[int, int, int, int]]:
        return button_layout(self.capability.screen_width, self.capability.screen_height)

    def _set_quietly(self, report: stu.FeatureReport) -> None:
        try:
            self._set(report)
        except SignPadError:
            pass

    # ---- capture -------------------------------------------------------------------------

    def _enable_time_count(self) -> bool:
        try:
            self._set(stu.PenDataOptionMode(stu.PEN_OPTION_TIME_COUNT_SEQUENCE))
            return True
        except SignPadProtocolError:
            self._set_quietly(stu.PenDataOptionMode(stu.PEN_OPTION_NONE))
            return False

    def capture(self, timeout: float = 120.0, *, title: str = "Please sign", signer: str = "") -> SignatureCapture:
        """Show the prompt and collect one signature until OK.

        ``timeout`` (seconds) covers the whole session, Clears included.
        Raises SigningCancelled, SignPadTimeout, SignPadUnplugged — never a
        partial result.
        """
        deadline = self._clock() + timeout
        started_at = datetime.now(UTC)
        pad_time = self._enable_time_count()
        try:
            self.show_prompt(title, signer)
            points, clears, pad_time = self._collect(deadline, timeout, pad_time)
        except SignPadUnplugged:
            raise  # nothing left to tidy up on a pad that is gone
        except BaseException:
            self._tidy_up()
            raise
        finished_at = datetime.now(UTC)
        self._tidy_up()
        caps = self.capability
        samples = np.array(points, dtype=SAMPLE_DTYPE)
        samples["t_ms"] -= samples["t_ms"][0]
        return SignatureCapture(
            samples=samples,
            iso_record=self.iso_record(samples),
            png=render_signature_png(samples, caps),
            identity=self.identity,
            capability=caps,
            timestamps="pad" if pad_time else "host",
            clears=clears,
            title=title,
            signer=signer,
            started_at=started_at,
            finished_at=finished_at,
        )

    def _tidy_up(self) -> None:
        """Stop inking and blank the screen so the next person does not see the last prompt."""
        self._set_quietly(stu.InkingMode(0))
        self._set_quietly(stu.ClearScreen())

    def _collect(self, deadline: float, timeout: float,
                 pad_time: bool) -> tuple[list[tuple[float, int, int, int]], int, bool]:
        """Read pen reports until OK; returns (points, clears, timestamps came from the pad)."""
        strokes = _Strokes(self._button_finder())
        pen_clock = _PenClock(self._clock, pad_time)
        clears = 0
        while True:
            report = self._next_pen_report(deadline, timeout)
            if report is None:
                continue
            pressed = strokes.feed(report, pen_clock.time_of(report))
            if pressed == "cancel":
                raise SigningCancelled("the signer tapped Cancel; no signature was captured")
            if pressed == "clear":
                strokes.points.clear()
                clears += 1
                self.show_prompt(*self._prompt)
            elif pressed == "ok" and any(p[3] > 0 for p in strokes.points):
                return strokes.points, clears, pen_clock.all_pad_time

    def _next_pen_report(self, deadline: float, timeout: float) -> stu.PenReport | None:
        """One decoded pen report, or None after a short sleep when none is waiting; raises past ``deadline``."""
        if self._clock() >= deadline:
            raise SignPadTimeout(f"no OK from the signer within {timeout:g} s; nothing was captured - "
                                 "start the signature again")
        raw = self._read_report()
        if raw is None:
            self._sleep(0.001)
            return None
        try:
            return stu.decode_input_report(raw)
        except ProtocolError as exc:
            raise SignPadProtocolError(f"the pad sent a malformed pen report {raw.hex()}: {exc}") from exc

    def _button_finder(self) -> Callable[[int, int], str | None]:
        """Which on-screen button (if any) a tablet coordinate falls in."""
        caps = self.capability
        sx, sy = caps.screen_width / caps.tablet_max_x, caps.screen_height / caps.tablet_max_y
        buttons = self.buttons()

        def button_at(x: int, y: int) -> str | None:
            px, py = x * sx, y * sy
            for name, (x0, y0, x1, y1) in buttons.items():
                if x0 <= px < x1 and y0 <= py < y1:
                    return name
            return None

        return button_at

    def iso_record(self, samples: np.ndarray) -> bytes:
        """ISO/IEC 19794-7:2007 record; T in 1/10000 s when it fits 16 bits, else coarser (see T scaling)."""
        duration_ms = float(samples["t_ms"][-1] - samples["t_ms"][0]) if len(samples) else 0.0
        # T is 16 bits: the finest of 1/10000 … 1 s that holds the whole signature.
        units = next((u for u in (10000, 1000, 100, 10, 1) if round(duration_ms * u / 1000) <= 0xFFFF), 1)
        series = SignatureTimeSeries(
            t_ms=samples["t_ms"].tolist(), x=samples["x"].tolist(), y=samples["y"].tolist(),
            f=samples["pressure"].tolist(), xy_units_per_mm=self.capability.resolution / 25.4,
            f_max=self.capability.tablet_max_pressure,
        )
        try:
            return encode_record(series, t_units_per_second=units)
        except BridgeError as exc:
            raise SignPadError(f"cannot encode the ISO/IEC 19794-7 record: {exc}") from exc


class _PenClock:
    """Sample times in ms: the pad's 16-bit time count while every report carries one, else the host clock."""

    def __init__(self, clock: Callable[[], float], pad_time: bool) -> None:
        self._clock = clock
        self.all_pad_time = pad_time
        self._t_pad = 0.0
        self._last_count: int | None = None
        self._last_host = 0.0
        self._t_host0 = clock()

    def time_of(self, report: stu.PenReport) -> float:
        if isinstance(report, stu.PenDataTimeCountSequence):
            now = self._clock()
            if self._last_count is not None:
                delta = (report.time_count - self._last_count) & 0xFFFF
                # The count wraps every 65.536 s; a pause that long (pen away)
                # is only visible on the host clock, so add the lost wraps.
                host_gap_ms = (now - self._last_host) * 1000.0
                if host_gap_ms > 30000:
                    delta += round((host_gap_ms - delta) / 65536) * 65536
                self._t_pad += delta
            self._last_count, self._last_host = report.time_count, now
            return self._t_pad
        self.all_pad_time = False
        return (self._clock() - self._t_host0) * 1000.0


class _Strokes:
    """Ink versus button gestures, one pen report at a time.

    A pen-down inside a button starts a button gesture (its samples are not ink); the
    matching pen-up inside the same button presses it. Hover samples are kept until the
    next pen-down and become part of the signature only if that stroke is ink.
    """

    def __init__(self, button_at: Callable[[int, int], str | None]) -> None:
        self.button_at = button_at
        self.points: list[tuple[float, int, int, int]] = []
        self.hover: list[tuple[float, int, int, int]] = []
        self.button_down: str | None = None
        self.was_touching = False

    def feed(self, report: stu.PenReport, t_ms: float) -> str | None:
        """Take one report; the button its pen-up pressed (``ok``, ``clear``, ``cancel``), else None."""
        if not report.rdy:  # left proximity: the hover path is over
            self.hover.clear()
            self.was_touching = False
            self.button_down = None
            return None
        touching = report.sw != 0
        sample = (t_ms, report.x, report.y, report.pressure if touching else 0)
        pressed: str | None = None
        if touching and not self.was_touching:
            self.button_down = self.button_at(report.x, report.y)
            if self.button_down is None:
                self.points.extend(self.hover)
                self.points.append(sample)
            self.hover.clear()
        elif touching:
            if self.button_down is None:
                self.points.append(sample)
        elif self.was_touching:  # pen lifted: a button press is decided here
            if self.button_down is not None:
                pressed = self.button_down if self.button_at(report.x, report.y) == self.button_down else None
                self.button_down = None
            else:
                self.points.append(sample)
        else:
            self.hover.append(sample)
            if len(self.hover) > _HOVER_KEEP:
                del self.hover[: len(self.hover) - _HOVER_KEEP]
        self.was_touching = touching
        return pressed
