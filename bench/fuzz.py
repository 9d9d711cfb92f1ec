"""Fuzz every byte-level codec in ``firmware_bridge``: ``python bench/fuzz.py CODEC --seconds N``.

The invariant (issue 9): whatever bytes a peer sends, a decoder either
decodes them or raises the codec's :class:`~firmware_bridge.errors.ProtocolError`
— never another exception, never a hang, never memory that grows without
bound. Evidence software that dies on a malformed frame loses the evidence
behind it, so every crash found here is fixed in the codec with a regression
test (``tests/test_fuzz_regressions.py``).

One harness per codec (CODEC in r30x, astm, stu, bot, f9, usbip, all):

    r30x   R30xCodec.receive_data/next_event (both roles, with/without an
           address filter, lenient checksum), SystemParameters, unpack_image
    astm   decode_frame, decode_record/decode_message/check_structure,
           parse_timestamp, AstmReceiver and AstmSender fed hostile bytes
           with timeouts, interrupts and held ACKs interleaved
    stu    STU input/feature reports, PenReportDecoder, unflatten_image,
           ISO/IEC 19794-7 decode_record
    bot    CBW/CSW/sense/INQUIRY decoders, BotDeviceParser
    f9     vendor CDB, every IN response, ZFY_INFO (both layouts), times, passwords
    usbip  UsbIpConnection as server and as client (devlist, import, URBs)

The first byte(s) of an input choose the entry point and how the bytes are
chunked (whole, byte by byte, or random chunk sizes), so the same input
always takes the same path. Per input: length capped (``--max-len``), a
wall-clock alarm catches hangs (``--hang-seconds``), and each harness checks
that the codec's internal buffers stay within the protocol's own bounds and
that an incremental loop always makes progress. Where a codec has an
encoder, whatever was decoded must encode and decode back to the same value
(two known, deliberate asymmetries are skipped: an empty non-final R30x data
packet is accepted but never sent; a ZFY_INFO without a police number — an
unbound recorder — decodes but ``encode_zfy_info`` refuses to write one).
Under atheris the process also runs with ``-rss_limit_mb=2048``.

Engine: atheris (coverage-guided libFuzzer; `pip install -e .[fuzz]`) when it is importable; otherwise,
or with ``--engine random``, a coverage-less random + mutation fuzzer of our
own that keeps inputs producing a new outcome (event/exception kind). The
test suite (``tests/test_fuzz_smoke.py``) runs the same harness checks
through the random engine with a fixed seed.

Output: executions, executions/s, distinct crashes (exception type + top
frame) with a reproducer file each, and as the last line
``fuzz CODEC: execs=E crashes=C``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

__all__ = [
    "CODECS",
    "Harness",
    "HARNESSES",
    "Crash",
    "InvariantViolation",
    "HangDetected",
    "run_one",
    "random_fuzz",
    "FuzzStats",
    "main",
]

CODECS = ("r30x", "astm", "stu", "bot", "f9", "usbip")


class InvariantViolation(AssertionError):
    """A harness check failed: a buffer grew past its bound, an event loop did not progress, …"""


class HangDetected(BaseException):
    """Raised from the alarm handler; a BaseException so a codec's ``except Exception`` cannot eat it."""


def _protocol_error() -> type[BaseException]:
    from firmware_bridge.errors import ProtocolError

    return ProtocolError


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise InvariantViolation(what)


def _chunks(data: bytes, selector: int) -> Iterator[bytes]:
    """Split ``data`` the way a transport might deliver it; ``selector`` picks the pattern."""
    mode = selector % 4
    if mode == 0 or len(data) <= 1:
        if data:
            yield data
        return
    if mode == 1:
        for i in range(len(data)):
            yield data[i:i + 1]
        return
    rng = random.Random(selector)
    i = 0
    while i < len(data):
        n = rng.randint(1, 64 if mode == 2 else 400)
        yield data[i:i + n]
        i += n


def _fit(data: bytes, size: int) -> bytes:
    """Pad or cut to exactly ``size`` bytes, so random inputs also reach the deep paths."""
    return (data + bytes(size))[:size]


# ---------------------------------------------------------------- r30x


def _r30x_seeds() -> list[bytes]:
    from firmware_bridge import r30x

    golden = [
        bytes.fromhex("EF01FFFFFFFF0100030100 05".replace(" ", "")),
        bytes.fromhex("EF01FFFFFFFF010007130000000000 1B".replace(" ", "")),
        bytes.fromhex("EF01FFFFFFFF0700030000 0A".replace(" ", "")),
        bytes.fromhex("EF01FFFFFFFF0700030200 0C".replace(" ", "")),
    ]
    module = r30x.R30xCodec(r30x.Role.MODULE)
    sysp = r30x.SystemParameters(0, 0, 1000, 3, 0xFFFFFFFF, 2, 6).to_bytes()
    extra = [
        module.send(r30x.Ack(r30x.ConfirmationCode.OK, sysp)),
        module.send_data(bytes(range(256)) * 2, 128),
        b"\x55" + golden[2] + b"\x00\xef" + golden[3],
    ]
    seeds = []
    for i, vector in enumerate(golden + extra):
        seeds.append(bytes([0x00, i]) + vector)  # host, default address
        seeds.append(bytes([0x01, i]) + golden[0] + golden[1])  # module
    return seeds


