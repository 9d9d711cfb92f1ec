"""Open a USB device by URL; the same ``UsbDevice`` API whatever carries the bytes.

URLs are parsed by ``firmware_bridge.transports.parse_url`` (one parser for
every transport).

* ``usbip://HOST:PORT[/BUSID][/serial:SERIAL]`` — a device exported over USB/IP (our simulators,
  or ``usbipd`` on another machine), reached through ``UsbIpBackend``: a real
  pyusb backend (``usb.backend.IBackend``), so ``usb.core.find(backend=...)``
  works too and drivers get pyusb's own ``Device`` underneath.
* ``usb://VID:PID[/SERIAL]`` — real hardware through pyusb + libusb (hex IDs).

``open_usb_device`` wraps the pyusb ``Device`` in ``PyUsbDevice`` so every
failure arrives as our exception tree, whichever backend ran (the mapping is
``firmware_bridge.transports.map_usb_error``):

    pyusb / libusb                      here
    ──────────────────────────────────  ────────────────────────────────
    USBTimeoutError, ETIMEDOUT          TransportTimeout
    EPIPE (stall)                       UsbStall
    ENODEV, device gone                 TransportClosed
    anything else                       UsbError
    server unreachable / import refused TransportError (names host:port)

Real hardware note: we never detach kernel drivers. A mass-storage recorder
keeps ``usb-storage`` bound (its volume stays mounted); vendor control
requests to the device need no claimed interface.
"""

from __future__ import annotations

import array
import errno as _errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import usb.backend
import usb.core
import usb.util

from firmware_bridge.errors import (
    BridgeError,
    ProtocolError,
    TransportClosed,
    TransportError,
    TransportTimeout,
    TransportUrlError,
    UsbStall,
)
from firmware_bridge.transports import UsbIpUrl, UsbUrl, map_usb_error, parse_url
from firmware_bridge.usbip import UsbIpDevice, serial_from_path
from firmware_bridge.usbip_client import DEFAULT_PORT, UsbIpClient, list_devices

__all__ = [
    "open_usb_device", "list_usbip_devices", "ExportedDevice", "PyUsbDevice", "UsbIpBackend",
]

# ---- discovery ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedDevice:
    """One device a USB/IP server exports. ``serial`` is known for our own servers only."""

    busid: str
    vid: int
    pid: int
    serial: str | None
    interfaces: tuple[tuple[int, int, int], ...]
    speed: int = 0
    path: str = ""

    @property
    def vendor_id(self) -> int:
        return self.vid

    @property
    def product_id(self) -> int:
        return self.pid


def list_usbip_devices(host: str, port: int = DEFAULT_PORT, timeout_ms: int = 5000) -> list[ExportedDevice]:
    """Ask a USB/IP server what it exports (one OP_REQ_DEVLIST; imports nothing)."""
    return [
        ExportedDevice(d.busid, d.vendor_id, d.product_id, serial_from_path(d.path), d.interfaces, d.speed, d.path)
        for d in list_devices(host, port, timeout_ms / 1000)
    ]


# ---- the pyusb backend -------------------------------------------------------------

_DT_DEVICE, _DT_CONFIG, _DT_STRING, _DT_INTERFACE, _DT_ENDPOINT = 1, 2, 3, 4, 5
# USB/IP (kernel enum usb_device_speed) -> libusb/pyusb speed codes
_SPEED = {1: 1, 2: 2, 3: 3, 5: 4, 6: 5}


class _Descriptor:
    """A plain attribute bag, the shape pyusb reads descriptors in."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


@dataclass
class _UsbIpDeviceId:
    """What ``enumerate_devices`` yields: one exported device and its cached descriptors."""

    host: str
    port: int
    exported: UsbIpDevice
    device_descriptor: bytes | None = None
    configurations: tuple[bytes, ...] = ()


def _usb_error(exc: BridgeError) -> usb.core.USBError:
    """Our error as pyusb's (with the errno libusb would report); ours stays the ``__cause__``."""
    if isinstance(exc, TransportTimeout):
        return usb.core.USBTimeoutError(str(exc), None, _errno.ETIMEDOUT)
    if isinstance(exc, UsbStall):
        return usb.core.USBError(str(exc), None, _errno.EPIPE)
    if isinstance(exc, TransportClosed):
        return usb.core.USBError(str(exc), None, _errno.ENODEV)
    return usb.core.USBError(str(exc), None, _errno.EIO)


def _split_descriptors(blob: bytes) -> Iterator[bytes]:
    i = 0
    while i + 2 <= len(blob) and blob[i] >= 2:
        yield blob[i:i + blob[i]]
        i += blob[i]


