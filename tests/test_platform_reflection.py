"""Server reflection v1 and v1alpha on the platform, as a stock client asks for them (buf curl from npm)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.test_protos import _buf
from tests.uplink_support import platform_server


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
def test_reflection_lists_every_method_under_both_protocol_versions(tmp_path: Path, protocol: str):
    with platform_server(tmp_path / "platform") as server:
        port = server.enroll_address.rsplit(":", 1)[1]
        result = subprocess.run([_buf(), "curl", "--protocol", "grpc", "--list-methods", "--reflect-protocol", protocol,
                                 "--cacert", str(tmp_path / "platform" / "pki" / "ca.pem"), f"https://127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    methods = set(result.stdout.split())
    assert {"egw.v1.EvidenceIngest/Enroll", "egw.v1.EvidenceIngest/Upload", "egw.v1.EvidenceIngest/QueryUpload",
            "egw.v1.EvidenceIngest/GetRevocationList", "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"} <= methods
