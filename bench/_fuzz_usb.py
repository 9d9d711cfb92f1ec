"""Fuzz targets for the body-worn camera's USB stack: USB mass-storage Bulk-Only Transport, the vendor (F9)
commands, USB/IP. Each target has seeds (valid frames to mutate) and a check (feeds hostile bytes, asserts
the codec's bounds); bench/fuzz.py runs them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench._fuzz_support import (
    Harness,
    InvariantViolation,
    check,
    chunks,
    codec_error_type,
    fit,
)

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

    protocol_error = codec_error_type()
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
        for raw in (body, fit(body, size)):
            try:
                decoded = decoder(raw)
            except protocol_error:
                continue
            check(decoder(decoded.to_bytes()) == decoded, f"BOT round trip changed {decoded!r}")
        return
    max_out = 4096
    parser = bot.BotDeviceParser(max_data_out=max_out)
    resets = 0
    for chunk in chunks(body[1:], body[0]):
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
                check(len(parser._buffer) <= limit, f"BOT parser holds {len(parser._buffer)} bytes (> {limit})")
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

    protocol_error = codec_error_type()
    if len(data) < 2:
        return
    target, opt, body = data[0] % 5, data[1], data[2:]
    attempts: list[Callable[[], object]] = []
    if target == 0:
        attempts = [lambda: f9.parse_cdb(body), lambda: f9.parse_cdb(fit(body, f9.CDB_LENGTH))]
    elif target == 1:
        in_functions = _f9_in_functions()
        fn = in_functions[opt % len(in_functions)]
        layout = f9.ZFY_LAYOUT_89 if opt & 0x80 else f9.ZFY_LAYOUT_94
        size = f9.response_length(fn, layout)
        def round_trip(raw: bytes) -> None:
            response = f9.parse_response(fn, raw, layout)
            if isinstance(response, f9.ZfyInfoResponse) and not response.info.user_no:
                return  # known: an unbound recorder decodes, but encode_zfy_info refuses to write one
            check(f9.parse_response(fn, f9.encode_response(fn, response, layout), layout) == response,
                   f"F9 round trip changed {response!r}")

        attempts = [lambda: round_trip(body), lambda: round_trip(fit(body, size))]
    elif target == 2:
        layout = f9.ZFY_LAYOUT_89 if opt & 1 else f9.ZFY_LAYOUT_94
        attempts = [lambda: f9.decode_zfy_info(body, layout), lambda: f9.decode_zfy_info(fit(body, layout.size), layout)]
    elif target == 3:
        attempts = [lambda: f9.decode_sync_time(body), lambda: f9.decode_sync_time(fit(body, 16)),
                    lambda: f9.decode_device_time(fit(body, 14))]
    else:
        attempts = [lambda: f9.decode_password_payload(body), lambda: f9.decode_password_payload(fit(body, 6))]
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


_USBIP_MAX_TRANSFER = 65536


def _usbip_check(data: bytes) -> None:
    from firmware_bridge import usbip

    if len(data) < 2:
        return
    mode, chunking, body = data[0] % 4, data[1], data[2:]
    dev = _usbip_device()
    conn = _usbip_connection(mode, dev)
    submitted = False
    for chunk in [*chunks(body, chunking), b""]:
        if conn.imported and conn.role is usbip.Role.CLIENT and not submitted:
            _usbip_submit_all(conn, dev)
            submitted = True
        conn.receive_data(chunk)
        ended, submitted = _usbip_drain(conn, dev, submitted)
        if ended:
            return


def _usbip_connection(mode: int, dev: Any) -> Any:
    """A server (mode 0), or a client that asked for the device list (1), asked to import (2) or has
    imported the device (3)."""
    from firmware_bridge import usbip

    conn = usbip.UsbIpConnection(usbip.Role.SERVER if mode == 0 else usbip.Role.CLIENT,
                                 max_transfer_length=_USBIP_MAX_TRANSFER)
    if mode == 1:
        conn.send(usbip.DevlistRequest())
    elif mode == 2:
        conn.send(usbip.ImportRequest("1-1"))
    elif mode == 3:
        conn.send(usbip.ImportRequest("1-1"))
        conn.receive_data(bytes.fromhex("0111000300000000") + usbip._encode_device(dev, 1))
        check(isinstance(conn.next_event(), usbip.ImportReply), "usbip client rejected a valid import reply")
    return conn


def _usbip_submit_all(conn: Any, dev: Any) -> None:
    """URBs outstanding, so RET_SUBMIT / RET_UNLINK have something to answer."""
    from firmware_bridge import usbip

    for seq in range(1, 9):
        conn.send(usbip.SubmitCommand(seqnum=seq, devid=dev.devid, direction=seq & 1, endpoint=seq % 3,
                                      transfer_length=64 if seq & 1 else 4, data=b"" if seq & 1 else b"abcd"))
    conn.send(usbip.UnlinkCommand(seqnum=20, unlink_seqnum=1))
    conn.send(usbip.UnlinkCommand(seqnum=21, unlink_seqnum=99))


def _usbip_drain(conn: Any, dev: Any, submitted: bool) -> tuple[bool, bool]:
    """Take every event the buffered bytes make, answering as a peer would, and check the buffer stays within
    the protocol's bound; returns (the connection ended, URBs were submitted)."""
    from firmware_bridge import usbip

    protocol_error = codec_error_type()
    op_bound = 12 + usbip.MAX_DEVICES * (312 + 255 * 4)
    urb_bound = 48 + _USBIP_MAX_TRANSFER + usbip.MAX_ISO_PACKETS * 16
    for _ in range(len(conn._buffer) // 8 + 4):
        try:
            event = conn.next_event()
        except protocol_error:
            return True, submitted  # documented: errors are sticky, the connection is dropped
        if event is usbip.NEED_DATA:
            bound = urb_bound if conn.imported else op_bound
            check(len(conn._buffer) <= bound, f"usbip holds {len(conn._buffer)} bytes (> {bound})")
            return False, submitted
        if isinstance(event, usbip.ConnectionClosed):
            return True, submitted
        if isinstance(event, usbip.ImportRequest) and conn.role is usbip.Role.SERVER:
            conn.send(usbip.ImportReply(usbip.ST_OK, dev))
        if isinstance(event, usbip.DevlistReply):
            for d in event.devices:
                usbip.serial_from_path(d.path)
        if isinstance(event, usbip.ImportReply) and event.device is not None:
            usbip.serial_from_path(event.device.path)
            if not submitted:
                _usbip_submit_all(conn, dev)
                submitted = True
    raise InvariantViolation("usbip next_event made no progress")


USB_HARNESSES: dict[str, Harness] = {
    "bot": Harness("bot", _bot_seeds, _bot_check, ("firmware_bridge.bot",)),
    "f9": Harness("f9", _f9_seeds, _f9_check, ("firmware_bridge.bodycam_usb",)),
    "usbip": Harness("usbip", _usbip_seeds, _usbip_check, ("firmware_bridge.usbip",)),
}
