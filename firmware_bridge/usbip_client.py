"""USB/IP client: list a server's devices, import one, run URBs on it — no kernel needed.

This is the host side of ``usbip://HOST:PORT/BUSID``. ``usb_transport`` puts
a pyusb backend on top of it so drivers see pyusb's ``Device`` API; tests and
tools may use ``UsbIpClient`` directly.

One connection per imported device. A reader thread (daemon, joined on
``close``) parses returns and hands each to the thread waiting for that
seqnum, so several threads may have URBs in flight at once (an interrupt IN
waiting for a pen sample while control requests come and go), as on a real
host controller. A URB that outlives its timeout is unlinked (CMD_UNLINK); if
the device completed it first, its data is returned rather than discarded.

Errors (``firmware_bridge.errors``): ``TransportError`` when the server cannot
be reached or refuses the import, ``UsbStall`` for -EPIPE, ``TransportTimeout``,
``TransportClosed`` when the device is unplugged (-ENODEV) or the connection
drops, ``UsbError`` for any other URB status, ``ProtocolError`` subclasses
when the server breaks the protocol (the connection is then closed).
"""

from __future__ import annotations

import errno as _errno
import itertools
import socket
import threading
import time
from dataclasses import dataclass, field

from firmware_bridge.errors import (
    BridgeError,
    LocalProtocolError,
    ProtocolError,
    TransportClosed,
    TransportError,
    TransportTimeout,
    UsbError,
    UsbStall,
)
from firmware_bridge.usb import SetupPacket
from firmware_bridge.usbip import (
    DIR_IN,
    DIR_OUT,
    ENODEV,
    EPIPE,
    ST_DEV_BUSY,
    ST_OK,
    ConnectionClosed,
    DevlistReply,
    DevlistRequest,
    ImportReply,
    ImportRequest,
    NeedData,
    Role,
    SubmitCommand,
    SubmitReturn,
    UnlinkCommand,
    UnlinkReturn,
    UsbIpConnection,
    UsbIpDevice,
    status_text,
)

__all__ = ["UsbIpClient", "list_devices", "DEFAULT_PORT"]

DEFAULT_PORT = 3240
_RECV_SIZE = 256 * 1024
#: How long to wait for the server to answer a CMD_UNLINK before calling the link dead.
UNLINK_GRACE_S = 2.0