class UsbIpBackend(usb.backend.IBackend):  # type: ignore[misc]
    """pyusb backend reaching devices over USB/IP: ``usb.core.find(backend=UsbIpBackend(host, port))``.

    Enumeration lists the server's devices and, to give pyusb complete
    descriptors (string indexes, endpoints), imports each briefly to read its
    device and configuration descriptors; a device someone else holds is
    described from the list alone. Opening a device imports it for good, so a
    ``Device`` handle is exclusive, as a claimed device is on a real host.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, busids: tuple[str, ...] | None = None,
                 timeout_ms: int = 5000) -> None:
        super().__init__()
        self.host, self.port, self.busids, self.timeout_ms = host, port, busids, timeout_ms

    # ---- enumeration and descriptors ---------------------------------------------
    def enumerate_devices(self) -> Iterator[_UsbIpDeviceId]:
        for dev in list_devices(self.host, self.port, self.timeout_ms / 1000):
            if self.busids is None or dev.busid in self.busids:
                yield _UsbIpDeviceId(self.host, self.port, dev)

    def _probe(self, dev: _UsbIpDeviceId) -> None:
        if dev.device_descriptor is not None:
            return
        try:
            client = UsbIpClient.open(dev.host, dev.port, dev.exported.busid, self.timeout_ms / 1000)
        except TransportError:
            return  # busy or gone: fall back to the device list's summary
        try:
            desc = client.control(0x80, 6, _DT_DEVICE << 8, 0, 18, self.timeout_ms)
            assert isinstance(desc, bytes)
            configs = []
            if len(desc) == 18:
                for index in range(desc[17]):
                    head = client.control(0x80, 6, (_DT_CONFIG << 8) | index, 0, 9, self.timeout_ms)
                    assert isinstance(head, bytes)
                    if len(head) < 4:
                        break
                    total = struct.unpack_from("<H", head, 2)[0]
                    full = client.control(0x80, 6, (_DT_CONFIG << 8) | index, 0, total, self.timeout_ms)
                    assert isinstance(full, bytes)
                    configs.append(full)
                dev.device_descriptor, dev.configurations = desc, tuple(configs)
        except (TransportError, ProtocolError):
            pass
        finally:
            client.close()

    def get_device_descriptor(self, dev: _UsbIpDeviceId) -> _Descriptor:
        self._probe(dev)
        ex = dev.exported
        common = dict(address=ex.devnum, bus=ex.busnum, port_number=None, port_numbers=None,
                      speed=_SPEED.get(ex.speed, 0))
        raw = dev.device_descriptor
        if raw is None:  # summary from the device list only
            return _Descriptor(
                bLength=18, bDescriptorType=_DT_DEVICE, bcdUSB=0x0200, bDeviceClass=ex.device_class,
                bDeviceSubClass=ex.device_subclass, bDeviceProtocol=ex.device_protocol, bMaxPacketSize0=64,
                idVendor=ex.vendor_id, idProduct=ex.product_id, bcdDevice=ex.bcd_device, iManufacturer=0,
                iProduct=0, iSerialNumber=0, bNumConfigurations=ex.num_configurations, **common,
            )
        f = struct.unpack("<BBHBBBBHHHBBBB", raw)
        names = ("bLength", "bDescriptorType", "bcdUSB", "bDeviceClass", "bDeviceSubClass", "bDeviceProtocol",
                 "bMaxPacketSize0", "idVendor", "idProduct", "bcdDevice", "iManufacturer", "iProduct",
                 "iSerialNumber", "bNumConfigurations")
        return _Descriptor(**dict(zip(names, f)), **common)

    def _config(self, dev: _UsbIpDeviceId, config: int) -> bytes:
        self._probe(dev)
        if dev.device_descriptor is None:  # synthesise from the list: interfaces without endpoints
            if config != 0:
                raise IndexError(f"configuration index {config} out of range")
            ex = dev.exported
            body = b"".join(struct.pack("<BBBBBBBBB", 9, _DT_INTERFACE, n, 0, 0, c, s, p, 0)
                            for n, (c, s, p) in enumerate(ex.interfaces))
            return struct.pack("<BBHBBBBB", 9, _DT_CONFIG, 9 + len(body), len(ex.interfaces),
                               ex.configuration_value or 1, 0, 0x80, 50) + body
        if not 0 <= config < len(dev.configurations):
            raise IndexError(f"configuration index {config} out of range")
        return dev.configurations[config]

    def get_configuration_descriptor(self, dev: _UsbIpDeviceId, config: int) -> _Descriptor:
        parts = list(_split_descriptors(self._config(dev, config)))
        if not parts or len(parts[0]) < 9 or parts[0][1] != _DT_CONFIG:
            raise usb.core.USBError(f"device {dev.exported.busid} has a malformed configuration descriptor")
        f = struct.unpack("<BBHBBBBB", parts[0][:9])
        names = ("bLength", "bDescriptorType", "wTotalLength", "bNumInterfaces", "bConfigurationValue",
                 "iConfiguration", "bmAttributes", "bMaxPower")
        extra = b"".join(p for p in parts[1:] if p[1] not in (_DT_INTERFACE, _DT_ENDPOINT))
        return _Descriptor(**dict(zip(names, f)), extra_descriptors=list(extra))

    def _interfaces(self, dev: _UsbIpDeviceId, config: int) -> list[tuple[bytes, list[bytes], bytes]]:
        """(interface descriptor, endpoint descriptors, extra class descriptors) in order."""
        out: list[tuple[bytes, list[bytes], bytes]] = []
        for part in list(_split_descriptors(self._config(dev, config)))[1:]:
            if part[1] == _DT_INTERFACE and len(part) >= 9:
                out.append((part, [], b""))
            elif out and part[1] == _DT_ENDPOINT and len(part) >= 7:
                out[-1][1].append(part)
            elif out:
                intf, eps, extra = out[-1]
                out[-1] = (intf, eps, extra + part)
        return out

    def _interface(self, dev: _UsbIpDeviceId, intf: int, alt: int, config: int) -> tuple[bytes, list[bytes], bytes]:
        numbers: list[int] = []
        for entry in self._interfaces(dev, config):
            if entry[0][2] not in numbers:
                numbers.append(entry[0][2])
        if not 0 <= intf < len(numbers):
            raise IndexError(f"interface index {intf} out of range")
        alts = [e for e in self._interfaces(dev, config) if e[0][2] == numbers[intf]]
        if not 0 <= alt < len(alts):
            raise IndexError(f"alternate setting index {alt} out of range")
        return alts[alt]

    def get_interface_descriptor(self, dev: _UsbIpDeviceId, intf: int, alt: int, config: int) -> _Descriptor:
        raw, _eps, extra = self._interface(dev, intf, alt, config)
        f = struct.unpack("<BBBBBBBBB", raw[:9])
        names = ("bLength", "bDescriptorType", "bInterfaceNumber", "bAlternateSetting", "bNumEndpoints",
                 "bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol", "iInterface")
        return _Descriptor(**dict(zip(names, f)), extra_descriptors=list(extra))

    def get_endpoint_descriptor(self, dev: _UsbIpDeviceId, ep: int, intf: int, alt: int, config: int) -> _Descriptor:
        _raw, eps, _extra = self._interface(dev, intf, alt, config)
        if not 0 <= ep < len(eps):
            raise IndexError(f"endpoint index {ep} out of range")
        raw = eps[ep]
        f = struct.unpack("<BBBBHB", raw[:7])
        names = ("bLength", "bDescriptorType", "bEndpointAddress", "bmAttributes", "wMaxPacketSize", "bInterval")
        return _Descriptor(**dict(zip(names, f)), bRefresh=0, bSynchAddress=0, extra_descriptors=list(raw[7:]))

    def get_parent(self, dev: _UsbIpDeviceId) -> None:
        return None

    # ---- handles and transfers ---------------------------------------------------------
    def open_device(self, dev: _UsbIpDeviceId) -> UsbIpClient:
        try:
            return UsbIpClient.open(dev.host, dev.port, dev.exported.busid, self.timeout_ms / 1000)
        except TransportError as exc:
            raise _usb_error(exc) from exc

    def close_device(self, dev_handle: UsbIpClient) -> None:
        dev_handle.close()

    def _control(self, h: UsbIpClient, rt: int, req: int, value: int, index: int, data: bytes | int,
                 timeout: int | None) -> bytes | int:
        try:
            return h.control(rt, req, value, index, data, timeout)
        except (TransportError, ProtocolError) as exc:
            raise _usb_error(exc) from exc

    def set_configuration(self, dev_handle: UsbIpClient, config_value: int) -> None:
        self._control(dev_handle, 0x00, 0x09, config_value, 0, b"", self.timeout_ms)

    def get_configuration(self, dev_handle: UsbIpClient) -> int:
        got = self._control(dev_handle, 0x80, 0x08, 0, 0, 1, self.timeout_ms)
        assert isinstance(got, bytes)
        return got[0] if got else 0

    def set_interface_altsetting(self, dev_handle: UsbIpClient, intf: int, altsetting: int) -> None:
        self._control(dev_handle, 0x01, 0x0B, altsetting, intf, b"", self.timeout_ms)

    def claim_interface(self, dev_handle: UsbIpClient, intf: int) -> None:
        """Nothing to do: the whole device is ours once imported."""

    def release_interface(self, dev_handle: UsbIpClient, intf: int) -> None:
        """Nothing to do (see ``claim_interface``)."""

    def clear_halt(self, dev_handle: UsbIpClient, ep: int) -> None:
        self._control(dev_handle, 0x02, 0x01, 0, ep, b"", self.timeout_ms)

    def is_kernel_driver_active(self, dev_handle: UsbIpClient, intf: int) -> bool:
        return False

    def detach_kernel_driver(self, dev_handle: UsbIpClient, intf: int) -> None:
        """No kernel driver is involved on this side of USB/IP."""

    def attach_kernel_driver(self, dev_handle: UsbIpClient, intf: int) -> None:
        """No kernel driver is involved on this side of USB/IP."""

    def ctrl_transfer(self, dev_handle: UsbIpClient, bmRequestType: int, bRequest: int, wValue: int, wIndex: int,
                      data: array.array[int], timeout: int) -> int:
        if bmRequestType & 0x80:
            got = self._control(dev_handle, bmRequestType, bRequest, wValue, wIndex, len(data) * data.itemsize,
                                timeout)
            assert isinstance(got, bytes)
            memoryview(data).cast("B")[: len(got)] = got
            return len(got)
        sent = self._control(dev_handle, bmRequestType, bRequest, wValue, wIndex, data.tobytes(), timeout)
        assert isinstance(sent, int)
        return sent

    def _write(self, h: UsbIpClient, ep: int, data: array.array[int], timeout: int) -> int:
        try:
            return h.write(ep, data.tobytes(), timeout)
        except (TransportError, ProtocolError) as exc:
            raise _usb_error(exc) from exc

    def _read(self, h: UsbIpClient, ep: int, buff: array.array[int], timeout: int) -> int:
        try:
            got = h.read(ep, len(buff) * buff.itemsize, timeout)
        except (TransportError, ProtocolError) as exc:
            raise _usb_error(exc) from exc
        memoryview(buff).cast("B")[: len(got)] = got
        return len(got)

    def bulk_write(self, dev_handle: UsbIpClient, ep: int, intf: int, data: array.array[int], timeout: int) -> int:
        return self._write(dev_handle, ep, data, timeout)

    def intr_write(self, dev_handle: UsbIpClient, ep: int, intf: int, data: array.array[int], timeout: int) -> int:
        return self._write(dev_handle, ep, data, timeout)

    def bulk_read(self, dev_handle: UsbIpClient, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        return self._read(dev_handle, ep, buff, timeout)

    def intr_read(self, dev_handle: UsbIpClient, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        return self._read(dev_handle, ep, buff, timeout)


# ---- the driver-facing wrapper ---------------------------------------------------------------


class PyUsbDevice:
    """A pyusb ``Device`` behind the ``UsbDevice`` API, raising ``firmware_bridge.errors`` only."""

    def __init__(self, device: usb.core.Device, where: str, timeout_ms: int = 5000) -> None:
        self.device = device
        self.where = where
        self.timeout_ms = timeout_ms
        self.idVendor: int = device.idVendor
        self.idProduct: int = device.idProduct
        self.serial_number: str | None = None
        if device.iSerialNumber:
            try:
                self.serial_number = usb.util.get_string(device, device.iSerialNumber)
            except (usb.core.USBError, ValueError) as exc:
                raise map_usb_error(exc, where, "reading the serial number") from exc

    def ctrl_transfer(
        self, bmRequestType: int, bRequest: int, wValue: int = 0, wIndex: int = 0,
        data_or_wLength: bytes | int | None = None, timeout: int | None = None,
    ) -> bytes | int:
        try:
            got = self.device.ctrl_transfer(bmRequestType, bRequest, wValue, wIndex, data_or_wLength,
                                            timeout if timeout is not None else self.timeout_ms)
        except (usb.core.USBError, ValueError) as exc:
            raise map_usb_error(exc, self.where, f"control request 0x{bRequest:02x}") from exc
        return got if isinstance(got, int) else bytes(got)

    def read(self, endpoint: int, size_or_buffer: int, timeout: int | None = None) -> bytes:
        try:
            got = self.device.read(endpoint, size_or_buffer, timeout if timeout is not None else self.timeout_ms)
        except (usb.core.USBError, ValueError) as exc:
            raise map_usb_error(exc, self.where, f"read from endpoint 0x{endpoint:02x}") from exc
        return bytes(got)

    def write(self, endpoint: int, data: bytes, timeout: int | None = None) -> int:
        try:
            return int(self.device.write(endpoint, data, timeout if timeout is not None else self.timeout_ms))
        except (usb.core.USBError, ValueError) as exc:
            raise map_usb_error(exc, self.where, f"write to endpoint 0x{endpoint:02x}") from exc

    def close(self) -> None:
        usb.util.dispose_resources(self.device)

    def __enter__(self) -> PyUsbDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _configure(device: usb.core.Device, where: str) -> None:
    """Select the first configuration unless one is active (a kernel host does this at enumeration)."""
    try:
        device.get_active_configuration()
    except usb.core.USBError as exc:
        if exc.errno is not None or exc.__cause__ is not None:
            raise map_usb_error(exc, where, "reading the active configuration") from exc
        try:
            device.set_configuration()  # pyusb's "Configuration not set"
        except (usb.core.USBError, ValueError) as exc2:
            raise map_usb_error(exc2, where, "selecting the configuration") from exc2


def open_usb_device(url: str, timeout_ms: int = 5000) -> PyUsbDevice:
    """Open ``usbip://HOST:PORT/BUSID`` or ``usb://VID:PID[/SERIAL]``; ``timeout_ms`` is the default per call."""
    target = parse_url(url)
    if isinstance(target, UsbIpUrl):
        backend = UsbIpBackend(target.host, target.port, (target.busid,) if target.busid else None, timeout_ms)
        found = _pick_exported(url, target, backend)
        try:
            device = usb.core.Device(found, backend)
        except usb.core.USBError as exc:
            raise map_usb_error(exc, url, "reading descriptors") from exc
    elif isinstance(target, UsbUrl):
        try:
            device = usb.core.find(
                idVendor=target.vendor_id, idProduct=target.product_id,
                custom_match=(lambda d: _serial_of(d) == target.serial) if target.serial else None,
            )
        except usb.core.NoBackendError as exc:
            raise TransportError(
                f"{url}: pyusb found no libusb backend; install libusb (Debian: apt-get install libusb-1.0-0)"
            ) from exc
        except usb.core.USBError as exc:
            raise map_usb_error(exc, url, "enumerating USB devices") from exc
        if device is None:
            raise TransportError(
                f"{url}: no USB device {target.vendor_id:04x}:{target.product_id:04x}"
                + (f" with serial {target.serial!r}" if target.serial else "")
                + " is attached; plug it in, check `lsusb`, and check permissions (udev rule)"
            )
    else:
        raise TransportUrlError(f"{url!r} is not a USB device URL; expected usbip://HOST:PORT[/BUSID] or "
                                "usb://VID:PID[/SERIAL]")
    try:
        _configure(device, url)
        return PyUsbDevice(device, url, timeout_ms)
    except BaseException:
        # Configuring opened the handle (for usbip://, the import): close it on every failure, or the
        # device stays "busy (imported by another host)" for every retry until the server restarts.
        usb.util.dispose_resources(device)
        raise