def _r30x_check(data: bytes) -> None:
    from firmware_bridge import r30x

    protocol_error = _protocol_error()
    if len(data) < 2:
        return
    flags, chunking, body = data[0], data[1], data[2:]
    role = r30x.Role.MODULE if flags & 1 else r30x.Role.HOST
    address = None if flags & 2 else (r30x.DEFAULT_ADDRESS if not flags & 4 else 0x12345678)
    codec = r30x.R30xCodec(role, address, lenient_checksum=bool(flags & 8))
    max_partial = 9 + r30x.MAX_PAYLOAD + 2  # the longest packet the protocol allows
    for chunk in _chunks(body, chunking):
        codec.receive_data(chunk)
        for _ in range(codec.buffered + 2):
            try:
                event = codec.next_event()
            except protocol_error:
                continue
            if event is r30x.NEED_DATA:
                _check(codec.buffered < max_partial,
                       f"r30x holds {codec.buffered} bytes after NEED_DATA (max packet {max_partial})")
                _check(codec.bytes_wanted >= 1, "r30x bytes_wanted < 1")
                break
            _r30x_event(event)
            _r30x_round_trip(codec, event)
        else:
            raise InvariantViolation("r30x next_event made no progress: more events than buffered bytes")


def _r30x_round_trip(codec: object, event: object) -> None:
    """What we decoded, the other end's encoder must write back to the same event."""
    from firmware_bridge import r30x

    assert isinstance(codec, r30x.R30xCodec)
    if isinstance(event, r30x.DataPacket) and not event.data and not event.final:
        return  # known asymmetry: an empty non-final data packet is accepted but never sent
    other = r30x.Role.HOST if codec.role is r30x.Role.MODULE else r30x.Role.MODULE
    wire = r30x.R30xCodec(other, codec.address).send(event)  # type: ignore[arg-type]
    again = r30x.R30xCodec(codec.role, codec.address)
    again.receive_data(wire)
    _check(again.next_event() == event, f"r30x round trip changed {event!r}")


def _r30x_event(event: object) -> None:
    from firmware_bridge import r30x

    protocol_error = _protocol_error()
    if isinstance(event, r30x.Ack) and len(event.data) == r30x.SystemParameters.SIZE:
        params = r30x.SystemParameters.from_bytes(event.data)
        try:
            params.packet_size
        except protocol_error:
            pass
    if isinstance(event, r30x.DataPacket) and event.data:
        r30x.unpack_image(event.data, width=2, height=len(event.data))
        try:
            r30x.unpack_image(event.data)
        except protocol_error:
            pass


# ---------------------------------------------------------------- astm


_ASTM_MESSAGE = (
    b"H|\\^&|||RAPIDSIM^1.0|||||||P|LIS2-A2|20240101120000\r"
    b"P|1\r"
    b"O|1|S000001||^^^OPPEST|R\r"
    b"R|1|^^^OPPEST|62.5|%|0^50|H||F||||20240101121500\r"
    b"C|1|I|positive|G\r"
    b"L|1|N\r"
)
_ASTM_FRAME_H = b"\x021H|\\^&|||RAPIDSIM^1.0|||||||P|LIS2-A2|20240101120000\r\x03B2\r\n"
_ASTM_FRAME_R = b"\x022R|1|^^^OPPEST|62.5|%|0^50|H||F||||20240101121500\r\x03AE\r\n"
_ENCODINGS = ("latin-1", "utf-8", "gbk", "ascii")


_ASTM_RECORDS: list = []


def _astm_records():  # type: ignore[no-untyped-def]
    from firmware_bridge import astm

    if not _ASTM_RECORDS:
        _ASTM_RECORDS.extend(astm.decode_message(_ASTM_MESSAGE))
    return list(_ASTM_RECORDS)


def _astm_seeds() -> list[bytes]:
    from firmware_bridge import astm

    records = _astm_records()
    frames = astm.message_frames(records)
    long_frames = astm.message_frames(records, max_text=16)
    session = b"\x05" + b"".join(frames) + b"\x04"
    return [
        b"\x00\x00" + _ASTM_FRAME_H,
        b"\x00\x00" + _ASTM_FRAME_R,
        b"\x01\x00" + _ASTM_MESSAGE,
        b"\x01\x01" + _ASTM_MESSAGE.replace(b"|", b"!"),
        b"\x02\x00" + session,
        b"\x02\x05" + b"\x05" + b"".join(long_frames) + b"\x04",
        b"\x02\x02" + b"\x05" + _ASTM_FRAME_H + _ASTM_FRAME_H + b"\x15\x05" + session,
        b"\x03\x00" + b"\x06" * 8,
        b"\x03\x01" + b"\x06\x15\x06\x05\x06\x04\x06\x06",
    ]


