"""Every device link by URL: one parser, one registry keyed by scheme, one error mapping.

    URL                                     what it reaches
    ──────────────────────────────────────  ─────────────────────────────────────────
    /dev/ttyUSB0, /dev/pts/3, COM3          a local serial port or pty
    socket://HOST:PORT                      a raw TCP byte stream (serial server, simulator)
    rfc2217://HOST:PORT[?OPTIONS]           a Telnet COM-port server (RFC 2217)
    loop://                                 an in-process loopback (tests)
    usbip://HOST[:PORT][/BUSID][/serial:S]  a USB device exported over USB/IP (port 3240 by default)
    usb://VID:PID[/SERIAL]                  a local USB device through libusb (hex IDs)

:data:`REGISTRY` maps each scheme to its parser and opener. Byte streams open
with :func:`open_transport` (a pyserial ``SerialBase``, so
drivers keep their read/write code); USB URLs open with
``firmware_bridge.usb_transport.open_usb_device``. Both parse with
:func:`parse_url`, which raises :class:`TransportUrlError` only, one line
naming the form expected, so an operator's typo never surfaces as a
``TypeError`` from deep inside a library.

No transport discards input on open. pyserial's handlers flush the input
buffer when they open (serial ports ``tcflush``, ``socket://`` reads and drops
what is pending): an instrument that speaks first, such as an ASTM analyzer
sending ENQ the moment a TCP connection opens, or a simulator writing to a pty
before the host opens it, lost that first byte and waited for an ACK that
never came. Every stream class here keeps the input buffer as it found it
while opening; a driver that wants a clean start flushes it itself.

Failures map to ``firmware_bridge.errors`` here, and only here (raised ``from``
the cause): :func:`map_open_error` for byte streams, :func:`map_usb_error` for
pyusb (whichever backend ran). Opening a byte stream:

    pyserial / socket                   here
    ──────────────────────────────────  ─────────────────────────────
    bad settings (baud rate, options)   TransportUrlError
    timeout connecting                  TransportTimeout
    anything else (ENOENT, refused, …)  TransportError (names the URL)
"""

from __future__ import annotations

import errno
import fcntl
import re
import socket
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial
import serial.rfc2217
import serial.serialposix
import serial.urlhandler.protocol_loop
import serial.urlhandler.protocol_socket

from firmware_bridge.errors import (
    BridgeError,
    TransportClosed,
    TransportError,
    TransportTimeout,
    TransportUrlError,
    UsbError,
    UsbStall,
)

__all__ = [
    "SerialPath", "SocketUrl", "Rfc2217Url", "LoopUrl", "UsbIpUrl", "UsbUrl", "TransportUrl",
    "parse_url", "open_transport", "map_open_error", "map_usb_error", "Scheme", "REGISTRY", "USBIP_DEFAULT_PORT",
]

USBIP_DEFAULT_PORT = 3240

_FORMS = ("a device path (/dev/ttyUSB0), socket://HOST:PORT, rfc2217://HOST:PORT, loop://, "
          "usbip://HOST:PORT[/BUSID], or usb://VID:PID[/SERIAL]")


# ---- URLs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SerialPath:
    """A local serial device or pty slave, opened by its path."""

    path: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class SocketUrl:
    host: str
    port: int

    def __str__(self) -> str:
        return f"socket://{_bracket(self.host)}:{self.port}"


@dataclass(frozen=True)
class Rfc2217Url:
    host: str
    port: int
    query: str = ""  # pyserial's rfc2217 options (logging, ign_set_control, poll_modem, timeout)

    def __str__(self) -> str:
        return f"rfc2217://{_bracket(self.host)}:{self.port}" + (f"?{self.query}" if self.query else "")


@dataclass(frozen=True)
class LoopUrl:
    def __str__(self) -> str:
        return "loop://"


