"""Body-worn camera vendor command ``F9`` (GA/T 947.4 functions over BOT), sans-IO.

See docs/protocols/bodycam-usb.md. Real recorders carry the GA/T 947.4
function set over vendor transports; ours is a vendor SCSI command inside the
mass-storage Bulk-Only Transport (``firmware_bridge.bot``). A real model is a
table entry: its opcode and ZFY_INFO layout are parameters here.

CDB, 16 bytes::

    0      1          2 .. 7                 8 .. 15
    +------+----------+----------------------+------------+
    | F9h  | function | password, 6 ASCII    | zero       |
    +------+----------+----------------------+------------+

IN response (data-IN phase)::

    0       1 ..
    +-------+------------------------------+
    | iRet  | payload (per function)       |
    +-------+------------------------------+

| code | function                    | dir     | payload after iRet                         |
|------|-----------------------------|---------|--------------------------------------------|
| 01   | Init_Device                 | IN 6    | IDCode, 5 ASCII                            |
| 02   | GetIDCode                   | IN 6    | IDCode, 5 ASCII                            |
| 03   | GetZFYInfo                  | IN 95   | ZFY_INFO (94, or 89 in the compact layout) |
| 04   | WriteZFYInfo                | OUT 94  | ZFY_INFO                                   |
| 05   | GetDevTime (extension)      | IN 15   | ``YYYYMMDDhhmmss`` device local time       |
| 06   | SyncDevTime                 | OUT 16  | ``YYYYMMDDhhmmss`` + s16 LE zone minutes   |
| 07   | ReadDeviceResolution        | IN 5    | width u16 LE, height u16 LE                |
| 08   | ReadDeviceBatteryDumpEnergy | IN 2    | percent u8                                 |
| 09   | SetMSDC                     | none    | (CSW status only)                          |
| 0A   | SetPassword                 | OUT 6   | new password, 6 ASCII                      |
| 0B   | GetStorage (extension)      | IN 13   | total MiB, free MiB, file count (u32 LE)   |

ZFY_INFO, GBK text, each field NUL padded (94-byte layout: every field keeps
at least one NUL terminator; 89-byte layout: no terminator, a full field is
legal)::

    94: cSerial[8] | userNo[7] | userName[33] | unitNo[13] | unitName[33]
    89: cSerial[7] | userNo[6] | userName[32] | unitNo[12] | unitName[32]

OUT functions report through the CSW; on failure REQUEST SENSE gives sense
key 05h, ASC 74h, ASCQ = the iRet code. Extensions of this project (all
in docs/protocols/bodycam-usb.md §3, with the sense codes as vectors):

* a locked device (five wrong passwords in a row) fails every F9 command in
  the CSW with sense 05h/74h/71h (SPC "logical unit access not authorized");
* a malformed parameter list (bad ZFY_INFO, bad password) fails with sense
  05h/26h/00h ("invalid field in parameter list"), a SyncDevTime payload
  that does not decode with 05h/74h/06h (iRet 6, time set failed), an
  unknown function code with 05h/24h/00h ("invalid field in CDB");
* IN functions refused for a wrong password still send their full length,
  iRet 4 then zeros, and fail the CSW with sense 05h/74h/04h.
"""

from __future__ import annotations

import hmac
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, IntEnum
from typing import Final

from firmware_bridge.errors import FrameError, LengthError, LocalProtocolError, UnknownCodeError

