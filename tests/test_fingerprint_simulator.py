"""The simulated module without any transport: command semantics, templates, faults."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.r30x import (
    IMAGE_BYTES,
    NEED_DATA,
    Ack,
    Command,
    ConfirmationCode as CC,
    DataPacket,
    Instruction as Ins,
    R30xCodec,
    Role,
    SystemParameters,
    encode_packet,
    unpack_image,
)
from simulators.fingerprint.device import FingerprintModule, Press
from simulators.fingerprint.images import (
    MATCH_THRESHOLD,
    extract_template,
    match_score,
    render_press,
)


class Host:
    """A bare host codec talking to a FingerprintModule in memory."""

    def __init__(self, module: FingerprintModule, address: int = 0xFFFFFFFF) -> None:
        self.module = module
        self.codec = R30xCodec(Role.HOST, address)

    def raw(self, wire: bytes) -> list[Ack | DataPacket]:
        for packet in self.module.receive(wire):
            self.codec.receive_data(packet)
        out = []
        while (event := self.codec.next_event()) is not NEED_DATA:
            out.append(event)
        return out  # type: ignore[return-value]

    def __call__(self, instruction: Ins, params: bytes = b"") -> list[Ack | DataPacket]:
        return self.raw(self.codec.send(Command(instruction, params)))

    def code(self, instruction: Ins, params: bytes = b"") -> CC:
        first = self(instruction, params)[0]
        assert isinstance(first, Ack)
        return first.code


@pytest.fixture
def finger() -> dict[str, Press | None]:
    return {"press": None}


@pytest.fixture
def module(finger: dict[str, Press | None]) -> FingerprintModule:
    return FingerprintModule(lambda: finger["press"])


def test_no_finger_then_finger(module: FingerprintModule, finger: dict[str, Press | None]) -> None:
    host = Host(module)
    assert host.code(Ins.GEN_IMG) is CC.NO_FINGER
    assert host.code(Ins.UP_IMAGE) is CC.UP_IMAGE_FAILED
    assert host.code(Ins.IMG_2_TZ, b"\x01") is CC.NO_VALID_PRIMARY_IMAGE
    finger["press"] = Press(3, 0.9, 1)
    assert host.code(Ins.GEN_IMG) is CC.OK
    events = host(Ins.UP_IMAGE)
    assert events[0] == Ack(CC.OK, b"", 0xFFFFFFFF)
    data = b"".join(e.data for e in events[1:] if isinstance(e, DataPacket))
    assert len(data) == IMAGE_BYTES and len(events) == 1 + 288
    assert isinstance(events[-1], DataPacket) and events[-1].final
    image = unpack_image(data)
    assert image.mean() < 220  # ridges, not the bare sensor
    params = SystemParameters.from_bytes(host(Ins.READ_SYS_PARA)[0].data)  # type: ignore[union-attr]
    assert params.image_valid


def test_password_gate() -> None:
    module = FingerprintModule(lambda: None, password=0xCAFE)
    host = Host(module)
    assert host.code(Ins.TEMPLATE_NUM) is CC.PASSWORD_NOT_VERIFIED
    assert host.code(Ins.VFY_PWD, (0xBEEF).to_bytes(4, "big")) is CC.WRONG_PASSWORD
    assert host.code(Ins.TEMPLATE_NUM) is CC.PASSWORD_NOT_VERIFIED
    assert host.code(Ins.VFY_PWD, (0xCAFE).to_bytes(4, "big")) is CC.OK
    assert host.code(Ins.TEMPLATE_NUM) is CC.OK


def test_packet_errors_are_answered_with_cc_01(module: FingerprintModule) -> None:
    host = Host(module)
    bad = bytearray(host.codec.send(Command(Ins.GEN_IMG)))
    bad[-1] ^= 0xFF
    assert [e.code for e in host.raw(bytes(bad))] == [CC.PACKET_RECEIVE_ERROR]  # type: ignore[union-attr]
    unknown = encode_packet(0x01, b"\x7e")
    assert [e.code for e in host.raw(unknown)] == [CC.PACKET_RECEIVE_ERROR]  # type: ignore[union-attr]
    assert host.code(Ins.IMG_2_TZ, b"") is CC.PACKET_RECEIVE_ERROR  # parameter missing


def test_other_address_gets_silence(module: FingerprintModule) -> None:
    wire = R30xCodec(Role.HOST, 0x11223344).send(Command(Ins.GEN_IMG))
    assert module.receive(wire) == []


def test_set_address_answers_from_the_new_address(module: FingerprintModule) -> None:
    host = Host(module)
    codec = R30xCodec(Role.HOST, address=None)
    for packet in module.receive(host.codec.send(Command(Ins.SET_ADDER, bytes.fromhex("00000042")))):
        codec.receive_data(packet)
    assert codec.next_event() == Ack(CC.OK, b"", 0x42)
    assert Host(module, 0x42).code(Ins.TEMPLATE_NUM) is CC.OK


def test_enrol_search_and_library(module: FingerprintModule, finger: dict[str, Press | None]) -> None:
    host = Host(module)
    for buffer_id, press_no in ((1, 1), (2, 2)):
        finger["press"] = Press(5, 0.9, press_no)
        assert host.code(Ins.GEN_IMG) is CC.OK
        assert host.code(Ins.IMG_2_TZ, bytes([buffer_id])) is CC.OK
    match = host(Ins.MATCH)[0]
    assert isinstance(match, Ack) and match.code is CC.OK and int.from_bytes(match.data, "big") >= MATCH_THRESHOLD
    assert host.code(Ins.REG_MODEL) is CC.OK
    assert host.code(Ins.STORE, b"\x01\x00\x07") is CC.OK
    assert host.code(Ins.STORE, b"\x01\x00\xc8") is CC.PAGE_ID_OUT_OF_RANGE
    count = host(Ins.TEMPLATE_NUM)[0]
    assert isinstance(count, Ack) and count.data == b"\x00\x01"
    index = host(Ins.READ_INDEX_TABLE, b"\x00")[0]
    assert isinstance(index, Ack) and index.data[0] == 0x80 and len(index.data) == 32
    # a third press of the same finger is found at page 7; another finger is not
    finger["press"] = Press(5, 0.85, 3)
    host.code(Ins.GEN_IMG)
    host.code(Ins.IMG_2_TZ, b"\x01")
    found = host(Ins.SEARCH, b"\x01\x00\x00\x00\xc8")[0]
    assert isinstance(found, Ack) and found.code is CC.OK and found.data[:2] == b"\x00\x07"
    finger["press"] = Press(6, 0.9, 4)
    host.code(Ins.GEN_IMG)
    host.code(Ins.IMG_2_TZ, b"\x01")
    assert host(Ins.SEARCH, b"\x01\x00\x00\x00\xc8")[0] == Ack(CC.NOT_FOUND, bytes(4), 0xFFFFFFFF)
    assert host.code(Ins.DELET_CHAR, b"\x00\x07\x00\x01") is CC.OK
    assert host.code(Ins.LOAD_CHAR, b"\x01\x00\x07") is CC.INVALID_TEMPLATE


def test_merge_of_two_fingers_fails(module: FingerprintModule, finger: dict[str, Press | None]) -> None:
    host = Host(module)
    for buffer_id, finger_id in ((1, 2), (2, 9)):
        finger["press"] = Press(finger_id, 0.9, buffer_id)
        host.code(Ins.GEN_IMG)
        assert host.code(Ins.IMG_2_TZ, bytes([buffer_id])) is CC.OK
    assert host.code(Ins.REG_MODEL) is CC.MERGE_FAILED


def test_up_and_down_char_round_trip(module: FingerprintModule, finger: dict[str, Press | None]) -> None:
    host = Host(module)
    finger["press"] = Press(4, 0.9, 1)
    host.code(Ins.GEN_IMG)
    host.code(Ins.IMG_2_TZ, b"\x01")
    events = host(Ins.UP_CHAR, b"\x01")
    template = b"".join(e.data for e in events[1:] if isinstance(e, DataPacket))
    assert len(template) == 512
    assert host.code(Ins.DOWN_CHAR, b"\x02") is CC.OK
    assert host.raw(host.codec.send_data(template, 64)) == []
    assert module.char_buffers[2] == template
    score = host(Ins.MATCH)[0]
    assert isinstance(score, Ack) and int.from_bytes(score.data, "big") == 300


def test_poor_press_is_too_messy(module: FingerprintModule, finger: dict[str, Press | None]) -> None:
    host = Host(module)
    finger["press"] = Press(1, 0.1, 1)
    assert host.code(Ins.GEN_IMG) is CC.OK
    assert host.code(Ins.IMG_2_TZ, b"\x01") in (CC.IMAGE_TOO_MESSY, CC.TOO_FEW_FEATURE_POINTS)


def test_misc_commands(module: FingerprintModule) -> None:
    host = Host(module)
    rnd = host(Ins.GET_RANDOM_CODE)[0]
    assert isinstance(rnd, Ack) and len(rnd.data) == 4
    assert host.code(Ins.SET_SYS_PARA, b"\x06\x00") is CC.OK and module.packet_size == 32
    assert host.code(Ins.SET_SYS_PARA, b"\x09\x00") is CC.INVALID_REGISTER
    assert host.code(Ins.WRITE_NOTEPAD, b"\x03" + b"n" * 32) is CC.OK
    assert host(Ins.READ_NOTEPAD, b"\x03")[0] == Ack(CC.OK, b"n" * 32, 0xFFFFFFFF)
    fw = host(Ins.GET_FW_VER)[0]
    assert isinstance(fw, Ack) and fw.data.startswith(b"EGW-SIM")
    assert host.code(Ins.EMPTY) is CC.OK
    assert host.code(Ins.HANDSHAKE) is CC.OK


def test_templates_are_deterministic_and_discriminate() -> None:
    a1 = render_press(11, 0.9, 1)
    assert np.array_equal(a1, render_press(11, 0.9, 1))
    t_a1, q = extract_template(a1)
    assert t_a1 == extract_template(a1)[0] and len(t_a1) == 512 and q > 50
    t_a2, _ = extract_template(render_press(11, 0.85, 2))
    assert match_score(t_a1, t_a2) >= MATCH_THRESHOLD
    for other in (12, 13, 14):
        t_b, _ = extract_template(render_press(other, 0.9, 2))
        assert match_score(t_a1, t_b) < MATCH_THRESHOLD
    assert match_score(t_a1, bytes(512)) == 0  # not a template at all


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Ins)), st.binary(max_size=40)), max_size=6), st.binary(max_size=64))
def test_module_never_raises_whatever_the_host_sends(commands: list[tuple[Ins, bytes]], junk: bytes) -> None:
    module = FingerprintModule(lambda: None, library_size=20)
    codec = R30xCodec(Role.HOST)
    wire = junk + b"".join(codec.send(Command(ins, params)) for ins, params in commands)
    replies = module.receive(wire)
    for packet in replies:
        codec.receive_data(packet)
    while True:
        try:
            if codec.next_event() is NEED_DATA:
                break
        except Exception as exc:  # the module's own replies must always decode
            raise AssertionError(f"module sent an undecodable reply: {exc}") from exc


def test_press_quality_varies_within_the_spread() -> None:
    from simulators.fingerprint import FingerprintSimulator

    sim = FingerprintSimulator(baud=0, quality=0.6, quality_spread=0.3, seed=4)
    seen = set()
    for _ in range(20):
        sim.press_finger()
        press = sim._finger_now()
        assert press is not None and 0.3 <= press.quality <= 0.9
        seen.add(round(press.quality, 3))
    sim.lift_finger()
    assert sim._finger_now() is None and len(seen) > 10
