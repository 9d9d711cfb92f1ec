"""The reference programs in docs/reference/, run as an integrator would: stubs from ``protoc -I protos``,
nothing of ours imported, against our real platform and real ``egw export`` bundles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.platform.cli import issue_token
from tests.conftest import REPO, run_egw
from tests.uplink_support import platform_server

REFERENCE = REPO / "docs" / "reference"
OURS = re.compile(r"^\s*(from|import)\s+(gateway|protos|simulators|drivers|firmware_bridge|tests)\b", re.MULTILINE)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What docs/grpc.md tells an integrator to run."""
    gen = tmp_path_factory.mktemp("gen")
    sources = sorted(str(p.relative_to(REPO / "protos")) for p in (REPO / "protos" / "egw" / "v1").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "protos"), f"--python_out={gen}",
                    f"--grpc_python_out={gen}", *sources], check=True)
    return gen


def _run(script: str, *args: str, stubs: Path | None = None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if stubs is not None:
        env["PYTHONPATH"] = str(stubs)
    return subprocess.run([sys.executable, str(REFERENCE / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", ["gateway_client.py", "verify_bundle.py"])
def test_the_reference_programs_import_nothing_of_ours(script: str):
    assert not OURS.findall((REFERENCE / script).read_text())


def test_a_third_party_gateway_enrols_uploads_resumes_and_checks_its_receipt(tmp_path: Path, stubs: Path):
    data = (tmp_path / "clip.bin")
    data.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    with platform_server(tmp_path / "platform") as server:
        token = issue_token(tmp_path / "platform", gateway_id="third-party-1")["token"]
        result = _run("gateway_client.py", server.address, token, "third-party-1", str(data), stubs=stubs, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["resumed_from"] > 0  # the first session's bytes were kept
    assert out["receipt"]["gatewayId"] == "third-party-1" and int(out["receipt"]["size"]) == data.stat().st_size


def test_the_reference_verifier_agrees_with_egw_verify(tmp_path: Path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(5000))
    data = tmp_path / "gw"
    with platform_server(tmp_path / "platform") as server:
        run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-ref", check=True)
        token = issue_token(tmp_path / "platform", gateway_id="gw-ref")["token"]
        run_egw("enroll", "--platform", server.address, "--token", token, "--data-dir", str(data), check=True)
        ingested = json.loads(run_egw("ingest", str(photo), "--data-dir", str(data), "--json", check=True).stdout)
        run_egw("sync", "--once", "--data-dir", str(data), check=True)
    evidence_id = ingested["items"][0]["evidence_id"]
    run_egw("export", evidence_id, str(tmp_path / "bundle"), "--data-dir", str(data), check=True)
    ca = tmp_path / "platform" / "pki" / "ca.pem"
    trusted = _run("verify_bundle.py", str(tmp_path / "bundle"), "--trust", str(ca), cwd=tmp_path)
    assert trusted.returncode == 0 and trusted.stdout.rstrip().endswith("VERIFIED"), trusted.stdout + trusted.stderr
    assert "receipted by platform" in trusted.stdout and "signed by gateway gw-ref" in trusted.stdout
    ours = run_egw("verify", str(tmp_path / "bundle"), "--trust", str(ca))
    assert ours.returncode == 0, ours.stdout
    untrusted = _run("verify_bundle.py", str(tmp_path / "bundle"), cwd=tmp_path)
    assert untrusted.returncode == 3 and "CONSISTENT, UNTRUSTED" in untrusted.stdout
    content = next((tmp_path / "bundle" / "content").iterdir())
    content.write_bytes(content.read_bytes()[:-1] + b"\x00")
    tampered = _run("verify_bundle.py", str(tmp_path / "bundle"), "--trust", str(ca), cwd=tmp_path)
    assert tampered.returncode == 1 and "content digest" in tampered.stdout