__all__ = [
    "VENDOR_OPCODE", "CDB_LENGTH", "DEFAULT_PASSWORD", "ASC_BODYCAM", "ASCQ_LOCKED",
    "ASC_INVALID_FIELD_IN_CDB", "ASC_INVALID_PARAMETER", "ASC_INVALID_OPCODE",
    "Function", "IRet", "Direction", "FunctionSpec", "FUNCTION_SPECS", "FAILURE_CODES",
    "ZfyLayout", "ZFY_LAYOUT_94", "ZFY_LAYOUT_89", "ZfyInfo",
    "VendorCommand", "build_cdb", "parse_cdb", "check_password",
    "encode_zfy_info", "decode_zfy_info", "FREE_TEXT_FIELDS",
    "encode_device_time", "decode_device_time", "encode_sync_time", "decode_sync_time",
    "encode_password_payload", "decode_password_payload",
    "IdCodeResponse", "ZfyInfoResponse", "DeviceTimeResponse", "ResolutionResponse",
    "BatteryResponse", "StorageResponse", "FunctionRefused", "Response",
    "response_length", "encode_response", "encode_refusal", "parse_response",
]

VENDOR_OPCODE: Final = 0xF9
CDB_LENGTH: Final = 16
DEFAULT_PASSWORD: Final = "000000"
ASC_BODYCAM: Final = 0x74
ASCQ_LOCKED: Final = 0x71
ASC_INVALID_OPCODE: Final = 0x20
ASC_INVALID_FIELD_IN_CDB: Final = 0x24
ASC_INVALID_PARAMETER: Final = 0x26

_TIME_FORMAT = "%Y%m%d%H%M%S"
_PASSWORD_RE = re.compile(rb"[\x21-\x7e]{6}")


class Function(IntEnum):
    INIT_DEVICE = 0x01
    GET_ID_CODE = 0x02
    GET_ZFY_INFO = 0x03
    WRITE_ZFY_INFO = 0x04
    GET_DEV_TIME = 0x05
    SYNC_DEV_TIME = 0x06
    READ_RESOLUTION = 0x07
    READ_BATTERY = 0x08
    SET_MSDC = 0x09
    SET_PASSWORD = 0x0A
    GET_STORAGE = 0x0B


class IRet(IntEnum):
    """GA/T 947.4 return codes (0 where a function has none)."""

    NONE = 0
    CONNECT_OK = 1
    CONNECT_FAILED = 2
    PASSWORD_OK = 3
    PASSWORD_WRONG = 4
    TIME_SET = 5
    TIME_SET_FAILED = 6
    MSC_OK = 7
    MSC_FAILED = 8


FAILURE_CODES: Final = frozenset({IRet.CONNECT_FAILED, IRet.PASSWORD_WRONG, IRet.TIME_SET_FAILED, IRet.MSC_FAILED})


class Direction(Enum):
    IN = "in"
    OUT = "out"
    NONE = "none"


@dataclass(frozen=True)
class FunctionSpec:
    direction: Direction
    length: int  # bytes in the data phase for the 94-byte layout (IN includes iRet)


FUNCTION_SPECS: Final[dict[Function, FunctionSpec]] = {
    Function.INIT_DEVICE: FunctionSpec(Direction.IN, 6),
    Function.GET_ID_CODE: FunctionSpec(Direction.IN, 6),
    Function.GET_ZFY_INFO: FunctionSpec(Direction.IN, 95),
    Function.WRITE_ZFY_INFO: FunctionSpec(Direction.OUT, 94),
    Function.GET_DEV_TIME: FunctionSpec(Direction.IN, 15),
    Function.SYNC_DEV_TIME: FunctionSpec(Direction.OUT, 16),
    Function.READ_RESOLUTION: FunctionSpec(Direction.IN, 5),
    Function.READ_BATTERY: FunctionSpec(Direction.IN, 2),
    Function.SET_MSDC: FunctionSpec(Direction.NONE, 0),
    Function.SET_PASSWORD: FunctionSpec(Direction.OUT, 6),
    Function.GET_STORAGE: FunctionSpec(Direction.IN, 13),
}


# ---- ZFY_INFO -------------------------------------------------------------------


@dataclass(frozen=True)
class ZfyLayout:
    """Field sizes of ZFY_INFO; ``terminated`` layouts keep one NUL in every field."""

    name: str
    serial: int
    user_no: int
    user_name: int
    unit_no: int
    unit_name: int
    terminated: bool

    @property
    def size(self) -> int:
        return self.serial + self.user_no + self.user_name + self.unit_no + self.unit_name

    @property
    def fields(self) -> tuple[tuple[str, int], ...]:
        return (("serial", self.serial), ("user_no", self.user_no), ("user_name", self.user_name),
                ("unit_no", self.unit_no), ("unit_name", self.unit_name))


