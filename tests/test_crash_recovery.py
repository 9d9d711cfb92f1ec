"""kill -9 during ingest, then a re-run: nothing lost, nothing duplicated, store and log consistent."""

import hashlib
import json
import os
import random
import signal
import sqlite3
import time

import pytest

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings, strategies as st

from gateway.errors import VerificationError
from gateway.evidence import dsse
from gateway.evidence.manifest import ManifestInput, build_manifest, parse_manifest, sign_manifest
from tests.conftest import run_egw, spawn_egw

_KEY = ec.generate_private_key(ec.SECP256R1())


def _evidence_count(data) -> int:
    try:
        db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_sigkill_at_random_moments_then_rerun(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    card = tmp_path / "card"
    card.mkdir()
    rng = random.Random(7)
    expected = {}
    for i in range(30):
        blob = os.urandom(rng.randint(1_000_000, 5_000_000))
        path = card / f"REC{i:04d}.mp4"
        path.write_bytes(blob)
        expected[str(path)] = hashlib.sha256(blob).hexdigest()
    kills = 0
    for threshold in (2, 8, 15, 22, 27):
        proc = spawn_egw("ingest", "--data-dir", str(data), str(card))
        while proc.poll() is None and _evidence_count(data) < threshold:
            time.sleep(0.005)
        time.sleep(rng.random() * 0.02)  # somewhere inside the next file's copy or commit
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=30)
    assert kills >= 3, "ingest finished before it could be killed: make the files larger"
    final = run_egw("ingest", "--data-dir", str(data), "--json", str(card))
    assert final.returncode == 0, final.stderr
    out = json.loads(final.stdout)
    assert len(out["items"]) == len(expected)

    db = sqlite3.connect(data / "state.db")
    rows = db.execute("SELECT source_path, sha256, COUNT(*) FROM evidence GROUP BY source_path").fetchall()
    assert {r[0]: r[1] for r in rows} == expected, "a file is missing or has a wrong digest"
    assert all(r[2] == 1 for r in rows), "a file was ingested twice"
    for _, sha, _ in rows:
        blob = data / "blobs" / "sha256" / sha[:2] / sha[2:]
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha
    assert list((data / "blobs" / "tmp").iterdir()) == []
    events = db.execute("SELECT evidence_id, COUNT(*) FROM custody WHERE event = 'ingested' GROUP BY evidence_id").fetchall()
    assert len(events) == len(expected) and all(n == 1 for _, n in events)
    assert run_egw("custody", "verify", "--data-dir", str(data)).returncode == 0


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(source=text, device=st.none() | text, officer=st.none() | text, size=st.integers(0, 2**53), important=st.booleans(),
       offset=st.none() | st.floats(-1e6, 1e6, allow_nan=False))
def test_manifests_round_trip_and_any_change_breaks_the_signature(source, device, officer, size, important, offset):
    key = _KEY
    item = ManifestInput(source_path=source, device_id=device, officer_id=officer, important=important, clock_offset_s=offset)
    manifest = build_manifest(item, evidence_id="01a2280d-0000-7000-8000-000000000000", sha256="ab" * 32, sm3=None,
                              size=size, gateway_id="gw-h")
    envelope = dsse.Envelope.from_bytes(sign_manifest(manifest, key).to_bytes())
    dsse.verify(envelope, key.public_key())
    parsed = parse_manifest(envelope)
    assert parsed["source"]["path"] == source and parsed["officer_id"] == officer and parsed["size"] == size
    flipped = bytearray(envelope.payload)
    flipped[len(flipped) // 2] ^= 0x01
    with pytest.raises(VerificationError):
        dsse.verify(dsse.Envelope(envelope.payload_type, bytes(flipped), envelope.signatures), key.public_key())
