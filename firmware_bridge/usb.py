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

__all__ = ["SetupPacket", "UsbDeviceModel", "UsbDevice", "LoopbackUsbDevice", "UsbStall", "DIR_IN"]

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
    def from_bytes(cls, raw: bytes) -> "SetupPacket":
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


