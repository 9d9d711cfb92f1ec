from protos.egw.v1 import evidence_pb2 as _evidence_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryUploadRequest(_message.Message):
    __slots__ = ("sha256", "evidence_id")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_ID_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    evidence_id: str
    def __init__(self, sha256: _Optional[str] = ..., evidence_id: _Optional[str] = ...) -> None: ...

class QueryUploadResponse(_message.Message):
    __slots__ = ("committed_offset", "complete", "receipt")
    COMMITTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    committed_offset: int
    complete: bool
    receipt: _evidence_pb2.Envelope
    def __init__(self, committed_offset: _Optional[int] = ..., complete: _Optional[bool] = ..., receipt: _Optional[_Union[_evidence_pb2.Envelope, _Mapping]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("manifest", "sha256", "size", "start_offset")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    manifest: _evidence_pb2.Envelope
    sha256: str
    size: int
    start_offset: int
    def __init__(self, manifest: _Optional[_Union[_evidence_pb2.Envelope, _Mapping]] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., start_offset: _Optional[int] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: UploadChunk
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[UploadChunk, _Mapping]] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("committed_offset", "receipt")
    COMMITTED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    committed_offset: int
    receipt: _evidence_pb2.Envelope
    def __init__(self, committed_offset: _Optional[int] = ..., receipt: _Optional[_Union[_evidence_pb2.Envelope, _Mapping]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("csr_pem", "token", "gateway_id")
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    token: str
    gateway_id: str
    def __init__(self, csr_pem: _Optional[bytes] = ..., token: _Optional[str] = ..., gateway_id: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_chain_pem", "platform_id", "platform_certificate_pem")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_chain_pem: bytes
    platform_id: str
    platform_certificate_pem: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_chain_pem: _Optional[bytes] = ..., platform_id: _Optional[str] = ..., platform_certificate_pem: _Optional[bytes] = ...) -> None: ...

class RevocationListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RevocationList(_message.Message):
    __slots__ = ("crl_pem", "crl_number")
    CRL_PEM_FIELD_NUMBER: _ClassVar[int]
    CRL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    crl_pem: bytes
    crl_number: int
    def __init__(self, crl_pem: _Optional[bytes] = ..., crl_number: _Optional[int] = ...) -> None: ...
