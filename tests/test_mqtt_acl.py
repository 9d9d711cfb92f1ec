"""Our own TLS broker with client certificates and an ACL: the gateway stays inside egw/v1/<its CN>/.

Broker: ``require_certificate true``, ``use_identity_as_username true`` and an
ACL that lets each certificate's CN write only below ``egw/v1/<CN>/``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.evidence.identity import init_identity
from gateway.uplink import outbox as ob
from gateway.uplink.mqtt_config import LinkConfig
from gateway.uplink.mqtt_link import MqttLink, drain_outbox, link_status
from protos.egw.v1 import events_pb2
from simulators.platform_mqtt import PlatformMqtt, TlsFiles
from tests.mqtt_support import MiniCA, Mosquitto, enrol_for_tls, wait_for, write_cert, write_key

PLATFORM_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("tlsbroker")
    ca = MiniCA.create()
    server_key = ec.generate_private_key(ec.SECP256R1())
    write_key(work / "server.key", server_key)
    write_cert(work / "server.crt", ca.issue("localhost", server_key.public_key(), server=True))
    write_cert(work / "ca.crt", ca.cert)
    (work / "acl").write_text("pattern readwrite egw/v1/%u/#\n\nuser platform\ntopic readwrite egw/v1/#\ntopic read outside/#\n")
    broker = Mosquitto(work, extra=(
        f"user root\nallow_anonymous false\ncafile {work / 'ca.crt'}\ncertfile {work / 'server.crt'}\n"
        f"keyfile {work / 'server.key'}\nrequire_certificate true\nuse_identity_as_username true\nacl_file {work / 'acl'}\n"
    )).start()
    platform_files = ca.client_files(work, "platform")
    yield broker, ca, platform_files, work
    broker.kill()


def _platform(tmp_path: Path, broker: Mosquitto, files: dict[str, str]) -> PlatformMqtt:
    return PlatformMqtt(tmp_path / "platform", f"mqtts://127.0.0.1:{broker.port}", signing_key=PLATFORM_KEY,
                        tls=TlsFiles(files["ca"], files["cert"], files["key"])).start()


def test_enrolled_gateway_publishes_and_takes_commands_over_mutual_tls(tmp_path: Path, tls_broker):
    broker, ca, pfiles, _ = tls_broker
    data_dir = tmp_path / "gw"
    gid = init_identity(data_dir).gateway_id
    enrol_for_tls(data_dir, ca)
    platform = _platform(tmp_path, broker, pfiles)
    link = MqttLink(data_dir, LinkConfig(f"mqtts://127.0.0.1:{broker.port}", platform_cert=PLATFORM_KEY.public_key())).start()
    try:
        assert link.wait_connected(10), link_status(data_dir)
        link.put_result(events_pb2.RapidTestResult(message_id="tls-1"))
        assert link.wait_drained(10)
        wait_for(lambda: platform.records(f"egw/v1/{gid}/results/"), 5, "the result at the platform")
        assert platform.send_command(gid, "ping").ok
    finally:
        link.stop()
        platform.stop()


def test_the_broker_acl_keeps_a_gateway_inside_its_own_root(tmp_path: Path, tls_broker):
    broker, ca, pfiles, work = tls_broker
    data_dir = tmp_path / "gw"
    gid = init_identity(data_dir).gateway_id
    enrol_for_tls(data_dir, ca)
    platform = _platform(tmp_path, broker, pfiles)
    acks: dict[int, object] = {}
    acked = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rogue", protocol=MQTTProtocolVersion.MQTTv5)
    ident_dir = data_dir / "identity"
    client.tls_set(ca_certs=str(ident_dir / "ca.pem"), certfile=str(ident_dir / "gateway.crt"), keyfile=str(ident_dir / "gateway.key"))

    def on_publish(_c, _u, mid, rc, _p):
        acks[mid] = rc
        if len(acks) == 3:
            acked.set()

    client.on_publish = on_publish
    try:
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        mids = {
            "other": client.publish("egw/v1/gw-someone-else/results/rapidtest", b'{"messageId":"forged"}', qos=1).mid,
            "outside": client.publish("outside/anything", b"x", qos=1).mid,
            "own": client.publish(f"egw/v1/{gid}/results/rapidtest", b'{"messageId":"own"}', qos=1).mid,
        }
        assert acked.wait(5)
        assert acks[mids["other"]].is_failure and acks[mids["outside"]].is_failure  # 0x87 not authorised
        assert not acks[mids["own"]].is_failure
        wait_for(lambda: platform.records(f"egw/v1/{gid}/"), 5, "the gateway's own message")
        assert platform.records("egw/v1/gw-someone-else/") == [] and platform.records("outside/") == []
    finally:
        client.disconnect()
        client.loop_stop()
        platform.stop()


def test_a_gateway_whose_certificate_names_someone_else_parks_refused_messages(tmp_path: Path, tls_broker):
    broker, ca, _, _ = tls_broker
    data_dir = tmp_path / "gw"
    gid = init_identity(data_dir).gateway_id
    enrol_for_tls(data_dir, ca, cn="gw-wrong-name")  # the ACL root is the CN, not our gateway id
    with ob.Outbox(data_dir, gid) as box:
        box.put_result(events_pb2.RapidTestResult(message_id="refused-1"))
        box.put_result(events_pb2.RapidTestResult(message_id="refused-2"))
    report = drain_outbox(data_dir, f"mqtts://127.0.0.1:{broker.port}", timeout=3)
    assert not report.ok and report.remaining == 2 and report.parked == 2
    status = link_status(data_dir)
    assert status["outbox"]["parked"] == 2 and "Not authorized" in status["link"]["last_error"]
    assert any("parked" in a for a in status["alarms"])


def test_a_certificate_the_broker_does_not_trust_is_refused_and_nothing_is_lost(tmp_path: Path, tls_broker):
    broker, ca, _, _ = tls_broker
    data_dir = tmp_path / "gw"
    gid = init_identity(data_dir).gateway_id  # self-signed: not issued by the broker's CA
    write_cert(data_dir / "identity" / "ca.pem", ca.cert)  # but it does trust the broker
    with ob.Outbox(data_dir, gid) as box:
        box.put_result(events_pb2.RapidTestResult(message_id="kept"))
    report = drain_outbox(data_dir, f"mqtts://127.0.0.1:{broker.port}", timeout=1.5)
    assert not report.ok and report.remaining == 1 and report.delivered == 0
    status = link_status(data_dir)
    assert status["link"]["last_connected_at"] is None and "does not trust" in status["link"]["last_error"]
    assert report.link_state == "refused"
