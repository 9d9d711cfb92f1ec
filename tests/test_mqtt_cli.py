"""``egw mqtt …`` and the platform-mqtt simulator entry, driven through argparse like the real CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gateway.commands import mqtt as mqtt_cmd
from gateway.evidence.identity import init_identity
from gateway.evidence.state import State
from gateway.uplink import outbox as ob
from protos.egw.v1 import events_pb2
from tests.mqtt_support import SHARED_BROKER, Subscriber, free_port, wait_for
from tests.test_mqtt_commands import clear_retained


def egw_mqtt(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="egw")
    mqtt_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["mqtt", *argv])
    return int(args.func(args))


def test_status_drain_requeue_and_publish_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data_dir = tmp_path / "gw"
    gid = init_identity(data_dir).gateway_id
    with ob.Outbox(data_dir, gid) as box:
        a = box.put_result(events_pb2.RapidTestResult(message_id="a"))
        with box.state.transaction() as db:
            ob.park(db, a, "broker refused it: Not authorized")
    assert egw_mqtt("status", "--data-dir", str(data_dir)) == 0
    out = capsys.readouterr().out
    assert "mqtt link: never-connected" in out and "parked 1" in out and "ALARM" in out

    assert egw_mqtt("drain", "--data-dir", str(data_dir), "--mqtt", f"mqtt://127.0.0.1:{free_port()}", "--timeout", "0.5") == 1
    assert "cannot reach" in capsys.readouterr().out
    assert egw_mqtt("requeue", "--data-dir", str(data_dir)) == 0
    assert "1 parked message(s) back in line" in capsys.readouterr().out
    sub = Subscriber(1883, f"egw/v1/{gid}/#").start()
    try:
        assert egw_mqtt("drain", "--data-dir", str(data_dir), "--mqtt", SHARED_BROKER, "--json") == 0
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] and report["delivered"] == 1
        assert egw_mqtt("publish-test", "--data-dir", str(data_dir), "--mqtt", SHARED_BROKER) == 0
        on_topic = lambda: [p for t, p, _r in sub.snapshot() if t.endswith("devices/egw-test/state")]  # noqa: E731
        wait_for(lambda: len(on_topic()) == 2, 10, "the test device state and the message clearing it")
        assert "egw-test" in json.loads(on_topic()[0]).values() and on_topic()[1] == b""
        capsys.readouterr()
        assert egw_mqtt("status", "--data-dir", str(data_dir), "--json") == 0
        status = json.loads(capsys.readouterr().out)
        assert status["link"]["state"] == "stopped" and status["outbox"]["count"] == 0 and status["alarms"] == []
    finally:
        sub.stop()
        clear_retained(gid)
        with State(data_dir) as state:
            clear = state.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        assert clear == 0


def test_platform_mqtt_simulator_cli_sends_a_signed_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.uplink.mqtt_config import LinkConfig
    from gateway.uplink.mqtt_link import MqttLink
    from simulators.platform_mqtt.cli import main as platform_main

    key = ec.generate_private_key(ec.SECP256R1())
    platform_dir = tmp_path / "platform"
    platform_dir.mkdir()
    (platform_dir / "signing.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    data_dir = tmp_path / "gw"
    gid = init_identity(data_dir).gateway_id
    (data_dir / "identity" / "platform.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    link = MqttLink(data_dir, LinkConfig(SHARED_BROKER)).start()  # trusts identity/platform.pem by default
    try:
        assert link.wait_connected(10)
        assert platform_main(["cmd", "--data", str(platform_dir), "--mqtt", SHARED_BROKER, gid, "ping"]) == 0
        reply = json.loads(capsys.readouterr().out)
        assert reply["ok"] and reply["result"]["pong"] == "true"
        assert platform_main(["cmd", "--data", str(platform_dir), "--mqtt", SHARED_BROKER, gid, "reupload", "evidence_id=nope"]) == 3
        assert "unknown-evidence" in capsys.readouterr().out
    finally:
        link.stop()
        clear_retained(gid)
