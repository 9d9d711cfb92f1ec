"""Hostile peers: a random host against the simulator, a random device against the driver."""

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import bodycam as bc
from firmware_bridge.bot import CommandBlockWrapper
from firmware_bridge.errors import UsbError, UsbStall
from firmware_bridge.usb import EndpointSpec, InterfaceSpec, LoopbackUsbDevice, UsbDeviceBase
from simulators.bodycam import BodyCamSimulator


class RandomDevice(UsbDeviceBase):
    """Answers every bulk IN with bytes drawn by hypothesis (or NAKs / stalls)."""

    interface_specs = (InterfaceSpec(0x08, 0x06, 0x50, (EndpointSpec(0x81, 2, 512), EndpointSpec(0x02, 2, 512))),)

    def __init__(self, replies):
        super().__init__()
        self.replies = list(replies)

    def bulk_out(self, endpoint, data):
        return None

    def bulk_in(self, endpoint, length):
        if not self.replies:
            return None
        reply = self.replies.pop(0)
        if reply == b"STALL":
            raise UsbStall("random stall")
        return reply[:length]

    def class_control(self, setup, data):
        return b""


_REPLY = st.one_of(
    st.binary(max_size=120),
    st.just(b"STALL"),
    st.builds(lambda tag, res, status: b"USBS" + tag.to_bytes(4, "little") + res.to_bytes(4, "little") + bytes([status]),
              st.integers(0, 3), st.integers(0, 200), st.integers(0, 3)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_REPLY, max_size=12))
def test_driver_raises_only_bodycam_errors(replies):
    cam = bc.BodyCamera(LoopbackUsbDevice(RandomDevice(replies), "1000001"))
    for call in (cam.info, cam.device_time, cam.sync_time, cam.scsi_inquiry):
        try:
            call()
        except bc.BodyCamError:
            pass


_CBW = st.builds(
    lambda tag, length, data_in, cb, cut: CommandBlockWrapper(tag, length, data_in, 0, cb).to_bytes()[:cut],
    st.integers(0, 2**32 - 1), st.integers(0, 5000), st.booleans(),
    st.one_of(st.binary(min_size=1, max_size=16),
              st.builds(lambda f, pw: bytes([0xF9, f]) + pw + bytes(8), st.integers(0, 12), st.sampled_from([b"000000", b"123456"]))),
    st.integers(1, 31),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), _CBW), max_size=6))
def test_simulator_survives_random_host(chunks):
    sim = BodyCamSimulator(recordings=0)
    try:
        dev = LoopbackUsbDevice(sim, sim.serial)
        for chunk in chunks:
            try:
                dev.write(0x02, chunk)
            except UsbStall:
                pass
            try:
                dev.read(0x81, 512)
            except UsbError:  # nothing queued (NAK) or stalled
                pass
        # a reset recovery always brings the pipe back (a lockout or a password the random
        # host managed to set are legitimate states, undone here by the owner)
        if sim.locked:
            sim.replug()
        sim.password = "000000"
        dev.ctrl_transfer(0x21, 0xFF, 0, 0, None)
        dev.ctrl_transfer(0x02, 0x01, 0, 0x81, None)
        dev.ctrl_transfer(0x02, 0x01, 0, 0x02, None)
        assert bc.BodyCamera(dev).battery() == 87
    finally:
        sim.close()


@given(st.text(max_size=300))
def test_name_rule_accepts_only_single_printable_components(name):
    if bc.unsafe_name_reason(name) is None:
        assert name not in ("", ".", "..") and "/" not in name and "\\" not in name
        assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in name)
        assert len(name.encode()) <= bc.MAX_NAME_BYTES
