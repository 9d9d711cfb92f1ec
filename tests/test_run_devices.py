"""``egw run`` supervision: a device that keeps failing disturbs nobody; an analyzer unplugged and
plugged back in is picked up again without a restart."""

import json
import os
import signal
import time

from bench._common import fill_disk, write_bodycam_station_config
from tests.conftest import run_egw, spawn_egw
from tests.test_station import state, wait_for
from tests.mqtt_support import free_port
from tests.uplink_support import stop_process



def _analyzer(port: int, tests: int):
    proc = spawn_egw("simulate", "rapidtest", "--tests", str(tests), "--tcp", str(port), "--interval", "0.2",
                     "--reply-timeout", "2", "--retry-delay", "0.2")
    assert proc.stdout.readline().strip() == f"socket://127.0.0.1:{port}", proc.stderr.read()
    return proc


def test_failing_device_is_isolated_and_a_replugged_analyzer_resumes(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    port = free_port()
    first = _analyzer(port, 2)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
data_dir = "{data}"
[screen]
listen = "127.0.0.1:0"
[metrics]
listen = ""
[[devices]]
kind = "rapidtest"
name = "broken"
port = "{tmp_path / 'no-such-tty'}"
[[devices]]
kind = "rapidtest"
name = "good"
port = "socket://127.0.0.1:{port}"
""")
    gateway = spawn_egw("run", "-c", str(config))
    second = None
    try:
        screen = json.loads(gateway.stdout.readline())["screen"]
        wait_for(lambda: len(state(screen)["results"]) == 2, 60, "the good analyzer's first two results")
        cards = {d["name"]: d for d in state(screen)["devices"]}
        assert cards["broken"]["state"] in ("undocked", "error") and "not" in cards["broken"]["detail"]
        # Unplug the good analyzer, then plug it back in (same port): results flow again, no restart.
        stop_process(first)
        wait_for(lambda: {d["name"]: d for d in state(screen)["devices"]}["good"]["state"] in ("error", "undocked"), 30,
                 "the unplugged analyzer to show a problem")
        second = _analyzer(port, 2)
        wait_for(lambda: len(state(screen)["results"]) == 4, 60, "results after re-plugging")
        assert gateway.poll() is None
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=12) == 0
        status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
        assert status["counts"]["queued"] == 8  # 4 results + 4 transcripts, none lost or doubled
    finally:
        for proc in (gateway, first, second):
            if proc is not None:
                stop_process(proc)


def test_sigterm_during_an_upload_exits_cleanly_and_the_upload_resumes(tmp_path):
    import os
    import sqlite3

    from tests.test_dock import enrolled_gateway
    from tests.uplink_support import spawn_platform

    platform, address, _ = spawn_platform(tmp_path / "platform")
    gateway = None
    try:
        data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
        big = tmp_path / "long-recording.mp4"
        with open(big, "wb") as fh:
            for _ in range(48):
                fh.write(os.urandom(1 << 20))
        run_egw("ingest", "--data-dir", str(data), str(big), check=True)
        config = tmp_path / "gateway.toml"
        config.write_text(f'data_dir = "{data}"\n[platform]\nbandwidth_bytes_per_s = 8000000\n[screen]\nlisten = ""\n[metrics]\nlisten = ""\n')
        gateway = spawn_egw("run", "-c", str(config))
        json.loads(gateway.stdout.readline())
        db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True)
        wait_for(lambda: db.execute("SELECT state FROM evidence").fetchone()[0] == "uploading", 30, "the upload to start")
        time.sleep(1.5)  # mid-upload at 8 MB/s
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
        assert db.execute("SELECT state FROM evidence").fetchone()[0] == "queued"  # back in the queue, nothing lost
        sync = run_egw("sync", "--once", "--data-dir", str(data), "--json", timeout=120)
        assert sync.returncode == 0, sync.stderr
        outcome = json.loads(sync.stdout)["outcomes"][0]
        assert outcome["status"] == "receipted" and max(outcome["resumed_from"]) > 0  # resumed, not restarted
    finally:
        for proc in (gateway, platform):
            if proc is not None:
                stop_process(proc)


def test_a_recorder_left_mounted_by_a_killed_gateway_is_adopted_on_restart(tmp_path):
    from tests.test_dock import _copy_in_progress, start_recorders

    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "3", "--fill-mb", "600")
    config = tmp_path / "gateway.toml"
    write_bodycam_station_config(config, data, url, volumes)
    gateway = spawn_egw("run", "-c", str(config))
    restarted = None
    try:
        json.loads(gateway.stdout.readline())
        wait_for(lambda: _copy_in_progress(data / "blobs" / "tmp"), 60, "a copy in progress")
        gateway.kill()  # the recorder is now off the bus, in mass-storage mode, half copied
        gateway.wait(10)
        restarted = spawn_egw("run", "-c", str(config))
        screen = json.loads(restarted.stdout.readline())["screen"]
        cams = lambda: [d for d in state(screen)["devices"] if d["kind"] == "bodycam" and d["files_total"]]
        wait_for(lambda: cams() and cams()[0]["files_ingested"] == cams()[0]["files_total"] == 4, 60,
                 "the mounted recorder to be adopted and fully ingested")
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=12) == 0
        status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
        assert status["total"] == 4  # each recording exactly once
        assert run_egw("custody", "verify", "--data-dir", str(data)).returncode == 0
    finally:
        for proc in (gateway, restarted, recorders):
            if proc is not None:
                stop_process(proc)


def test_an_adoption_that_failed_on_a_full_disk_is_retried_once_there_is_room(tmp_path):
    """Found by the 30-trial campaign: egw run restarted while its data disk was full failed to adopt the
    mounted recorder, logged "retrying" — and never did (adoption ran once per mount), so the recorder
    stayed in mass-storage mode with its recordings until someone re-docked it."""
    import subprocess
    import sys

    from tests.conftest import REPO, egw_env
    from tests.test_dock import start_recorders

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], check=True)
    recorders = gateway = None
    try:
        data = disk / "data"
        run_egw("keys", "init", "--data-dir", str(data), check=True)
        recorders, url, volumes = start_recorders(tmp_path, "--count", "1", "--recordings", "3", "--small")
        config = write_bodycam_station_config(tmp_path / "gateway.toml", data, url, volumes)
        with open(config, "a") as fh:
            fh.write("[ingest]\nreserve_mb = 4\n")  # a 64 MB data disk
        gateway = spawn_egw("run", "-c", str(config))
        json.loads(gateway.stdout.readline())
        wait_for(lambda: any(v.is_dir() and not v.name.startswith(".") for v in volumes.iterdir()), 60, "the volume")
        gateway.kill()  # the recorder stays in mass-storage mode
        gateway.wait(10)
        stop_process(gateway)
        filler = disk / "filler"
        fill_disk(filler)  # the data disk is full when egw run comes back
        log = tmp_path / "restarted.log"
        with open(log, "wb") as out:
            gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)], cwd=REPO,
                                       env=egw_env(), stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: "failed" in log.read_text(errors="replace") and "volume://" in log.read_text(errors="replace"),
                 60, "the adoption to fail on the full disk")
        os.unlink(filler)
        ready = next(line for line in log.read_text().splitlines() if '"event": "ready"' in line)
        screen = json.loads(ready)["screen"]
        cams = lambda: [d for d in state(screen)["devices"] if d["kind"] == "bodycam" and d["files_total"]]
        wait_for(lambda: cams() and cams()[0]["files_ingested"] == cams()[0]["files_total"] == 3, 60,
                 "the adoption retried and the recorder fully ingested")
        status = json.loads(run_egw("status", "--data-dir", str(data), "--json", check=True).stdout)
        assert status["total"] == 3  # each recording exactly once
    finally:
        for proc in (gateway, recorders):
            if proc is not None:
                stop_process(proc)
        subprocess.run(["umount", "-l", str(disk)], check=False)
