"""A real ``egw run`` serving mobile terminals on loopback, for the terminal tests."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulators.terminal.client import TerminalClient, parse_offer
from tests.conftest import run_egw, spawn_egw


def write_config(tmp_path: Path, data: Path, *, api_port: int = 0, pairing_port: int = 0, announce: bool = False) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n[screen]\nlisten = "127.0.0.1:0"\n[metrics]\nlisten = ""\n'
                      f'[terminal]\nlisten = "127.0.0.1:{api_port}"\npairing_listen = "127.0.0.1:{pairing_port}"\n'
                      f'announce = {"true" if announce else "false"}\n')
    return config


@contextmanager
def station(config: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    proc = spawn_egw("run", "-c", str(config))
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, proc.stderr.read() if proc.stderr else "egw run printed nothing"
        yield proc, json.loads(line)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate()


def init_data(tmp_path: Path, gateway_id: str = "gw-term") -> Path:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", gateway_id, check=True)
    return data


def offer_code(data: Path, pairing_url: str, officer: str | None = None) -> str:
    """A pairing offer URI from `egw terminal pair` (run inside the service, which holds the data directory)."""
    args = ["terminal", "pair", "--data-dir", str(data), "--url", pairing_url, "--json"]
    if officer:
        args += ["--officer", officer]
    return str(json.loads(run_egw(*args, check=True).stdout)["uri"])


def paired_terminal(tmp_path: Path, data: Path, ready: dict[str, Any], officer: str = "100001", name: str = "t1") -> TerminalClient:
    client = TerminalClient(tmp_path / name)
    client.pair(parse_offer(offer_code(data, ready["terminal_pairing"])), officer_id=officer)
    return client


def custody_entries(data: Path) -> list[dict[str, Any]]:
    """Every custody entry, read beside the running service (read-only handle)."""
    from gateway.evidence.evidence_service import EvidenceService

    from protos.schemas import schema_errors

    with EvidenceService(data, read_only=True) as service:
        entries = [json.loads(service.custody.entry(seq)) for seq in range(service.custody.size)]
    for entry in entries:  # every entry a terminal caused is one the published schema accepts
        assert not schema_errors("custody-entry", entry), (entry, schema_errors("custody-entry", entry))
    return entries
