"""``egw conformance platform``: our reference platform passes every rule; one that skips a check fails, named.

The kit plays two throw-away gateways against a real platform on loopback (mutual TLS); the
broken platform is the same server with its manifest schema check switched off, as a vendor's
platform that forgot it would be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import simulators.platform.server as platform_server_module
from gateway.conformance.platform_kit import check_platform
from simulators.platform.cli import issue_token
from tests.conftest import run_egw
from tests.uplink_support import platform_server


def _rows(report) -> dict[str, tuple[str, str]]:
    return {row.rule: (row.outcome.value, row.detail) for row in report.rows}


def test_the_reference_platform_conforms(tmp_path: Path):
    with platform_server(tmp_path / "platform") as server:
        first = issue_token(tmp_path / "platform", gateway_id="kit-a")["token"]
        second = issue_token(tmp_path / "platform", gateway_id="kit-b")["token"]
        report = check_platform(server.address, first, "kit-a", second=(second, "kit-b"), workdir=tmp_path)
    rows = _rows(report)
    assert report.passed, "\n".join(report.lines())
    assert len([r for r in rows.values() if r[0] == "pass"]) >= 20
    assert not [rule for rule, (outcome, _) in rows.items() if outcome != "pass"]


def test_a_platform_that_skips_the_schema_check_fails_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(platform_server_module, "check_manifest", lambda body: body)  # the vendor forgot it
    with platform_server(tmp_path / "platform") as server:
        token = issue_token(tmp_path / "platform", gateway_id="kit-c")["token"]
        report = check_platform(server.address, token, "kit-c", workdir=tmp_path)
    rows = _rows(report)
    assert not report.passed
    failed = {rule for rule, (outcome, _) in rows.items() if outcome == "FAIL"}
    assert failed == {"an unknown manifest schema version is refused", "an evidence id that is not a UUIDv7 is refused",
                      "digests.sha256 contradicting sha256 is refused"}, "\n".join(report.lines())
    assert rows["an unknown manifest schema version is refused"][1].startswith("got OK")


def test_the_command_reads_tokens_from_files_and_prints_the_table(tmp_path: Path):
    with platform_server(tmp_path / "platform") as server:
        (tmp_path / "t").write_text(issue_token(tmp_path / "platform", gateway_id="kit-d")["token"] + "\n")
        proc = run_egw("conformance", "platform", server.address, "--token-file", str(tmp_path / "t"), "--gateway-id", "kit-d")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("CONFORMS")
    assert "not checked" in proc.stdout  # no second token: the possession rules say why they were skipped
    missing = run_egw("conformance", "platform", "127.0.0.1:1", "--token-file", str(tmp_path / "nope"), "--gateway-id", "x")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and "token file" in missing.stderr
