"""A reduced fault campaign (bench/faults.py): the whole station on loopback, faults injected, then counted.

Two short trials: SIGKILL of ``egw run``, SIGKILL and restart of the platform, a recorder unplugged
mid-copy, the private broker stopped for 2 s, and the gateway's wall clock jumped (libfaketime) by +1 h in
the first trial and by -1 h in the second, and back. Pass = nothing missing, nothing corrupted, nothing
deleted from a recorder before its receipt, custody log verified, and no MQTT message of a lane arriving
after a newer one (the order the outbox promises, checked by egw-seq; duplicates are allowed).
"""

import dataclasses
import random
import re

from bench.faults import TrialOptions, faketime_env, out_of_order_line, print_report, run_trial, summary_line
from bench._common import fill_disk

PROBE = """
import threading, time
wall, mono = time.time(), time.monotonic()
print("ready", flush=True)
input()  # the test moves the clock file, then says go
cond = threading.Condition()
with cond:
    cond.wait(0.2)  # a monotonic timed wait (libfaketime 0.9.10 alone returns at once)
time.sleep(0.2)  # clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) (libfaketime 0.9.10 alone: EINVAL)
print(round(time.time() - wall), round(time.monotonic() - mono, 1), flush=True)
"""


def test_the_clock_fault_moves_the_wall_clock_of_a_running_process_and_nothing_else(tmp_path):
    """What the campaign's clock fault relies on: rewriting the file moves time.time() of a running child by
    the offset at once, while time.monotonic(), sleeps and timed waits go on as before."""
    import subprocess
    import sys

    from tests.conftest import egw_env

    clock = tmp_path / "faketime.rc"
    clock.write_text("+0\n")
    child = subprocess.Popen([sys.executable, "-c", PROBE], env=egw_env(**faketime_env(timestamp_file=clock)),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
        clock.write_text("-3600\n")
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err  # e.g. OSError: [Errno 22] from time.sleep without the shim
    jumped, elapsed = out.split()
    assert int(jumped) == -3600, err
    assert 0.3 <= float(elapsed) < 1800, err  # both waits really waited (0.4 s); monotonic time did not jump


def test_two_short_trials_lose_nothing(tmp_path):
    opts = TrialOptions(faults=("kill", "platform", "unplug", "broker", "clock"), recorders=2, recordings=2, fill_mb=24.0,
                        tests=3, broker_down_s=2.0, fault_window_s=4.0, settle_timeout_s=90.0)
    rng = random.Random(9)
    reports = []
    lines: list[str] = []
    for i, jump in ((1, 3600), (2, -3600)):  # one trial each way: ahead, and back (fresh certificates not yet valid)
        trial_opts = dataclasses.replace(opts, clock_jumps_s=(jump,))
        report = run_trial(i, tmp_path, trial_opts, random.Random(rng.getrandbits(64)), lines.append)
        print_report(report, lines.append)
        reports.append(report)
    text = "\n".join(lines)
    for r in reports:
        assert r.expected == 2 * 3 + 3, text  # 2 recordings + 1 bulk file per recorder, 3 rapid tests
        assert any("SIGKILL egw run" in e for e in r.events) and any("SIGKILL platform" in e for e in r.events), text
        assert any("unplug 1-" in e for e in r.events) and any("mosquitto restarted" in e for e in r.events), text
        assert any("gateway clock jumped" in e for e in r.events) and any("clock back" in e for e in r.events), text
        assert sum(r.clock_stamped.values()) > 0, text  # the running gateway really saw the jump
        assert r.mqtt_sequenced > 0 and r.mqtt_unsequenced == 0 and r.mqtt_out_of_order == 0, text
        assert r.delivered == r.expected and not r.missing, text
        assert not r.corrupted and not r.deleted_before_receipt, text
        assert r.custody_ok, text
    assert out_of_order_line(reports).startswith("out_of_order=0 "), text
    last = summary_line(reports)
    assert re.fullmatch(r"missing=0 corrupted=0 deleted_before_receipt=0 duplicates=\d+ custody=ok", last), text


def test_uploader_restarts_after_dying_on_a_full_disk(tmp_path):
    """Found by the campaign: ``egw run`` restarted while its data disk was full lost its uploader for good
    (the startup re-queue write failed, the task died, nothing was delivered until the next restart)."""
    import asyncio
    import os
    import subprocess
    import types

    from gateway.station.live_state import Station
    from gateway.station.delivery import UploaderComponent
    from tests.uplink_support import ingest_random, make_gateway, platform_server

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(disk)], check=True)
    try:
        with platform_server(tmp_path / "platform") as server:
            gw = make_gateway(disk, "gw", tmp_path / "platform", server.address)
            item = ingest_random(gw, 50_000, "a.bin")
            with gw.service() as svc:  # as a SIGKILL mid-upload leaves it
                svc.transition(item.evidence_id, "uploading")
            filler = disk / "filler"
            fill_disk(filler)
            station = Station("gw")
            config = types.SimpleNamespace(data_dir=gw.data_dir, platform_address=None, platform_insecure=False, parallel_uploads=1,
                                           bandwidth_bytes_per_s=0)
            runtime = types.SimpleNamespace(config=config, station=station,
                                            metrics=types.SimpleNamespace(uploaded_bytes=types.SimpleNamespace(inc=lambda n: None)))

            async def scenario() -> str:
                component = UploaderComponent(runtime)  # type: ignore[arg-type]
                await component.start()
                try:
                    for _ in range(50):  # the first uploader dies on the full disk and says so
                        await asyncio.sleep(0.1)
                        if "uplink" in station.alarms:
                            break
                    assert "Uploads interrupted" in station.alarms.get("uplink", ""), station.alarms
                    os.unlink(filler)  # room again: the next uploader delivers
                    for _ in range(150):
                        await asyncio.sleep(0.1)
                        with gw.service() as svc:
                            state = svc.state.get(item.evidence_id).state
                        if state == "receipted":
                            return state
                    return state
                finally:
                    await component.stop()

            assert asyncio.run(scenario()) == "receipted"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