def _pick_exported(url: str, target: UsbIpUrl, backend: UsbIpBackend) -> _UsbIpDeviceId:
    """The one exported device the URL names: by bus id, by serial, or the only one there is."""
    try:
        found = [d for d in backend.enumerate_devices()
                 if target.serial is None or serial_from_path(d.exported.path) == target.serial]
    except OSError as exc:
        raise TransportError(f"{url}: cannot reach the USB/IP server at {target.server}: {exc}") from exc
    wanted = " ".join(filter(None, (target.busid and repr(target.busid), target.serial and f"serial {target.serial!r}")))
    if not found:
        raise TransportError(
            f"{url}: the USB/IP server at {target.host}:{target.port} exports no device {wanted or '(none at all)'}; "
            "list what it exports with `usbip --tcp-port PORT list -r HOST` (or list_usbip_devices)"
        )
    if len(found) > 1:
        raise TransportUrlError(
            f"{url!r}: the server exports {len(found)} devices ({', '.join(d.exported.busid for d in found)}); "
            "name one: usbip://HOST:PORT/BUSID or usbip://HOST:PORT/serial:SERIAL")
    return found[0]


def _serial_of(device: usb.core.Device) -> str | None:
    try:
        return usb.util.get_string(device, device.iSerialNumber) if device.iSerialNumber else None
    except (usb.core.USBError, ValueError):
        return None