@dataclass(frozen=True)
class UsbIpUrl:
    """A USB/IP server, and optionally one device on it (by bus id and/or USB serial number)."""

    host: str
    port: int
    busid: str | None = None
    serial: str | None = None

    @property
    def server(self) -> str:
        """``HOST:PORT``, the form the configuration's ``usbip`` key has always stored."""
        return f"{_bracket(self.host)}:{self.port}"

    def __str__(self) -> str:
        return (f"usbip://{self.server}" + (f"/{self.busid}" if self.busid else "")
                + (f"/serial:{self.serial}" if self.serial else ""))


@dataclass(frozen=True)
class UsbUrl:
    vendor_id: int
    product_id: int
    serial: str | None = None

    def __str__(self) -> str:
        return f"usb://{self.vendor_id:04x}:{self.product_id:04x}" + (f"/{self.serial}" if self.serial else "")


TransportUrl = SerialPath | SocketUrl | Rfc2217Url | LoopUrl | UsbIpUrl | UsbUrl


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


_SCHEME_RE = re.compile(r"^(?P<scheme>[^:/?#]+)://(?P<rest>.*)$", re.DOTALL)
_HOST_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[^/?#]*))?(?P<tail>.*)$", re.DOTALL)
_BUSID_RE = re.compile(r"^[!-.0-~]{1,31}$")  # printable ASCII without "/", as usbip allows
_HEX4_RE = re.compile(r"^[0-9A-Fa-f]{1,4}$")


def parse_url(url: str) -> TransportUrl:
    """Parse any transport URL; raises :class:`TransportUrlError` (one line) and nothing else."""
    if not isinstance(url, str):
        raise TransportUrlError(f"a transport URL is text, got {type(url).__name__}; expected {_FORMS}")
    scheme, rest = _split_scheme(url)
    entry = REGISTRY.get(scheme)
    if entry is None:
        raise TransportUrlError(f"{url!r}: unknown scheme {scheme!r}; expected {_FORMS}")
    return entry.parse(url, rest)


def _split_scheme(url: str) -> tuple[str, str]:
    """(scheme, the rest); a device path has the scheme ``""``."""
    match = _SCHEME_RE.match(url)
    return (match["scheme"].lower(), match["rest"]) if match else ("", url)


def _parse_path(url: str, _rest: str) -> SerialPath:
    if not url.strip():
        raise TransportUrlError(f"{url!r}: empty device URL; expected {_FORMS}")
    if "\x00" in url:
        raise TransportUrlError(f"{url!r}: a device path cannot contain a NUL byte; expected {_FORMS}")
    if "://" in url:  # "://x", "a/b://x": a scheme, but not one of ours
        raise TransportUrlError(f"{url!r}: unknown scheme {url.partition('://')[0]!r}; expected {_FORMS}")
    return SerialPath(url)


def _host_port(url: str, rest: str, form: str, default_port: int | None = None) -> tuple[str, int, str]:
    """(host, port, what follows the port) of ``HOST:PORT…``; ``form`` is the shape quoted in errors."""
    match = _HOST_RE.match(rest)
    if match is None or not match["host"]:
        raise TransportUrlError(f"{url!r}: missing or malformed host; expected {form}")
    host, port_text = match["host"].strip("[]"), match["port"]
    if port_text is None or port_text == "":
        if default_port is None:
            raise TransportUrlError(f"{url!r}: missing port; expected {form}")
        return host, default_port, match["tail"]
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise TransportUrlError(f"{url!r}: port {port_text!r} is not a number from 1 to 65535; expected {form}")
    return host, int(port_text), match["tail"]


def _parse_socket(url: str, rest: str) -> SocketUrl:
    form = "socket://HOST:PORT (e.g. socket://127.0.0.1:7001)"
    host, port, tail = _host_port(url, rest, form)
    if tail not in ("", "/"):
        raise TransportUrlError(f"{url!r}: unexpected {tail!r} after the port; expected {form}")
    return SocketUrl(host, port)


def _parse_rfc2217(url: str, rest: str) -> Rfc2217Url:
    form = "rfc2217://HOST:PORT[?OPTIONS] (e.g. rfc2217://10.0.0.5:2217)"
    host, port, tail = _host_port(url, rest, form)
    tail = tail.removeprefix("/")
    if tail and not tail.startswith("?"):
        raise TransportUrlError(f"{url!r}: unexpected {tail!r} after the port; expected {form}")
    return Rfc2217Url(host, port, tail.removeprefix("?"))


def _parse_loop(url: str, rest: str) -> LoopUrl:
    if rest not in ("", "/"):
        raise TransportUrlError(f"{url!r}: loop:// takes no address or options; expected loop://")
    return LoopUrl()


def _parse_usbip(url: str, rest: str) -> UsbIpUrl:
    form = "usbip://HOST:PORT[/BUSID][/serial:SERIAL] (e.g. usbip://127.0.0.1:3240/1-1)"
    host, port, tail = _host_port(url, rest, form, default_port=USBIP_DEFAULT_PORT)
    if tail and not tail.startswith("/"):
        raise TransportUrlError(f"{url!r}: unexpected {tail!r} after the port; expected {form}")
    segments = tail.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    busid: str | None = None
    serial_number: str | None = None
    for part in segments:
        if part.startswith("serial:") and serial_number is None and len(part) > 7 and part[7:].isprintable():
            serial_number = part[7:]
        elif _BUSID_RE.match(part) and not part.startswith("serial:") and busid is None and serial_number is None:
            busid = part
        else:
            raise TransportUrlError(f"{url!r}: {part!r} is neither a bus id (1-1) nor serial:SERIAL; expected {form}")
    return UsbIpUrl(host, port, busid, serial_number)


def _parse_usb(url: str, rest: str) -> UsbUrl:
    form = "usb://VID:PID[/SERIAL] with hex IDs (e.g. usb://1209:0001/1234567)"
    ids, _sep, serial_number = rest.partition("/")
    vid, colon, pid = ids.partition(":")
    if not colon or not _HEX4_RE.match(vid) or not _HEX4_RE.match(pid):
        raise TransportUrlError(f"{url!r}: {ids!r} is not VID:PID in hex; expected {form}")
    if _sep and (not serial_number or not serial_number.isprintable()):
        raise TransportUrlError(f"{url!r}: the serial after the / is empty or unprintable; expected {form}")
    return UsbUrl(int(vid, 16), int(pid, 16), serial_number or None)


# ---- byte streams that keep what the peer sent ------------------------------------------------


class _KeepsInputOnOpen:
    """Mixin: while ``open`` runs, resetting the input buffer is a no-op (see the module docstring)."""

    _opening = False

    def open(self) -> None:
        self._opening = True
        try:
            super().open()  # type: ignore[misc]
        finally:
            self._opening = False

    def reset_input_buffer(self) -> None:
        if not self._opening:
            super().reset_input_buffer()  # type: ignore[misc]

    def _reset_input_buffer(self) -> None:  # serialposix's open calls this one
        if not self._opening:
            super()._reset_input_buffer()  # type: ignore[misc]


class PortStream(_KeepsInputOnOpen, serial.serialposix.Serial):
    """A local serial port or pty."""


class SocketStream(_KeepsInputOnOpen, serial.urlhandler.protocol_socket.Serial):
    """``socket://``: pyserial's TCP handler, keeping input on open and counting ``in_waiting`` truly.

    pyserial reports ``in_waiting`` as 0 or 1 (a select); FIONREAD gives the
    count, so a driver reads what is there in one call, as on a serial port."""

    @property
    def in_waiting(self) -> int:
        if not self.is_open or self._socket is None:
            raise serial.PortNotOpenError()
        raw = fcntl.ioctl(self._socket.fileno(), termios.FIONREAD, struct.pack("i", 0))
        return int(struct.unpack("i", raw)[0])


class Rfc2217Stream(_KeepsInputOnOpen, serial.rfc2217.Serial):
    """``rfc2217://``."""


class LoopStream(_KeepsInputOnOpen, serial.urlhandler.protocol_loop.Serial):
    """``loop://``: what is written is read back (tests)."""


# ---- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    """How one scheme parses, and what opens it: a byte-stream class, or None for a USB device
    (``firmware_bridge.usb_transport.open_usb_device`` opens those)."""

    parse: Callable[[str, str], TransportUrl]
    stream: type[serial.SerialBase] | None


REGISTRY: dict[str, Scheme] = {
    "": Scheme(_parse_path, PortStream),  # a device path
    "socket": Scheme(_parse_socket, SocketStream),
    "rfc2217": Scheme(_parse_rfc2217, Rfc2217Stream),
    "loop": Scheme(_parse_loop, LoopStream),
    "usbip": Scheme(_parse_usbip, None),
    "usb": Scheme(_parse_usb, None),
}


def open_transport(url: str, *, baudrate: int = 9600, timeout: float | None = None,
                   write_timeout: float | None = None, **opts: Any) -> serial.SerialBase:
    """Open a byte stream by URL (paths, ``socket://``, ``rfc2217://``, ``loop://``), input kept.

    ``opts`` are pyserial's settings (``bytesize``, ``parity``, ``rtscts``…).
    Raises :class:`TransportUrlError` for a URL or setting that cannot work,
    :class:`TransportError` when the device cannot be reached."""
    target = parse_url(url)
    stream_class = REGISTRY[_split_scheme(url)[0]].stream
    if stream_class is None:
        raise TransportUrlError(
            f"{url!r} is a USB device URL, not a byte stream; expected a device path, socket://HOST:PORT, "
            "rfc2217://HOST:PORT or loop://")
    try:
        stream = stream_class(None, baudrate=baudrate, timeout=timeout, write_timeout=write_timeout, **opts)
        stream.port = str(target) if not isinstance(target, SerialPath) else target.path
    except (ValueError, TypeError) as exc:
        raise TransportUrlError(f"{url!r}: unusable setting: {exc}") from exc
    try:
        stream.open()
    except (serial.SerialException, OSError, ValueError) as exc:
        raise map_open_error(exc, url) from exc
    return stream


def map_open_error(exc: BaseException, url: str) -> TransportError | TransportUrlError:
    """The one mapping of a failed open (pyserial, socket, OS) onto our tree; the caller raises it ``from exc``."""
    root = exc.__cause__ or exc.__context__ or exc
    code = getattr(exc, "errno", None) or getattr(root, "errno", None)
    if isinstance(exc, ValueError) and not isinstance(exc, serial.SerialException):
        return TransportUrlError(f"{url!r}: unusable setting: {_one_line(exc)}")
    if isinstance(root, (socket.timeout, TimeoutError)) or code == errno.ETIMEDOUT:
        return TransportTimeout(f"cannot open {url}: no answer in time ({_one_line(exc)})")
    return TransportError(f"cannot open {url}: {_one_line(exc)}")


def map_usb_error(exc: Exception, where: str, what: str) -> BridgeError:
    """pyusb's exception (from any backend, libusb or our USB/IP one) as ours; our own cause wins when
    there is one. The caller raises it ``from exc``.

        pyusb / libusb                      here
        ──────────────────────────────────  ────────────────────────────────
        USBTimeoutError, ETIMEDOUT          TransportTimeout
        EPIPE (stall)                       UsbStall
        ENODEV, ENOENT, ESHUTDOWN           TransportClosed
        EACCES                              UsbError (names the udev fix)
        anything else                       UsbError
    """
    import usb.core  # here, not at the top: byte-stream users need no pyusb
    cause = exc.__cause__
    if isinstance(cause, BridgeError):
        return type(cause)(str(cause))
    if isinstance(exc, usb.core.USBTimeoutError):
        return TransportTimeout(f"{where}: {what} timed out ({exc})")
    code = getattr(exc, "errno", None)
    if code == errno.EPIPE:
        return UsbStall(f"{where}: {what} stalled (EPIPE): the device rejected the request")
    if code in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN):
        return TransportClosed(f"{where}: the device disappeared during {what} ({exc}); re-open it once it is back")
    if code == errno.ETIMEDOUT:
        return TransportTimeout(f"{where}: {what} timed out ({exc})")
    if code == errno.EACCES:
        return UsbError(f"{where}: {what}: permission denied ({exc}); add a udev rule granting access to the device")
    return UsbError(f"{where}: {what} failed: {exc}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
