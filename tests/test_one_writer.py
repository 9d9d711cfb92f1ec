"""One writer per data directory: readers beside a writer, delegation to ``egw run``, waiting, the lock.

Real processes throughout. A "slow ingest" is a real ``egw ingest`` of a large file frozen with
SIGSTOP as soon as its temporary copy exists: the copy is then in progress for as long as the test
needs, without timing assumptions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import REPO, egw_env, run_egw

BIG = 192 * 1024 * 1024


def egw_in(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env or egw_env(), capture_output=True,
                          text=True, timeout=timeout)


def spawn_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=cwd, env=env or egw_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(d), "--gateway-id", "gw-one", check=True)
    return d


def big_file(path: Path, size: int = BIG) -> Path:
    """Random head (so it is not a duplicate of anything), sparse body: cheap to create."""
    with open(path, "wb") as fh:
        fh.write(os.urandom(1 << 20))
        fh.truncate(size)
    return path


def parts(data: Path) -> list[Path]:
    tmp = data / "blobs" / "tmp"
    return sorted(tmp.glob("*.part")) if tmp.is_dir() else []


def wait_for(condition, what: str, limit_s: float = 60.0):  # noqa: ANN001 - a small polling helper
    """Poll until ``condition()`` is truthy; ``limit_s`` only bounds a hang (not a timed assertion)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.002)
    raise AssertionError(f"never happened: {what}")


