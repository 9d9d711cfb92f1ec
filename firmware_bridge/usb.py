"""USB seen from both ends, independent of how the bytes travel.

* ``UsbDeviceModel`` — what a *simulated* device implements (descriptors plus
  control / bulk / interrupt handlers). The USB/IP server serves any model;
  tests can also drive a model in-process through ``LoopbackUsbDevice``.
* ``UsbDevice`` — what a *driver* talks to: the subset of pyusb's
  ``usb.core.Device`` API drivers use (``ctrl_transfer``, ``read``,
  ``write``), so the same driver code runs on real hardware (``usb://``),
  on USB/IP (``usbip://``) and in-process (``loopback``).

Setup packet (8 bytes, little-endian, USB 2.0 §9.3)::

    +---------------+----------+--------+--------+---------+
    | bmRequestType | bRequest | wValue | wIndex | wLength |
    |      u8       |    u8    |  u16   |  u16   |   u16   |
    +---------------+----------+--------+--------+---------+
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from firmware_bridge.errors import LengthError, UsbError, UsbStall

__all__ = [
    "SetupPacket", "UsbDeviceModel", "UsbDevice", "LoopbackUsbDevice", "UsbStall", "DIR_IN",
    "UsbDeviceBase", "InterfaceSpec", "EndpointSpec", "string_descriptor",
]

DIR_IN = 0x80


@dataclass(frozen=True)
class SetupPacket:
    request_type: int
    request: int
    value: int
    index: int
    length: int

    _FORMAT = struct.Struct("<BBHHH")

    @property
    def is_in(self) -> bool:
        return bool(self.request_type & DIR_IN)

    def to_bytes(self) -> bytes:
        return self._FORMAT.pack(self.request_type, self.request, self.value, self.index, self.length)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SetupPacket:
        if len(raw) != 8:
            raise LengthError(f"a USB setup packet is 8 bytes, got {len(raw)}")
        return cls(*cls._FORMAT.unpack(raw))


@runtime_checkable
class UsbDeviceModel(Protocol):
    """A simulated USB device. Handlers raise ``UsbStall`` to stall the endpoint.

    ``bulk_in`` / ``interrupt_in`` return ``None`` when the device has nothing
    to send yet (the host retries, as a real host controller would on NAK).
    """

    vendor_id: int
    product_id: int
    speed: int  # USB/IP speed code: 2 full, 3 high

    def device_descriptor(self) -> bytes: ...

    def configuration_descriptor(self) -> bytes:
        """The full configuration (configuration + interface + endpoint descriptors)."""
        ...

    def interfaces(self) -> list[tuple[int, int, int]]:
        """(class, subclass, protocol) per interface, for device lists."""
        ...

    def control(self, setup: SetupPacket, data: bytes) -> bytes: ...

    def bulk_out(self, endpoint: int, data: bytes) -> None: ...

    def bulk_in(self, endpoint: int, length: int) -> bytes | None: ...

    def interrupt_in(self, endpoint: int, length: int) -> bytes | None: ...


class UsbDevice(Protocol):
    """The pyusb-shaped host API drivers use. Timeouts are in milliseconds, like pyusb."""

    idVendor: int
    idProduct: int
    serial_number: str | None

    def ctrl_transfer(
        self, bmRequestType: int, bRequest: int, wValue: int = 0, wIndex: int = 0,
        data_or_wLength: bytes | int | None = None, timeout: int | None = None,
    ) -> bytes | int: ...

    def read(self, endpoint: int, size_or_buffer: int, timeout: int | None = None) -> bytes: ...

    def write(self, endpoint: int, data: bytes, timeout: int | None = None) -> int: ...

    def close(self) -> None: ...


class LoopbackUsbDevice:
    """Drives a ``UsbDeviceModel`` in-process: for unit tests of drivers and models.

    Interrupt/bulk IN with nothing pending raises ``UsbError('timeout')`` at
    once rather than sleeping; callers poll as they would on real hardware.
    """

    def __init__(self, model: UsbDeviceModel, serial_number: str | None = None) -> None:
        self.model = model
        self.idVendor = model.vendor_id
        self.idProduct = model.product_id
        self.serial_number = serial_number
        self.closed = False

    def ctrl_transfer(
        self, bmRequestType: int, bRequest: int, wValue: int = 0, wIndex: int = 0,
        data_or_wLength: bytes | int | None = None, timeout: int | None = None,
    ) -> bytes | int:
        self._check_open()
        if bmRequestType & DIR_IN:
            length = int(data_or_wLength or 0)
            reply = self.model.control(SetupPacket(bmRequestType, bRequest, wValue, wIndex, length), b"")
            return bytes(reply[:length])
        data = bytes(data_or_wLength or b"") if not isinstance(data_or_wLength, int) else b""
        self.model.control(SetupPacket(bmRequestType, bRequest, wValue, wIndex, len(data)), data)
        return len(data)

    def read(self, endpoint: int, size_or_buffer: int, timeout: int | None = None) -> bytes:
        self._check_open()
        attrs = self._endpoint_type(endpoint)
        reply = (self.model.interrupt_in if attrs == 3 else self.model.bulk_in)(endpoint, size_or_buffer)
        if reply is None:
            raise UsbError(f"timeout reading endpoint 0x{endpoint:02x}")
        return bytes(reply)

    def write(self, endpoint: int, data: bytes, timeout: int | None = None) -> int:
        self._check_open()
        self.model.bulk_out(endpoint, bytes(data))
        return len(data)

    def close(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise UsbError("device handle is closed")

    def _endpoint_type(self, endpoint: int) -> int:
        """bmAttributes & 3 of the endpoint descriptor (2 bulk, 3 interrupt); bulk if unknown."""
        config = self.model.configuration_descriptor()
        i = 0
        while i + 1 < len(config):
            length, kind = config[i], config[i + 1]
            if length == 0:
                break
            if kind == 5 and i + 3 < len(config) and config[i + 2] == endpoint:
                return config[i + 3] & 3
            i += length
        return 2




# ---- building simulated devices ----------------------------------------------

GET_STATUS, CLEAR_FEATURE, SET_FEATURE = 0x00, 0x01, 0x03
GET_DESCRIPTOR, SET_CONFIGURATION, GET_CONFIGURATION, SET_INTERFACE = 0x06, 0x09, 0x08, 0x0B
DESC_DEVICE, DESC_CONFIGURATION, DESC_STRING = 1, 2, 3


@dataclass(frozen=True)
class EndpointSpec:
    address: int  # 0x81 = IN 1, 0x02 = OUT 2
    attributes: int  # 2 bulk, 3 interrupt
    max_packet: int
    interval: int = 0


@dataclass(frozen=True)
class InterfaceSpec:
    cls: int
    subclass: int
    protocol: int
    endpoints: tuple[EndpointSpec, ...]
    extra: bytes = b""  # class descriptors (e.g. the HID descriptor) placed before the endpoints


def string_descriptor(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    if len(raw) > 253:
        raise LengthError("USB string descriptors hold at most 126 characters")
    return bytes([len(raw) + 2, DESC_STRING]) + raw


class UsbDeviceBase:
    """Descriptors and the standard requests, so a model only writes its own class logic.

    Subclasses set the class attributes and override ``class_control``,
    ``bulk_out``, ``bulk_in`` and ``interrupt_in`` as needed. Strings:
    index 1 manufacturer, 2 product, 3 serial number.
    """

    vendor_id = 0x1209
    product_id = 0x0001
    bcd_device = 0x0100
    speed = 3
    manufacturer = "egw"
    product = "simulated device"
    serial = "0000000"
    interface_specs: tuple[InterfaceSpec, ...] = ()

    def __init__(self) -> None:
        self.configuration = 0
        self.halted: set[int] = set()

    def device_descriptor(self) -> bytes:
        return struct.pack(
            "<BBHBBBBHHHBBBB", 18, DESC_DEVICE, 0x0200, 0, 0, 0, 64,
            self.vendor_id, self.product_id, self.bcd_device, 1, 2, 3, 1,
        )

    def configuration_descriptor(self) -> bytes:
        body = b""
        for number, spec in enumerate(self.interface_specs):
            body += struct.pack("<BBBBBBBBB", 9, 4, number, 0, len(spec.endpoints), spec.cls, spec.subclass, spec.protocol, 0)
            body += spec.extra
            for ep in spec.endpoints:
                body += struct.pack("<BBBBHB", 7, 5, ep.address, ep.attributes, ep.max_packet, ep.interval)
        return struct.pack("<BBHBBBBB", 9, DESC_CONFIGURATION, 9 + len(body), len(self.interface_specs), 1, 0, 0x80, 250) + body

    def interfaces(self) -> list[tuple[int, int, int]]:
        return [(s.cls, s.subclass, s.protocol) for s in self.interface_specs]

    def strings(self) -> dict[int, str]:
        return {1: self.manufacturer, 2: self.product, 3: self.serial}

    def control(self, setup: SetupPacket, data: bytes) -> bytes:
        if setup.request_type & 0x60 == 0:  # standard request
            return self.standard_control(setup, data)
        return self.class_control(setup, data)

    def standard_control(self, setup: SetupPacket, data: bytes) -> bytes:
        if setup.request == GET_DESCRIPTOR:
            kind, index = setup.value >> 8, setup.value & 0xFF
            if kind == DESC_DEVICE:
                return self.device_descriptor()[: setup.length]
            if kind == DESC_CONFIGURATION:
                return self.configuration_descriptor()[: setup.length]
            if kind == DESC_STRING:
                if index == 0:
                    return bytes([4, DESC_STRING, 0x09, 0x04])[: setup.length]  # en-US
                text = self.strings().get(index)
                if text is not None:
                    return string_descriptor(text)[: setup.length]
            raise UsbStall(f"no descriptor type {kind} index {index}")
        if setup.request == SET_CONFIGURATION:
            self.configuration = setup.value & 0xFF
            return b""
        if setup.request == GET_CONFIGURATION:
            return bytes([self.configuration])
        if setup.request == SET_INTERFACE:
            return b""
        if setup.request == GET_STATUS:
            return b"\x00\x00"[: setup.length]
        if setup.request == CLEAR_FEATURE and setup.request_type & 0x1F == 2:  # endpoint halt
            self.halted.discard(setup.index & 0xFF)
            return b""
        raise UsbStall(f"standard request 0x{setup.request:02x} not supported")

    def class_control(self, setup: SetupPacket, data: bytes) -> bytes:
        raise UsbStall(f"class/vendor request 0x{setup.request:02x} not supported")

    def bulk_out(self, endpoint: int, data: bytes) -> None:
        raise UsbStall(f"no bulk OUT endpoint 0x{endpoint:02x}")

    def bulk_in(self, endpoint: int, length: int) -> bytes | None:
        raise UsbStall(f"no bulk IN endpoint 0x{endpoint:02x}")

    def interrupt_in(self, endpoint: int, length: int) -> bytes | None:
        raise UsbStall(f"no interrupt IN endpoint 0x{endpoint:02x}")