def _astm_check(data: bytes) -> None:
    from firmware_bridge import astm

    protocol_error = _protocol_error()
    if len(data) < 2:
        return
    target, opts, body = data[0] % 4, data[1], data[2:]
    if target == 0:
        try:
            frame = astm.decode_frame(body)
        except protocol_error:
            return
        frame.encode()  # whatever the decoder accepts, the encoder must be able to write back
        return
    if target == 1:
        encoding = _ENCODINGS[opts % len(_ENCODINGS)]
        try:
            records = astm.decode_message(body, encoding=encoding)
        except protocol_error:
            records = []
        for record in records:
            _astm_record(record)
        try:
            astm.check_structure(records)
        except protocol_error:
            pass
        text = body.decode("latin-1")
        for line in text.split("\r")[:64]:
            try:
                _astm_record(astm.decode_record(line))
            except protocol_error:
                pass
        try:
            astm.parse_timestamp(text[:16])
        except protocol_error:
            pass
        return
    if target == 2:
        _astm_receiver(body, opts)
        return
    _astm_sender(body, opts)


def _astm_record(record: object) -> None:
    from firmware_bridge import astm

    assert isinstance(record, astm.Record)
    d = astm.DEFAULT_DELIMITERS
    if record.type == "H":  # the record keeps repeat/component/escape; the field delimiter is free
        decl = str(record.fields[0])
        d = astm.Delimiters(next(c for c in "|!#$" if c not in decl), decl[0], decl[1], decl[2])
    _check(astm.decode_record(astm.encode_record(record, d), d) == record,
           f"astm record round trip changed {record!r}")
    for n in range(1, len(record.fields) + 2):
        record.get(n)
        record.component(n, 1 + n % 3)
        record.text(n)
    record.seq


def _astm_receiver(body: bytes, opts: int) -> None:
    from firmware_bridge import astm

    max_message = 2048
    rx = astm.AstmReceiver(
        hold_message_ack=bool(opts & 1),
        encoding=_ENCODINGS[(opts >> 1) % len(_ENCODINGS)],
        max_message=max_message,
    )
    rng = random.Random(opts)
    now = 0.0
    for chunk in _chunks(body, opts >> 3):
        now += rng.choice((0.0, 0.5, 5.0, 31.0))
        if rx.deadline is not None and now >= rx.deadline:
            rx.handle_timeout(now)
        action = rng.randrange(8)
        if action == 0:
            rx.acknowledge_message()
        elif action == 1:
            rx.interrupt()
        elif action == 2:
            rx.expire_timer()
        elif action == 3:
            rx.busy = not rx.busy
        rx.receive_data(chunk, now)
        out = rx.data_to_send()
        _check(len(out) <= 2 * len(chunk) + 4, f"astm receiver wrote {len(out)} bytes for a {len(chunk)}-byte chunk")
        _check(len(rx._transcript) <= max_message, f"astm receiver transcript {len(rx._transcript)} > max_message")
        _check(len(rx._text) <= max_message + astm.MAX_FRAME, f"astm receiver text {len(rx._text)} unbounded")
        _check(rx._frame is None or len(rx._frame) <= astm.MAX_FRAME + 1, "astm receiver frame buffer unbounded")
        events = 0
        while (event := rx.next_event()) is not astm.NEED_DATA:
            events += 1
            if isinstance(event, astm.MessageReceived):
                for record in event.records:
                    _astm_record(record)
                try:
                    astm.check_structure(event.records)
                except _protocol_error():
                    pass
        _check(events <= 2 * len(chunk) + 4, f"astm receiver produced {events} events for {len(chunk)} bytes")
    rx.handle_timeout(now + 1000.0)
    rx.data_to_send()
    while rx.next_event() is not astm.NEED_DATA:
        pass


def _astm_sender(body: bytes, opts: int) -> None:
    from firmware_bridge import astm

    tx = astm.AstmSender(priority=bool(opts & 1), honour_interrupts=bool(opts & 2),
                         max_text=(16, 64, 240)[(opts >> 2) % 3])
    rng = random.Random(opts)
    now = 0.0
    tx.send_message(_astm_records(), now)
    tx.data_to_send()
    resends = 0
    for chunk in _chunks(body, opts >> 4):
        now += rng.choice((0.0, 1.0, 11.0, 16.0))
        if tx.deadline is not None and now >= tx.deadline:
            tx.handle_timeout(now)
        if tx.idle and resends < 8 and rng.randrange(2):  # bounded: encoding a message is the costly part
            resends += 1
            tx.send_message(_astm_records(), now)
        elif rng.randrange(16) == 0:
            tx.abort(now)
        tx.receive_data(chunk, now)
        out = tx.data_to_send()
        _check(len(out) <= (len(chunk) + 2) * (astm.MAX_FRAME + 2),
               f"astm sender wrote {len(out)} bytes for a {len(chunk)}-byte chunk")
        events = 0
        while tx.next_event() is not astm.NEED_DATA:
            events += 1
        _check(events <= len(chunk) + 4, f"astm sender produced {events} events for {len(chunk)} bytes")


# ---------------------------------------------------------------- stu (+ ISO 19794-7)


