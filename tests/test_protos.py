"""The committed generated code must be exactly what the .proto sources produce."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PROTO_DIR = REPO / "protos" / "egw" / "v1"


def test_generated_code_matches_sources(tmp_path: Path):
    target = tmp_path / "protos" / "egw" / "v1"
    target.mkdir(parents=True)
    for proto in PROTO_DIR.glob("*.proto"):
        shutil.copy(proto, target / proto.name)
    protos = sorted(str(p.relative_to(tmp_path)) for p in target.glob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.", "--grpc_python_out=.", "--pyi_out=.", *protos],
        cwd=tmp_path, check=True,
    )
    generated = sorted(p.name for p in target.iterdir() if p.suffix in {".py", ".pyi"})
    committed = sorted(p.name for p in PROTO_DIR.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")))
    assert generated == committed, "generated file set differs: run scripts/gen-protos"
    stale = [name for name in generated if (target / name).read_bytes() != (PROTO_DIR / name).read_bytes()]
    assert not stale, f"generated code is stale for {stale}: run scripts/gen-protos and commit"


def test_messages_import_and_round_trip_as_json():
    from google.protobuf import json_format

    from protos.egw.v1 import events_pb2, ingest_pb2_grpc

    reply = events_pb2.CommandReply(name="ping", nonce="n1", ok=True, result={"pong": "1"})
    text = json_format.MessageToJson(reply)
    assert '"nonce": "n1"' in text
    assert json_format.Parse(text, events_pb2.CommandReply()) == reply
    assert hasattr(ingest_pb2_grpc, "EvidenceIngestStub")