ZFY_LAYOUT_94: Final = ZfyLayout("zfy94", 8, 7, 33, 13, 33, terminated=True)
ZFY_LAYOUT_89: Final = ZfyLayout("zfy89", 7, 6, 32, 12, 32, terminated=False)


@dataclass(frozen=True)
class ZfyInfo:
    """Recorder identity and the officer/unit bound to it (GA/T 947.4 ZFY_INFO).

    ``serial`` is the 7-digit product serial, ``user_no`` the 6-digit police
    number (empty on a recorder nobody is bound to), ``unit_no`` the 12-digit
    unit code (or empty).
    """

    serial: str
    user_no: str
    user_name: str = ""
    unit_no: str = ""
    unit_name: str = ""
    # As decoded from a device: the exact bytes received, and the text fields whose bytes were not
    # GBK and were decoded with U+FFFD for the bad bytes (``decode_zfy_info(text_errors="replace")``).
    raw: bytes = field(default=b"", compare=False, repr=False)
    lossy: tuple[str, ...] = field(default=(), compare=False)

    def problems(self) -> list[str]:
        """Why this record may not be written to a device (empty when it may)."""
        out = []
        if not (len(self.serial) == 7 and self.serial.isascii() and self.serial.isdigit()):
            out.append(f"serial must be 7 digits, got {self.serial!r}")
        if not (len(self.user_no) == 6 and self.user_no.isascii() and self.user_no.isdigit()):
            out.append(f"police number (user_no) must be 6 digits, got {self.user_no!r}")
        if self.unit_no and not (len(self.unit_no) == 12 and self.unit_no.isascii() and self.unit_no.isdigit()):
            out.append(f"unit code (unit_no) must be 12 digits or empty, got {self.unit_no!r}")
        return out


def _encode_field(value: str, size: int, name: str, terminated: bool) -> bytes:
    if "\0" in value:
        raise LocalProtocolError(f"ZFY_INFO {name} must not contain NUL")
    try:
        raw = value.encode("gbk")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"ZFY_INFO {name} has characters GBK cannot encode: {value!r} ({exc.reason})") from None
    room = size - 1 if terminated else size
    if len(raw) > room:
        raise LocalProtocolError(f"ZFY_INFO {name} is {len(raw)} GBK bytes, at most {room} fit: {value!r}")
    return raw.ljust(size, b"\0")


def encode_zfy_info(info: ZfyInfo, layout: ZfyLayout = ZFY_LAYOUT_94) -> bytes:
    """ZFY_INFO bytes for ``layout``; refuses records a device must not store."""
    problems = info.problems()
    if problems:
        raise LocalProtocolError("invalid ZFY_INFO: " + "; ".join(problems))
    return b"".join(_encode_field(getattr(info, name), size, name, layout.terminated) for name, size in layout.fields)


FREE_TEXT_FIELDS: Final = ("user_name", "unit_name")


