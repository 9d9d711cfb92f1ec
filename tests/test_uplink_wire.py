"""The hand-written chunk encoding must be protobuf's, byte for byte, and decode like protobuf."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protos.egw.v1 import evidence_pb2, ingest_pb2
from protos.upload_wire import ChunkView, decode_upload_request, encode_chunk_request

offsets = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))


@given(offset=offsets, data=st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_encoder_matches_protobuf_and_decoder_round_trips(offset: int, data: bytes) -> None:
    reference = ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=offset, data=data)).SerializeToString()
    wire = encode_chunk_request(offset, data)
    assert wire == reference
    decoded = decode_upload_request(wire)
    assert isinstance(decoded, ChunkView) and decoded.offset == offset and bytes(decoded.data) == data


def test_large_chunk_is_a_zero_copy_view() -> None:
    data = bytes(range(256)) * 4096
    wire = encode_chunk_request(123_456_789, data)
    decoded = decode_upload_request(wire)
    assert isinstance(decoded, ChunkView) and decoded.data.obj is wire and decoded.data == data


def test_headers_and_other_shapes_use_the_generated_parser() -> None:
    header = ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(
        manifest=evidence_pb2.Envelope(payload_type="t", payload=b"{}"), sha256="ab" * 32, size=5)).SerializeToString()
    parsed = decode_upload_request(header)
    assert isinstance(parsed, ingest_pb2.UploadRequest) and parsed.header.size == 5
    # data before offset (valid protobuf, not our canonical order): still understood, via protobuf
    odd = b"\x12" + bytes([2 + 3 + 2]) + b"\x12\x03abc" + b"\x08\x07"
    parsed = decode_upload_request(odd)
    assert isinstance(parsed, ingest_pb2.UploadRequest) and parsed.chunk.offset == 7 and parsed.chunk.data == b"abc"


@given(raw=st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_any_bytes_decode_like_protobuf_or_raise_its_error(raw: bytes) -> None:
    try:
        reference = ingest_pb2.UploadRequest.FromString(raw)
    except Exception as exc:  # protobuf's DecodeError
        reference_error: Exception | None = exc
    else:
        reference_error = None
    try:
        got = decode_upload_request(raw)
    except Exception as exc:
        assert reference_error is not None and type(exc) is type(reference_error)
        return
    if isinstance(got, ChunkView):
        assert reference_error is None and reference.WhichOneof("part") == "chunk"
        assert reference.chunk.offset == got.offset and reference.chunk.data == bytes(got.data)
    else:
        assert got == reference
