"""The R30x module on a serial link: packets, retries, password, library, capture, search and enrolment.

Every serial or codec failure leaves as a ``FingerprintError`` subclass (see the package
docstring for the tree); images are judged and encoded by ``image`` and ``iso``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Final

import numpy as np
import numpy.typing as npt
import serial

from firmware_bridge.errors import (
    BridgeError,
    FrameError,
    ProtocolError,
    UnknownCodeError,
)
from firmware_bridge.r30x import (
    DEFAULT_ADDRESS,
    IMAGE_BYTES,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    NEED_DATA,
    TEMPLATE_BYTES,
    Ack,
    Command,
    ConfirmationCode,
    DataPacket,
    Instruction,
    R30xCodec,
    Role,
    SystemParameters,
    unpack_image,
)
from firmware_bridge.transports import open_transport

from .errors import (
    CaptureCancelled,
    DeviceGoneError,
    DeviceNotRespondingError,
    EnrollmentError,
    FingerprintError,
    ModuleError,
    NoFingerError,
    PacketError,
    PoorQualityError,
    WrongPasswordError,
)
from .image import quality_score
from .results import Enrollment, FingerCapture, SearchResult

DEFAULT_QUALITY_THRESHOLD: Final = 40
_IMAGE_SIZES: Final = {IMAGE_BYTES: (IMAGE_WIDTH, IMAGE_HEIGHT), 192 * 192 // 2: (192, 192)}  # bytes → (w, h)


@dataclass(frozen=True)
class _Retry:
    """Why one try of a command failed; ``heard``: the module answered (garbled or refusing), not silence."""

    why: str
    heard: bool


class FingerprintReader:
    """An R30x module on a serial link.

    ``timeout`` is the longest silence tolerated while a reply is due;
    ``retries`` how often a command is re-sent after a garbled or missing
    reply (every R30x command may be repeated safely). ``quality_threshold``
    (0..100) decides :attr:`FingerCapture.acceptable`.

    One thread at a time: the gateway runs each device's blocking I/O in a
    thread of its own; to abort a wait from elsewhere pass a ``cancel`` event.
    """

    def __init__(
        self,
        url: str,
        password: int = 0,
        address: int = DEFAULT_ADDRESS,
        *,
        baudrate: int = 57600,
        timeout: float = 2.0,
        retries: int = 2,
        quality_threshold: int = DEFAULT_QUALITY_THRESHOLD,
        verify: bool = True,
    ) -> None:
        if not 0 <= password <= 0xFFFFFFFF or not 0 <= address <= 0xFFFFFFFF:
            raise ValueError("password and address are 32-bit values (0 .. 0xFFFFFFFF)")
        if not 0 <= quality_threshold <= 100:
            raise ValueError("quality_threshold is on the 0..100 scale")
        self.url = url
        self.password = password
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.quality_threshold = quality_threshold
        self.codec = R30xCodec(Role.HOST, address)
        self.packet_errors = 0  # garbled replies seen (and recovered from) on this link
        try:
            self._serial = open_transport(url, baudrate=baudrate, timeout=timeout, write_timeout=timeout)
        except BridgeError as exc:
            raise DeviceGoneError(
                f"cannot open fingerprint reader at {url!r}: {exc}; check the cable, the port name"
                " and that no other program holds it"
            ) from exc
        try:
            self._serial.reset_input_buffer()
            if verify:
                self.verify_password()
        except BaseException:
            self.close()
            raise

    # -- context / lifecycle ----------------------------------------------------
    def close(self) -> None:
        try:
            self._serial.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self) -> FingerprintReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- link level ---------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            self._serial.write(data)
            self._serial.flush()
        except (serial.SerialException, OSError) as exc:
            raise DeviceGoneError(
                f"the fingerprint reader at {self.url!r} went away (writing failed: {exc}); reconnect it and retry"
            ) from exc

    def _read_event(self) -> Ack | DataPacket:
        """Next packet from the module; TimeoutError on silence, ProtocolError on garbage."""
        while True:
            event = self.codec.next_event()
            if isinstance(event, (Ack, DataPacket)):
                return event
            if event is not NEED_DATA:
                continue  # a Command cannot reach a host codec; be safe anyway
            try:
                chunk = self._serial.read(max(self.codec.bytes_wanted, self._serial.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise DeviceGoneError(
                    f"the fingerprint reader at {self.url!r} went away: {exc}; reconnect it and retry"
                ) from exc
            if not chunk:
                raise TimeoutError(f"no reply within {self.timeout} s")
            self.codec.receive_data(chunk)

    def _drain(self) -> None:
        """Swallow whatever is still arriving (the rest of a broken transfer) and reset the codec."""
        quiet_for = min(0.2, self.timeout)
        old = self._serial.timeout
        try:
            self._serial.timeout = quiet_for
            for _ in range(10_000):
                if not self._serial.read(max(4096, self._serial.in_waiting)):
                    break
        except (serial.SerialException, OSError) as exc:
            raise DeviceGoneError(f"the fingerprint reader at {self.url!r} went away: {exc}") from exc
        finally:
            try:
                self._serial.timeout = old
            except (serial.SerialException, OSError):
                pass
        self.codec.clear()

    def _transact(self, instruction: Instruction, params: bytes = b"", *,
                  data_reply: bool = False, expect: int | None = None) -> tuple[Ack, bytes]:
        """Send one command; return its ack and (for uploads) the data that followed.

        Garbled replies, a reported receive error (cc 01) or silence cause the
        command to be sent again, up to ``retries`` times. ``expect`` is the
        exact ack data length an OK reply must carry.
        """
        command = self.codec.send(Command(instruction, params))
        last: str = ""
        silent = True
        for _attempt in range(self.retries + 1):
            self._write(command)
            outcome = self._attempt(instruction, data_reply, expect)
            if not isinstance(outcome, _Retry):
                return outcome
            last = outcome.why
            silent = silent and not outcome.heard
        if silent:
            raise DeviceNotRespondingError(
                f"the fingerprint reader at {self.url!r} did not answer {instruction.name} "
                f"({self.retries + 1} tries, {self.timeout} s each); check power, baud rate and "
                f"module address 0x{self.address:08X}"
            )
        raise PacketError(
            f"{instruction.name} to {self.url!r} failed {self.retries + 1} times: {last}; "
            "check the cable and ground, or lower the baud rate"
        )

    def _attempt(self, instruction: Instruction, data_reply: bool, expect: int | None) -> tuple[Ack, bytes] | _Retry:
        """One try, the command just written: its ack and data, or why to send it again."""
        try:
            ack = self._read_ack()
            if ack.code is ConfirmationCode.PACKET_RECEIVE_ERROR:
                return _Retry("the module reported a packet receive error (cc 01)", heard=True)
            if ack.code is ConfirmationCode.PASSWORD_NOT_VERIFIED:
                raise WrongPasswordError(
                    f"the module at {self.url!r} wants its password verified first; "
                    "pass the right password= to FingerprintReader"
                )
            if ack.ok and expect is not None and len(ack.data) != expect:
                self.packet_errors += 1
                self._drain()
                return _Retry(f"{instruction.name} reply carried {len(ack.data)} data bytes, expected {expect}",
                              heard=True)
            data = self._read_bulk() if data_reply and ack.ok else b""
            return ack, data
        except UnknownCodeError as exc:
            raise ModuleError(
                f"{instruction.name}: {exc}", ConfirmationCode.PACKET_RECEIVE_ERROR
            ) from exc
        except ProtocolError as exc:
            self.packet_errors += 1
            self._drain()
            return _Retry(f"garbled reply: {exc}", heard=True)
        except TimeoutError:
            self._drain()
            return _Retry(f"no reply within {self.timeout} s", heard=False)

    def _read_ack(self) -> Ack:
        while True:
            event = self._read_event()
            if isinstance(event, Ack):
                return event
            # a stray data packet (left over from an aborted transfer): not our reply

    def _read_bulk(self) -> bytes:
        data = bytearray()
        while True:
            event = self._read_event()
            if isinstance(event, Ack):
                raise FrameError("an ack arrived in the middle of a data transfer")
            data += event.data
            if len(data) > 1 << 20:
                raise FrameError("a data transfer exceeded 1 MiB without its final packet")
            if event.final:
                return bytes(data)

    def _check(self, instruction: Instruction, ack: Ack, what: str) -> None:
        if ack.ok:
            return
        if ack.code is ConfirmationCode.WRONG_PASSWORD:
            raise WrongPasswordError(f"the module at {self.url!r} rejected the password; use the one set with SetPwd")
        raise ModuleError(f"{what} failed: {ack.code.description} (cc 0x{ack.code:02X}, {instruction.name})", ack.code)

    def _simple(self, instruction: Instruction, params: bytes = b"", what: str = "",
                expect: int | None = None) -> bytes:
        ack, _ = self._transact(instruction, params, expect=expect)
        self._check(instruction, ack, what or instruction.name)
        return ack.data

    # -- housekeeping -----------------------------------------------------------------
    def verify_password(self, password: int | None = None) -> None:
        """VfyPwd; raises WrongPasswordError. Done by the constructor unless verify=False."""
        pw = self.password if password is None else password
        ack, _ = self._transact(Instruction.VFY_PWD, pw.to_bytes(4, "big"))
        if ack.code is ConfirmationCode.WRONG_PASSWORD:
            raise WrongPasswordError(
                f"the fingerprint reader at {self.url!r} rejected password 0x{pw:08X}; "
                "configure the module's password (factory default 00000000)"
            )
        self._check(Instruction.VFY_PWD, ack, "verifying the password")
        self.password = pw

    def set_password(self, new_password: int) -> None:
        self._simple(Instruction.SET_PWD, new_password.to_bytes(4, "big"), "setting the password")
        self.password = new_password

    def system_parameters(self) -> SystemParameters:
        data = self._simple(Instruction.READ_SYS_PARA, what="reading system parameters",
                            expect=SystemParameters.SIZE)
        return SystemParameters.from_bytes(data)

    def template_count(self) -> int:
        return int.from_bytes(self._simple(Instruction.TEMPLATE_NUM, expect=2), "big")

    def used_pages(self) -> list[int]:
        """Library pages holding a template (ReadIndexTable over the library size)."""
        size = self.system_parameters().library_size
        used: list[int] = []
        for index_page in range(min(4, (size + 255) // 256)):
            bitmap = self._simple(Instruction.READ_INDEX_TABLE, bytes([index_page]), expect=32)
            for i, byte in enumerate(bitmap):
                for bit in range(8):
                    page = index_page * 256 + i * 8 + bit
                    if byte >> bit & 1 and page < size:
                        used.append(page)
        return used

    def free_page(self) -> int:
        size = self.system_parameters().library_size
        used = set(self.used_pages())
        for page in range(size):
            if page not in used:
                return page
        raise EnrollmentError(f"the module's library is full ({size} templates); delete some first")

    def delete(self, page: int, count: int = 1) -> None:
        self._simple(Instruction.DELET_CHAR, page.to_bytes(2, "big") + count.to_bytes(2, "big"),
                     f"deleting templates {page}..{page + count - 1}")

    def empty_library(self) -> None:
        self._simple(Instruction.EMPTY, what="emptying the template library")

    def random_number(self) -> int:
        return int.from_bytes(self._simple(Instruction.GET_RANDOM_CODE, expect=4), "big")

    # -- images -------------------------------------------------------------------------
    def read_image(self) -> bool:
        """One GenImg: True when a finger image is now in the module's image buffer."""
        ack, _ = self._transact(Instruction.GEN_IMG)
        if ack.code in (ConfirmationCode.NO_FINGER, ConfirmationCode.IMAGE_CAPTURE_FAILED):
            return False
        self._check(Instruction.GEN_IMG, ack, "taking a finger image")
        return True

    def wait_for_finger(self, timeout: float = 10.0, poll_interval: float = 0.05,
                        cancel: threading.Event | None = None) -> None:
        """Poll GenImg until a finger is imaged; NoFingerError after ``timeout`` seconds.

        ``cancel`` (set from another thread) ends the wait with CaptureCancelled,
        e.g. when the officer aborts a signing session.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._check_cancel(cancel)
            if self.read_image():
                return
            if time.monotonic() >= deadline:
                raise NoFingerError(f"no finger on the sensor within {timeout:g} s; ask the person to press again")
            self._pause(poll_interval, cancel)

    def wait_for_lift(self, timeout: float = 10.0, poll_interval: float = 0.05,
                      cancel: threading.Event | None = None) -> None:
        """Poll until the sensor is empty again (between enrolment presses)."""
        deadline = time.monotonic() + timeout
        while self.read_image():
            if time.monotonic() >= deadline:
                raise FingerprintError(f"the finger stayed on the sensor for {timeout:g} s; ask the person to lift it")
            self._pause(poll_interval, cancel)

    @staticmethod
    def _check_cancel(cancel: threading.Event | None) -> None:
        if cancel is not None and cancel.is_set():
            raise CaptureCancelled("the capture was cancelled while waiting for a finger")

    def _pause(self, seconds: float, cancel: threading.Event | None) -> None:
        if cancel is None:
            time.sleep(seconds)
        elif cancel.wait(seconds):
            self._check_cancel(cancel)

    def download_image(self) -> npt.NDArray[np.uint8]:
        """UpImage: the module's image buffer as a uint8 array (4-bit grey × 17).

        R307/ZFM/AS608 send 256 × 288 (array shape (288, 256)); an upload of
        18,432 bytes is taken as the R503's 192 × 192 with the same packing
        (protocol file §5: assumed, not verified on hardware).
        """
        for _ in range(self.retries + 1):
            ack, data = self._transact(Instruction.UP_IMAGE, data_reply=True)
            self._check(Instruction.UP_IMAGE, ack, "uploading the finger image")
            if len(data) in _IMAGE_SIZES:
                width, height = _IMAGE_SIZES[len(data)]
                return unpack_image(data, width, height)
            self.packet_errors += 1
        raise PacketError(
            f"the image upload from {self.url!r} kept arriving with the wrong size ({len(data)} bytes,"
            f" expected {IMAGE_BYTES} for 256x288 or 18432 for the R503's 192x192); a packet was lost,"
            " or this module uses another sensor size"
        )

    def capture_image(self, timeout: float = 10.0, *, cancel: threading.Event | None = None) -> npt.NDArray[np.uint8]:
        """Wait for a finger (GenImg), then upload the image (UpImage).

        Returns a uint8 array of shape (288, 256): 288 rows (height) by 256
        columns (width), 0 = black ridge, grey levels multiples of 17.
        """
        self.wait_for_finger(timeout, cancel=cancel)
        return self.download_image()

    def capture(self, timeout: float = 10.0, *, min_quality: int | None = None,
                raise_on_poor: bool = True, cancel: threading.Event | None = None) -> FingerCapture:
        """Capture an image and judge its quality.

        Below the threshold (``min_quality`` or the reader's
        ``quality_threshold``) this raises PoorQualityError carrying the
        capture, unless ``raise_on_poor`` is False (then check ``.acceptable``).
        """
        image = self.capture_image(timeout, cancel=cancel)
        return self._judge(image, min_quality, raise_on_poor)

    def _judge(self, image: npt.NDArray[np.uint8], min_quality: int | None, raise_on_poor: bool) -> FingerCapture:
        threshold = self.quality_threshold if min_quality is None else min_quality
        capture = FingerCapture(image, quality_score(image), threshold, datetime.now(UTC))
        if raise_on_poor and not capture.acceptable:
            raise PoorQualityError(capture.retry_prompt or "poor quality", capture)
        return capture

    # -- templates ------------------------------------------------------------------------
    def convert_image(self, buffer_id: int = 1) -> None:
        """Img2Tz: features of the image buffer into char buffer 1 or 2."""
        ack, _ = self._transact(Instruction.IMG_2_TZ, bytes([buffer_id]))
        if ack.code in (ConfirmationCode.IMAGE_TOO_MESSY, ConfirmationCode.TOO_FEW_FEATURE_POINTS):
            raise ModuleError(f"the finger image is unusable ({ack.code.description}); press again", ack.code)
        self._check(Instruction.IMG_2_TZ, ack, "extracting features")

    def compare(self) -> int:
        """Match char buffer 1 against 2; the module's score (0 when they do not match)."""
        ack, _ = self._transact(Instruction.MATCH)
        if ack.code is ConfirmationCode.NO_MATCH:
            return 0
        self._check(Instruction.MATCH, ack, "comparing char buffers")
        if len(ack.data) < 2:
            raise PacketError("the Match reply carried no score")
        return int.from_bytes(ack.data[:2], "big")

    def create_model(self) -> None:
        ack, _ = self._transact(Instruction.REG_MODEL)
        if ack.code is ConfirmationCode.MERGE_FAILED:
            raise EnrollmentError("the presses do not look like the same finger; start the enrolment again")
        self._check(Instruction.REG_MODEL, ack, "merging the presses into a template")

    def store(self, page: int, buffer_id: int = 1) -> None:
        self._simple(Instruction.STORE, bytes([buffer_id]) + page.to_bytes(2, "big"), f"storing template {page}")

    def load(self, page: int, buffer_id: int = 1) -> None:
        self._simple(Instruction.LOAD_CHAR, bytes([buffer_id]) + page.to_bytes(2, "big"), f"loading template {page}")

    def upload_template(self, buffer_id: int = 1) -> bytes:
        """UpChar: the char buffer's bytes (512 on ZFM/R307)."""
        ack, data = self._transact(Instruction.UP_CHAR, bytes([buffer_id]), data_reply=True)
        self._check(Instruction.UP_CHAR, ack, "uploading the template")
        return data

    def download_template(self, template: bytes, buffer_id: int = 1, packet_size: int | None = None) -> None:
        """DownChar: put a template (from upload_template) back into a char buffer."""
        if not template or len(template) > TEMPLATE_BYTES * 3:
            raise ValueError(f"a template is 1..{TEMPLATE_BYTES * 3} bytes, got {len(template)}")
        size = packet_size or self.system_parameters().packet_size
        ack, _ = self._transact(Instruction.DOWN_CHAR, bytes([buffer_id]))
        self._check(Instruction.DOWN_CHAR, ack, "starting the template download")
        self._write(self.codec.send_data(template, size))

    def search_buffer(self, buffer_id: int = 1, start: int = 0, count: int | None = None) -> SearchResult:
        """Search the library for char buffer ``buffer_id``."""
        n = self.system_parameters().library_size if count is None else count
        ack, _ = self._transact(Instruction.SEARCH, bytes([buffer_id]) + start.to_bytes(2, "big") + n.to_bytes(2, "big"))
        if ack.code is ConfirmationCode.NOT_FOUND:
            return SearchResult(None, 0)
        self._check(Instruction.SEARCH, ack, "searching the library")
        if len(ack.data) < 4:
            raise PacketError(f"the Search reply carried {len(ack.data)} data bytes, expected 4")
        return SearchResult(int.from_bytes(ack.data[:2], "big"), int.from_bytes(ack.data[2:4], "big"))

    # -- officer identification ----------------------------------------------------------
    def search(self, timeout: float = 10.0, *, start: int = 0, count: int | None = None,
               with_image: bool = False, min_quality: int | None = None,
               cancel: threading.Event | None = None) -> SearchResult:
        """Identify a finger: wait for it, extract features, search the library.

        With ``with_image`` the image is uploaded too (about 7 s at 57600
        baud), judged for quality (PoorQualityError below the threshold) and
        returned in ``.capture`` — the evidence of who signed.
        """
        self.wait_for_finger(timeout, cancel=cancel)
        capture = None
        if with_image:
            capture = self._judge(self.download_image(), min_quality, True)
        self.convert_image(1)
        result = self.search_buffer(1, start, count)
        return SearchResult(result.page, result.score, capture)

    def enroll(self, page: int | None = None, *, timeout: float = 10.0, presses: int = 2,
               wait_for_lift: bool = True, with_images: bool = False,
               min_quality: int | None = None, cancel: threading.Event | None = None) -> Enrollment:
        """Enrol a finger: ``presses`` (2) images → RegModel → Store at ``page`` (first free if None).

        Between presses the person must lift the finger (``wait_for_lift``).
        Raises EnrollmentError when the presses do not match, NoFingerError
        when nobody presses, PoorQualityError for a poor image (with images).
        """
        if presses not in (1, 2):
            raise ValueError("the module merges at most two presses (char buffers 1 and 2)")
        target = self.free_page() if page is None else page
        captures: list[FingerCapture] = []
        for press in range(1, presses + 1):
            if press > 1 and wait_for_lift:
                self.wait_for_lift(timeout, cancel=cancel)
            self.wait_for_finger(timeout, cancel=cancel)
            if with_images:
                captures.append(self._judge(self.download_image(), min_quality, True))
            self.convert_image(press)
        if presses == 2:
            self.create_model()
        self.store(target, 1)
        return Enrollment(target, tuple(captures))
