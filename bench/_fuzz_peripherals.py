"""Fuzz targets for the peripheral codecs: R30x fingerprint sensor, ASTM (rapid-test analyzer), STU signature
pad with ISO/IEC 19794-7. Each target has seeds (valid frames to mutate) and a check (feeds hostile bytes,
asserts the codec's bounds); bench/fuzz.py runs them."""

from __future__ import annotations

import random

from bench._fuzz_support import (
    Harness,
    InvariantViolation,
    check,
    chunks,
    codec_error_type,
    fit,
)

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

    protocol_error = codec_error_type()
    if len(data) < 2:
        return
    flags, chunking, body = data[0], data[1], data[2:]
    role = r30x.Role.MODULE if flags & 1 else r30x.Role.HOST
    address = None if flags & 2 else (r30x.DEFAULT_ADDRESS if not flags & 4 else 0x12345678)
    codec = r30x.R30xCodec(role, address, lenient_checksum=bool(flags & 8))
    max_partial = 9 + r30x.MAX_PAYLOAD + 2  # the longest packet the protocol allows
    for chunk in chunks(body, chunking):
        codec.receive_data(chunk)
        for _ in range(codec.buffered + 2):
            try:
                event = codec.next_event()
            except protocol_error:
                continue
            if event is r30x.NEED_DATA:
                check(codec.buffered < max_partial,
                       f"r30x holds {codec.buffered} bytes after NEED_DATA (max packet {max_partial})")
                check(codec.bytes_wanted >= 1, "r30x bytes_wanted < 1")
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
    check(again.next_event() == event, f"r30x round trip changed {event!r}")


def _r30x_event(event: object) -> None:
    from firmware_bridge import r30x

    protocol_error = codec_error_type()
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

    protocol_error = codec_error_type()
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
    check(astm.decode_record(astm.encode_record(record, d), d) == record,
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
    for chunk in chunks(body, opts >> 3):
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
        check(len(out) <= 2 * len(chunk) + 4, f"astm receiver wrote {len(out)} bytes for a {len(chunk)}-byte chunk")
        check(len(rx._transcript) <= max_message, f"astm receiver transcript {len(rx._transcript)} > max_message")
        check(len(rx._text) <= max_message + astm.MAX_FRAME, f"astm receiver text {len(rx._text)} unbounded")
        check(rx._frame is None or len(rx._frame) <= astm.MAX_FRAME + 1, "astm receiver frame buffer unbounded")
        events = 0
        while (event := rx.next_event()) is not astm.NEED_DATA:
            events += 1
            if isinstance(event, astm.MessageReceived):
                for record in event.records:
                    _astm_record(record)
                try:
                    astm.check_structure(event.records)
                except codec_error_type():
                    pass
        check(events <= 2 * len(chunk) + 4, f"astm receiver produced {events} events for {len(chunk)} bytes")
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
    for chunk in chunks(body, opts >> 4):
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
        check(len(out) <= (len(chunk) + 2) * (astm.MAX_FRAME + 2),
               f"astm sender wrote {len(out)} bytes for a {len(chunk)}-byte chunk")
        events = 0
        while tx.next_event() is not astm.NEED_DATA:
            events += 1
        check(events <= len(chunk) + 4, f"astm sender produced {events} events for {len(chunk)} bytes")


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
    if len(data) < 2:
        return
    target, body = data[0] % 4, data[1:]
    (_stu_reports, _stu_pen_stream, _stu_iso_record, _stu_image)[target](body)


def _stu_reports(body: bytes) -> None:
    """Input and feature reports: whatever decodes must encode back to the same report."""
    from firmware_bridge import stu_hid as stu

    protocol_error = codec_error_type()
    for decode in (stu.decode_input_report, stu.decode_feature_report):
        try:
            report = decode(body)
        except protocol_error:
            continue
        check(decode(stu.encode_report(report)) == report, f"stu report round trip changed {report!r}")


def _stu_pen_stream(body: bytes) -> None:
    """The pen-report stream, chunked: it progresses and never holds more than one report's bytes."""
    from firmware_bridge import stu_hid as stu

    protocol_error = codec_error_type()
    decoder = stu.PenReportDecoder()
    max_report = max(stu.REPORT_SIZES[r] for r in stu.INPUT_REPORT_IDS)
    for chunk in chunks(body[1:], body[0]):
        decoder.receive_data(chunk)
        for _ in range(len(decoder._buffer) + 2):
            try:
                event = decoder.next_event()
            except protocol_error:
                return  # documented: the stream cannot be resynchronised
            if event is stu.NEED_DATA:
                check(len(decoder._buffer) < max_report, "stu PenReportDecoder hoards bytes")
                break
        else:
            raise InvariantViolation("stu PenReportDecoder made no progress")


def _stu_iso_record(body: bytes) -> None:
    """An ISO/IEC 19794-7 record with either count width; every channel of a decoded one reads."""
    from firmware_bridge import iso19794_7 as iso

    protocol_error = codec_error_type()
    for count_bytes in (3, 4):
        try:
            record = iso.decode_record(body[1:], count_bytes=count_bytes)
        except protocol_error:
            continue
        for channel in record.channels:
            record.column(channel.name)


def _stu_image(body: bytes) -> None:
    """A pad image: the bytes as they come, then fitted to the size the mode and geometry need."""
    from firmware_bridge import stu_hid as stu

    protocol_error = codec_error_type()
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
    stu.unflatten_image(fit(body[3:], size), mode, width, height)


PERIPHERAL_HARNESSES: dict[str, Harness] = {
    "r30x": Harness("r30x", _r30x_seeds, _r30x_check, ("firmware_bridge.r30x",)),
    "astm": Harness("astm", _astm_seeds, _astm_check, ("firmware_bridge.astm",)),
    "stu": Harness("stu", _stu_seeds, _stu_check, ("firmware_bridge.stu_hid", "firmware_bridge.iso19794_7")),
}