def decode_zfy_info(raw: bytes, layout: ZfyLayout = ZFY_LAYOUT_94, *, text_errors: str = "strict") -> ZfyInfo:
    """Parse ZFY_INFO; text after the first NUL of a field is padding and ignored.

    The serial must be 7 digits (it is the recorder's identity); the police
    number 6 digits or empty (an unbound recorder); everything else is GBK.

    Text policy: the serial, police number and unit code identify device and
    officer and are always checked strictly. The officer's and the unit's
    names are free text for people: with ``text_errors="replace"`` bytes that
    are not GBK become U+FFFD and the field is named in ``ZfyInfo.lossy``
    (a reader must not present such a name as exact). ``ZfyInfo.raw`` always
    keeps the bytes received, so what the device sent can be recorded as is.
    """
    if text_errors not in ("strict", "replace"):
        raise LocalProtocolError(f"text_errors must be 'strict' or 'replace', not {text_errors!r}")
    if len(raw) != layout.size:
        raise LengthError(f"ZFY_INFO ({layout.name}) is {layout.size} bytes, got {len(raw)}")
    values: dict[str, str] = {}
    lossy: list[str] = []
    offset = 0
    for name, size in layout.fields:
        chunk = raw[offset:offset + size]
        offset += size
        text = chunk.split(b"\0", 1)[0]
        if layout.terminated and b"\0" not in chunk:
            raise FrameError(f"ZFY_INFO {name} has no NUL terminator in its {size} bytes")
        try:
            values[name] = text.decode("gbk")
        except UnicodeDecodeError as exc:
            if text_errors == "strict" or name not in FREE_TEXT_FIELDS:
                raise FrameError(f"ZFY_INFO {name} is not valid GBK: {text!r} ({exc.reason})") from None
            values[name] = text.decode("gbk", "replace")
            lossy.append(name)
    info = ZfyInfo(**values, raw=bytes(raw), lossy=tuple(lossy))
    if not (len(info.serial) == 7 and info.serial.isascii() and info.serial.isdigit()):
        raise FrameError(f"ZFY_INFO serial must be 7 digits, got {info.serial!r}")
    if info.user_no and not (len(info.user_no) == 6 and info.user_no.isascii() and info.user_no.isdigit()):
        raise FrameError(f"ZFY_INFO police number must be 6 digits or empty, got {info.user_no!r}")
    if info.unit_no and not (len(info.unit_no) == 12 and info.unit_no.isascii() and info.unit_no.isdigit()):
        raise FrameError(f"ZFY_INFO unit code must be 12 digits or empty, got {info.unit_no!r}")
    return info


# ---- time, password ---------------------------------------------------------------


def encode_device_time(when: datetime) -> bytes:
    """``YYYYMMDDhhmmss`` ASCII; the device keeps local time without a zone."""
    if when.tzinfo is not None:
        raise LocalProtocolError("device time is local wall-clock time: pass a naive datetime")
    if not 1 <= when.year <= 9999:
        raise LocalProtocolError(f"year {when.year} does not fit YYYY")
    return f"{when.year:04d}{when.month:02d}{when.day:02d}{when.hour:02d}{when.minute:02d}{when.second:02d}".encode("ascii")


def decode_device_time(raw: bytes) -> datetime:
    if len(raw) != 14:
        raise LengthError(f"device time is 14 ASCII digits (YYYYMMDDhhmmss), got {len(raw)} bytes")
    if not all(0x30 <= b <= 0x39 for b in raw):
        raise FrameError(f"device time must be 14 digits YYYYMMDDhhmmss, got {raw!r}")
    text = raw.decode("ascii")
    try:
        return datetime.strptime(text, _TIME_FORMAT)
    except ValueError:
        raise FrameError(f"device time {text} is not a valid calendar time") from None


def encode_sync_time(when: datetime, zone_minutes: int) -> bytes:
    if not -720 <= zone_minutes <= 840:
        raise LocalProtocolError(f"zone offset must be -720..840 minutes, got {zone_minutes}")
    return encode_device_time(when) + struct.pack("<h", zone_minutes)


def decode_sync_time(raw: bytes) -> tuple[datetime, int]:
    if len(raw) != 16:
        raise LengthError(f"SyncDevTime payload is 16 bytes, got {len(raw)}")
    when = decode_device_time(raw[:14])
    (zone,) = struct.unpack("<h", raw[14:])
    if not -720 <= zone <= 840:
        raise FrameError(f"zone offset must be -720..840 minutes, got {zone}")
    return when, zone


def encode_password_payload(password: str) -> bytes:
    raw = password.encode("ascii", "replace")
    if not _PASSWORD_RE.fullmatch(raw):
        raise LocalProtocolError(f"a recorder password is 6 printable ASCII characters, got {len(password)} characters")
    return raw