def _stu_seeds() -> list[bytes]:
    from firmware_bridge import iso19794_7 as iso
    from firmware_bridge import stu_hid as stu

    reports = [
        stu.PenData(True, 1, 512, 100, 200).encode(),
        stu.PenDataOption(True, 0, 0, 5, 6, 7).encode(),
        stu.PenDataTimeCountSequence(True, 1, 1023, 9600, 6000, 65535, 3).encode(),
        stu.Status(0, 0, 0).encode(),
        stu.Capability(10800, 6480, 1023, 800, 480, 200, 2540, 0x0E).encode(),
        stu.Information("STU-540", 1, 2, 0, b"\x00\x01\x02\x03").encode(),
        stu.Uid2("0123456789").encode(),
        stu.StartCapture(0xC0FFEE).encode(),
        stu.ImageDataBlock(b"\xff" * 253).encode(),
        stu.StartImageData(0x04).encode(),
    ]
    series = iso.SignatureTimeSeries(t_ms=[0, 5, 10], x=[-10, 0, 10], y=[5, 6, 7], f=[0, 300, 0],
                                     xy_units_per_mm=100.0, f_max=1023)
    record = iso.encode_record(series)
    stream = reports[0] * 3 + reports[2] + reports[1]
    seeds = [bytes([0]) + r for r in reports]
    seeds += [bytes([1, 0]) + stream, bytes([1, 1]) + stream, bytes([2, 0]) + record, bytes([2, 1]) + record[:-1],
              bytes([3, 0x04, 4, 2]) + bytes(24)]
    return seeds


def _stu_check(data: bytes) -> None:
    from firmware_bridge import iso19794_7 as iso
    from firmware_bridge import stu_hid as stu

    protocol_error = _protocol_error()
    if len(data) < 2:
        return
    target, body = data[0] % 4, data[1:]
    if target == 0:
        for decode in (stu.decode_input_report, stu.decode_feature_report):
            try:
                report = decode(body)
            except protocol_error:
                continue
            _check(decode(stu.encode_report(report)) == report, f"stu report round trip changed {report!r}")
        return
    if target == 1:
        decoder = stu.PenReportDecoder()
        max_report = max(stu.REPORT_SIZES[r] for r in stu.INPUT_REPORT_IDS)
        for chunk in _chunks(body[1:], body[0]):
            decoder.receive_data(chunk)
            for _ in range(len(decoder._buffer) + 2):
                try:
                    event = decoder.next_event()
                except protocol_error:
                    return  # documented: the stream cannot be resynchronised
                if event is stu.NEED_DATA:
                    _check(len(decoder._buffer) < max_report, "stu PenReportDecoder hoards bytes")
                    break
            else:
                raise InvariantViolation("stu PenReportDecoder made no progress")
        return
    if target == 2:
        for count_bytes in (3, 4):
            try:
                record = iso.decode_record(body[1:], count_bytes=count_bytes)
            except protocol_error:
                continue
            for channel in record.channels:
                record.column(channel.name)
        return
    if len(body) < 3:
        return
    mode, width, height = body[0], body[1] % 64, body[2] % 64
    try:
        stu.unflatten_image(body[3:], mode, width, height)
    except protocol_error:
        pass
    try:
        size = stu.image_size(mode, width, height)
    except protocol_error:
        return
    stu.unflatten_image(_fit(body[3:], size), mode, width, height)


# ---------------------------------------------------------------- bot


def _bot_seeds() -> list[bytes]:
    from firmware_bridge import bot

    inquiry = bot.CommandBlockWrapper(1, bot.INQUIRY_LENGTH, True, 0, bot.inquiry_cdb()).to_bytes()
    out = bot.CommandBlockWrapper(2, 16, False, 0, bytes([0xF9, 6]) + b"000000" + bytes(8)).to_bytes()
    csw = bot.CommandStatusWrapper(1, 0, bot.CswStatus.PASSED).to_bytes()
    sense = bot.SenseData(5, 0x74, 4).to_bytes()
    inq = bot.InquiryData("EGW", "BODYCAM SIM", "1.0").to_bytes()
    return [
        bytes([0]) + inquiry, bytes([0]) + out, bytes([1]) + csw, bytes([2]) + sense, bytes([3]) + inq,
        bytes([4, 0]) + inquiry + out + b"20240101120000\xe0\x01" + inquiry,
        bytes([4, 1]) + out + b"2024",
    ]


def _bot_check(data: bytes) -> None:
    from firmware_bridge import bot

    protocol_error = _protocol_error()
    if len(data) < 2:
        return
    target, body = data[0] % 5, data[1:]
    if target < 4:
        decoder, size = (
            (bot.CommandBlockWrapper.from_bytes, bot.CBW_LENGTH),
            (bot.CommandStatusWrapper.from_bytes, bot.CSW_LENGTH),
            (bot.SenseData.from_bytes, bot.SENSE_LENGTH),
            (bot.InquiryData.from_bytes, bot.INQUIRY_LENGTH),
        )[target]
        for raw in (body, _fit(body, size)):
            try:
                decoded = decoder(raw)
            except protocol_error:
                continue
            _check(decoder(decoded.to_bytes()) == decoded, f"BOT round trip changed {decoded!r}")
        return
    max_out = 4096
    parser = bot.BotDeviceParser(max_data_out=max_out)
    resets = 0
    for chunk in _chunks(body[1:], body[0]):
        parser.receive_data(chunk)
        for _ in range(len(parser._buffer) + 2):
            try:
                event = parser.next_event()
            except protocol_error:
                if resets >= 3:
                    return
                resets += 1
                parser.reset()  # the host's Bulk-Only Mass Storage Reset
                break
            if event is bot.NEED_DATA:
                limit = max_out if parser.in_data_out_phase else bot.CBW_LENGTH - 1
                _check(len(parser._buffer) <= limit, f"BOT parser holds {len(parser._buffer)} bytes (> {limit})")
                break
        else:
            raise InvariantViolation("BOT parser made no progress")


