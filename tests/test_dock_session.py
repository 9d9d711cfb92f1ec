"""One dock session behind ``egw dock`` and ``egw run``: Ctrl-C, adoption, unplug, re-dock, an
unreachable platform and release per receipt — with real USB/IP recorder simulators, the reference
platform over mTLS and real processes."""

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

from bench._common import write_bodycam_station_config
from tests.conftest import egw_env, run_egw, spawn_egw
from tests.test_dock import _copy_in_progress, enrolled_gateway, start_recorders, volume_files
from tests.test_station import state, wait_for
from tests.uplink_support import spawn_platform, stop_process

ENGLISH = egw_env(EGW_LANG="en")


def dock_args(data: Path, url: str, volumes: Path, *extra: str) -> list[str]:
    return ["dock", "--usbip", url, "--volumes", str(volumes / "{serial}"), "--data-dir", str(data), *extra]


def custody_events(data: Path) -> list[tuple[int, str]]:
    db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True)
    try:
        return [(seq, event) for seq, event in db.execute("SELECT seq, event FROM custody ORDER BY seq")]
    finally:
        db.close()


def mounted(volumes: Path) -> list[Path]:
    return [v for v in volumes.iterdir() if v.is_dir() and not v.name.startswith(".")]


def test_ctrl_c_reports_each_recorder_and_the_next_dock_adopts_the_mounted_volume(tmp_path):
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "3", "--fill-mb", "400")
    data = tmp_path / "gw"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    try:
        first = spawn_egw(*dock_args(data, url, volumes), env=ENGLISH)
        wait_for(lambda: _copy_in_progress(data / "blobs" / "tmp") or first.poll() is not None, 60, "a copy in progress")
        # Held still while Ctrl-C is queued: at 500 MB/s a loaded machine could otherwise let the copy
        # finish between seeing it and interrupting it (the signal is handled the moment it continues).
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the dock finished before the copy could be interrupted"
        first.send_signal(signal.SIGINT)
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=60)
        err = " ".join(err.split())  # the console wraps long lines
        assert first.returncode == 130, err
        assert "Traceback" not in err and "Interrupted." in err, err
        assert "Recorder 1000001: " in err and " recordings stored, " in err and " receipted, " in err, err
        assert " still on the recorder." in err and "It may be undocked now, but it keeps" in err, err
        assert mounted(volumes), "the recorder should still be in mass-storage mode"
        left = volume_files(volumes)

        # The recorder is still mounted (off the bus): egw dock adopts it, as egw run would.
        proc = run_egw(*dock_args(data, url, volumes, "--json"), env=ENGLISH, timeout=180)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        recorder = report["recorders"][0]
        assert report["safe"] and recorder["adopted"] and recorder["verdict"] == "safe", recorder
        assert recorder["files_stored"] == recorder["files_total"] == 4
        assert volume_files(volumes) == left  # no platform: nothing is deleted
        status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
        assert status["total"] == 4
    finally:
        stop_process(recorders)


def test_no_recorder_and_nothing_mounted_is_one_clear_line(tmp_path):
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "1")
    data = tmp_path / "gw"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    try:
        proc = run_egw(*dock_args(data, f"{url}/9-9", volumes), env=ENGLISH)  # a busid nobody exports
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert "no body-worn camera found" in lines[0] and "no recorder volume mounted" in lines[0], proc.stderr
    finally:
        stop_process(recorders)


def test_unreachable_platform_is_said_plainly_and_nothing_is_deleted(tmp_path):
    platform, address, _ = spawn_platform(tmp_path / "platform")
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "3")
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        stop_process(platform)  # enrolled, then the platform goes away
        proc = run_egw(*dock_args(data, url, volumes), env=ENGLISH, timeout=240)
        assert proc.returncode == 1, proc.stderr
        text = " ".join(proc.stderr.split())
        assert "copies stored and queued; the recorder keeps its files" in text, proc.stderr
        assert "certificate" not in text and "re-enrol" not in text, proc.stderr
        assert len(volume_files(volumes)) == 3
        status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
        assert status["counts"].get("queued") == 3
        assert "released-from-device" not in {event for _, event in custody_events(data)}
    finally:
        stop_process(recorders)
        stop_process(platform)