def decode_password_payload(raw: bytes) -> str:
    if len(raw) != 6:
        raise LengthError(f"a password is 6 bytes, got {len(raw)}")
    if not _PASSWORD_RE.fullmatch(raw):
        raise FrameError("a password must be 6 printable ASCII characters")
    return raw.decode("ascii")


# ---- CDB ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VendorCommand:
    function: int  # a Function value, or an unknown code the device must refuse
    password: str
    opcode: int = VENDOR_OPCODE


def build_cdb(function: Function, password: str = DEFAULT_PASSWORD, opcode: int = VENDOR_OPCODE) -> bytes:
    return bytes([opcode, int(function)]) + encode_password_payload(password) + bytes(8)


def parse_cdb(cb: bytes, opcode: int = VENDOR_OPCODE) -> VendorCommand:
    """Decode a vendor CDB. Unknown function codes are returned, not raised:
    the device answers them with a SCSI error, which is its business."""
    if len(cb) != CDB_LENGTH:
        raise LengthError(f"the vendor CDB is {CDB_LENGTH} bytes, got {len(cb)}")
    if cb[0] != opcode:
        raise UnknownCodeError(f"vendor opcode is 0x{opcode:02X}, got 0x{cb[0]:02X}")
    if any(cb[8:]):
        raise FrameError("vendor CDB bytes 8..15 must be zero")
    password = decode_password_payload(cb[2:8])
    return VendorCommand(function=cb[1], password=password, opcode=opcode)


def check_password(given: str, expected: str) -> bool:
    """Constant-time comparison, so a simulator does not leak the password by timing."""
    return hmac.compare_digest(given.encode("ascii", "replace"), expected.encode("ascii", "replace"))


# ---- responses -----------------------------------------------------------------------


@dataclass(frozen=True)
class IdCodeResponse:
    iret: IRet
    id_code: str


@dataclass(frozen=True)
class ZfyInfoResponse:
    iret: IRet
    info: ZfyInfo


@dataclass(frozen=True)
class DeviceTimeResponse:
    iret: IRet
    time: datetime


@dataclass(frozen=True)
class ResolutionResponse:
    iret: IRet
    width: int
    height: int


@dataclass(frozen=True)
class BatteryResponse:
    iret: IRet
    percent: int


@dataclass(frozen=True)
class StorageResponse:
    iret: IRet
    total_mib: int
    free_mib: int
    file_count: int


@dataclass(frozen=True)
class FunctionRefused:
    """The device answered with a failure iRet (e.g. 4, wrong password); the payload is meaningless."""

    function: Function
    iret: IRet


Response = (
    IdCodeResponse | ZfyInfoResponse | DeviceTimeResponse | ResolutionResponse | BatteryResponse | StorageResponse
    | FunctionRefused
)


def response_length(function: Function, layout: ZfyLayout = ZFY_LAYOUT_94) -> int:
    """Data-phase length for ``function`` (IN includes iRet); ZFY_INFO depends on the layout."""
    if function is Function.GET_ZFY_INFO:
        return 1 + layout.size
    if function is Function.WRITE_ZFY_INFO:
        return layout.size
    return FUNCTION_SPECS[Function(function)].length