# ---------------------------------------------------------------- f9 (bodycam vendor commands)


def _f9_seeds() -> list[bytes]:
    from datetime import datetime

    from firmware_bridge import bodycam_usb as f9

    info = f9.ZfyInfo("1234567", "654321", "张三", "110000000000", "某某公安局")
    when = datetime(2024, 1, 1, 12, 0, 0)
    seeds = [bytes([0, fn]) + f9.build_cdb(f9.Function(fn)) for fn in (1, 3, 4, 6, 9)]
    responses: dict[f9.Function, f9.Response] = {
        f9.Function.GET_ID_CODE: f9.IdCodeResponse(f9.IRet.CONNECT_OK, "ZFY01"),
        f9.Function.GET_ZFY_INFO: f9.ZfyInfoResponse(f9.IRet(0), info),
        f9.Function.GET_DEV_TIME: f9.DeviceTimeResponse(f9.IRet(0), when),
        f9.Function.READ_RESOLUTION: f9.ResolutionResponse(f9.IRet(0), 1920, 1080),
        f9.Function.READ_BATTERY: f9.BatteryResponse(f9.IRet(0), 80),
        f9.Function.GET_STORAGE: f9.StorageResponse(f9.IRet(0), 64000, 1000, 12),
    }
    in_functions = _f9_in_functions()
    for fn, response in responses.items():
        seeds.append(bytes([1, in_functions.index(fn)]) + f9.encode_response(fn, response))
    seeds.append(bytes([2, 0]) + f9.encode_zfy_info(info))
    seeds.append(bytes([2, 1]) + f9.encode_zfy_info(info, f9.ZFY_LAYOUT_89))
    seeds.append(bytes([3, 0]) + f9.encode_sync_time(when, 480))
    seeds.append(bytes([4, 0]) + b"000000")
    return seeds


def _f9_in_functions() -> list:  # type: ignore[type-arg]
    from firmware_bridge import bodycam_usb as f9

    return [fn for fn, spec in f9.FUNCTION_SPECS.items() if spec.direction is f9.Direction.IN]


def _f9_check(data: bytes) -> None:
    from firmware_bridge import bodycam_usb as f9

    protocol_error = _protocol_error()
    if len(data) < 2:
        return
    target, opt, body = data[0] % 5, data[1], data[2:]
    attempts: list[Callable[[], object]] = []
    if target == 0:
        attempts = [lambda: f9.parse_cdb(body), lambda: f9.parse_cdb(_fit(body, f9.CDB_LENGTH))]
    elif target == 1:
        in_functions = _f9_in_functions()
        fn = in_functions[opt % len(in_functions)]
        layout = f9.ZFY_LAYOUT_89 if opt & 0x80 else f9.ZFY_LAYOUT_94
        size = f9.response_length(fn, layout)
        def round_trip(raw: bytes) -> None:
            response = f9.parse_response(fn, raw, layout)
            if isinstance(response, f9.ZfyInfoResponse) and not response.info.user_no:
                return  # known: an unbound recorder decodes, but encode_zfy_info refuses to write one
            _check(f9.parse_response(fn, f9.encode_response(fn, response, layout), layout) == response,
                   f"F9 round trip changed {response!r}")

        attempts = [lambda: round_trip(body), lambda: round_trip(_fit(body, size))]
    elif target == 2:
        layout = f9.ZFY_LAYOUT_89 if opt & 1 else f9.ZFY_LAYOUT_94
        attempts = [lambda: f9.decode_zfy_info(body, layout), lambda: f9.decode_zfy_info(_fit(body, layout.size), layout)]
    elif target == 3:
        attempts = [lambda: f9.decode_sync_time(body), lambda: f9.decode_sync_time(_fit(body, 16)),
                    lambda: f9.decode_device_time(_fit(body, 14))]
    else:
        attempts = [lambda: f9.decode_password_payload(body), lambda: f9.decode_password_payload(_fit(body, 6))]
    for attempt in attempts:
        try:
            attempt()
        except protocol_error:
            pass


# ---------------------------------------------------------------- usbip


def _usbip_device():  # type: ignore[no-untyped-def]
    from firmware_bridge import usbip

    return usbip.UsbIpDevice(path=usbip.path_with_serial("1-1", "SN 1/2"), busid="1-1", busnum=1, devnum=2,
                             speed=3, vendor_id=0x1209, product_id=0x0001, bcd_device=0x0100,
                             num_interfaces=1, interfaces=((8, 6, 0x50),))


