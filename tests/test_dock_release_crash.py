"""kill -9 around a deletion from a recorder: every deletion the gateway makes is in the custody log.

A recording is deleted from the recorder between two commits: its release intent before, its
``released-from-device`` after. A kill between the deletion and its record once left a file gone from
the recorder with no custody entry saying so, and an item that never reached ``released``
(``bench/dock_files.py`` caught it: its re-dock listed one recording fewer than the log accounted for).
Here the dock runs in a real child process that SIGKILLs itself at the exact moment, then the recorder
is docked again in another; the volume is a real directory (``volume://`` adoption, release policy
``ingest``, so no platform is needed).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, egw_env, run_egw

SERIAL = "KILL01"
RECORDINGS = 4

# Dock the volume in this process, killing it with SIGKILL around the first deletion from the recorder.
CHILD = """
import os, signal, sys
from drivers.bodycam.volume import RecorderVolume
from gateway.evidence.evidence_service import EvidenceService
from gateway.workflows.dock import DockState, DockWorkflow

data, volumes, serial, kill_at = sys.argv[1:5]
original_delete = RecorderVolume.delete

def delete_and_maybe_die(self, item):
    if kill_at == "before-delete":
        os.kill(os.getpid(), signal.SIGKILL)
    original_delete(self, item)
    if kill_at == "after-delete":
        os.kill(os.getpid(), signal.SIGKILL)

RecorderVolume.delete = delete_and_maybe_die
with EvidenceService(data) as service:
    workflow = DockWorkflow(service, locator=volumes + "/{serial}", release_policy="ingest")
    session = DockState(url="volume://" + serial)
    workflow.adopt(serial, session)
    print(workflow.release(session), [r.error for r in session.recordings if r.error])
"""


def dock(data: Path, volumes: Path, kill_at: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, str(data), str(volumes), SERIAL, kill_at],
                          cwd=REPO, env=egw_env(), capture_output=True, text=True, timeout=120)


def custody(data: Path) -> list[dict]:
    db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True)
    try:
        return [json.loads(entry) for (entry,) in db.execute("SELECT entry FROM custody ORDER BY seq")]
    finally:
        db.close()


def open_intents(data: Path) -> int:
    db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM release_intents").fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "gw"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    volume = tmp_path / "volumes" / SERIAL / "DCIM"
    volume.mkdir(parents=True)
    for i in range(RECORDINGS):
        (volume / f"clip-{i:04d}.mp4").write_bytes(f"recording {i} ".encode() * 5000)
    return data, tmp_path / "volumes", volume


@pytest.mark.parametrize("kill_at", ["after-delete", "before-delete"])
def test_a_kill_around_a_deletion_is_recorded_exactly_once_at_the_next_dock(recorder, kill_at: str) -> None:
    data, volumes, volume = recorder
    killed = dock(data, volumes, kill_at)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    left = sorted(p.name for p in volume.iterdir())
    assert len(left) == (RECORDINGS - 1 if kill_at == "after-delete" else RECORDINGS)
    assert open_intents(data) == RECORDINGS, "the round's intents were not committed before the first deletion"

    again = dock(data, volumes, "none")
    assert again.returncode == 0, again.stderr[-2000:]
    assert list(volume.iterdir()) == [], "the re-dock did not release what was left"
    assert open_intents(data) == 0

    entries = custody(data)
    released = [e for e in entries if e["event"] == "released-from-device"]
    ingested = {e["evidence_id"] for e in entries if e["event"] == "ingested"}
    assert len(ingested) == RECORDINGS
    assert sorted(e["evidence_id"] for e in released) == sorted(ingested), "a deletion is missing from custody, or recorded twice"
    interrupted = [e for e in released if e.get("interrupted")]
    if kill_at == "after-delete":  # gone at the re-dock: recorded then, saying when it began and that it was interrupted
        assert len(interrupted) == 1 and interrupted[0]["release_started_at"] < interrupted[0]["at"]
        assert interrupted[0]["device_path"] == f"DCIM/{sorted(set(f'clip-{i:04d}.mp4' for i in range(RECORDINGS)) - set(left))[0]}"
    else:  # never deleted: released again like any other, nothing marked interrupted
        assert interrupted == []
    verified = run_egw("custody", "verify", "--data-dir", str(data), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_intent_alone_is_not_a_deletion(recorder) -> None:
    """Killed after the intents were committed but before any deletion; then the officer's recorder
    rewrote one file before the re-dock. That file was never deleted by the gateway: its first version
    gets no ``released-from-device``; the new version is new evidence, released as itself."""
    data, volumes, volume = recorder
    assert dock(data, volumes, "before-delete").returncode == -9
    rewritten = volume / "clip-0000.mp4"
    rewritten.write_bytes(b"a different recording " * 3000)
    again = dock(data, volumes, "none")
    assert again.returncode == 0, again.stderr[-2000:]
    assert open_intents(data) == 0 and list(volume.iterdir()) == []
    entries = custody(data)
    ingested = [e for e in entries if e["event"] == "ingested"]
    released = {e["evidence_id"] for e in entries if e["event"] == "released-from-device"}
    first_version = next(e["evidence_id"] for e in ingested if e["source_path"].endswith("clip-0000.mp4"))
    assert len(ingested) == RECORDINGS + 1 and first_version not in released
    assert released == {e["evidence_id"] for e in ingested} - {first_version}
    assert not any(e.get("interrupted") for e in entries if e["event"] == "released-from-device")
