"""The golden vectors published in docs/protocols/ must match our codecs, both ways.

Why: docs/protocols/ is the contract an integrator builds against. Each
```` ```vector name=… codec=… ```` block there holds wire bytes (hex) and,
after a ``---`` line, the fields they mean (JSON). For every block this test
decodes the bytes with our codec and compares the result with the documented
fields, then encodes the documented fields and compares the result with the
bytes. Editing a vector in the docs, or changing a codec, makes it fail; so
does a vector naming a codec this file does not know.

Hex notation (docs/README.md): whitespace is ignored, ``#`` starts a comment
that runs to the end of the line, and ``XX{n}`` stands for the byte XX
repeated n times (padding, e.g. ``00{29}``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields as dataclass_fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge import astm, bodycam_usb as f9, bot, iso19794_7 as iso, r30x, stu_hid as stu, usbip

DOCS = Path(__file__).resolve().parent.parent / "docs"
PROTOCOLS = DOCS / "protocols"

_BLOCK = re.compile(r"^```vector[ \t]+(?P<attrs>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
_REPEAT = re.compile(r"\b([0-9A-Fa-f]{2})\{(\d+)\}")

Fields = dict[str, Any]


@dataclass(frozen=True)
class Vector:
    doc: str
    name: str
    codec: str
    attrs: dict[str, str]
    wire: bytes
    fields: Fields

    def __str__(self) -> str:
        return f"{self.doc}:{self.name}"


def parse_hex(text: str) -> bytes:
    """Hex with whitespace, ``#`` comments and ``XX{n}`` repeats → bytes."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    compact = _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), " ".join(lines))
    return bytes.fromhex("".join(compact.split()))


