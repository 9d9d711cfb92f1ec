"""A hostile body-worn camera through the real dock path (issue 9, "Hostile devices and peers").

Every test docks a recorder served by ``egw simulate bodycam`` over USB/IP with ``egw dock`` or
``egw run`` against the reference platform, then checks what the evidence rule demands: the
officer is told clearly what is wrong and what to do; the recorder's normal recordings are
ingested, receipted and only then released; nothing that was not receipted is deleted from the
recorder; nothing outside the recorder's volume is read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import stat
from pathlib import Path

import pytest

from bench._common import write_bodycam_station_config
from simulators.bodycam.device import INVALID_GBK_UNIT_NAME, INVALID_GBK_USER_NAME
from simulators.bodycam.volume import FLOOD_DIR
from tests.conftest import run_egw, run_egw_peak_rss, spawn_egw
from tests.test_dock import dock, enrolled_gateway, start_recorders, volume_files
from tests.test_station import state, wait_for
from tests.uplink_support import spawn_platform, stop_process

RSS_LIMIT = 250 << 20  # what a dock may use, whatever the recorder holds (bench/dock.py LIMIT_RSS_MB)


def custody(data: Path) -> list[dict]:
    db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True)
    try:
        return [json.loads(bytes(raw)) for (raw,) in db.execute("SELECT entry FROM custody ORDER BY seq")]
    finally:
        db.close()


def released_only_after_receipt(events: list[dict]) -> int:
    """How many recordings were released from a recorder; fails if any was released before its receipt."""
    receipted: set[str] = set()
    released = 0
    for event in events:
        if event["event"] == "receipted":
            receipted.add(event["evidence_id"])
        elif event["event"] == "released-from-device":
            assert event["evidence_id"] in receipted, f"{event['evidence_id']} was released before its receipt"
            released += 1
    return released


def stored_digests(data: Path) -> set[str]:
    """SHA-256 of every blob in the gateway's store (blobs/sha256/ab/cdef…)."""
    root = data / "blobs" / "sha256"
    return {d.name + f.name for d in root.iterdir() if d.is_dir() for f in d.iterdir()}


def platform_digests(platform_data: Path) -> set[str]:
    listed = json.loads(run_egw("platform", "ls", "--data", str(platform_data), "--json", check=True).stdout)
    return {item["sha256"] for item in listed}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def words(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.mark.slow
def test_a_thousand_files_interrupted_and_redocked_are_each_ingested_once(tmp_path):
    """bench/dock_files.py at 1 000 tiny recordings (+2 real ones): ``egw run`` shows progress on the card
    and is SIGKILLed a third of the way; after a re-plug ``egw dock`` copies only what was not evidence yet,
    delivers every file, releases each after its receipt, in bounded memory. The bench reports 10 000."""
    from bench.dock_files import run

    outcome = run(tmp_path / "files", 1000, log=print)
    print(f"1 000 files: evidence at kill {outcome.evidence_at_kill}, re-dock copied {outcome.copied_again}, "
          f"peak RSS egw run {outcome.rss_run_mb:.0f} MB, egw dock {outcome.rss_dock_mb:.0f} MB, {outcome.seconds}")
    assert not outcome.problems(), outcome.problems()
    assert 0 < outcome.evidence_at_kill < outcome.files and outcome.copied_again == outcome.files - outcome.evidence_at_kill
    assert released_only_after_receipt(custody(tmp_path / "files" / "gw")) == outcome.files == 1002


def test_flooded_volume_is_cut_at_the_limit_and_the_officer_told_what_to_do(tmp_path, monkeypatch):
    """100 500 entries with 255-byte names (the driver refuses names over 200 bytes and lists at most
    100 000 entries) and GetStorage advertising 4 Gi files: the dock copies the two real recordings,
    releases them after their receipts, leaves every flood entry on the recorder, and says NOT SAFE with
    the recorder, the limit and what to do, in bounded memory."""
    flood = 100_500
    monkeypatch.setenv("EGW_LANG", "en")  # the assertions read the English text
    platform, address, _ = spawn_platform(tmp_path / "platform")
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "2", "--flood-entries", str(flood))
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        proc, peak_rss = run_egw_peak_rss("dock", "--usbip", url, "--volumes", str(volumes / "{serial}"),
                                          "--data-dir", str(data), timeout=240)
        print(f"egw dock over a {flood}-entry volume: peak RSS {peak_rss / 2**20:.0f} MiB")
        text = words(proc.stdout + proc.stderr)
        assert proc.returncode == 1, text[-3000:]
        assert ("recorder 1000001: its volume lists more entries than the limit of 100000; the gateway stopped "
                f"listing at {FLOOD_DIR}, so recordings past the limit were not copied.") in text, text[-3000:]
        assert "hand it to the evidence administrator" in text and "NOT SAFE TO UNDOCK" in text
        assert "names the gateway will not use" in text and "name is longer than 200 bytes" in text
        assert "more entries not copied (counted in the custody log)" in text
        assert peak_rss < RSS_LIMIT

        status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
        assert status["total"] == 2 and status["counts"]["released"] == 2
        events = custody(data)
        assert released_only_after_receipt(events) == 2
        assert sum(e["event"] == "hostile-entry" for e in events) == 50  # one by one up to a bound, then counted
        counted = next(e for e in events if e["event"] == "hostile-entries-not-listed")
        assert counted["count"] > 99_000 and set(counted["by_kind"]) <= {"name", "too_many"}
        delivered = platform_digests(tmp_path / "platform")
        assert len(delivered) == 2 and delivered <= stored_digests(data)
        volume = volumes / "1000001"
        assert not [p for p in (volume / "DCIM").rglob("*") if p.is_file()]  # the two recordings, released
        assert sum(1 for _ in os.scandir(volume / FLOOD_DIR)) == flood  # nothing of the flood deleted
    finally:
        stop_process(recorders)
        stop_process(platform)


