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


# ---- 3. DNS rebinding and the content security policy -------------------------------------------------

def _get(url: str, path: str, host: str) -> tuple[int, dict[str, str], str]:
    """GET with an explicit Host header (what a rebinding page's browser sends)."""
    parts = url.split("//", 1)[1].split("/", 1)[0]
    address, port = parts.rsplit(":", 1)
    connection = http.client.HTTPConnection(address, int(port), timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read(65536).decode("utf-8", "replace") if path != "/events" else ""
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def _start_station(tmp: Path, top_level: str = ""):
    """``egw run`` with its screen and metrics on free loopback ports; yields (screen URL, metrics URL)."""
    data = tmp / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    config = tmp / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n{top_level}[screen]\nlisten = "127.0.0.1:0"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)], cwd=REPO, env=egw_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"egw run did not start: {proc.stderr.read()}"  # type: ignore[union-attr]
        ready = json.loads(line)
        yield ready["screen"], ready["metrics"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory):
    yield from _start_station(tmp_path_factory.mktemp("station"))


SCREEN_PATHS = ("/", "/screen", "/station.js", "/station.css", "/api/state", "/healthz", "/events", "/no-such-page")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example",
                                  "10.9.8.7", ""])
def test_screen_and_metrics_refuse_a_host_that_is_not_this_station(station: tuple[str, str], host: str) -> None:
    screen, metrics = station
    for path in SCREEN_PATHS:
        status, _, body = _get(screen, path, host)
        assert status == 421, f"{path} answered {status} to Host {host!r}"
        assert "egw_" not in body and "gateway_id" not in body
    status, _, body = _get(metrics, "/metrics", host)
    assert status == 421 and "egw_" not in body, f"/metrics answered {status} to Host {host!r}"
    assert "hostnames" in body  # the 421 says how to reach the station properly


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST.", "127.0.0.2", "[::1]"])
def test_screen_and_metrics_answer_the_names_of_this_station(station: tuple[str, str], host: str) -> None:
    screen, metrics = station
    port = screen.rstrip("/").rsplit(":", 1)[1]
    status, _, body = _get(screen, "/healthz", f"{host}:{port}")
    assert status == 200 and "gateway_id" in body
    status, _, body = _get(metrics, "/metrics", host)
    assert status == 200 and "egw_ingested_items" in body


def test_names_configured_in_hostnames_are_answered_and_no_others(tmp_path: Path) -> None:
    for screen, metrics in _start_station(tmp_path, 'hostnames = ["station7.local"]\n'):
        for url, path in ((screen, "/healthz"), (metrics, "/metrics")):
            assert _get(url, path, "station7.local")[0] == 200
            assert _get(url, path, "Station7.Local:80")[0] == 200
            assert _get(url, path, "station8.local")[0] == 421


def test_every_screen_response_carries_the_strict_csp_and_html_has_no_inline_code(station: tuple[str, str]) -> None:
    screen, _ = station
    for path in SCREEN_PATHS:
        status, headers, body = _get(screen, path, "127.0.0.1")
        csp = headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "default-src 'none'" in csp, f"{path} ({status}) has CSP {csp!r}"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers.get("x-content-type-options") == "nosniff", path
        if headers.get("content-type", "").startswith("text/html"):
            import re

            assert not re.search(r"<script(?![^>]*\bsrc=)", body), f"inline script in {path}"
            assert not re.search(r"\son[a-z]+=", body) and " style=" not in body, f"inline handler or style in {path}"


# ---- 4. MQTT passwords in clear -----------------------------------------------------------------------

@pytest.mark.parametrize("url", ["mqtt://user:s3cret@broker.example:1883", "mqtt://user:s3cret@10.0.0.5",
                                 "tcp://user:s3cret@[2001:db8::1]:1883"])
def test_a_password_over_plain_mqtt_to_another_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_broker_url(url)
    assert "s3cret" not in str(refused.value) and "mqtts://" in refused.value.hint
    assert "allow_plaintext_password" in refused.value.hint and "--allow-plaintext-password" in refused.value.hint
    assert parse_broker_url(url, allow_plaintext_password=True).password == "s3cret"


@pytest.mark.parametrize("url", ["mqtt://user:s3cret@127.0.0.1:1883", "mqtt://user:s3cret@localhost", "mqtt://u:p@[::1]:1883",
                                 "mqtts://user:s3cret@broker.example:8883", "mqtt://broker.example:1883"])
def test_loopback_tls_or_no_password_is_accepted(url: str) -> None:
    parse_broker_url(url)


def test_egw_run_and_sync_refuse_a_plaintext_password_unless_allowed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n[screen]\nlisten = ""\n[metrics]\nlisten = ""\n'
                      '[mqtt]\nurl = "mqtt://egw:s3cret@192.0.2.10:1883"\n')
    refused = run_egw("run", "-c", str(config), timeout=60)
    assert refused.returncode == 2 and "in clear" in refused.stderr and "s3cret" not in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    drained = run_egw("sync", "--once", "--no-upload", "--mqtt", "mqtt://egw:s3cret@192.0.2.10", "--data-dir", str(data))
    assert drained.returncode == 2 and "in clear" in drained.stderr and "Traceback" not in drained.stderr, drained.stderr
    for args in (("drain",), ("publish-test",)):
        proc = run_egw("mqtt", *args, "--mqtt", "mqtt://egw:s3cret@192.0.2.10", "--data-dir", str(data))
        assert proc.returncode == 2 and "in clear" in proc.stderr, proc.stderr


# ---- 5. the enrolment token stays off the command line ---------------------------------------------------

def _enrol_args(data: Path) -> list[str]:
    # Port 9 on loopback: nothing listens, so enrolment fails after the token was read; what matters is
    # which token reached the enrolment (the error quotes no token) and what was said about it.
    return ["enroll", "--platform", "127.0.0.1:9", "--data-dir", str(data)]


def test_enrol_token_from_file_stdin_or_environment_without_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    token_file = tmp_path / "token"
    token_file.write_text("egw1.not-a-real-token\n")
    for extra, env, stdin in ((["--token-file", str(token_file)], egw_env(), None),
                              (["--token", "-"], egw_env(), b"egw1.not-a-real-token\n"),
                              ([], egw_env(EGW_ENROLL_TOKEN="egw1.not-a-real-token"), None)):
        proc = run_egw(*_enrol_args(data), *extra, env=env, input=stdin, timeout=60)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "usage:" not in proc.stderr, (extra, proc.stderr)  # the way of passing it was accepted
        assert "no enrolment token" not in proc.stderr and "visible to other users" not in proc.stderr, (extra, proc.stderr)


def test_enrol_token_on_the_command_line_warns_and_none_at_all_is_a_usage_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    warned = run_egw(*_enrol_args(data), "--token", "egw1.not-a-real-token", timeout=60)
    assert "visible to other users" in warned.stderr and "--token-file" in warned.stderr, warned.stderr
    missing = run_egw(*_enrol_args(data), timeout=60)
    assert missing.returncode == 2 and "no enrolment token" in missing.stderr and "EGW_ENROLL_TOKEN" in missing.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    blank = run_egw(*_enrol_args(data), "--token-file", str(empty), timeout=60)
    assert blank.returncode == 2 and "is empty" in blank.stderr, blank.stderr
    absent = run_egw(*_enrol_args(data), "--token-file", str(tmp_path / "nope"), timeout=60)
    assert absent.returncode == 2 and "cannot read" in absent.stderr and "Traceback" not in absent.stderr
