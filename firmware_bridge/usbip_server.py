"""A USB/IP server that exports simulated devices (``UsbDeviceModel``) over TCP.

Any USB/IP client can list and import them: our own (``usb_transport``), the
Linux ``usbip`` tool (``usbip --tcp-port PORT list -r HOST``; ``usbip attach``
where the ``vhci-hcd`` module exists) or another implementation.

Threads: one accepting connections, one per connection. The connection
thread alone drives its device's model after an import, so a model is never
called from two threads at once (calls from device listings take the same
per-device lock). A bulk/interrupt IN the model answers with ``None`` (NAK)
stays pending and is retried on a short, backing-off poll (1 ms up to
``MAX_POLL_S``) until data arrives or the host unlinks it — the connection
thread sleeps in ``select`` between tries, it never spins. URBs on one
endpoint complete in order; other endpoints are not held up by a NAKing one.

Status mapping: ``UsbStall`` → ``-EPIPE``; an IN reply longer than asked →
``-EOVERFLOW`` (babble: truncating would lose data silently); any other model
exception → ``-EPROTO`` and a log line; unplug → ``-ENODEV`` for every pending
URB, then the connection is closed.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field

from firmware_bridge.errors import ProtocolError, UsbStall
from firmware_bridge.usb import SetupPacket, UsbDeviceModel
from firmware_bridge.usbip import (
    DIR_IN,
    ECONNRESET,
    ENODEV,
    EOVERFLOW,
    EPIPE,
    EPROTO,
    ST_DEV_BUSY,
    ST_NODEV,
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
    path_with_serial,
)

__all__ = ["UsbIpServer", "MAX_POLL_S"]

log = logging.getLogger(__name__)

#: Longest sleep between retries of a NAKed IN URB (the first retry comes after 1 ms).
MAX_POLL_S = 0.008
_MIN_POLL_S = 0.001
_RECV_SIZE = 256 * 1024


@dataclass
class _Slot:
    """One plugged-in device: its model, its lock and who has imported it."""

    busid: str
    model: UsbDeviceModel
    busnum: int
    devnum: int
    lock: threading.RLock = field(default_factory=threading.RLock)
    session: _Session | None = None
    unplugged: bool = False

    def describe(self) -> UsbIpDevice:
        """The device block for lists and import replies (reads the model under its lock)."""
        with self.lock:
            model = self.model
            desc = bytes(model.device_descriptor())
            interfaces = tuple((int(c), int(s), int(p)) for c, s, p in model.interfaces())
            serial = None
            strings = getattr(model, "strings", None)
            if callable(strings):
                serial = strings().get(3)
        bcd, dcls, dsub, dproto, ncfg = 0, 0, 0, 0, 1
        if len(desc) >= 18:
            bcd = struct.unpack_from("<H", desc, 12)[0]
            dcls, dsub, dproto, ncfg = desc[4], desc[5], desc[6], desc[17]
        return UsbIpDevice(
            path=path_with_serial(self.busid, serial), busid=self.busid, busnum=self.busnum,
            devnum=self.devnum, speed=int(model.speed), vendor_id=int(model.vendor_id),
            product_id=int(model.product_id), bcd_device=bcd, device_class=dcls, device_subclass=dsub,
            device_protocol=dproto, configuration_value=1, num_configurations=ncfg,
            num_interfaces=len(interfaces), interfaces=interfaces,
        )


class UsbIpServer:
    """Exports simulated USB devices by busid; see the module docstring.

    >>> with UsbIpServer() as server:            # doctest: +SKIP
    ...     server.add_device("1-1", MyModel())
    ...     dev = open_usb_device(server.url("1-1"))
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._sessions: set[_Session] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._next_devnum = 2

    # ---- devices -------------------------------------------------------------
    def add_device(self, busid: str, model: UsbDeviceModel) -> None:
        """Plug ``model`` in under ``busid`` (e.g. ``"1-1"``); allowed while running."""
        raw = busid.encode("ascii", errors="replace")
        if not busid or len(raw) > 31 or any(b <= 0x20 or b > 0x7E or b == ord("/") for b in raw):
            raise ValueError(f"busid {busid!r} must be 1-31 printable ASCII characters without '/' (e.g. '1-1')")
        head = busid.split("-", 1)[0]
        busnum = int(head) if head.isdigit() and int(head) < 0x10000 else 1
        with self._lock:
            if busid in self._slots:
                raise ValueError(f"busid {busid!r} already has a device; remove_device({busid!r}) first")
            devnum = self._next_devnum
            self._next_devnum = 2 if self._next_devnum >= 0xFFFF else self._next_devnum + 1
            self._slots[busid] = _Slot(busid, model, busnum, devnum)

    def remove_device(self, busid: str) -> None:
        """Unplug: the importer's pending URBs fail with -ENODEV and its connection is closed."""
        with self._lock:
            slot = self._slots.pop(busid, None)
        if slot is None:
            raise KeyError(f"no device with busid {busid!r} is plugged in")
        with slot.lock:
            slot.unplugged = True
            session = slot.session
        if session is not None:
            session.wake()

    def devices(self) -> dict[str, UsbDeviceModel]:
        """The plugged-in models by busid (a snapshot)."""
        with self._lock:
            return {busid: slot.model for busid, slot in self._slots.items()}

    # ---- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Listen and serve in background threads; returns once the port is bound."""
        if self._listener is not None:
            raise RuntimeError("UsbIpServer already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._port = sock.getsockname()[1]
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="usbip-accept", daemon=True)
        self._accept_thread.start()

    def stop(self) -> None:
        """Stop listening, close every connection and wait for the threads to end."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.wake()
            try:  # also unblocks a sendall to a client that stopped reading
                session.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for session in sessions:
            session.thread.join(timeout=5)

    def __enter__(self) -> UsbIpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (the port is known after ``start``)."""
        return (self._host, self._port)

    def url(self, busid: str) -> str:
        """``usbip://host:port/busid`` for ``open_usb_device``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"usbip://{host}:{self._port}/{busid}"

    # ---- internals -----------------------------------------------------------
    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                break
            if self._stopping.is_set():
                conn.close()
                break
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = _Session(self, conn, peer)
            with self._lock:
                self._sessions.add(session)
            session.thread.start()

    def _snapshot(self) -> list[_Slot]:
        with self._lock:
            return list(self._slots.values())

    def _claim(self, busid: str, session: _Session) -> tuple[int, _Slot | None]:
        with self._lock:
            slot = self._slots.get(busid)
        if slot is None:
            return ST_NODEV, None
        with slot.lock:
            if slot.unplugged:
                return ST_NODEV, None
            if slot.session is not None:
                return ST_DEV_BUSY, None
            slot.session = session
        return ST_OK, slot

    def _forget(self, session: _Session) -> None:
        with self._lock:
            self._sessions.discard(session)


class _Session:
    """One TCP connection: the operation phase, then (after an import) the URB loop."""

    def __init__(self, server: UsbIpServer, sock: socket.socket, peer: object) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.codec = UsbIpConnection(Role.SERVER)
        self.slot: _Slot | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # (endpoint, direction) -> NAKed URBs in submission order
        self.pending: dict[tuple[int, int], deque[SubmitCommand]] = {}
        self.ep_types: dict[int, int] = {}
        self.thread = threading.Thread(target=self.run, name=f"usbip-session-{peer}", daemon=True)

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # ---- main loop -------------------------------------------------------------
    def run(self) -> None:
        try:
            self._serve()
        except (OSError, ProtocolError) as exc:
            log.info("USB/IP connection from %s ended: %s", self.peer, exc)
        except Exception:  # a model bug must not take the server down
            log.exception("USB/IP connection from %s failed", self.peer)
        finally:
            self._fail_pending(ENODEV)
            if self.slot is not None:
                with self.slot.lock:
                    if self.slot.session is self:
                        self.slot.session = None
            for s in (self.sock, self._wake_r, self._wake_w):
                try:
                    s.close()
                except OSError:
                    pass
            self.server._forget(self)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:  # epoll: no FD_SETSIZE limit
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            self._serve_with(selector)

    def _serve_with(self, selector: selectors.BaseSelector) -> None:
        poll = _MIN_POLL_S
        while True:
            if self.server._stopping.is_set():
                return
            if self.slot is not None and self.slot.unplugged:
                log.info("device %s unplugged: closing its USB/IP connection", self.slot.busid)
                self._fail_pending(ENODEV)
                return
            timeout = poll if self._has_pending() else None
            readable = [key.fileobj for key, _ in selector.select(timeout)]
            if self._wake_r in readable:
                try:
                    self._wake_r.recv(64)
                except OSError:
                    pass
            if self.sock in readable:
                data = self.sock.recv(_RECV_SIZE)
                self.codec.receive_data(data)
                if not self._drain_events():
                    return
                poll = _MIN_POLL_S
            elif self._has_pending():
                poll = min(poll * 2, MAX_POLL_S)
            self._retry_pending()

    def _drain_events(self) -> bool:
        """Handle every complete event; False when the connection is to be closed."""
        while True:
            event = self.codec.next_event()
            if isinstance(event, NeedData):
                return True
            if isinstance(event, ConnectionClosed):
                return False
            if isinstance(event, DevlistRequest):
                devices = tuple(slot.describe() for slot in self.server._snapshot())
                self.sock.sendall(self.codec.send(DevlistReply(devices)))
                return False  # like usbipd: one operation per listing connection
            if isinstance(event, ImportRequest):
                status, slot = self.server._claim(event.busid, self)
                if slot is None:
                    log.info("import of %r by %s refused: status %d", event.busid, self.peer, status)
                    self.sock.sendall(self.codec.send(ImportReply(status)))
                    return False
                self.slot = slot
                device = slot.describe()
                self._learn_endpoints(slot)
                self.sock.sendall(self.codec.send(ImportReply(ST_OK, device)))
                continue
            if isinstance(event, SubmitCommand):
                self._submit(event)
            elif isinstance(event, UnlinkCommand):
                self._unlink(event)

    # ---- URBs ------------------------------------------------------------------
    def _learn_endpoints(self, slot: _Slot) -> None:
        """Endpoint address → transfer type (bmAttributes & 3) from the configuration descriptor."""
        with slot.lock:
            config = bytes(slot.model.configuration_descriptor())
        i = 0
        while i + 1 < len(config) and config[i] >= 2:
            if config[i + 1] == 5 and config[i] >= 7 and i + 3 < len(config):
                self.ep_types[config[i + 2]] = config[i + 3] & 3
            i += config[i]

    def _has_pending(self) -> bool:
        return any(self.pending.values())

    def _submit(self, cmd: SubmitCommand) -> None:
        key = (cmd.endpoint, cmd.direction)
        queue = self.pending.get(key)
        if queue:  # keep per-endpoint order behind a NAKed URB
            queue.append(cmd)
            return
        reply = self._execute(cmd)
        if reply is None:
            self.pending.setdefault(key, deque()).append(cmd)
        else:
            self._send(reply)

    def _retry_pending(self) -> None:
        for queue in self.pending.values():
            while queue:
                reply = self._execute(queue[0])
                if reply is None:
                    break
                queue.popleft()
                self._send(reply)

    def _unlink(self, cmd: UnlinkCommand) -> None:
        for queue in self.pending.values():
            for urb in queue:
                if urb.seqnum == cmd.unlink_seqnum:
                    queue.remove(urb)
                    self._send(UnlinkReturn(cmd.seqnum, -ECONNRESET))
                    return
        # Already completed (its RET_SUBMIT went out first): too late to cancel.
        self._send(UnlinkReturn(cmd.seqnum, 0))

    def _fail_pending(self, errno: int) -> None:
        for queue in self.pending.values():
            while queue:
                urb = queue.popleft()
                try:
                    self._send(SubmitReturn(urb.seqnum, -errno, 0))
                except (OSError, ProtocolError):
                    pass
        self.pending.clear()

    def _send(self, event: SubmitReturn | UnlinkReturn) -> None:
        self.sock.sendall(self.codec.send(event))

    def _execute(self, cmd: SubmitCommand) -> SubmitReturn | None:
        """Run one URB against the model; ``None`` means NAK (try again later)."""
        slot = self.slot
        if slot is None or slot.unplugged:
            return SubmitReturn(cmd.seqnum, -ENODEV, 0)
        model = slot.model
        address = cmd.endpoint | (0x80 if cmd.direction == DIR_IN else 0)
        try:
            with slot.lock:
                if cmd.endpoint == 0:
                    setup = SetupPacket.from_bytes(cmd.setup)
                    if cmd.direction == DIR_IN:
                        reply = bytes(model.control(setup, b""))[: min(cmd.transfer_length, setup.length)]
                        return SubmitReturn(cmd.seqnum, 0, len(reply), reply)
                    model.control(setup, cmd.data)
                    return SubmitReturn(cmd.seqnum, 0, len(cmd.data))
                if cmd.direction == DIR_IN:
                    if self.ep_types.get(address) == 3:
                        got = model.interrupt_in(address, cmd.transfer_length)
                    else:
                        got = model.bulk_in(address, cmd.transfer_length)
                    if got is None:
                        return None
                    data = bytes(got)
                    if len(data) > cmd.transfer_length:
                        log.error(
                            "device %s endpoint 0x%02x returned %d bytes for a %d-byte read: babble",
                            slot.busid, address, len(data), cmd.transfer_length,
                        )
                        return SubmitReturn(cmd.seqnum, -EOVERFLOW, 0)
                    return SubmitReturn(cmd.seqnum, 0, len(data), data)
                model.bulk_out(address, cmd.data)
                return SubmitReturn(cmd.seqnum, 0, len(cmd.data))
        except UsbStall as exc:
            log.debug("device %s endpoint 0x%02x stalled: %s", slot.busid, address, exc)
            return SubmitReturn(cmd.seqnum, -EPIPE, 0)
        except Exception:
            log.exception("device model %s failed on endpoint 0x%02x", slot.busid, address)
            return SubmitReturn(cmd.seqnum, -EPROTO, 0)
