"""Issue 15, at rest and at the edges: each test is an attack that worked before its fix.

- a stolen ``gateway.key`` was cheap to brute-force (PBKDF2 at 2,048 iterations);
- another local user could read ``state.db``, the blobs and an exported bundle (0644 under umask 022);
- a web page could read the station screen and ``/metrics`` through DNS rebinding (any ``Host:``);
- ``mqtt://user:pass@remote`` sent the broker password in clear, silently;
- ``egw enroll --token T`` left the token in ``ps`` and the shell history.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from asn1crypto import keys, pem
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.errors import ConfigError
from gateway.evidence import identity
from gateway.uplink.mqtt_config import parse_broker_url
from tests.conftest import REPO, egw_env, run_egw

PASSPHRASE = "correct horse battery staple"


def _kdf(key_pem: bytes) -> tuple[str, str, int, str]:
    """(scheme, KDF, iterations, PRF) read straight from the ASN.1, not through the code under test."""
    label, _, der = pem.unarmor(key_pem)
    assert label == "ENCRYPTED PRIVATE KEY", label
    algorithm = keys.EncryptedPrivateKeyInfo.load(der)["encryption_algorithm"]
    kdf = algorithm["parameters"]["key_derivation_func"]
    params = kdf["parameters"]
    return (algorithm["algorithm"].native, kdf["algorithm"].native, params["iteration_count"].native,
            params["prf"]["algorithm"].native)


# ---- 1. the gateway key at rest ---------------------------------------------------------------------

def test_gateway_key_is_wrapped_with_a_costly_kdf_that_openssl_reads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), env=egw_env(EGW_KEY_PASSPHRASE=PASSPHRASE), check=True)
    key_file = data / "identity" / "gateway.key"
    scheme, kdf, iterations, prf = _kdf(key_file.read_bytes())
    assert (scheme, kdf, prf) == ("pbes2", "pbkdf2", "sha256")
    assert iterations >= 600_000, f"PBKDF2 at {iterations} iterations is cheap to brute-force"
    if shutil.which("openssl"):
        proc = subprocess.run(["openssl", "pkey", "-in", str(key_file), "-passin", f"pass:{PASSPHRASE}", "-noout"],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        wrong = subprocess.run(["openssl", "pkey", "-in", str(key_file), "-passin", "pass:wrong", "-noout"],
                               capture_output=True, text=True, check=False)
        assert wrong.returncode != 0


def test_key_written_the_old_way_still_loads_and_is_rewrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), env=egw_env(EGW_KEY_PASSPHRASE=PASSPHRASE), check=True)
    key_file = data / "identity" / "gateway.key"
    old_key = ec.generate_private_key(ec.SECP256R1())
    # What every release before this one wrote: cryptography's BestAvailableEncryption (PBKDF2, 2,048 rounds).
    key_file.write_bytes(old_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.BestAvailableEncryption(PASSPHRASE.encode())))
    os.chmod(key_file, 0o600)
    assert _kdf(key_file.read_bytes())[2] < 600_000
    monkeypatch.setenv(identity.PASSPHRASE_ENV, PASSPHRASE)
    loaded = identity.load_identity(data)
    assert loaded.private_key.private_numbers() == old_key.private_numbers()
    assert _kdf(key_file.read_bytes())[2] >= 600_000
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = serialization.load_pem_private_key(key_file.read_bytes(), PASSPHRASE.encode())
    assert isinstance(again, ec.EllipticCurvePrivateKey) and again.private_numbers() == old_key.private_numbers()


# ---- 2. owner-only data at rest ---------------------------------------------------------------------

def _run_with_umask_022(*args: str) -> subprocess.CompletedProcess[str]:
    """``egw ARGS`` as a shell with the common umask 022 would start it."""
    code = "import os, sys, runpy; os.umask(0o022); sys.argv = ['egw', *sys.argv[1:]]; runpy.run_module('gateway', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=egw_env(), capture_output=True,
                          text=True, timeout=120, check=False)


PUBLIC = {"gateway.crt", "ca.pem", "platform.pem", "gateway.json", "crl.pem"}  # certificates: public by nature


def _loose(root: Path) -> list[str]:
    """Everything under ``root`` that group or others may use (the identity's public files aside: they sit in
    the 0700 identity directory, and anyone may have a certificate)."""
    found = []
    for path in [root, *root.rglob("*")]:
        if path.parent.name == "identity" and path.name in PUBLIC:
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077 and not path.is_symlink():
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


def test_data_directory_database_blobs_and_bundle_are_owner_only_under_umask_022(tmp_path: Path) -> None:
    data, sources, bundle = tmp_path / "data", tmp_path / "sources", tmp_path / "bundle"
    sources.mkdir()
    (sources / "a.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(2000))
    (sources / "b.wav").write_bytes(b"RIFF" + os.urandom(3000))
    for step in (("keys", "init", "--data-dir", str(data)),
                 ("ingest", str(sources / "a.jpg"), "--data-dir", str(data))):
        proc = _run_with_umask_022(*step)
        assert proc.returncode == 0, proc.stderr
    # new files later, by a second process: a second blob, and the WAL again
    proc = _run_with_umask_022("ingest", str(sources / "b.wav"), "--data-dir", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    evidence_id = json.loads(proc.stdout)["items"][0]["evidence_id"]
    proc = _run_with_umask_022("export", evidence_id, str(bundle), "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert (data / "state.db").is_file() and any((data / "blobs").rglob("*"))
    assert _loose(data) == []
    assert _loose(bundle) == []


def test_sqlite_wal_and_shm_are_created_owner_only(tmp_path: Path) -> None:
    """SQLite creates -wal and -shm later, with the database file's mode: they must never be 0644."""
    from gateway.evidence.state import State

    old = os.umask(0o022)
    try:
        state = State(tmp_path / "d")
        state.db.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        state.db.execute("INSERT INTO probe VALUES (1)")
        wal = [p for p in (tmp_path / "d").iterdir() if p.name.endswith(("-wal", "-shm"))]
        assert wal, "WAL mode should have created its files"
        assert _loose(tmp_path / "d") == []
        state.close()
    finally:
        os.umask(old)


def test_a_data_directory_left_loose_by_an_older_release_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    src = tmp_path / "x.jpg"
    src.write_bytes(b"\xff\xd8\xff" + os.urandom(500))
    run_egw("ingest", str(src), "--data-dir", str(data), check=True)
    os.chmod(data, 0o755)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        if (data / name).exists():
            os.chmod(data / name, 0o644)
    run_egw("ingest", str(src), "--data-dir", str(data), check=True)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "state.db").stat().st_mode) == 0o600
