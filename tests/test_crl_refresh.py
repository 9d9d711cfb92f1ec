"""A station that runs for months keeps a fresh revocation list: `egw run` fetches the platform's CRL by itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509

from gateway.evidence.identity import init_identity
from gateway.uplink.enroll import enroll
from simulators.platform.cli import issue_token
from tests.conftest import run_egw
from tests.test_one_writer import serve
from tests.uplink_support import platform_server


def _revoked_serials(crl_path: Path) -> set[int]:
    return {entry.serial_number for entry in x509.load_pem_x509_crl(crl_path.read_bytes())}


def test_egw_run_fetches_a_revocation_made_after_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGW_CRL_REFRESH_S", "0.5")
    with platform_server(tmp_path / "platform") as server:
        station, other = tmp_path / "station", tmp_path / "other"
        for data_dir, gateway_id in ((station, "gw-station"), (other, "gw-lost")):
            init_identity(data_dir, gateway_id)
            enroll(data_dir, server.address, issue_token(tmp_path / "platform", gateway_id=gateway_id)["token"])
        lost_serial = x509.load_pem_x509_certificate((other / "identity" / "gateway.crt").read_bytes()).serial_number
        assert lost_serial not in _revoked_serials(station / "identity" / "crl.pem")  # fetched at enrolment
        with serve(tmp_path, station):
            run_egw("platform", "revoke", "gw-lost", "--data", str(tmp_path / "platform"), check=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and lost_serial not in _revoked_serials(station / "identity" / "crl.pem"):
                time.sleep(0.3)
        assert lost_serial in _revoked_serials(station / "identity" / "crl.pem"), "egw run never fetched the new CRL"