def _usbip_seeds() -> list[bytes]:
    from firmware_bridge import usbip

    dev = _usbip_device()
    server = usbip.UsbIpConnection(usbip.Role.SERVER)
    devlist = server.send(usbip.DevlistReply((dev,)))
    server = usbip.UsbIpConnection(usbip.Role.SERVER)
    server.receive_data(struct_import_request())
    server.next_event()
    import_ok = server.send(usbip.ImportReply(usbip.ST_OK, dev))
    ret = server.send(usbip.SubmitReturn(seqnum=1, status=0, actual_length=4, data=b"\x12\x01\x00\x02",
                                         direction=1))
    ret_out = server.send(usbip.SubmitReturn(seqnum=2, status=-32, actual_length=0))
    unlink_ret = server.send(usbip.UnlinkReturn(seqnum=20, status=-104))
    client = usbip.UsbIpConnection(usbip.Role.CLIENT)
    client._state = usbip._State.URB
    submit_in = client.send(usbip.SubmitCommand(seqnum=1, devid=0x10002, direction=1, endpoint=0, transfer_length=18,
                                                setup=bytes.fromhex("8006000100001200")))
    submit_out = client.send(usbip.SubmitCommand(seqnum=2, devid=0x10002, direction=0, endpoint=2,
                                                 transfer_length=4, data=b"USBC"))
    unlink = client.send(usbip.UnlinkCommand(seqnum=3, unlink_seqnum=1))
    devreq = bytes.fromhex("0111800500000000")
    return [
        bytes([0, 0]) + devreq,
        bytes([0, 1]) + struct_import_request() + submit_in + submit_out + unlink,
        bytes([1, 0]) + devlist,
        bytes([2, 0]) + import_ok + ret,
        bytes([3, 0]) + ret + ret_out + unlink_ret,
        bytes([3, 1]) + ret_out + ret,
    ]


def struct_import_request() -> bytes:
    return bytes.fromhex("0111800300000000") + b"1-1".ljust(32, b"\0")


def _usbip_check(data: bytes) -> None:
    from firmware_bridge import usbip

    protocol_error = _protocol_error()
    if len(data) < 2:
        return
    mode, chunking, body = data[0] % 4, data[1], data[2:]
    max_transfer = 65536
    conn = usbip.UsbIpConnection(usbip.Role.SERVER if mode == 0 else usbip.Role.CLIENT,
                                 max_transfer_length=max_transfer)
    dev = _usbip_device()
    if mode == 1:
        conn.send(usbip.DevlistRequest())
    elif mode == 2:
        conn.send(usbip.ImportRequest("1-1"))
    elif mode == 3:
        conn.send(usbip.ImportRequest("1-1"))
        conn.receive_data(bytes.fromhex("0111000300000000") + usbip._encode_device(dev, 1))
        _check(isinstance(conn.next_event(), usbip.ImportReply), "usbip client rejected a valid import reply")
    submitted = False

    def submit_all() -> None:  # URBs outstanding, so RET_SUBMIT / RET_UNLINK have something to answer
        nonlocal submitted
        submitted = True
        for seq in range(1, 9):
            conn.send(usbip.SubmitCommand(seqnum=seq, devid=dev.devid, direction=seq & 1, endpoint=seq % 3,
                                          transfer_length=64 if seq & 1 else 4, data=b"" if seq & 1 else b"abcd"))
        conn.send(usbip.UnlinkCommand(seqnum=20, unlink_seqnum=1))
        conn.send(usbip.UnlinkCommand(seqnum=21, unlink_seqnum=99))

    op_bound = 12 + usbip.MAX_DEVICES * (312 + 255 * 4)
    urb_bound = 48 + max_transfer + usbip.MAX_ISO_PACKETS * 16
    for chunk in [*_chunks(body, chunking), b""]:
        if conn.imported and conn.role is usbip.Role.CLIENT and not submitted:
            submit_all()
        conn.receive_data(chunk)
        for _ in range(len(conn._buffer) // 8 + 4):
            try:
                event = conn.next_event()
            except protocol_error:
                return  # documented: errors are sticky, the connection is dropped
            if event is usbip.NEED_DATA:
                bound = urb_bound if conn.imported else op_bound
                _check(len(conn._buffer) <= bound, f"usbip holds {len(conn._buffer)} bytes (> {bound})")
                break
            if isinstance(event, usbip.ConnectionClosed):
                return
            if isinstance(event, usbip.ImportRequest) and conn.role is usbip.Role.SERVER:
                conn.send(usbip.ImportReply(usbip.ST_OK, dev))
            if isinstance(event, usbip.DevlistReply):
                for d in event.devices:
                    usbip.serial_from_path(d.path)
            if isinstance(event, usbip.ImportReply) and event.device is not None:
                usbip.serial_from_path(event.device.path)
                if not submitted:
                    submit_all()
        else:
            raise InvariantViolation("usbip next_event made no progress")


# ---------------------------------------------------------------- engine


@dataclass(frozen=True)
class Harness:
    name: str
    seeds: Callable[[], list[bytes]]
    check: Callable[[bytes], None]
    modules: tuple[str, ...]


HARNESSES: dict[str, Harness] = {
    "r30x": Harness("r30x", _r30x_seeds, _r30x_check, ("firmware_bridge.r30x",)),
    "astm": Harness("astm", _astm_seeds, _astm_check, ("firmware_bridge.astm",)),
    "stu": Harness("stu", _stu_seeds, _stu_check, ("firmware_bridge.stu_hid", "firmware_bridge.iso19794_7")),
    "bot": Harness("bot", _bot_seeds, _bot_check, ("firmware_bridge.bot",)),
    "f9": Harness("f9", _f9_seeds, _f9_check, ("firmware_bridge.bodycam_usb",)),
    "usbip": Harness("usbip", _usbip_seeds, _usbip_check, ("firmware_bridge.usbip",)),
}


@dataclass(frozen=True)
class Crash:
    """One distinct failure: the key is exception type + the innermost codec frame."""

    kind: str
    where: str
    message: str
    data: bytes

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.where)


