import pytest

from firmware_bridge.errors import UsbStall
from firmware_bridge.usb import EndpointSpec, InterfaceSpec, LoopbackUsbDevice, SetupPacket, UsbDeviceBase, UsbDeviceModel


class Echo(UsbDeviceBase):
    serial = "1234567"
    interface_specs = (InterfaceSpec(0xFF, 0, 0, (EndpointSpec(0x81, 2, 512), EndpointSpec(0x02, 2, 512))),)

    def __init__(self):
        super().__init__()
        self.pending = []

    def bulk_out(self, endpoint, data):
        self.pending.append(data[::-1])

    def bulk_in(self, endpoint, length):
        return self.pending.pop(0) if self.pending else None


def test_setup_packet_round_trip_and_length_check():
    setup = SetupPacket(0x80, 6, 0x0100, 0, 18)
    assert setup.to_bytes() == bytes.fromhex("8006000100001200")
    assert SetupPacket.from_bytes(setup.to_bytes()) == setup
    with pytest.raises(Exception):
        SetupPacket.from_bytes(b"\x00" * 7)


def test_descriptors_and_loopback_transfers():
    model = Echo()
    assert isinstance(model, UsbDeviceModel)
    dev = LoopbackUsbDevice(model)
    desc = dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18)
    assert desc[0] == 18 and desc[1] == 1 and desc[8:10] == b"\x09\x12"
    serial = dev.ctrl_transfer(0x80, 6, 0x0303, 0x0409, 255)
    assert serial[2:].decode("utf-16-le") == "1234567"
    config = dev.ctrl_transfer(0x80, 6, 0x0200, 0, 255)
    assert config[2] == len(config) == 9 + 9 + 7 + 7
    dev.write(0x02, b"abc")
    assert dev.read(0x81, 512) == b"cba"
    with pytest.raises(UsbStall):
        dev.ctrl_transfer(0xC0, 0x42, 0, 0, 4)
