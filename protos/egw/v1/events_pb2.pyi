import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.egw.v1 import evidence_pb2 as _evidence_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GatewayState(_message.Message):
    __slots__ = ("gateway_id", "state", "at", "version")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    state: str
    at: _timestamp_pb2.Timestamp
    version: str
    def __init__(self, gateway_id: _Optional[str] = ..., state: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[str] = ...) -> None: ...

class DeviceState(_message.Message):
    __slots__ = ("device_id", "kind", "state", "battery_percent", "storage_total_bytes", "storage_free_bytes", "files_total", "files_done", "bytes_total", "bytes_done", "officer_id", "detail", "at", "safe_to_undock")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BATTERY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STORAGE_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    OFFICER_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    SAFE_TO_UNDOCK_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    kind: str
    state: str
    battery_percent: int
    storage_total_bytes: int
    storage_free_bytes: int
    files_total: int
    files_done: int
    bytes_total: int
    bytes_done: int
    officer_id: str
    detail: str
    at: _timestamp_pb2.Timestamp
    safe_to_undock: bool
    def __init__(self, device_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., battery_percent: _Optional[int] = ..., storage_total_bytes: _Optional[int] = ..., storage_free_bytes: _Optional[int] = ..., files_total: _Optional[int] = ..., files_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_done: _Optional[int] = ..., officer_id: _Optional[str] = ..., detail: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., safe_to_undock: _Optional[bool] = ...) -> None: ...

class EvidenceState(_message.Message):
    __slots__ = ("message_id", "evidence_id", "state", "summary", "receipt_id", "at")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    evidence_id: str
    state: str
    summary: _evidence_pb2.ManifestSummary
    receipt_id: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., evidence_id: _Optional[str] = ..., state: _Optional[str] = ..., summary: _Optional[_Union[_evidence_pb2.ManifestSummary, _Mapping]] = ..., receipt_id: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RapidTestResult(_message.Message):
    __slots__ = ("message_id", "evidence_id", "signed_result", "instrument_id", "sample_id", "item_code", "item_name", "value", "unit", "cutoff", "judgement", "tested_at")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNED_RESULT_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_CODE_FIELD_NUMBER: _ClassVar[int]
    ITEM_NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CUTOFF_FIELD_NUMBER: _ClassVar[int]
    JUDGEMENT_FIELD_NUMBER: _ClassVar[int]
    TESTED_AT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    evidence_id: str
    signed_result: _evidence_pb2.Envelope
    instrument_id: str
    sample_id: str
    item_code: str
    item_name: str
    value: str
    unit: str
    cutoff: str
    judgement: str
    tested_at: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., evidence_id: _Optional[str] = ..., signed_result: _Optional[_Union[_evidence_pb2.Envelope, _Mapping]] = ..., instrument_id: _Optional[str] = ..., sample_id: _Optional[str] = ..., item_code: _Optional[str] = ..., item_name: _Optional[str] = ..., value: _Optional[str] = ..., unit: _Optional[str] = ..., cutoff: _Optional[str] = ..., judgement: _Optional[str] = ..., tested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SignedTreeHead(_message.Message):
    __slots__ = ("tree_size", "root_hash", "envelope")
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    tree_size: int
    root_hash: str
    envelope: _evidence_pb2.Envelope
    def __init__(self, tree_size: _Optional[int] = ..., root_hash: _Optional[str] = ..., envelope: _Optional[_Union[_evidence_pb2.Envelope, _Mapping]] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("name", "args", "nonce", "issued_at", "expires_at", "gateway_id")
    class ArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    args: _containers.ScalarMap[str, str]
    nonce: str
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    gateway_id: str
    def __init__(self, name: _Optional[str] = ..., args: _Optional[_Mapping[str, str]] = ..., nonce: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gateway_id: _Optional[str] = ...) -> None: ...

class SignedCommand(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: _evidence_pb2.Envelope
    def __init__(self, envelope: _Optional[_Union[_evidence_pb2.Envelope, _Mapping]] = ...) -> None: ...

class CommandReply(_message.Message):
    __slots__ = ("name", "nonce", "ok", "error", "result", "at")
    class ResultEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    nonce: str
    ok: bool
    error: str
    result: _containers.ScalarMap[str, str]
    at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., nonce: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., result: _Optional[_Mapping[str, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DocumentDelivery(_message.Message):
    __slots__ = ("message_id", "delivery_id", "delivery_evidence_id", "document_evidence_id", "document_sha256", "party", "methods", "outcome", "receipt_evidence_id", "witness", "officer_id", "at")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_EVIDENCE_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_EVIDENCE_ID_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_EVIDENCE_ID_FIELD_NUMBER: _ClassVar[int]
    WITNESS_FIELD_NUMBER: _ClassVar[int]
    OFFICER_ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    delivery_id: str
    delivery_evidence_id: str
    document_evidence_id: str
    document_sha256: str
    party: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    outcome: str
    receipt_evidence_id: str
    witness: str
    officer_id: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., delivery_id: _Optional[str] = ..., delivery_evidence_id: _Optional[str] = ..., document_evidence_id: _Optional[str] = ..., document_sha256: _Optional[str] = ..., party: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ..., outcome: _Optional[str] = ..., receipt_evidence_id: _Optional[str] = ..., witness: _Optional[str] = ..., officer_id: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