def _where(tb: object) -> str:
    frames = traceback.extract_tb(tb)  # type: ignore[arg-type]
    codec = [f for f in frames if "firmware_bridge" in f.filename]
    if not (codec or frames):
        return "?"
    frame = (codec or frames)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"


def _on_alarm(signum: int, frame: object) -> None:
    raise HangDetected("input took longer than the hang limit")


def run_one(harness: Harness, data: bytes, hang_seconds: float = 2.0) -> Crash | None:
    """Run one input through a harness; None when the invariant held, else the Crash."""
    use_alarm = hang_seconds > 0 and hasattr(signal, "setitimer")
    if use_alarm:
        previous = signal.getsignal(signal.SIGALRM)
        if previous is not _on_alarm:
            signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, hang_seconds)
    try:
        harness.check(data)
        return None
    except HangDetected as exc:
        return Crash("Hang", _where(exc.__traceback__), f"no result within {hang_seconds} s", data)
    except InvariantViolation as exc:
        return Crash("InvariantViolation", str(exc).split(" ")[0] + " " + _where(exc.__traceback__), str(exc), data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - anything else is exactly what we hunt
        return Crash(type(exc).__name__, _where(exc.__traceback__), str(exc)[:200], data)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if previous is not _on_alarm:
                signal.signal(signal.SIGALRM, previous)


@dataclass
class FuzzStats:
    codec: str
    engine: str
    execs: int = 0
    seconds: float = 0.0
    crashes: dict[tuple[str, str], Crash] = field(default_factory=dict)
    crash_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    max_exec_seconds: float = 0.0

    def record(self, crash: Crash) -> bool:
        new = crash.key not in self.crashes
        if new or len(crash.data) < len(self.crashes[crash.key].data):
            self.crashes[crash.key] = crash  # keep the smallest reproducer
        self.crash_counts[crash.key] = self.crash_counts.get(crash.key, 0) + 1
        return new

    def report(self, crash_dir: Path | None) -> str:
        rate = self.execs / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"codec:      {self.codec} (engine: {self.engine})",
            f"executions: {self.execs} in {self.seconds:.1f} s = {rate:,.0f} exec/s",
            f"slowest input: {self.max_exec_seconds * 1000:.1f} ms",
            f"distinct crashes: {len(self.crashes)}",
        ]
        for key, crash in sorted(self.crashes.items()):
            path = ""
            if crash_dir is not None:
                crash_dir.mkdir(parents=True, exist_ok=True)
                name = f"{self.codec}-{crash.kind}-{abs(hash(key)) % 10**8:08d}.bin"
                (crash_dir / name).write_bytes(crash.data)
                path = f" -> {crash_dir / name}"
            lines.append(f"  {crash.kind} at {crash.where} (x{self.crash_counts[key]}): {crash.message}{path}")
        lines.append(f"fuzz {self.codec}: execs={self.execs} crashes={len(self.crashes)}")
        return "\n".join(lines)