def test_each_recording_is_released_as_its_receipt_commits(tmp_path):
    """Small recordings go by the express slot while the large one is still uploading (bandwidth
    capped): each small one is deleted from the recorder before the last receipt arrives."""
    platform, address, _ = spawn_platform(tmp_path / "platform")
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "3", "--fill-mb", "40")
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        env = egw_env(EGW_LANG="en", EGW_UPLOAD_CONCURRENCY="1", EGW_UPLOAD_BANDWIDTH="8MB")
        proc = run_egw(*dock_args(data, url, volumes, "--json"), env=env, timeout=240)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["safe"] and report["recorders"][0]["files_released"] == 4
        events = custody_events(data)
        released = [seq for seq, event in events if event == "released-from-device"]
        receipted = [seq for seq, event in events if event == "receipted"]
        assert len(released) == len(receipted) == 4
        assert released[0] < receipted[-1], "the first release waited for the last receipt"
        assert all(any(r < s for r in receipted) for s in released)  # never before a receipt
        assert volume_files(volumes) == []
    finally:
        stop_process(recorders)
        stop_process(platform)


def test_unplug_then_redock_through_the_station_keeps_one_card_and_honest_bytes(tmp_path):
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "3", "--fill-mb", "300")
    data = tmp_path / "gw"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    config = write_bodycam_station_config(tmp_path / "gateway.toml", data, url, volumes)
    gateway = spawn_egw("run", "-c", str(config), env=ENGLISH)
    try:
        screen = json.loads(gateway.stdout.readline())["screen"]
        cams = lambda: [d for d in state(screen)["devices"] if d["kind"] == "bodycam"]  # noqa: E731
        samples: list[tuple[int, int]] = []

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _copy_in_progress(data / "blobs" / "tmp"):
            time.sleep(0.002)
        # Watched from the start and frozen mid-copy until the recorder has really gone: on a quiet machine
        # the three 300 MB copies take under a second, less than waiting for the card and then polling the
        # screen took (the test failed every time when run alone).
        os.kill(gateway.pid, signal.SIGSTOP)
        try:
            recorders.stdin.write("unplug 1-1\n")
            recorders.stdin.flush()
            gone = time.monotonic() + 30
            while time.monotonic() < gone and mounted(volumes):
                time.sleep(0.01)
        finally:
            os.kill(gateway.pid, signal.SIGCONT)
        card = wait_for(lambda: next((c for c in cams() if c["state"] in ("error", "undocked")), None), 60,
                        "the card to say the recorder was unplugged")
        assert "changed" not in card["detail"] and not card["safe_to_undock"], card
        assert card["files_ingested"] < card["files_total"], f"the unplug came after the copies: nothing tested {card}"
        recorders.stdin.write("replug 1-1\n")
        recorders.stdin.flush()

        def settled():
            cards = cams()
            samples.extend((c["bytes_ingested"], c["bytes_total"]) for c in cards)
            return cards if cards and cards[0]["state"] == "safe" else None

        cards = wait_for(settled, 120, "the re-docked recorder to be safe")
        assert [c["device_id"] for c in cams()] == ["bodycam-1000001"], cams()  # one card across unplug and re-dock
        assert cards[0]["files_ingested"] == cards[0]["files_total"] == 4
        assert all(done <= total for done, total in samples if total), [s for s in samples if s[0] > s[1]]
        log = gateway.stderr
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=15) == 0
        text = log.read()
        assert "recorder 1000001 docked" in text and "recorder 1000001: safe" in text, text[-3000:]
        status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
        assert status["total"] == 4  # each recording once, although the first copy was cut
    finally:
        stop_process(gateway)
        stop_process(recorders)


def test_the_officer_reads_the_verdict_in_chinese_by_default():
    import io

    from rich.console import Console

    from gateway.commands.dock import _table
    from gateway.i18n import use_language

    row = {"device_path": "DCIM/a.avi", "evidence_id": "0193a5b2-7c1d-7000-8000-000000000001", "size": 1,
           "state": "queued", "released": False, "safe": False, "problems": [], "error": None}
    summary = {"serial": "1000001", "officer_name": "张三", "officer_no": "100001", "clock_offset_s": 0.0,
               "recordings": [row], "hostile_entries": [], "hostile_total": 0, "zfy_lossy_fields": [], "attention": [],
               "verdict": "waiting-for-receipts",
               "todo": "The platform is unreachable: copies stored and queued; the recorder keeps its files."}
    out = io.StringIO()
    with use_language("zh_CN"):
        _table(Console(file=out, width=200), [summary], [], "", safe=False)
    text = out.getvalue()
    assert "不可拔出：请查看上方标为“否”的行" in text and "录像" in text and "时钟偏差" in text, text
    assert "证据编号" in text and "0193a5b2-7c1d-7000-8000-000000000001" in text, text  # which item each row became