def test_officer_name_that_is_not_gbk_is_read_with_replacement_and_its_bytes_recorded(tmp_path):
    """ZFY_INFO with invalid GBK in the officer's and the unit's name: the dock neither crashes nor
    refuses the recorder, identifies device and officer by the strictly checked serial and police number,
    shows the names with U+FFFD, and records the bytes the recorder sent in custody and the signed manifest."""
    platform, address, _ = spawn_platform(tmp_path / "platform")
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "2", "--zfy-invalid-gbk")
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        proc, report = dock(data, url, volumes)
        assert proc.returncode == 0 and report["safe"], proc.stderr
        recorder = report["recorders"][0]
        assert (recorder["serial"], recorder["officer_no"]) == ("1000001", "100001")
        assert recorder["officer_name"] == "张\ufffd\ufffd" and recorder["zfy_lossy_fields"] == ["user_name", "unit_name"]
        rows = recorder["recordings"]
        assert len(rows) == 2 and all(r["state"] == "released" for r in rows) and volume_files(volumes) == []
        events = custody(data)
        assert released_only_after_receipt(events) == 2

        sent = (b"1000001\0" + b"100001\0" + INVALID_GBK_USER_NAME.ljust(33, b"\0") + b"330100000000\0"
                + INVALID_GBK_UNIT_NAME.ljust(33, b"\0"))  # the 94-byte ZFY_INFO as it went over the wire
        docked = next(e for e in events if e["event"] == "docked")
        assert docked["zfy_info_hex"] == sent.hex() and docked["zfy_lossy_fields"] == ["user_name", "unit_name"]
        bundle = tmp_path / "bundle"
        run_egw("export", rows[0]["evidence_id"], str(bundle), "--data-dir", str(data), check=True)
        assert run_egw("verify", str(bundle), "--data-dir", str(data)).returncode == 0  # the CA pinned at enrolment
        manifest = json.loads(base64.b64decode(json.loads((bundle / "manifest.dsse.json").read_text())["payload"]))
        assert manifest["officer_id"] == "100001" and manifest["source"]["device_id"] == "bodycam-1000001"
        device = manifest["extra"]["device"]
        assert device["zfy_info_hex"] == sent.hex() and device["officer_name"] == "张\ufffd\ufffd"
        assert device["zfy_lossy_fields"] == ["user_name", "unit_name"]
    finally:
        stop_process(recorders)
        stop_process(platform)


def _station(tmp_path: Path, data: Path, url: str, volumes: Path) -> Path:
    config = tmp_path / "gateway.toml"
    write_bodycam_station_config(config, data, url, volumes)
    return config


