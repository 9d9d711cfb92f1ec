import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("payload_type", "payload", "signatures")
    PAYLOAD_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    payload_type: str
    payload: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[Signature]
    def __init__(self, payload_type: _Optional[str] = ..., payload: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[Signature, _Mapping]]] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("keyid", "sig")
    KEYID_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    keyid: str
    sig: bytes
    def __init__(self, keyid: _Optional[str] = ..., sig: _Optional[bytes] = ...) -> None: ...

class ManifestSummary(_message.Message):
    __slots__ = ("evidence_id", "sha256", "sm3", "size", "media_type", "kind", "device_id", "officer_id", "gateway_id", "captured_at", "ingested_at", "important")
    EVIDENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SM3_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFICER_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    IMPORTANT_FIELD_NUMBER: _ClassVar[int]
    evidence_id: str
    sha256: str
    sm3: str
    size: int
    media_type: str
    kind: str
    device_id: str
    officer_id: str
    gateway_id: str
    captured_at: _timestamp_pb2.Timestamp
    ingested_at: _timestamp_pb2.Timestamp
    important: bool
    def __init__(self, evidence_id: _Optional[str] = ..., sha256: _Optional[str] = ..., sm3: _Optional[str] = ..., size: _Optional[int] = ..., media_type: _Optional[str] = ..., kind: _Optional[str] = ..., device_id: _Optional[str] = ..., officer_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., important: _Optional[bool] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("receipt_id", "evidence_id", "sha256", "size", "received_at", "platform_id", "gateway_id")
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    receipt_id: str
    evidence_id: str
    sha256: str
    size: int
    received_at: _timestamp_pb2.Timestamp
    platform_id: str
    gateway_id: str
    def __init__(self, receipt_id: _Optional[str] = ..., evidence_id: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., platform_id: _Optional[str] = ..., gateway_id: _Optional[str] = ...) -> None: ...