_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0D, 0x0A, 0x15, 0x17, 0xEF)
_INTERESTING_WORDS = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
                      b"\x00\x00\x01\x00", b"\x00\x00\xff\xff", b"\x01\x11", b"USBC", b"\xef\x01")


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int) -> bytes:
    """One to four stacked mutations: flips, interesting values, inserts, deletes, splices, repeats."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2 and buf:
            buf[rng.randrange(len(buf))] = rng.choice(_INTERESTING)
        elif op == 3:
            word = rng.choice(_INTERESTING_WORDS)
            buf[pos:pos + len(word)] = word
        elif op == 4:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 5 and buf:
            n = rng.randint(1, max(1, len(buf) // 4))
            del buf[pos:pos + n]
        elif op == 6 and corpus:
            other = rng.choice(corpus)
            a = rng.randrange(len(other) + 1)
            buf[pos:] = other[a:a + rng.randint(0, 512)]
        elif op == 7 and buf:
            a = rng.randrange(len(buf))
            piece = bytes(buf[a:a + rng.randint(1, 64)])
            buf[pos:pos] = piece * rng.randint(1, 8)
        elif op == 8 and len(buf) > 2:
            buf[0] = rng.randrange(256)
            buf[1] = rng.randrange(256)
        elif op == 9:
            buf = bytearray(buf[:pos])
    return bytes(buf[:max_len])


def _outcome(harness: Harness, data: bytes) -> tuple[int, int]:
    """A cheap behaviour signature for corpus feedback: (selector, input length bucket)."""
    return (data[0] if data else -1, len(data).bit_length())


def random_fuzz(
    harness: Harness,
    *,
    seconds: float | None = None,
    max_execs: int | None = None,
    seed: int = 0,
    max_len: int = 4096,
    hang_seconds: float = 2.0,
    on_new_crash: Callable[[Crash], None] | None = None,
) -> FuzzStats:
    """Our own coverage-less fuzzer: seeds, then mutations of seeds and of inputs with a new outcome."""
    rng = random.Random(seed)
    stats = FuzzStats(harness.name, "random+mutation")
    corpus = list(harness.seeds())
    seen: set[tuple[int, int]] = set()
    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else None
    queue = list(corpus)
    while True:
        if max_execs is not None and stats.execs >= max_execs:
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
        if queue:
            data = queue.pop()
        elif rng.randrange(16) == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        else:
            data = mutate(rng, rng.choice(corpus), corpus, max_len)
        t0 = time.perf_counter()
        crash = run_one(harness, data, hang_seconds)
        stats.max_exec_seconds = max(stats.max_exec_seconds, time.perf_counter() - t0)
        stats.execs += 1
        if crash is not None:
            if stats.record(crash) and on_new_crash is not None:
                on_new_crash(crash)
            continue
        sig = _outcome(harness, data)
        if sig not in seen and len(corpus) < 4096:
            seen.add(sig)
            corpus.append(data)
    stats.seconds = time.perf_counter() - started
    return stats


def _atheris_fuzz(harness: Harness, seconds: float, max_len: int, hang_seconds: float, crash_dir: Path) -> None:
    """Coverage-guided run under atheris; prints the report and exits the process when time is up."""
    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["firmware_bridge"]):
        for module in harness.modules:
            __import__(module)
    stats = FuzzStats(harness.name, f"atheris {getattr(atheris, '__version__', '')}".strip())
    started = time.perf_counter()
    deadline = started + seconds

    def finish() -> None:
        stats.seconds = time.perf_counter() - started
        sys.stderr.flush()
        print(stats.report(crash_dir), flush=True)
        os._exit(0)

    def one_input(data: bytes) -> None:
        if time.perf_counter() >= deadline:
            finish()
        t0 = time.perf_counter()
        crash = run_one(harness, data, hang_seconds)
        stats.max_exec_seconds = max(stats.max_exec_seconds, time.perf_counter() - t0)
        stats.execs += 1
        if crash is not None and stats.record(crash):
            print(f"NEW CRASH {crash.kind} at {crash.where}: {crash.message}", file=sys.stderr, flush=True)

    corpus_dir = Path(tempfile.mkdtemp(prefix=f"egw-fuzz-{harness.name}-"))
    for i, seed in enumerate(harness.seeds()):
        (corpus_dir / f"seed-{i:03d}").write_bytes(seed)
    atheris.Setup(
        [sys.argv[0], f"-max_len={max_len}", "-len_control=0", "-timeout=0", "-rss_limit_mb=2048",
         f"-max_total_time={int(seconds) + 30}", "-print_final_stats=0", str(corpus_dir)],
        one_input,
    )
    atheris.Fuzz()
    finish()


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("codec", choices=(*CODECS, "all"))
    parser.add_argument("--seconds", type=float, default=60.0, help="run time per codec")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--max-len", type=int, default=8192, help="largest input in bytes")
    parser.add_argument("--hang-seconds", type=float, default=2.0, help="an input slower than this is a hang")
    parser.add_argument("--seed", type=int, default=None, help="random engine seed (default: time)")
    parser.add_argument("--crash-dir", type=Path, default=Path(tempfile.gettempdir()) / "egw-fuzz-crashes")
    args = parser.parse_args(argv)

    if args.codec == "all":
        total_execs = total_crashes = 0
        for codec in CODECS:
            cmd = [sys.executable, str(Path(__file__).resolve()), codec, "--seconds", str(args.seconds),
                   "--engine", args.engine, "--max-len", str(args.max_len),
                   "--hang-seconds", str(args.hang_seconds), "--crash-dir", str(args.crash_dir)]
            if args.seed is not None:
                cmd += ["--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            print(proc.stdout, end="", flush=True)
            last = (proc.stdout.strip().splitlines() or [""])[-1]
            if not last.startswith(f"fuzz {codec}:"):
                print(proc.stderr[-2000:], file=sys.stderr)
                print(f"fuzz {codec}: harness died (exit {proc.returncode})")
                total_crashes += 1
                continue
            fields = dict(part.split("=") for part in last.split(": ", 1)[1].split())
            total_execs += int(fields["execs"])
            total_crashes += int(fields["crashes"])
        print(f"fuzz all: execs={total_execs} crashes={total_crashes}")
        return 1 if total_crashes else 0

    harness = HARNESSES[args.codec]
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _have_atheris() else "random"
    if engine == "atheris":
        _atheris_fuzz(harness, args.seconds, args.max_len, args.hang_seconds, args.crash_dir)
        return 0  # not reached: _atheris_fuzz exits
    seed = args.seed if args.seed is not None else int(time.time())
    stats = random_fuzz(
        harness, seconds=args.seconds, seed=seed, max_len=args.max_len, hang_seconds=args.hang_seconds,
        on_new_crash=lambda c: print(f"NEW CRASH {c.kind} at {c.where}: {c.message}", file=sys.stderr, flush=True),
    )
    print(f"seed: {seed}")
    print(stats.report(args.crash_dir))
    return 1 if stats.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