def test_links_out_of_the_volume_bad_names_and_a_growing_file_through_the_station(tmp_path):
    """--hostile-names --changing-file docked by ``egw run``: links (absolute, relative into bait next to the
    volume, a second name for a real recording), names with control characters, backslashes, a drive
    letter, invalid UTF-8, 250 bytes, a FIFO, and a video that grows while it is read. The bait never
    reaches the store or the platform; every refused entry and the growing video stay on the recorder;
    the two normal recordings are released after their receipts; the card says what to do."""
    platform, address, _ = spawn_platform(tmp_path / "platform")
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "3", "--hostile-names",
                                              "--changing-file")
    gateway = None
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        gateway = spawn_egw("run", "-c", str(_station(tmp_path, data, url, volumes)))
        screen = json.loads(gateway.stdout.readline())["screen"]
        cards = lambda: [d for d in state(screen)["devices"] if d["kind"] == "bodycam" and d["files_total"]]
        card = wait_for(lambda: next((d for d in cards() if d["state"] == "attention"), None), 90,
                        "the card to ask for the evidence administrator")
        detail = card["detail"]
        assert not card["safe_to_undock"] and card["files_total"] == 3 and card["files_released"] == 2, card
        assert "recorder 1000001: 5 entries with names the gateway will not use" in detail, detail
        assert "hand it to the evidence administrator" in detail and "Every recording it copied is safe." in detail
        assert "could not be copied" in detail or "changed since ingest" in detail, detail  # the growing video
        # the bait directory next to the volume is not a recorder: no card tried to adopt it
        assert [d["device_id"] for d in state(screen)["devices"] if d["kind"] == "bodycam"] == ["bodycam-1000001"]
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=15) == 0

        volume = volumes / "1000001"
        day = next(p for p in (volume / "DCIM").iterdir() if p.is_dir() and not p.is_symlink()
                   and (p / "C:\\Windows\\evil.avi").exists())
        left = {name: os.lstat(os.path.join(os.fsencode(day), name)) for name in os.listdir(os.fsencode(day))}
        refused = {b"..\\..\\etc\\passwd.avi", b"C:\\Windows\\evil.avi", b"evil\x1b[2J\n.avi", b"A" * 246 + b".avi",
                   b"\xff\xfe_bad_utf8.avi"}
        assert refused <= set(left) and all((day / os.fsdecode(n)).read_bytes() == b"hostile" for n in refused)
        kinds = {name[-8:]: st.st_mode for name, st in left.items() if name[-8:-4] in (b"9001", b"9002", b"9003", b"9005")}
        assert sorted(kinds) == [b"9001.avi", b"9002.avi", b"9003.avi", b"9005.avi"]
        assert stat.S_ISFIFO(kinds[b"9002.avi"]) and all(stat.S_ISLNK(kinds[k]) for k in (b"9001.avi", b"9003.avi", b"9005.avi"))
        assert (volume / "DCIM" / "escape").is_symlink() and (volume / "DCIM" / "20991231").is_symlink()
        recordings_left = [p for p in volume.rglob("*_*_*_*.*") if p.is_file() and not p.is_symlink()
                           and p.parent.name != "20991231" and not p.name[-8:-4].startswith("900")]
        assert len(recordings_left) == 1  # the growing video; the two others were released

        stored, delivered = stored_digests(data), platform_digests(tmp_path / "platform")
        bait = [p for p in (volumes / ".outside-1000001").rglob("*.avi")]
        assert len(bait) == 2
        for outside in (*bait, Path("/etc/passwd")):
            assert sha256(outside) not in stored and sha256(outside) not in delivered, f"{outside} was read"
        events = custody(data)
        assert released_only_after_receipt(events) == 2
        hostile = [e for e in events if e["event"] == "hostile-entry"]
        assert {bytes.fromhex(e["name_hex"]) for e in hostile} >= refused  # the names' bytes, exactly
        assert any(e.get("link_target_hex") == b"/etc/passwd".hex() for e in hostile)
        db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True)
        grown = db.execute("SELECT sha256, size, state FROM evidence WHERE source_path = ?",
                           (recordings_left[0].relative_to(volume).as_posix(),)).fetchall()
        db.close()
        for digest, size, row_state in grown:  # copied before it grew: exactly the bytes it had then, never released
            assert hashlib.sha256(recordings_left[0].read_bytes()[:size]).hexdigest() == digest and row_state != "released"
        assert run_egw("custody", "verify", "--data-dir", str(data)).returncode == 0
    finally:
        for proc in (gateway, recorders, platform):
            if proc is not None:
                stop_process(proc)


def test_recorder_chosen_text_is_never_console_markup():
    """A file named ``[/x].avi`` or an officer name with rich markup made ``egw dock``'s final table raise
    MarkupError after everything had been copied: the officer never saw the verdict."""
    import io

    from rich.console import Console

    from gateway.commands.dock import _table

    row = {"device_path": "DCIM/[/x].avi", "size": 1, "state": "released", "released": True, "safe": True,
           "problems": ["[/bold]"], "error": None}
    summary = {"serial": "1000001", "officer_name": "[/red]张三", "officer_no": "100001", "clock_offset_s": 0.0,
               "recordings": [row], "hostile_entries": [{"name": "DCIM/[/i]", "reason": "symbolic link"}],
               "hostile_total": 3, "zfy_lossy_fields": ["user_name"], "attention": ["recorder 1000001: [/u]"]}
    from gateway.i18n import use_language

    out = io.StringIO()
    with use_language("en"):
        _table(Console(file=out, width=200), [summary], ["usbip://x/1-1: [/b]"], "1 receipted", safe=False)
    text = out.getvalue()
    assert "DCIM/[/x].avi" in text and "[/red]张三" in text and "recorder 1000001: [/u]" in text
    assert "… and 2 more entries not copied" in text and "the officer name the recorder sent is not valid GBK" in text
    assert "NOT SAFE TO UNDOCK: see the messages in red above" in text
