"""Regression tests for what bench/fuzz.py found: each one failed before its fix."""

from __future__ import annotations

import pytest

from firmware_bridge import r30x, usbip
from firmware_bridge.errors import LocalProtocolError


@pytest.mark.parametrize(("width", "height", "size"), [(1, 2, 1), (3, 2, 3), (0, 5, 0), (4, -2, 0)])
def test_r30x_unpack_image_rejects_an_impossible_geometry_with_a_codec_error(width: int, height: int,
                                                                             size: int) -> None:
    # before: numpy's reshape raised ValueError("cannot reshape array of size 1 into shape (2,0)")
    with pytest.raises(LocalProtocolError, match="even width"):
        r30x.unpack_image(bytes(size), width=width, height=height)


def test_r30x_unpack_image_still_unpacks_a_small_even_image() -> None:
    out = r30x.unpack_image(b"\x12\xf0", width=4, height=1)
    assert out.tolist() == [[17, 34, 255, 0]]


def _devlist_reply(count: int) -> tuple[bytes, "usbip.UsbIpDevice"]:
    dev = usbip.UsbIpDevice(path="/sys/devices/egw-usbip/1-1", busid="1-1", busnum=1, devnum=2, speed=3,
                            vendor_id=0x1209, product_id=0x0001, bcd_device=0x0100, num_interfaces=2,
                            interfaces=((8, 6, 0x50), (3, 0, 0)))
    return usbip.UsbIpConnection(usbip.Role.SERVER).send(usbip.DevlistReply((dev,) * count)), dev


def test_usbip_device_list_arriving_in_pieces_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # before: every piece of an OP_REP_DEVLIST re-decoded the list from its start (quadratic: 4,096
    # devices in 1,448-byte pieces took 18 s of CPU, byte by byte it would take hours)
    wire, dev = _devlist_reply(usbip.MAX_DEVICES)
    decoded = 0
    real = usbip._decode_device

    def counting(raw: bytes) -> usbip.UsbIpDevice:
        nonlocal decoded
        decoded += 1
        return real(raw)

    monkeypatch.setattr(usbip, "_decode_device", counting)
    client = usbip.UsbIpConnection(usbip.Role.CLIENT)
    client.send(usbip.DevlistRequest())
    events = []
    for i in range(0, len(wire), 1448):
        client.receive_data(wire[i:i + 1448])
        events.append(client.next_event())
    assert all(e is usbip.NEED_DATA for e in events[:-1])
    reply = events[-1]
    assert isinstance(reply, usbip.DevlistReply) and len(reply.devices) == usbip.MAX_DEVICES
    assert reply.devices[0] == dev and reply.devices[-1] == dev
    assert decoded == usbip.MAX_DEVICES


def test_usbip_device_list_fed_byte_by_byte_then_the_connection_goes_on() -> None:
    wire, dev = _devlist_reply(3)
    client = usbip.UsbIpConnection(usbip.Role.CLIENT)
    client.send(usbip.DevlistRequest())
    got = []
    for b in wire:
        client.receive_data(bytes([b]))
        event = client.next_event()
        if event is not usbip.NEED_DATA:
            got.append(event)
    assert got == [usbip.DevlistReply((dev, dev, dev))]
    # a second request on the same connection starts a fresh scan
    client.send(usbip.DevlistRequest())
    client.receive_data(wire)
    assert client.next_event() == usbip.DevlistReply((dev, dev, dev))


def test_astm_receiver_merges_a_burst_of_rejections_into_one_event():
    """64 KiB of stray STX bytes used to queue 65,535 events (~217× the input)."""
    from firmware_bridge.astm import NEED_DATA, AstmReceiver, FrameRejected

    receiver = AstmReceiver()
    receiver.receive_data(b"\x05", 0.0)  # ENQ: a session
    while receiver.next_event() is not NEED_DATA:
        pass
    receiver.receive_data(b"\x02" * 65536, 0.1)
    events = []
    while (event := receiver.next_event()) is not NEED_DATA:
        events.append(event)
    rejected = [e for e in events if isinstance(e, FrameRejected)]
    assert len(rejected) == 1 and rejected[0].count == 65535