def _connect(host: str, port: int, timeout_s: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except TimeoutError as exc:
        raise TransportError(
            f"no answer from a USB/IP server at {host}:{port} within {timeout_s:g} s: "
            "check the host and port, and that the server (e.g. `egw simulate bodycam`) is running"
        ) from exc
    except OSError as exc:
        raise TransportError(
            f"cannot reach a USB/IP server at {host}:{port} ({exc.strerror or exc}): "
            "start the simulator or usbipd there, or correct the usbip:// URL"
        ) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _blocking_op(sock: socket.socket, codec: UsbIpConnection, request: object, where: str) -> object:
    """Send one operation request and read its reply (operation phase, before the reader thread)."""
    try:
        sock.sendall(codec.send(request))  # type: ignore[arg-type]
        while True:
            event = codec.next_event()
            if not isinstance(event, NeedData):
                break
            codec.receive_data(sock.recv(_RECV_SIZE))
    except TimeoutError as exc:
        raise TransportTimeout(f"the USB/IP server at {where} did not answer {type(request).__name__}") from exc
    except OSError as exc:
        raise TransportClosed(f"the USB/IP server at {where} dropped the connection: {exc}") from exc
    if isinstance(event, ConnectionClosed):
        raise TransportClosed(f"the USB/IP server at {where} closed the connection without answering")
    return event


def list_devices(host: str, port: int = DEFAULT_PORT, timeout_s: float = 5.0) -> tuple[UsbIpDevice, ...]:
    """OP_REQ_DEVLIST: what the server exports (with interface classes)."""
    sock = _connect(host, port, timeout_s)
    try:
        reply = _blocking_op(sock, UsbIpConnection(Role.CLIENT), DevlistRequest(), f"{host}:{port}")
    finally:
        sock.close()
    assert isinstance(reply, DevlistReply)
    if reply.status != ST_OK:
        raise TransportError(f"the USB/IP server at {host}:{port} refused to list devices: {status_text(reply.status)}")
    return reply.devices


class _Busy(TransportError):
    """Import refused because another client holds the device (retried briefly)."""


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    result: SubmitReturn | UnlinkReturn | None = None


class UsbIpClient:
    """One imported device on a USB/IP server. Use ``UsbIpClient.open(host, port, busid)``."""

    def __init__(self, host: str, port: int, busid: str, sock: socket.socket, device: UsbIpDevice,
                 codec: UsbIpConnection) -> None:
        self.host, self.port, self.busid = host, port, busid
        self.device = device
        self._sock = sock
        self._codec = codec
        self._codec_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._seq = itertools.count(1)
        self._closed: TransportError | ProtocolError | None = None
        self._closing = False
        sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name=f"usbip-client-{host}:{port}/{busid}", daemon=True)
        self._reader.start()

    @property
    def where(self) -> str:
        return f"usbip://{self.host}:{self.port}/{self.busid}"

    @classmethod
    def open(cls, host: str, port: int, busid: str, timeout_s: float = 5.0, busy_wait_s: float = 1.0) -> UsbIpClient:
        """Connect and OP_REQ_IMPORT ``busid``; raises ``TransportError`` naming why it failed.

        A device refused as busy is asked again for up to ``busy_wait_s``: a
        server frees a device only once it has seen the previous importer's
        connection close, a moment after that importer's ``close()`` returned.
        """
        deadline = time.monotonic() + busy_wait_s
        while True:
            try:
                return cls._open_once(host, port, busid, timeout_s)
            except _Busy as exc:
                if time.monotonic() >= deadline:
                    raise TransportError(str(exc)) from None
                time.sleep(0.02)

    @classmethod
    def _open_once(cls, host: str, port: int, busid: str, timeout_s: float) -> UsbIpClient:
        sock = _connect(host, port, timeout_s)
        codec = UsbIpConnection(Role.CLIENT)
        try:
            reply = _blocking_op(sock, codec, ImportRequest(busid), f"{host}:{port}")
            assert isinstance(reply, ImportReply)
            if reply.status != ST_OK or reply.device is None:
                kind = _Busy if reply.status == ST_DEV_BUSY else TransportError
                raise kind(
                    f"the USB/IP server at {host}:{port} refused to import {busid!r}: {status_text(reply.status)}; "
                    "list its devices (`usbip --tcp-port PORT list -r HOST`) and check nobody else holds it"
                )
            if reply.device.busid != busid:
                raise ProtocolError(f"asked to import {busid!r}, the server imported {reply.device.busid!r}")
        except BaseException:
            sock.close()
            raise
        return cls(host, port, busid, sock, reply.device, codec)

    # ---- transfers -------------------------------------------------------------
    def control(self, request_type: int, request: int, value: int, index: int,
                data_or_length: bytes | int, timeout_ms: int | None = None) -> bytes | int:
        """A control transfer on endpoint 0: bytes for IN, the count written for OUT."""
        if request_type & 0x80:
            length = int(data_or_length)
            setup = SetupPacket(request_type, request, value, index, length).to_bytes()
            ret = self._submit(DIR_IN, 0, length, setup, b"", timeout_ms, "control IN")
            return ret.data
        data = bytes(data_or_length) if not isinstance(data_or_length, int) else b""
        setup = SetupPacket(request_type, request, value, index, len(data)).to_bytes()
        return self._submit(DIR_OUT, 0, len(data), setup, data, timeout_ms, "control OUT").actual_length

    def read(self, endpoint: int, length: int, timeout_ms: int | None = None) -> bytes:
        """Bulk or interrupt IN (the server knows which) from endpoint address ``0x8N``."""
        ret = self._submit(DIR_IN, endpoint & 0x0F, length, bytes(8), b"", timeout_ms, f"read 0x{endpoint:02x}")
        return ret.data

    def write(self, endpoint: int, data: bytes, timeout_ms: int | None = None) -> int:
        """Bulk or interrupt OUT to endpoint address ``0x0N``; returns the count written."""
        data = bytes(data)
        ret = self._submit(DIR_OUT, endpoint & 0x0F, len(data), bytes(8), data, timeout_ms, f"write 0x{endpoint:02x}")
        return ret.actual_length

    def close(self) -> None:
        """Release the device (the server frees it for the next importer)."""
        self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> UsbIpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -----------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._fresh(self._closed)
        if self._closing:
            raise TransportClosed(f"{self.where}: the device handle is closed")

    @staticmethod
    def _fresh(exc: BridgeError) -> BridgeError:
        """A new instance per raise, so tracebacks from different threads do not pile up."""
        return type(exc)(str(exc))

    def _send(self, event: SubmitCommand | UnlinkCommand, waiter: _Waiter, seqnum: int) -> None:
        with self._send_lock:
            self._check_open()
            self._waiters[seqnum] = waiter
            try:
                with self._codec_lock:
                    frame = self._codec.send(event)
            except LocalProtocolError:
                del self._waiters[seqnum]
                raise
            try:
                self._sock.sendall(frame)
            except OSError as exc:
                self._fail(TransportClosed(f"{self.where}: connection lost while sending ({exc})"))
                raise self._fresh(self._closed or TransportClosed(str(exc))) from exc

    def _submit(self, direction: int, endpoint: int, length: int, setup: bytes, data: bytes,
                timeout_ms: int | None, what: str) -> SubmitReturn:
        seqnum = next(self._seq)
        waiter = _Waiter()
        cmd = SubmitCommand(seqnum, self.device.devid, direction, endpoint, length, setup, data)
        self._send(cmd, waiter, seqnum)
        timeout_s = timeout_ms / 1000 if timeout_ms else None
        if not waiter.done.wait(timeout_s):
            self._unlink(seqnum, waiter, what, timeout_ms)
        result = waiter.result
        if result is None:
            self._waiters.pop(seqnum, None)
            raise self._fresh(self._closed or TransportClosed(f"{self.where}: connection closed during {what}"))
        assert isinstance(result, SubmitReturn)
        return self._check_status(result, what)

    def _unlink(self, seqnum: int, waiter: _Waiter, what: str, timeout_ms: int | None) -> None:
        useq = next(self._seq)
        unlink_waiter = _Waiter()
        try:
            self._send(UnlinkCommand(useq, seqnum, self.device.devid), unlink_waiter, useq)
        except TransportError:
            if waiter.done.is_set():
                return
            raise
        if not unlink_waiter.done.wait(UNLINK_GRACE_S):
            self._fail(TransportTimeout(f"{self.where}: the server did not answer CMD_UNLINK; giving up the link"))
        self._waiters.pop(seqnum, None)
        if waiter.result is not None:
            return  # it completed before the unlink arrived: keep its data
        if self._closed is not None and not isinstance(self._closed, TransportTimeout):
            raise self._fresh(self._closed)
        raise TransportTimeout(f"{self.where}: {what} timed out after {timeout_ms} ms (URB cancelled)")

    def _check_status(self, ret: SubmitReturn, what: str) -> SubmitReturn:
        if ret.status == 0:
            return ret
        if ret.status == -EPIPE:
            raise UsbStall(f"{self.where}: {what} stalled (EPIPE): the device rejected the request")
        if ret.status == -ENODEV:
            raise TransportClosed(f"{self.where}: the device was unplugged during {what}; re-open it once it is back")
        name = _errno.errorcode.get(-ret.status, str(ret.status))
        raise UsbError(f"{self.where}: {what} failed with status {ret.status} ({name})")

    def _fail(self, exc: TransportError | ProtocolError) -> None:
        """The link is dead: remember why and wake everyone waiting."""
        if self._closed is None:
            self._closed = exc
        for waiter in list(self._waiters.values()):
            waiter.done.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_loop(self) -> None:
        try:
            while True:
                try:
                    data = self._sock.recv(_RECV_SIZE)
                except OSError as exc:
                    data = b""
                    if not self._closing:
                        self._fail(TransportClosed(f"{self.where}: connection lost ({exc})"))
                        return
                with self._codec_lock:
                    self._codec.receive_data(data)
                    events = []
                    while True:
                        event = self._codec.next_event()
                        if isinstance(event, NeedData):
                            break
                        events.append(event)
                        if isinstance(event, ConnectionClosed):
                            break
                for event in events:
                    if isinstance(event, ConnectionClosed):
                        reason = "handle closed" if self._closing else "the server closed the connection (device unplugged or server stopped)"
                        self._fail(TransportClosed(f"{self.where}: {reason}"))
                        return
                    if isinstance(event, (SubmitReturn, UnlinkReturn)):
                        waiter = self._waiters.pop(event.seqnum, None)
                        if waiter is not None:
                            waiter.result = event
                            waiter.done.set()
        except ProtocolError as exc:
            self._fail(exc)
        except Exception as exc:  # never leave waiters hanging
            self._fail(TransportError(f"{self.where}: reader failed: {exc!r}"))

