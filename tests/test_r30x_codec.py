"""R30x codec: golden vectors from docs/protocols/fingerprint-r30x.md, hunting, round trips, fuzz."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import (
    ChecksumError,
    FrameError,
    LengthError,
    LocalProtocolError,
    ProtocolError,
    UnknownCodeError,
)
from firmware_bridge.r30x import (
    IMAGE_BYTES,
    NEED_DATA,
    Ack,
    Command,
    ConfirmationCode,
    DataPacket,
    Instruction,
    PacketId,
    R30xCodec,
    Role,
    SystemParameters,
    checksum,
    encode_packet,
    pack_image,
    split_data,
    unpack_image,
)

GEN_IMG = bytes.fromhex("EF01 FFFFFFFF 01 0003 01 0005")
VFY_PWD_0 = bytes.fromhex("EF01 FFFFFFFF 01 0007 13 00000000 001B")
ACK_OK = bytes.fromhex("EF01 FFFFFFFF 07 0003 00 000A")
ACK_NO_FINGER = bytes.fromhex("EF01 FFFFFFFF 07 0003 02 000C")

HOST_VECTORS = [  # what a host receives
    (ACK_OK, Ack(ConfirmationCode.OK, b"", 0xFFFFFFFF)),
    (ACK_NO_FINGER, Ack(ConfirmationCode.NO_FINGER, b"", 0xFFFFFFFF)),
]
MODULE_VECTORS = [  # what a module receives
    (GEN_IMG, Command(Instruction.GEN_IMG, b"", 0xFFFFFFFF)),
    (VFY_PWD_0, Command(Instruction.VFY_PWD, bytes(4), 0xFFFFFFFF)),
]
ALL_VECTORS = [(Role.HOST, w, e) for w, e in HOST_VECTORS] + [(Role.MODULE, w, e) for w, e in MODULE_VECTORS]


def drain(codec: R30xCodec) -> list[object]:
    """Every event and error the buffered bytes produce, in order."""
    out: list[object] = []
    for _ in range(10_000):
        try:
            event = codec.next_event()
        except ProtocolError as exc:
            out.append(exc)
            continue
        if event is NEED_DATA:
            return out
        out.append(event)
    raise AssertionError("next_event never returned NEED_DATA")


# -- golden vectors -----------------------------------------------------------------
def test_golden_vectors_are_encoded_exactly() -> None:
    host = R30xCodec(Role.HOST)
    module = R30xCodec(Role.MODULE)
    assert host.send(Command(Instruction.GEN_IMG)) == GEN_IMG
    assert host.send(Command(Instruction.VFY_PWD, (0).to_bytes(4, "big"))) == VFY_PWD_0
    assert module.send(Ack(ConfirmationCode.OK)) == ACK_OK
    assert module.send(Ack(ConfirmationCode.NO_FINGER)) == ACK_NO_FINGER


def test_template_num_checksum_matches_r503_manual() -> None:
    packet = R30xCodec(Role.HOST).send(Command(Instruction.TEMPLATE_NUM))
    assert packet == bytes.fromhex("EF01 FFFFFFFF 01 0003 1D 0021")
    assert checksum(PacketId.COMMAND, b"\x1d") == 0x0021


@pytest.mark.parametrize("role,wire,expected", ALL_VECTORS)
def test_golden_vector_decoded_whole(role: Role, wire: bytes, expected: object) -> None:
    codec = R30xCodec(role)
    codec.receive_data(wire)
    assert codec.next_event() == expected
    assert codec.next_event() is NEED_DATA
    assert codec.buffered == 0 and codec.discarded == 0


@pytest.mark.parametrize("role,wire,expected", ALL_VECTORS)
def test_golden_vector_decoded_byte_by_byte(role: Role, wire: bytes, expected: object) -> None:
    codec = R30xCodec(role)
    for b in wire[:-1]:
        codec.receive_data(bytes([b]))
        assert codec.next_event() is NEED_DATA
    codec.receive_data(wire[-1:])
    assert codec.next_event() == expected


@pytest.mark.parametrize("role,wire,expected", ALL_VECTORS)
@pytest.mark.parametrize("before,after", [
    (b"\x55", b""),  # the R503's ready byte
    (b"\x00\xff\xef", b"\xef"),  # a lone header half before, a dangling one after
    (b"\xef\x01\x12\x34", b"\x00\x00"),  # a false header with a foreign address
    (bytes(range(256)), b"\xef\x01\xff"),
])
def test_golden_vector_found_amid_noise(role: Role, wire: bytes, expected: object, before: bytes, after: bytes) -> None:
    codec = R30xCodec(role)
    codec.receive_data(before + wire + after)
    assert drain(codec) == [expected]
    assert codec.discarded >= len(before) - 1


def test_two_packets_in_one_chunk_and_noise_between() -> None:
    codec = R30xCodec(Role.HOST)
    codec.receive_data(ACK_OK + b"\x13\x37" + ACK_NO_FINGER)
    assert [e.code for e in drain(codec)] == [ConfirmationCode.OK, ConfirmationCode.NO_FINGER]  # type: ignore[attr-defined]


# -- errors ---------------------------------------------------------------------------
def test_checksum_error_then_resync() -> None:
    bad = ACK_OK[:-1] + b"\x0b"
    codec = R30xCodec(Role.HOST)
    codec.receive_data(bad + ACK_NO_FINGER)
    with pytest.raises(ChecksumError, match="checksum"):
        codec.next_event()
    assert codec.next_event() == Ack(ConfirmationCode.NO_FINGER, b"", 0xFFFFFFFF)


def test_length_beyond_maximum_is_a_length_error() -> None:
    codec = R30xCodec(Role.HOST)
    codec.receive_data(bytes.fromhex("EF01 FFFFFFFF 07 0200") + ACK_OK)
    with pytest.raises(LengthError):
        codec.next_event()
    assert drain(codec) == [Ack(ConfirmationCode.OK, b"", 0xFFFFFFFF)]


def test_wrong_direction_is_a_frame_error() -> None:
    codec = R30xCodec(Role.HOST)
    codec.receive_data(GEN_IMG)  # a host never receives commands (an echoing adapter?)
    with pytest.raises(FrameError, match="must not receive"):
        codec.next_event()


def test_unknown_packet_id_is_a_frame_error() -> None:
    codec = R30xCodec(Role.HOST)
    codec.receive_data(bytes.fromhex("EF01 FFFFFFFF 05 0003 00 0008"))
    with pytest.raises(FrameError):
        codec.next_event()


def test_unknown_codes_are_named_errors_and_the_stream_goes_on() -> None:
    module = R30xCodec(Role.MODULE)
    module.receive_data(encode_packet(PacketId.COMMAND, b"\x7e") + GEN_IMG)
    with pytest.raises(UnknownCodeError, match="0x7E"):
        module.next_event()
    assert module.next_event() == Command(Instruction.GEN_IMG, b"", 0xFFFFFFFF)
    host = R30xCodec(Role.HOST)
    host.receive_data(encode_packet(PacketId.ACK, b"\x99"))
    with pytest.raises(UnknownCodeError):
        host.next_event()


def test_other_address_is_noise_but_a_sniffer_sees_it() -> None:
    wire = encode_packet(PacketId.ACK, b"\x00", address=0x12345678)
    codec = R30xCodec(Role.HOST)
    codec.receive_data(wire)
    assert codec.next_event() is NEED_DATA
    sniffer = R30xCodec(Role.HOST, address=None)
    sniffer.receive_data(wire)
    assert sniffer.next_event() == Ack(ConfirmationCode.OK, b"", 0x12345678)


def test_local_misuse_is_a_local_protocol_error() -> None:
    host, module = R30xCodec(Role.HOST), R30xCodec(Role.MODULE)
    with pytest.raises(LocalProtocolError):
        host.send(Ack(ConfirmationCode.OK))
    with pytest.raises(LocalProtocolError):
        module.send(Command(Instruction.GEN_IMG))
    with pytest.raises(LocalProtocolError):
        host.send(DataPacket(bytes(257), final=True))
    with pytest.raises(LocalProtocolError):
        split_data(b"x", 100)


def test_lenient_checksum_accepts_adafruits_final_packet() -> None:
    payload = b"\x01\x02\x03"
    adafruit = bytes.fromhex("EF01 FFFFFFFF 08 0005") + payload + checksum(PacketId.DATA, payload).to_bytes(2, "big")
    strict = R30xCodec(Role.MODULE)
    strict.receive_data(adafruit)
    with pytest.raises(ChecksumError):
        strict.next_event()
    lenient = R30xCodec(Role.MODULE, lenient_checksum=True)
    lenient.receive_data(adafruit)
    assert lenient.next_event() == DataPacket(payload, final=True, address=0xFFFFFFFF)


# -- system parameters, data packets, images ---------------------------------------------
def test_read_sys_para_layout() -> None:
    data = bytes.fromhex("0004 0000 00C8 0003 FFFFFFFF 0002 0006")
    module = R30xCodec(Role.MODULE)
    wire = module.send(Ack(ConfirmationCode.OK, data))
    assert wire[7:9] == b"\x00\x13" and len(wire) == 28  # docs/protocols/fingerprint-r30x.md §4
    host = R30xCodec(Role.HOST)
    host.receive_data(wire)
    ack = host.next_event()
    assert isinstance(ack, Ack)
    params = SystemParameters.from_bytes(ack.data)
    assert (params.library_size, params.security_level, params.address) == (200, 3, 0xFFFFFFFF)
    assert params.password_verified and not params.busy and not params.image_valid
    assert params.packet_size == 128 and params.baud_rate == 57600
    assert params.to_bytes() == data
    with pytest.raises(LengthError):
        SystemParameters.from_bytes(data[:-1])


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_image_transfer_in_every_packet_size(size: int) -> None:
    data = bytes(i & 0xFF for i in range(IMAGE_BYTES))
    packets = split_data(data, size)
    assert len(packets) == IMAGE_BYTES // size
    assert [p.final for p in packets].count(True) == 1 and packets[-1].final
    module, host = R30xCodec(Role.MODULE), R30xCodec(Role.HOST)
    wire = module.send_data(data, size)
    assert wire[6] == PacketId.DATA and wire[-(size + 11) + 6] == PacketId.END_DATA
    host.receive_data(wire)
    events = drain(host)
    assert b"".join(e.data for e in events) == data  # type: ignore[attr-defined]
    if size == 128:
        assert len(events) == 288


def test_image_packing_left_pixel_in_high_nibble() -> None:
    img = np.array([[0x10, 0x2F, 0xFF, 0x00]], dtype=np.uint8)
    assert pack_image(img) == b"\x12\xf0"
    out = unpack_image(b"\x12\xf0", width=4, height=1)
    assert out.tolist() == [[17, 34, 255, 0]]
    with pytest.raises(LengthError):
        unpack_image(b"\x00" * 10)


def test_full_image_round_trip_keeps_the_upper_nibble() -> None:
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (288, 256), dtype=np.uint8)
    back = unpack_image(pack_image(img))
    assert back.shape == (288, 256) and back.dtype == np.uint8
    assert np.array_equal(back // 17, img >> 4)


# -- hypothesis ---------------------------------------------------------------------------
events_to_module = st.one_of(
    st.builds(Command, st.sampled_from(list(Instruction)), st.binary(max_size=255)),
    st.builds(DataPacket, st.binary(min_size=1, max_size=256), st.booleans()),
)
events_to_host = st.one_of(
    st.builds(Ack, st.sampled_from(list(ConfirmationCode)), st.binary(max_size=255)),
    st.builds(DataPacket, st.binary(min_size=1, max_size=256), st.booleans()),
)


def _same(a: object, b: object) -> bool:
    from dataclasses import replace
    return replace(a, address=None) == replace(b, address=None)  # type: ignore[type-var]


@settings(deadline=None)
@given(st.lists(events_to_module, max_size=5), st.integers(0, 0xFFFFFFFF), st.integers(1, 64))
def test_round_trip_host_to_module(events: list, address: int, chunk: int) -> None:
    host = R30xCodec(Role.HOST, address)
    module = R30xCodec(Role.MODULE, address)
    wire = b"".join(host.send(e) for e in events)
    got: list[object] = []
    for i in range(0, len(wire), chunk):
        module.receive_data(wire[i:i + chunk])
        got.extend(drain(module))
    assert len(got) == len(events) and all(_same(a, b) for a, b in zip(got, events))
    assert all(g.address == address for g in got)  # type: ignore[attr-defined]


@settings(deadline=None)
@given(st.lists(events_to_host, max_size=5), st.integers(1, 64))
def test_round_trip_module_to_host(events: list, chunk: int) -> None:
    module, host = R30xCodec(Role.MODULE), R30xCodec(Role.HOST)
    wire = b"".join(module.send(e) for e in events)
    got: list[object] = []
    for i in range(0, len(wire), chunk):
        host.receive_data(wire[i:i + chunk])
        got.extend(drain(host))
    assert len(got) == len(events) and all(_same(a, b) for a, b in zip(got, events))


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(list(Role)), st.sampled_from([0xFFFFFFFF, None]))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes, role: Role, address: int | None) -> None:
    codec = R30xCodec(role, address)
    codec.receive_data(data)
    for _ in range(len(data) + 2):  # each call consumes ≥ 1 byte or returns NEED_DATA: no hang
        try:
            if codec.next_event() is NEED_DATA:
                break
        except ProtocolError:
            continue
    else:
        raise AssertionError("the codec did not settle")
    assert codec.buffered <= 9 + 258


@settings(deadline=None)
@given(st.binary(max_size=80), events_to_host, st.binary(max_size=80))
def test_a_packet_amid_random_noise_is_found(before: bytes, event: object, after: bytes) -> None:
    wire = R30xCodec(Role.MODULE).send(event)  # type: ignore[arg-type]
    host = R30xCodec(Role.HOST)
    host.receive_data(before + wire + after + bytes(300))  # trailing zeros end any false length
    found = [e for e in drain(host) if not isinstance(e, ProtocolError)]
    assert any(_same(e, event) for e in found)


def test_bytes_wanted_completes_exactly_one_packet() -> None:
    codec = R30xCodec(Role.HOST)
    assert codec.bytes_wanted == 12  # nothing yet: the smallest packet
    wire = R30xCodec(Role.MODULE).send(DataPacket(bytes(128), final=True))
    codec.receive_data(wire[:5])
    assert codec.next_event() is NEED_DATA and codec.bytes_wanted == 7
    codec.receive_data(wire[5:20])
    assert codec.next_event() is NEED_DATA and codec.bytes_wanted == len(wire) - 20
    codec.receive_data(wire[20:])
    assert codec.next_event() == DataPacket(bytes(128), True, 0xFFFFFFFF) and codec.bytes_wanted == 12
