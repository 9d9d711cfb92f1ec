"""The committed generated code must be exactly what the .proto sources produce."""

import shutil
import subprocess
import sys
from pathlib import Path

from scripts.gen_protos import generate
from tests.conftest import REPO

PROTO_DIR = REPO / "protos" / "egw" / "v1"


def test_generated_code_matches_sources(tmp_path: Path):
    generated = {p.name: p for p in generate(tmp_path)}
    committed = sorted(p.name for p in PROTO_DIR.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")))
    assert sorted(generated) == committed, "generated file set differs: run scripts/gen-protos"
    stale = [name for name, path in generated.items() if path.read_bytes() != (PROTO_DIR / name).read_bytes()]
    assert not stale, f"generated code is stale for {stale}: run scripts/gen-protos and commit"


def test_protoc_with_protos_as_include_root(tmp_path: Path):
    """What an integrator runs (docs/grpc.md): ``protoc -I protos``, no knowledge of our Python layout."""
    sources = sorted(str(p.relative_to(REPO / "protos")) for p in PROTO_DIR.glob("*.proto"))
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "protos"), f"--python_out={tmp_path}",
         f"--descriptor_set_out={tmp_path / 'set.pb'}", "--include_imports", *sources],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "set.pb").read_bytes()).file
    ours = {f.name: f for f in files if f.package == "egw.v1"}
    assert sorted(ours) == ["egw/v1/events.proto", "egw/v1/evidence.proto", "egw/v1/ingest.proto"]
    for f in ours.values():
        assert f.options.go_package and f.options.java_package and f.options.csharp_namespace, f.name
    assert (tmp_path / "egw" / "v1" / "ingest_pb2.py").exists()


def test_messages_import_and_round_trip_as_json():
    from google.protobuf import json_format

    from protos.egw.v1 import events_pb2, ingest_pb2_grpc

    reply = events_pb2.CommandReply(name="ping", nonce="n1", ok=True, result={"pong": "1"})
    text = json_format.MessageToJson(reply)
    assert '"nonce": "n1"' in text
    assert json_format.Parse(text, events_pb2.CommandReply()) == reply
    assert hasattr(ingest_pb2_grpc, "EvidenceIngestStub")


RELEASED = REPO / "protos" / "released" / "egw-v1.binpb"


def _buf() -> str:
    """buf from the npm registry, installed by scripts/test into .tools/ (or on PATH)."""
    local = REPO / ".tools" / "node_modules" / ".bin" / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    assert found, "buf is not installed: run ./scripts/test (it installs @bufbuild/buf into .tools/)"
    return found


def _breaking(module_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_buf(), "breaking", "--against", str(RELEASED)], cwd=module_root,
                          capture_output=True, text=True, timeout=120)


def test_no_breaking_change_against_the_released_contract():
    """Integrators generated stubs from the released protos: nothing may be renamed, renumbered or removed."""
    result = _breaking(REPO)
    assert result.returncode == 0, f"breaking change against {RELEASED.name}:\n{result.stdout}{result.stderr}"


def test_the_breaking_check_catches_a_removed_field(tmp_path: Path):
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "protos" / "egw", tmp_path / "protos" / "egw", ignore=shutil.ignore_patterns("*.py*", "__pycache__"))
    proto = tmp_path / "protos" / "egw" / "v1" / "ingest.proto"
    text = proto.read_text()
    assert "  uint64 start_offset = 4;" in text
    proto.write_text(text.replace("  uint64 start_offset = 4;", "  uint64 start_offset = 5;"))
    result = _breaking(tmp_path)
    assert result.returncode != 0
    assert "start_offset" in result.stdout + result.stderr