def encode_response(function: Function, response: Response, layout: ZfyLayout = ZFY_LAYOUT_94) -> bytes:
    """The data-IN bytes a device sends for ``response``."""
    if isinstance(response, FunctionRefused):
        return encode_refusal(function, response.iret, layout)
    head = bytes([int(response.iret)])
    if isinstance(response, IdCodeResponse) and function in (Function.INIT_DEVICE, Function.GET_ID_CODE):
        try:
            code = response.id_code.encode("ascii")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"IDCode must be ASCII: {response.id_code!r}") from None
        if len(code) != 5:
            raise LocalProtocolError(f"IDCode is 5 ASCII characters, got {response.id_code!r}")
        return head + code
    if isinstance(response, ZfyInfoResponse) and function is Function.GET_ZFY_INFO:
        return head + encode_zfy_info(response.info, layout)
    if isinstance(response, DeviceTimeResponse) and function is Function.GET_DEV_TIME:
        return head + encode_device_time(response.time)
    if isinstance(response, ResolutionResponse) and function is Function.READ_RESOLUTION:
        if not (0 <= response.width <= 0xFFFF and 0 <= response.height <= 0xFFFF):
            raise LocalProtocolError("resolution is u16 × u16")
        return head + struct.pack("<HH", response.width, response.height)
    if isinstance(response, BatteryResponse) and function is Function.READ_BATTERY:
        if not 0 <= response.percent <= 100:
            raise LocalProtocolError(f"battery percent must be 0..100, got {response.percent}")
        return head + bytes([response.percent])
    if isinstance(response, StorageResponse) and function is Function.GET_STORAGE:
        values = (response.total_mib, response.free_mib, response.file_count)
        if not all(0 <= v <= 0xFFFFFFFF for v in values) or response.free_mib > response.total_mib:
            raise LocalProtocolError(f"storage figures must be u32 with free <= total: {values}")
        return head + struct.pack("<III", *values)
    raise LocalProtocolError(f"{type(response).__name__} is not the response of function {Function(function).name}")


def encode_refusal(function: Function, iret: IRet, layout: ZfyLayout = ZFY_LAYOUT_94) -> bytes:
    """iRet followed by zeros to the function's full IN length."""
    return bytes([int(iret)]) + bytes(response_length(function, layout) - 1)


def _iret(code: int) -> IRet:
    try:
        return IRet(code)
    except ValueError:
        raise UnknownCodeError(f"iRet {code} is not a GA/T 947.4 return code (0..8)") from None


def parse_response(function: Function, data: bytes, layout: ZfyLayout = ZFY_LAYOUT_94, *,
                   text_errors: str = "strict") -> Response:
    """Decode the data-IN phase of an IN function; any other input raises ProtocolError.
    ``text_errors`` is the ZFY_INFO text policy (see ``decode_zfy_info``)."""
    try:
        function = Function(function)
    except ValueError:
        raise LocalProtocolError(f"0x{int(function):02X} is not a known function") from None
    spec = FUNCTION_SPECS[function]
    if spec.direction is not Direction.IN:
        raise LocalProtocolError(f"{function.name} has no IN response")
    if not data:
        raise LengthError(f"{function.name}: empty response, expected iRet and payload")
    iret = _iret(data[0])
    if iret in FAILURE_CODES:
        return FunctionRefused(function=function, iret=iret)
    need = response_length(function, layout)
    if len(data) != need:
        raise LengthError(f"{function.name} response is {need} bytes, got {len(data)}")
    payload = data[1:]
    if function in (Function.INIT_DEVICE, Function.GET_ID_CODE):
        if not all(0x20 <= b <= 0x7E for b in payload):
            raise FrameError(f"IDCode must be 5 printable ASCII characters, got {payload!r}")
        return IdCodeResponse(iret, payload.decode("ascii"))
    if function is Function.GET_ZFY_INFO:
        return ZfyInfoResponse(iret, decode_zfy_info(payload, layout, text_errors=text_errors))
    if function is Function.GET_DEV_TIME:
        return DeviceTimeResponse(iret, decode_device_time(payload))
    if function is Function.READ_RESOLUTION:
        width, height = struct.unpack("<HH", payload)
        return ResolutionResponse(iret, width, height)
    if function is Function.READ_BATTERY:
        if payload[0] > 100:
            raise FrameError(f"battery percent must be 0..100, got {payload[0]}")
        return BatteryResponse(iret, payload[0])
    total, free, count = struct.unpack("<III", payload)
    if free > total:
        raise FrameError(f"storage: free {free} MiB exceeds total {total} MiB")
    return StorageResponse(iret, total, free, count)