def frozen_ingest(data: Path, source: Path) -> subprocess.Popen[str]:
    """An ``egw ingest`` stopped (SIGSTOP) in the middle of copying ``source``."""
    proc = spawn_in(source.parent, "ingest", "--data-dir", str(data), "--json", str(source))
    wait_for(lambda: parts(data) or proc.poll() is not None, "the ingest's temporary copy")
    os.kill(proc.pid, signal.SIGSTOP)
    assert proc.poll() is None and parts(data), "the copy finished before it could be frozen; use a bigger file"
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def evidence_rows(data: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(f"{(data / 'state.db').as_uri()}?mode=ro", uri=True) as db:
        return db.execute("SELECT id, source_path, sha256 FROM evidence ORDER BY rowid").fetchall()


def test_readers_work_during_a_slow_ingest_and_the_ingest_survives(tmp_path: Path, data: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("first item\n")
    first = json.loads(run_egw("ingest", "--data-dir", str(data), "--json", str(small), check=True).stdout)["items"][0]
    bundle = tmp_path / "bundle"
    run_egw("export", first["evidence_id"], str(bundle), "--data-dir", str(data), check=True)

    ingest = frozen_ingest(data, big_file(tmp_path / "big.mp4"))
    copying = parts(data)
    try:
        status = run_egw("status", "--data-dir", str(data), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["total"] == 1
        custody = run_egw("custody", "verify", "--data-dir", str(data), "--json")
        assert custody.returncode == 0 and json.loads(custody.stdout)["ok"], custody.stderr
        verified = run_egw("verify", str(bundle), "--trust", str(data / "identity" / "gateway.crt"))  # not enrolled
        assert verified.returncode == 0 and "VERIFIED" in verified.stdout, verified.stdout + verified.stderr
        # export records a custody event, so it is a writer: with --no-wait it says who writes, in one line
        busy = run_egw("--no-wait", "export", first["evidence_id"], str(tmp_path / "b2"), "--data-dir", str(data))
        assert busy.returncode == 75
        assert busy.stderr.splitlines()[0] == f"error: egw ingest (pid {ingest.pid}) is writing to {data}; not waiting (--no-wait)"
        assert "Traceback" not in status.stderr + custody.stderr + verified.stderr + busy.stderr
        assert parts(data) == copying  # nobody touched the copy in progress
    finally:
        os.kill(ingest.pid, signal.SIGCONT)
    done = finish(ingest)
    assert done.returncode == 0, done.stderr
    (item,) = json.loads(done.stdout)["items"]
    assert item["size"] == BIG and not item["duplicate"]
    blob = data / "blobs" / "sha256" / item["sha256"][:2] / item["sha256"][2:]
    assert blob.stat().st_size == BIG and not parts(data)
    # ... and export, now that the writer is gone, goes through
    assert run_egw("export", item["evidence_id"], str(tmp_path / "b3"), "--data-dir", str(data)).returncode == 0


def test_two_ingests_at_once_the_second_waits_and_both_succeed(tmp_path: Path, data: Path) -> None:
    first = frozen_ingest(data, big_file(tmp_path / "big.mp4"))
    small = tmp_path / "note.txt"
    small.write_text("second\n")
    second = spawn_in(tmp_path, "ingest", "--data-dir", str(data), "--json", "./note.txt")
    try:
        waiting = second.stderr.readline()  # blocks until the second says whom it waits for
        assert waiting == f"waiting for egw ingest (pid {first.pid}) to finish with {data}…\n"
        assert second.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)
    a, b = finish(first), finish(second)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert "Traceback" not in a.stderr + b.stderr
    assert [r[1] for r in evidence_rows(data)] == [str(tmp_path / "big.mp4"), str(tmp_path / "note.txt")]


def test_ctrl_c_while_waiting_for_the_writer_ends_cleanly(tmp_path: Path, data: Path) -> None:
    first = frozen_ingest(data, big_file(tmp_path / "big.mp4"))
    (tmp_path / "n.txt").write_text("n")
    second = spawn_in(tmp_path, "ingest", "--data-dir", str(data), "n.txt")
    try:
        assert second.stderr.readline().startswith(f"waiting for egw ingest (pid {first.pid})")
        second.send_signal(signal.SIGINT)
        done = finish(second)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert done.returncode == 130 and done.stderr == "interrupted\n"
    assert finish(first).returncode == 0 and len(evidence_rows(data)) == 1


def test_wait_timeout_ends_in_one_clear_line(tmp_path: Path, data: Path) -> None:
    first = frozen_ingest(data, big_file(tmp_path / "big.mp4"))
    (tmp_path / "n.txt").write_text("n")
    try:
        late = run_egw("--wait-timeout", "0.5", "ingest", "--data-dir", str(data), str(tmp_path / "n.txt"))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert late.returncode == 75
    lines = late.stderr.splitlines()
    assert lines[0] == f"waiting for egw ingest (pid {first.pid}) to finish with {data}…"
    assert lines[1] == f"error: egw ingest (pid {first.pid}) is writing to {data}; gave up after 0.5 s"
    assert finish(first).returncode == 0


def test_the_lock_names_its_holder_and_kill_9_frees_it(tmp_path: Path, data: Path) -> None:
    holder = frozen_ingest(data, big_file(tmp_path / "big.mp4"))
    info = json.loads((data / "writer.lock").read_text())
    assert info["pid"] == holder.pid and info["command"] == "egw ingest" and info["service"] is False
    assert "ingest" in info["argv"] and info["started_at"] <= time.time()
    left_behind = parts(data)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # The file still names the dead holder; it is only a name tag, the kernel dropped the lock itself.
    assert json.loads((data / "writer.lock").read_text())["pid"] == holder.pid
    assert parts(data) == left_behind  # a reader does not clean up (it could be someone's copy)
    assert run_egw("status", "--data-dir", str(data)).returncode == 0 and parts(data) == left_behind
    (tmp_path / "next.txt").write_text("next")
    after = run_egw("--no-wait", "ingest", "--data-dir", str(data), str(tmp_path / "next.txt"))
    assert after.returncode == 0 and after.stderr == "", after.stderr  # no waiting: the lock was free
    assert parts(data) == []  # the next writer removed the dead one's half copy, once, at start
    assert (data / "writer.lock").read_text() == ""  # released: names nobody


def test_a_stale_lock_file_does_not_block(tmp_path: Path, data: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (data / "writer.lock").write_text(json.dumps({"pid": dead.pid, "command": "egw dock", "started_at": 1.0,
                                                   "service": True, "argv": ["egw", "dock"]}))
    (tmp_path / "x.txt").write_text("x")
    proc = run_egw("--no-wait", "ingest", "--data-dir", str(data), str(tmp_path / "x.txt"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.fixture
def service(tmp_path: Path, data: Path):
    with serve(tmp_path, data) as proc:
        yield proc


@contextmanager
def serve(tmp_path: Path, data: Path, more: str = "") -> Iterator[subprocess.Popen[str]]:
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n[screen]\nlisten = ""\n[metrics]\nlisten = ""\n{more}')  # no fixed ports
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)], cwd=REPO, env=egw_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    assert json.loads(line)["event"] == "ready"
    try:
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.communicate()


def test_ingest_while_egw_run_runs_is_delegated_with_a_relative_path(tmp_path: Path, data: Path, service) -> None:
    info = json.loads((data / "writer.lock").read_text())
    assert info["pid"] == service.pid and info["service"] is True and info["command"] == "egw run"
    work = tmp_path / "work"
    work.mkdir()
    (work / "clip.mp4").write_bytes(os.urandom(200_000))

    proc = egw_in(work, "ingest", "--data-dir", str(data), "--json", "./clip.mp4")
    assert proc.returncode == 0, proc.stderr
    (item,) = json.loads(proc.stdout)["items"]
    assert item["path"] == str(work / "clip.mp4") and not item["duplicate"] and item["state"] == "queued"
    again = egw_in(work, "ingest", "--data-dir", str(data), "./clip.mp4")
    assert again.returncode == 0 and again.stdout == item["evidence_id"] + "\n"  # plain output, as if local
    assert evidence_rows(data) == [(item["evidence_id"], str(work / "clip.mp4"), item["sha256"])]  # stored once

    exported = egw_in(work, "export", item["evidence_id"], "./bundle", "--data-dir", str(data))  # a writer too
    assert exported.returncode == 0 and exported.stdout == f"exported {item['evidence_id']} to {work / 'bundle'}\n"
    verified = egw_in(work, "verify", "./bundle", "--trust", str(data / "identity" / "gateway.crt"))  # not enrolled
    assert verified.returncode == 0 and "VERIFIED" in verified.stdout

    # errors: the same lines and exit code as a local run, never a traceback
    missing = egw_in(work, "ingest", "--data-dir", str(data), "./missing.mp4")
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"error: {work / 'missing.mp4'}: cannot read {work / 'missing.mp4'}")
    bad = egw_in(work, "ingest", "--data-dir", str(data), "--kind", "nonsense", "./clip.mp4")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr  # parsed and refused locally
    unenrolled = egw_in(work, "sync", "--once", "--data-dir", str(data))
    assert unenrolled.returncode != 0 and unenrolled.stderr.startswith("error: ")
    assert "Traceback" not in missing.stderr + bad.stderr + unenrolled.stderr + proc.stderr + again.stderr
    assert service.poll() is None
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=20) == 0
    log = service.stderr.read()
    assert log.count("running egw ingest for a client") == 3 and "running egw sync for a client" in log
    assert "running egw export for a client" in log and "Traceback" not in log
    assert not (data / "control.sock").exists() and (data / "writer.lock").read_text() == ""


def test_ctrl_c_on_a_delegated_ingest_cancels_it_in_the_service(tmp_path: Path, data: Path, service) -> None:
    big = big_file(tmp_path / "big.mp4")
    client = spawn_in(tmp_path, "ingest", "--data-dir", str(data), "./big.mp4")
    wait_for(lambda: parts(data) or client.poll() is not None, "the service's temporary copy")
    os.kill(service.pid, signal.SIGSTOP)  # hold the copy where it is while the client is interrupted
    try:
        assert client.poll() is None and parts(data)
        client.send_signal(signal.SIGINT)
        assert client.stderr.readline() == "interrupted: asking egw run to stop the command…\n"
    finally:
        os.kill(service.pid, signal.SIGCONT)
    done = finish(client)
    assert done.returncode == 130
    assert "error: cancelled: the client went away (Ctrl-C)" in done.stderr and "Traceback" not in done.stderr
    wait_for(lambda: not parts(data), "the cancelled copy's temporary file to go")
    assert evidence_rows(data) == [] and big.exists()
    assert service.poll() is None  # the service carries on
    (tmp_path / "after.txt").write_text("after")
    assert egw_in(tmp_path, "ingest", "--data-dir", str(data), "after.txt").returncode == 0


def test_control_socket_is_owner_only_and_refuses_another_uid(tmp_path: Path, data: Path, service) -> None:
    sock_path = data / "control.sock"
    assert stat.S_ISSOCK(sock_path.stat().st_mode) and stat.S_IMODE(sock_path.stat().st_mode) == 0o600
    nobody = 65534
    # Connecting needs write permission on the socket: as it is, another user cannot even connect.
    client = ("import socket,sys\n"
              "s=socket.socket(socket.AF_UNIX)\n"
              "try:\n s.connect('control.sock')\n"
              "except PermissionError:\n print('EACCES'); sys.exit(0)\n"
              "s.sendall(b'{\"argv\": [\"ingest\", \"/etc/hostname\"], \"cwd\": \"/\", \"env\": {}}\\n')\n"
              "print(s.makefile().read())\n")
    as_nobody = dict(cwd=data, user=nobody, group=nobody, capture_output=True, text=True, timeout=60, env={})
    denied = subprocess.run(["/usr/bin/python3", "-c", client], **as_nobody)
    assert denied.stdout.strip() == "EACCES", denied.stderr
    # Even if the socket's and the data directory's modes were widened by mistake (the data directory is
    # 0700 since issue 15), SO_PEERCRED refuses the other uid.
    os.chmod(data, 0o755)
    os.chmod(sock_path, 0o666)
    refused = subprocess.run(["/usr/bin/python3", "-c", client], **as_nobody)
    frames = [json.loads(line) for line in refused.stdout.splitlines() if line.strip()]
    assert frames[-1] == {"exit": 77} and "refused" in frames[0]["err"], refused.stdout + refused.stderr
    assert evidence_rows(data) == []
    # ... and the owner is served
    os.chmod(sock_path, 0o600)
    with socket.socket(socket.AF_UNIX) as own:
        own.connect(str(sock_path))
        own.sendall(json.dumps({"argv": ["ingest", "--data-dir", str(data), "/etc/hostname"], "cwd": "/", "env": {}}).encode() + b"\n")
        frames = [json.loads(line) for line in own.makefile().read().splitlines()]
    assert frames[-1] == {"exit": 0} and len(evidence_rows(data)) == 1


def test_delegation_works_however_deep_the_data_directory_is(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4) / "data"  # control.sock past 107 bytes
    assert len(str(deep / "control.sock")) > 107
    run_egw("keys", "init", "--data-dir", str(deep), check=True)
    (tmp_path / "n.txt").write_text("n")
    with serve(tmp_path, deep) as proc:
        done = egw_in(tmp_path, "ingest", "--data-dir", str(deep), "n.txt")
        assert done.returncode == 0 and len(evidence_rows(deep)) == 1, done.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "running egw ingest for a client" in proc.stderr.read()


def test_second_egw_run_on_the_same_data_directory_is_refused_in_one_line(tmp_path: Path, data: Path, service) -> None:
    config = tmp_path / "gateway.toml"
    second = run_egw("run", "-c", str(config), timeout=60)
    assert second.returncode == 1
    assert second.stderr.splitlines()[0] == f"error: egw run (pid {service.pid}) already serves {data}"
    assert "Traceback" not in second.stderr and service.poll() is None


def test_sync_once_inside_egw_run_follows_the_services_own_uploader(tmp_path: Path) -> None:
    from tests.test_dock import enrolled_gateway
    from tests.uplink_support import spawn_platform, stop_process

    platform, address, _ = spawn_platform(tmp_path / "platform")
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        (tmp_path / "a.mp4").write_bytes(os.urandom(10 << 20))  # above 8 MiB: not express, so the cap applies
        (tmp_path / "b.mp4").write_bytes(os.urandom(1000))
        # 2 MB/s: the upload takes about 5 s, so the sync below finds it still under way
        with serve(tmp_path, data, '[platform]\nbandwidth_bytes_per_s = 2000000\n') as proc:
            ingested = egw_in(tmp_path, "ingest", "--data-dir", str(data), "a.mp4", "b.mp4")
            assert ingested.returncode == 0, ingested.stderr
            synced = egw_in(tmp_path, "sync", "--once", "--data-dir", str(data), "--json")
            assert synced.returncode == 0, synced.stderr
            report = json.loads(synced.stdout)
            assert report["undelivered"] == [] and report["outcomes"], report
            assert {o["status"] for o in report["outcomes"]} == {"receipted"}
            with sqlite3.connect(f"{(data / 'state.db').as_uri()}?mode=ro", uri=True) as db:
                assert db.execute("SELECT state FROM evidence").fetchall() == [("receipted",), ("receipted",)]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            assert "running egw sync for a client" in proc.stderr.read()
    finally:
        stop_process(platform)


def _exchange(path: Path, raw: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(raw)
        return [json.loads(line) for line in sock.makefile().read().splitlines()]


def test_the_service_refuses_malformed_or_reading_requests_and_carries_on(data: Path, service) -> None:
    sock_path = data / "control.sock"
    for raw in (b"not json\n", b'{"argv": "ingest"}\n', b"[1, 2]\n", b'{"argv": ["status"]}\n',
                b'{"argv": ["ingest", "--kind", "nonsense", "x"]}\n'):
        frames = _exchange(sock_path, raw)
        assert frames[-1] == {"exit": 2} and frames[0]["err"].startswith("error: the service could not take this command"), raw
    assert service.poll() is None
    frames = _exchange(sock_path, json.dumps({"argv": ["ingest", "/etc/hostname"], "cwd": "/", "env": {}}).encode() + b"\n")
    assert frames[-1] == {"exit": 0} and len(evidence_rows(data)) == 1


@given(st.lists(st.one_of(st.text(max_size=40), st.none()), max_size=30))
def test_output_reaches_the_client_whole_and_line_by_line(pieces: list[str | None]) -> None:
    """Whatever a command writes (None here: a flush), the client gets exactly that text, and no frame
    holds back a complete line."""
    from gateway.station.control import _Connection, _FrameStream

    here, there = socket.socketpair()
    with here, there:
        stream = _FrameStream(_Connection(here), "out")
        for piece in pieces:
            if piece is None:
                stream.flush()
            else:
                stream.write(piece)
        stream.flush()
        here.shutdown(socket.SHUT_WR)
        frames = [json.loads(line) for line in there.makefile("rb").read().split(b"\n") if line]
    assert "".join(f["out"] for f in frames) == "".join(p for p in pieces if p is not None)
    assert all("\n" not in f["out"][:-1] for f in frames)