def parse_attrs(text: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise AssertionError(f"vector attribute {item!r} is not key=value")
        attrs[key] = value
    return attrs


def load_vectors() -> list[Vector]:
    vectors: list[Vector] = []
    for path in sorted(PROTOCOLS.glob("*.md")):
        for match in _BLOCK.finditer(path.read_text(encoding="utf-8")):
            attrs = parse_attrs(match["attrs"])
            hex_part, sep, json_part = match["body"].partition("\n---\n")
            if not sep:
                raise AssertionError(f"{path.name}: vector {attrs.get('name')} has no '---' line before its fields")
            vectors.append(Vector(path.name, attrs.pop("name"), attrs.pop("codec"), attrs,
                                  parse_hex(hex_part), json.loads(json_part)))
    return vectors


# ---- value conversions shared by the adapters -----------------------------------------------------


def hexs(raw: bytes) -> str:
    return raw.hex().upper()


def plain(obj: Any) -> Any:
    """A codec dataclass as JSON-like data: enums by name, bytes as uppercase hex, tuples as lists."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclass_fields(obj) if f.compare}
    if isinstance(obj, bool):
        return obj
    if hasattr(obj, "name") and isinstance(obj, int):  # IntEnum
        return obj.name
    if isinstance(obj, (bytes, bytearray)):
        return hexs(bytes(obj))
    if isinstance(obj, (tuple, list)):
        return [plain(item) for item in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


# ---- R30x -----------------------------------------------------------------------------------------


def _r30x_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    codec = r30x.R30xCodec(r30x.Role(attrs["to"]))
    codec.receive_data(raw)
    event = codec.next_event()
    assert codec.next_event() is r30x.NEED_DATA and codec.buffered == 0 and codec.discarded == 0
    address = f"{event.address:08X}"  # type: ignore[union-attr]
    if isinstance(event, r30x.Command):
        return {"packet": "command", "address": address, "instruction": event.instruction.name,
                "params": hexs(event.params)}
    if isinstance(event, r30x.Ack):
        return {"packet": "ack", "address": address, "code": event.code.name, "data": hexs(event.data)}
    assert isinstance(event, r30x.DataPacket)
    return {"packet": "end_data" if event.final else "data", "address": address, "data": hexs(event.data)}


def _r30x_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    receiver = r30x.Role(attrs["to"])
    sender = r30x.R30xCodec(r30x.Role.MODULE if receiver is r30x.Role.HOST else r30x.Role.HOST)
    address = int(f["address"], 16)
    event: r30x.Event
    if f["packet"] == "command":
        event = r30x.Command(r30x.Instruction[f["instruction"]], bytes.fromhex(f["params"]), address)
    elif f["packet"] == "ack":
        event = r30x.Ack(r30x.ConfirmationCode[f["code"]], bytes.fromhex(f["data"]), address)
    else:
        event = r30x.DataPacket(bytes.fromhex(f["data"]), f["packet"] == "end_data", address)
    return sender.send(event)


def _sysparams_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    out = plain(r30x.SystemParameters.from_bytes(raw))
    out["address"] = f"{out['address']:08X}"
    return out


def _sysparams_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    return r30x.SystemParameters(**{**f, "address": int(f["address"], 16)}).to_bytes()


# ---- ASTM -------------------------------------------------------------------------------------------


def _astm_field(value: astm.Field) -> Any:
    if isinstance(value, astm.Repeats):
        return {"repeat": [_astm_field(item) for item in value.items]}
    return list(value) if isinstance(value, tuple) else value


def _astm_value(value: Any) -> astm.Field:
    if isinstance(value, dict):
        return astm.Repeats(tuple(_astm_value(item) for item in value["repeat"]))  # type: ignore[misc]
    return tuple(value) if isinstance(value, list) else value


def _record_fields(record: astm.Record) -> Fields:
    out: Fields = {"type": record.type}
    for n in range(2, len(record.fields) + 2):
        if record.get(n) != "":
            out[str(n)] = _astm_field(record.get(n))
    return out


def _record_from(f: Fields) -> astm.Record:
    return astm.Record.from_fields(f["type"], {int(k): _astm_value(v) for k, v in f.items() if k != "type"})


def _astm_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    frame = astm.decode_frame(raw)
    text = frame.text.decode("latin-1")
    out: Fields = {"fn": frame.fn, "final": frame.final, "text": text}
    if attrs.get("records") != "no":  # "no": the frame carries a piece of a record split over frames
        out["records"] = [_record_fields(r) for r in astm.decode_message(frame.text)]
    return out


def _astm_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    text = f["text"].encode("latin-1")
    if "records" in f:
        assert astm.encode_message([_record_from(r) for r in f["records"]]) == text, "records do not encode to text"
    return astm.encode_frame(f["fn"], text, f["final"])


# ---- Bulk-Only Transport and the body-camera vendor command -------------------------------------


def _cbw_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    return plain(bot.CommandBlockWrapper.from_bytes(raw))


def _cbw_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    return bot.CommandBlockWrapper(**{**f, "cb": bytes.fromhex(f["cb"])}).to_bytes()


def _csw_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    return bot.CommandStatusWrapper(f["tag"], f["residue"], bot.CswStatus[f["status"]]).to_bytes()


def _cdb_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    command = f9.parse_cdb(raw)
    known = command.function in f9.Function._value2member_map_
    return {"function": f9.Function(command.function).name if known else command.function,
            "password": command.password}


def _cdb_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    return f9.build_cdb(f9.Function[f["function"]], f["password"])


def _layout(attrs: dict[str, str]) -> f9.ZfyLayout:
    return {"zfy94": f9.ZFY_LAYOUT_94, "zfy89": f9.ZFY_LAYOUT_89}[attrs.get("layout", "zfy94")]


def _response_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    response = f9.parse_response(f9.Function[attrs["function"]], raw, _layout(attrs))
    out = {"response": type(response).__name__, **plain(response)}
    out.pop("function", None)  # FunctionRefused repeats the attribute
    return out


def _response_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    function = f9.Function[attrs["function"]]
    values = {k: v for k, v in f.items() if k != "response"}
    values["iret"] = f9.IRet[values["iret"]]
    if "info" in values:
        values["info"] = f9.ZfyInfo(**values["info"])
    if "time" in values:
        values["time"] = datetime.fromisoformat(values["time"])
    if f["response"] == "FunctionRefused":
        values["function"] = function
    return f9.encode_response(function, getattr(f9, f["response"])(**values), _layout(attrs))


def _zfy_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    return plain(f9.decode_zfy_info(raw, _layout(attrs)))


def _zfy_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    return f9.encode_zfy_info(f9.ZfyInfo(**f), _layout(attrs))


def _sync_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    when, zone = f9.decode_sync_time(raw)
    return {"time": when.isoformat(), "zone_minutes": zone}


def _sync_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    return f9.encode_sync_time(datetime.fromisoformat(f["time"]), f["zone_minutes"])


# ---- STU HID reports and ISO/IEC 19794-7 -------------------------------------------------------------


def _stu_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    decode = stu.decode_input_report if raw[:1] and raw[0] in stu.INPUT_REPORT_IDS else stu.decode_feature_report
    report = decode(raw)
    return {"report": type(report).__name__, **plain(report)}


_STU_BYTES_FIELDS = frozenset({"secure_ic_version", "data"})


def _stu_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    values = {k: bytes.fromhex(v) if k in _STU_BYTES_FIELDS else v for k, v in f.items() if k != "report"}
    return stu.encode_report(getattr(stu, f["report"])(**values))


def _iso_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    record = iso.decode_record(raw, count_bytes=int(attrs.get("count_bytes", "4")))
    channels = []
    for c in record.channels:
        described = {"name": c.name, "scaling": c.scaling, "min": c.minimum, "max": c.maximum,
                     "mean": c.mean, "std_dev": c.std_dev}
        channel = {k: v for k, v in described.items() if v is not None}
        channel.update({k: True for k in ("constant", "linear_component_removed") if getattr(c, k)})
        channels.append(channel)
    return {"decoded": {"mask": f"{record.mask:04X}", "channels": channels, "samples": plain(record.samples)}}


def _iso_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    series = iso.SignatureTimeSeries(**f["input"])
    options = {k: int(v) for k, v in attrs.items() if k in ("count_bytes", "t_units_per_second")}
    return iso.encode_record(series, **options)


def _scaling_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    assert len(raw) == 2
    return {"units": iso.decode_scaling(int.from_bytes(raw, "big"))}


def _scaling_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    return iso.encode_scaling(f["units"]).to_bytes(2, "big")


# ---- USB/IP ---------------------------------------------------------------------------------------

_MESSAGES: dict[type, str] = {
    usbip.DevlistRequest: "OP_REQ_DEVLIST", usbip.DevlistReply: "OP_REP_DEVLIST",
    usbip.ImportRequest: "OP_REQ_IMPORT", usbip.ImportReply: "OP_REP_IMPORT",
    usbip.SubmitCommand: "CMD_SUBMIT", usbip.SubmitReturn: "RET_SUBMIT",
    usbip.UnlinkCommand: "CMD_UNLINK", usbip.UnlinkReturn: "RET_UNLINK",
}
_IMPORTED = usbip.UsbIpDevice("/sys/devices/egw-usbip/1-1", "1-1", 1, 2, 3, 0x1209, 0x0001, 0x0100,
                              num_interfaces=1, interfaces=((8, 6, 0x50),))


def _device_fields(dev: usbip.UsbIpDevice | None) -> Fields | None:
    if dev is None:
        return None
    out = plain(dev)
    out["serial"] = usbip.serial_from_path(dev.path)  # our extension, read back from the path
    return out


def _device_from(f: Fields | None) -> usbip.UsbIpDevice | None:
    if f is None:
        return None
    values = {k: v for k, v in f.items() if k != "serial"}
    values["interfaces"] = tuple(tuple(i) for i in values["interfaces"])
    return usbip.UsbIpDevice(**values)


def _importing_server() -> usbip.UsbIpConnection:
    """A server that has just received OP_REQ_IMPORT and owes the reply."""
    server = usbip.UsbIpConnection(usbip.Role.SERVER)
    server.receive_data(usbip.UsbIpConnection(usbip.Role.CLIENT).send(usbip.ImportRequest("1-1")))
    assert isinstance(server.next_event(), usbip.ImportRequest)
    return server


def _imported_server() -> usbip.UsbIpConnection:
    server = _importing_server()
    server.send(usbip.ImportReply(usbip.ST_OK, _IMPORTED))
    assert server.imported
    return server


def _imported_client() -> usbip.UsbIpConnection:
    client = usbip.UsbIpConnection(usbip.Role.CLIENT)
    request = client.send(usbip.ImportRequest("1-1"))
    server = usbip.UsbIpConnection(usbip.Role.SERVER)
    server.receive_data(request)
    server.next_event()
    client.receive_data(server.send(usbip.ImportReply(usbip.ST_OK, _IMPORTED)))
    assert isinstance(client.next_event(), usbip.ImportReply) and client.imported
    return client


def _usbip_receiver(attrs: dict[str, str]) -> usbip.UsbIpConnection:
    """A connection in the state the vector's ``to``, ``phase`` and ``after`` attributes describe."""
    if attrs["to"] == "server":
        return _imported_server() if attrs.get("phase") == "urb" else usbip.UsbIpConnection(usbip.Role.SERVER)
    client = _imported_client() if attrs.get("phase") == "urb" else usbip.UsbIpConnection(usbip.Role.CLIENT)
    after = attrs.get("after", "").split(":")
    if after[0] == "OP_REQ_DEVLIST":
        client.send(usbip.DevlistRequest())
    elif after[0] == "OP_REQ_IMPORT":
        client.send(usbip.ImportRequest(after[1]))
    elif after[0] == "CMD_SUBMIT":  # CMD_SUBMIT:<seqnum>:<in|out>:<length>
        direction = usbip.DIR_IN if after[2] == "in" else usbip.DIR_OUT
        length = int(after[3])
        data = bytes(length) if direction == usbip.DIR_OUT else b""
        client.send(usbip.SubmitCommand(int(after[1]), 0, direction, 0, length, data=data))
    elif after[0] == "CMD_UNLINK":  # CMD_UNLINK:<seqnum>:<target seqnum>
        client.send(usbip.UnlinkCommand(int(after[1]), int(after[2])))
    return client


def _usbip_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    conn = _usbip_receiver(attrs)
    conn.receive_data(raw)
    event = conn.next_event()
    assert conn.next_event() is usbip.NEED_DATA, "bytes left over after one message"
    out: Fields = {"message": _MESSAGES[type(event)]}
    if isinstance(event, usbip.DevlistReply):
        out.update(status=event.status, devices=[_device_fields(d) for d in event.devices])
    elif isinstance(event, usbip.ImportReply):
        out.update(status=event.status, device=_device_fields(event.device))
    else:
        out.update(plain(event))
        if not out.get("iso_packets", True):
            del out["iso_packets"]
    return out


def _usbip_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    message = f["message"]
    values = {k: v for k, v in f.items() if k != "message"}
    for key in ("setup", "data"):
        if key in values:
            values[key] = bytes.fromhex(values[key])
    if message == "OP_REP_DEVLIST":
        return usbip.UsbIpConnection(usbip.Role.SERVER).send(
            usbip.DevlistReply(tuple(_device_from(d) for d in values["devices"]), values["status"]))  # type: ignore[misc]
    if message == "OP_REP_IMPORT":
        return _importing_server().send(usbip.ImportReply(values["status"], _device_from(values["device"])))
    if message in ("OP_REQ_DEVLIST", "OP_REQ_IMPORT"):
        client = usbip.UsbIpConnection(usbip.Role.CLIENT)
        return client.send(usbip.DevlistRequest() if message == "OP_REQ_DEVLIST" else usbip.ImportRequest(**values))
    event_type = next(t for t, name in _MESSAGES.items() if name == message)
    sender = _imported_client() if message.startswith("CMD_") else _imported_server()
    return sender.send(event_type(**values))


def _path_decode(raw: bytes, attrs: dict[str, str]) -> Fields:
    return {"serial": usbip.serial_from_path(raw.decode("utf-8"))}


def _path_encode(f: Fields, attrs: dict[str, str]) -> bytes:
    return usbip.path_with_serial(attrs["busid"], f["serial"]).encode("utf-8")


# ---- the registry -----------------------------------------------------------------------------------

Decode = Callable[[bytes, dict[str, str]], Fields]
Encode = Callable[[Fields, dict[str, str]], bytes]


def _simple(cls: Any) -> tuple[Decode, Encode]:
    """Adapters for a dataclass with from_bytes/to_bytes whose fields are all JSON-plain."""
    def decode(raw: bytes, attrs: dict[str, str]) -> Fields:
        return plain(cls.from_bytes(raw))

    def encode(f: Fields, attrs: dict[str, str]) -> bytes:
        return cls(**f).to_bytes()

    return decode, encode


CODECS: dict[str, tuple[Decode, Encode]] = {
    "r30x": (_r30x_decode, _r30x_encode),
    "r30x.sysparams": (_sysparams_decode, _sysparams_encode),
    "astm.frame": (_astm_decode, _astm_encode),
    "bot.cbw": (_cbw_decode, _cbw_encode),
    "bot.csw": (_simple(bot.CommandStatusWrapper)[0], _csw_encode),
    "bot.sense": _simple(bot.SenseData),
    "bot.inquiry": _simple(bot.InquiryData),
    "bodycam.cdb": (_cdb_decode, _cdb_encode),
    "bodycam.response": (_response_decode, _response_encode),
    "bodycam.zfy": (_zfy_decode, _zfy_encode),
    "bodycam.sync_time": (_sync_decode, _sync_encode),
    "stu.report": (_stu_decode, _stu_encode),
    "iso19794_7.record": (_iso_decode, _iso_encode),
    "iso19794_7.scaling": (_scaling_decode, _scaling_encode),
    "usbip": (_usbip_decode, _usbip_encode),
    "usbip.path": (_path_decode, _path_encode),
}
#: Documented keys that only the encoder uses (the decoder cannot recover them from the bytes).
ENCODE_ONLY: dict[str, frozenset[str]] = {"iso19794_7.record": frozenset({"input"})}

VECTORS = load_vectors()


# ---- the tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=str)
def test_decoding_the_bytes_gives_the_documented_fields(vector: Vector) -> None:
    decode, _ = CODECS[vector.codec]
    expected = {k: v for k, v in vector.fields.items() if k not in ENCODE_ONLY.get(vector.codec, frozenset())}
    assert decode(vector.wire, vector.attrs) == expected


@pytest.mark.parametrize("vector", VECTORS, ids=str)
def test_encoding_the_documented_fields_gives_the_bytes(vector: Vector) -> None:
    _, encode = CODECS[vector.codec]
    assert encode(vector.fields, vector.attrs).hex(" ") == vector.wire.hex(" ")


def test_every_protocol_document_publishes_vectors_and_every_codec_is_exercised() -> None:
    documents = {p.name for p in PROTOCOLS.glob("*.md")}
    assert documents == {v.doc for v in VECTORS}, "a protocol document without golden vectors"
    assert {v.codec for v in VECTORS} == set(CODECS), "a codec adapter no vector uses, or a vector with no codec"
    names = [v.name for v in VECTORS]
    assert len(names) == len(set(names)), "vector names must be unique"


def test_the_index_lists_every_protocol_document() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for path in PROTOCOLS.glob("*.md"):
        assert f"protocols/{path.name}" in index, f"docs/README.md does not link {path.name}"


def test_the_docs_stand_alone() -> None:
    """The published contract must not send a reader to files outside the repository."""
    for path in [DOCS / "README.md", *PROTOCOLS.glob("*.md")]:
        text = path.read_text(encoding="utf-8").lower()
        for outside in ("shared/", "planning note", "](../", "/work/"):
            assert outside not in text, f"{path.name} refers to {outside!r}"


def test_a_changed_vector_is_caught() -> None:
    """The two checks above can fail: a flipped byte breaks decoding or encoding of every vector.

    (Decoding alone may not notice: a codec rightly ignores pad bytes.)
    """
    for vector in VECTORS:
        decode, encode = CODECS[vector.codec]
        flipped = bytearray(vector.wire)
        flipped[-1] ^= 0x01
        try:
            decoded = decode(bytes(flipped), vector.attrs)
        except Exception:  # the codec rejecting the bytes is a catch too
            continue
        expected = {k: v for k, v in vector.fields.items() if k not in ENCODE_ONLY.get(vector.codec, frozenset())}
        assert decoded != expected or encode(vector.fields, vector.attrs) != bytes(flipped), (
            f"{vector}: flipping the last byte went unnoticed")


def test_hex_notation() -> None:
    assert parse_hex("EF01 # header\n 00{3} ff") == bytes.fromhex("EF01000000FF")
