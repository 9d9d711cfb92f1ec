"""The dock workflow end to end: simulated recorders over USB/IP, the reference platform over mTLS."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import run_egw, spawn_egw
from tests.uplink_support import spawn_platform, stop_process


def start_recorders(tmp_path: Path, *extra: str):
    volumes = tmp_path / "volumes"
    proc = spawn_egw("simulate", "bodycam", "--listen", "127.0.0.1:0", "--volumes", str(volumes), "--small",
                     "--minutes", "0.05", *extra, stdin=__import__("subprocess").PIPE)
    url = proc.stdout.readline().strip()
    assert url.startswith("usbip://"), proc.stderr.read()
    return proc, url, volumes


def enrolled_gateway(tmp_path: Path, platform_data: Path, address: str) -> Path:
    data = tmp_path / "gw"
    run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-dock", check=True)
    token = json.loads(run_egw("platform", "token", "--data", str(platform_data), "--gateway-id", "gw-dock", "--json", check=True).stdout)["token"]
    run_egw("enroll", "--platform", address, "--token", token, "--data-dir", str(data), check=True)
    return data


def volume_files(volumes: Path) -> list[Path]:
    return sorted(p for p in volumes.rglob("*") if p.is_file())


def dock(data: Path, url: str, volumes: Path, *extra: str):
    proc = run_egw("dock", "--usbip", url, "--volumes", str(volumes / "{serial}"), "--data-dir", str(data), "--json", *extra,
                   timeout=180)
    return proc, json.loads(proc.stdout) if proc.stdout.strip() else None


def test_dock_ingests_uploads_and_releases_only_after_receipts(tmp_path):
    platform, address, _ = spawn_platform(tmp_path / "platform")
    recorders, url, volumes = start_recorders(tmp_path, "--count", "2", "--recordings", "4", "--drift", "47")
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        proc, report = dock(data, url, volumes)
        assert proc.returncode == 0, proc.stderr
        assert report["safe"] and len(report["recorders"]) == 2
        offsets = sorted(r["clock_offset_s"] for r in report["recorders"])
        assert abs(offsets[0] - 47) <= 2 and abs(offsets[1] - 94) <= 2  # measured before the sync
        rows = [row for r in report["recorders"] for row in r["recordings"]]
        assert len(rows) == 8 and all(r["state"] == "released" and r["released"] for r in rows)
        assert volume_files(volumes) == []  # deleted from the recorders, each after its receipt
        arrived = json.loads(run_egw("platform", "ls", "--data", str(tmp_path / "platform"), "--json", check=True).stdout)
        assert {a["sha256"] for a in arrived} >= {r["sha256"] for r in rows}

        # The manifest carries both clocks and the corrected capture time; the bundle verifies with its receipt.
        first = next(r for r in rows if r["device_path"].endswith(".avi"))
        bundle = tmp_path / "bundle"
        run_egw("export", first["evidence_id"], str(bundle), "--data-dir", str(data), check=True)
        verified = run_egw("verify", str(bundle), "--data-dir", str(data))  # the CA pinned at enrolment
        assert verified.returncode == 0 and "ok   receipt" in verified.stdout, verified.stdout
        manifest = json.loads(__import__("base64").b64decode(json.loads((bundle / "manifest.dsse.json").read_text())["payload"]))
        assert manifest["capture"]["clock_offset_s"] is not None and manifest["capture"]["corrected"]
        assert manifest["extra"]["media"]["frame_count"] > 0 and manifest["derived"][0]["kind"] == "thumbnail"
        custody = json.loads(run_egw("custody", "verify", "--data-dir", str(data), "--json", check=True).stdout)
        assert custody["ok"]
    finally:
        stop_process(recorders)
        stop_process(platform)


def test_platform_refusing_receipts_keeps_everything_on_the_recorder(tmp_path):
    platform, address, _ = spawn_platform(tmp_path / "platform", "--receipt-fault", "wrong-key")
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "3")
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        before = volume_files(volumes)
        proc, report = dock(data, url, volumes)
        assert proc.returncode == 1 and not report["safe"]
        assert all(not row["released"] and row["state"] == "queued" for row in report["recorders"][0]["recordings"])
        after = volume_files(volumes)
        assert len(after) == 3 and (not before or after == before)
    finally:
        stop_process(recorders)
        stop_process(platform)


def _copy_in_progress(partial: Path) -> bool:
    """A copy into the store has passed 8 MiB (a .part file may vanish between listing and stat)."""
    for part in partial.glob("*.part"):
        try:
            if part.stat().st_size > (8 << 20):
                return True
        except FileNotFoundError:
            continue
    return False


def test_unplug_mid_copy_then_redock_ingests_each_recording_once(tmp_path):
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "3", "--fill-mb", "800")
    data = tmp_path / "gw"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    try:
        first = spawn_egw("dock", "--usbip", url, "--volumes", str(volumes / "{serial}"), "--data-dir", str(data),
                          "--json", "--release", "ingest")
        deadline = time.monotonic() + 60
        partial = data / "blobs" / "tmp"
        while time.monotonic() < deadline and not _copy_in_progress(partial):
            time.sleep(0.002)
        # Freeze the dock mid-copy until the recorder has really gone: on a loaded machine the rest of the
        # 800 MB copy could otherwise finish between seeing the partial file and the simulator's unplug.
        os.kill(first.pid, signal.SIGSTOP)
        try:
            recorders.stdin.write("unplug 1-1\n")  # while the 800 MB file is being copied
            recorders.stdin.flush()
            gone = time.monotonic() + 30
            while time.monotonic() < gone and [v for v in volumes.iterdir() if not v.name.startswith(".")]:
                time.sleep(0.01)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, _ = first.communicate(timeout=120)
        assert first.returncode == 1, "the unplug came after the copy finished: the test did not test anything"
        unplugged = json.loads(out)
        assert unplugged["safe"] is False
        recorder = unplugged["recorders"][0]
        assert recorder["verdict"] == "unplugged", recorder  # said as such, never as a device copy that "changed"
        assert not any(row["changed_on_device"] or "changed" in (row["error"] or "") for row in recorder["recordings"])
        recorders.stdin.write("replug 1-1\n")
        recorders.stdin.flush()
        time.sleep(0.5)
        proc, report = dock(data, url, volumes, "--release", "ingest")
        assert proc.returncode == 0, proc.stderr
        status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
        assert status["total"] == 4  # 3 recordings + the bulk file, each once
    finally:
        stop_process(recorders)
