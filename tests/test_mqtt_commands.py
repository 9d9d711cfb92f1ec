"""Signed commands: every way a command can be wrong is refused with its reason; good ones run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.evidence.identity import init_identity
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.state import State
from gateway.uplink import outbox as ob
from gateway.uplink.commands import CommandRejected, CommandVerifier, load_platform_key
from gateway.uplink.mqtt_config import LinkConfig
from gateway.uplink.mqtt_link import MqttLink
from protos import dsse
from simulators.platform_mqtt import PlatformMqtt, sign_command
from tests.mqtt_support import SHARED_BROKER, wait_for

PLATFORM_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def gw(tmp_path: Path) -> tuple[Path, str]:
    ident = init_identity(tmp_path / "gw")
    return tmp_path / "gw", ident.gateway_id


def verify(data_dir: Path, gid: str, name: str, payload: bytes, *, key=PLATFORM_KEY.public_key(), clock=time.time):
    verifier = CommandVerifier(gid, key, clock=clock)
    with State(data_dir) as state, state.transaction() as db:
        return verifier.verify(db, name, payload)


def reason(data_dir: Path, gid: str, name: str, payload: bytes, **kw) -> str:
    with pytest.raises(CommandRejected) as info:
        verify(data_dir, gid, name, payload, **kw)
    return info.value.code


def test_a_good_command_verifies_once_and_its_replay_is_refused_even_after_a_restart(gw):
    data_dir, gid = gw
    signed, nonce = sign_command(PLATFORM_KEY, gid, "ping", {"a": "1"})
    cmd = verify(data_dir, gid, "ping", signed)
    assert (cmd.name, cmd.args, cmd.nonce) == ("ping", {"a": "1"}, nonce)
    assert reason(data_dir, gid, "ping", signed) == "replayed"  # a new verifier, a new connection: nonce persisted


def test_a_used_command_stays_refused_after_the_gateway_clock_jumped_ahead_and_back(gw):
    """Found reviewing the wall-clock uses for issue 9's clock fault: a used nonce was forgotten as soon as the
    gateway's clock *read* past its command's expiry, so after a jump ahead (+1 h) and back a captured command
    that was still valid could be replayed."""
    data_dir, gid = gw
    t0 = time.time()
    captured, _ = sign_command(PLATFORM_KEY, gid, "ping", ttl_s=600, issued_at=t0)
    verify(data_dir, gid, "ping", captured, clock=lambda: t0 + 1)
    ahead, _ = sign_command(PLATFORM_KEY, gid, "ping", issued_at=t0 + 3600)
    verify(data_dir, gid, "ping", ahead, clock=lambda: t0 + 3601)  # +1 h: this verification prunes old nonces
    assert reason(data_dir, gid, "ping", captured, clock=lambda: t0 + 10) == "replayed"  # back: still refused
    fresh, _ = sign_command(PLATFORM_KEY, gid, "ping", issued_at=t0 + 20)
    assert verify(data_dir, gid, "ping", fresh, clock=lambda: t0 + 21).name == "ping"  # new commands still run

    # A month ahead (a dead RTC battery, a wrong time server) does forget nonces; the captured command,
    # back in its validity window, must not run again all the same.
    month = 30 * 86400
    far, _ = sign_command(PLATFORM_KEY, gid, "ping", issued_at=t0 + month)
    verify(data_dir, gid, "ping", far, clock=lambda: t0 + month + 1)
    with State(data_dir) as state:
        assert not state.db.execute("SELECT 1 FROM command_nonces WHERE expires_at < ? AND nonce != ''", (t0 + 700,)).fetchall()
    assert reason(data_dir, gid, "ping", captured, clock=lambda: t0 + 30) == "expired"


def test_forged_altered_unsigned_expired_and_misdirected_commands_are_refused(gw):
    data_dir, gid = gw
    forged, _ = sign_command(OTHER_KEY, gid, "ping")
    assert reason(data_dir, gid, "ping", forged) == "bad-signature"

    good, _ = sign_command(PLATFORM_KEY, gid, "reupload", {"evidence_id": "a"})
    doc = json.loads(good)
    env = dsse.Envelope.from_json(doc["envelope"])
    altered = dsse.Envelope(env.payload_type, env.payload.replace(b'"a"', b'"b"'), env.signatures)
    assert reason(data_dir, gid, "reupload", json.dumps({"envelope": altered.to_json()}).encode()) == "bad-signature"

    unsigned = dict(doc["envelope"], signatures=[])
    assert reason(data_dir, gid, "reupload", json.dumps({"envelope": unsigned}).encode()) == "unsigned"
    assert reason(data_dir, gid, "reupload", b'{"name": "reupload"}') == "unsigned"

    expired, _ = sign_command(PLATFORM_KEY, gid, "ping", ttl_s=10, issued_at=time.time() - 60)
    assert reason(data_dir, gid, "ping", expired) == "expired"
    future, _ = sign_command(PLATFORM_KEY, gid, "ping", issued_at=time.time() + 3600)
    assert reason(data_dir, gid, "ping", future) == "not-yet-valid"
    forever, _ = sign_command(PLATFORM_KEY, gid, "ping", ttl_s=10 * 24 * 3600)
    assert reason(data_dir, gid, "ping", forever) == "too-long-lived"

    elsewhere, _ = sign_command(PLATFORM_KEY, "gw-other", "ping")
    assert reason(data_dir, gid, "ping", elsewhere) == "wrong-gateway"
    renamed, _ = sign_command(PLATFORM_KEY, gid, "status")
    assert reason(data_dir, gid, "reupload", renamed) == "name-mismatch"

    wrong_type = dsse.sign("application/json", env.payload, PLATFORM_KEY)
    assert reason(data_dir, gid, "reupload", json.dumps({"envelope": wrong_type.to_json()}).encode()) == "wrong-type"

    assert reason(data_dir, gid, "ping", b"\xff\xfe not json") == "malformed"
    assert reason(data_dir, gid, "ping", b"[1, 2]") == "malformed"
    assert reason(data_dir, gid, "ping", b"{" * 20000) == "oversized"
    no_anchor, _ = sign_command(PLATFORM_KEY, gid, "ping")
    assert reason(data_dir, gid, "ping", no_anchor, key=None) == "no-trust-anchor"


def test_platform_key_loads_from_a_certificate_pem(tmp_path: Path):
    from tests.mqtt_support import MiniCA, write_cert

    ca = MiniCA.create("platform")
    write_cert(tmp_path / "platform.pem", ca.cert)
    key = load_platform_key(tmp_path / "platform.pem")
    assert key.public_numbers() == ca.key.public_key().public_numbers()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_commands_over_the_broker_run_or_are_refused_with_reasons(tmp_path: Path, protocol: str):
    data_dir = tmp_path / "gw"
    ident = init_identity(data_dir)
    gid = ident.gateway_id
    with EvidenceService(data_dir) as service:
        item = service.ingest_bytes(b"clip", ManifestInput(source_path="clip.mp4", device_id="cam1"))
        done = service.ingest_bytes(b"done", ManifestInput(source_path="done.mp4", device_id="cam1"))
        service.transition(done.evidence_id, "uploading")
        service.transition(done.evidence_id, "receipted")
        service.transition(item.evidence_id, "uploading")
    synced: list[dict[str, str]] = []
    # 3.1.1 run: the link is handed the service's EvidenceService; 5: it works on the state directly
    running_service = EvidenceService(data_dir) if protocol == "3.1.1" else None
    if running_service is not None:
        ob.attach_to_service(running_service)
    link = MqttLink(data_dir, LinkConfig(SHARED_BROKER, protocol=protocol, platform_cert=PLATFORM_KEY.public_key()),
                    sync_time_hooks=[lambda args: synced.append(args) or {"recorders": "2"}],
                    evidence_service=running_service)
    platform = PlatformMqtt(tmp_path / "platform", SHARED_BROKER, signing_key=PLATFORM_KEY,
                            protocol="5" if protocol == "5" else "3.1.1")
    link.start()
    platform.start()
    try:
        assert link.wait_connected(10)
        pong = platform.send_command(gid, "ping")
        assert pong.ok and pong.result["pong"] == "true" and pong.result["gateway_id"] == gid

        status = platform.send_command(gid, "status")
        assert status.ok and status.result["evidence_uploading"] == "1" and status.result["evidence_receipted"] == "1"

        sync = platform.send_command(gid, "sync-time", {"device": "all"})
        assert sync.ok and sync.result["recorders"] == "2" and synced == [{"device": "all"}]

        again = platform.send_command(gid, "reupload", {"evidence_id": item.evidence_id})
        assert again.ok and again.result["from_state"] == "uploading"
        with State(data_dir) as state:
            assert state.get(item.evidence_id).state == "queued"
            events = [e for (e,) in state.db.execute("SELECT event FROM custody WHERE evidence_id = ? ORDER BY seq", (item.evidence_id,))]
            assert events[-1] == "reupload-requested"
        refused = platform.send_command(gid, "reupload", {"evidence_id": done.evidence_id})
        assert not refused.ok and refused.error.startswith("cannot-reupload") and "receipted" in refused.error
        unknown = platform.send_command(gid, "reupload", {"evidence_id": "nope"})
        assert not unknown.ok and unknown.error.startswith("unknown-evidence")
        assert platform.send_command(gid, "reboot").error.startswith("unknown-command")

        forged, nonce = sign_command(OTHER_KEY, gid, "ping")
        reply = platform.send_signed(gid, "ping", forged, nonce)
        assert reply is not None and not reply.ok and reply.error.startswith("bad-signature")
        expired, nonce = sign_command(PLATFORM_KEY, gid, "ping", ttl_s=5, issued_at=time.time() - 30)
        reply = platform.send_signed(gid, "ping", expired, nonce)
        assert reply is not None and reply.error.startswith("expired")
        garbage = platform.send_signed(gid, "ping", b"\x00not json at all", "")
        assert garbage is not None and garbage.error.startswith("malformed")
        huge = platform.send_signed(gid, "ping", b" " * 100_000, "")
        assert huge is not None and huge.error.startswith("oversized")
        good, nonce = sign_command(PLATFORM_KEY, gid, "ping")
        assert platform.send_signed(gid, "ping", good, nonce).ok
        reply = platform.send_signed(gid, "ping", good, nonce)
        assert reply is not None and not reply.ok and reply.error.startswith("replayed")
        assert link.stats.commands_rejected >= 4

        # the re-queue published an evidence message; the platform recorded it
        wait_for(lambda: any(b'"state":"queued"' in r.payload for r in platform.records(f"egw/v1/{gid}/evidence/{item.evidence_id}")),
                 5, "evidence message after reupload")
        replies = platform.records(f"egw/v1/{gid}/cmd/")
        assert replies and {r.kind for r in replies} <= {"command", "command-reply", "malformed"}
    finally:
        platform.stop()
        link.stop()
        if running_service is not None:
            running_service.close()
        clear_retained(gid)


def clear_retained(gid: str) -> None:
    """Leave the shared broker as we found it: empty retained payloads delete retained messages."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    for sub in ("state", "custody/sth", "devices/cam1/state", "devices/cam2/state"):
        client.publish(f"egw/v1/{gid}/{sub}", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
