"""``egw conformance mqtt``: our gateway conforms; a publisher that breaks a rule fails, naming it.

Real Mosquitto (the shared broker on 127.0.0.1:1883, one fresh gateway id per test), real ``egw``
processes: the kit listens while ``egw sync --once --mqtt`` drains a gateway's outbox.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.evidence.identity import load_identity
from protos import dsse
from protos.pki_roles import Role, identity_uri
from tests.conftest import run_egw, spawn_egw
from tests.mqtt_support import MiniCA, write_cert

BROKER = "mqtt://127.0.0.1:1883"


def _give_gateway_role(data_dir: Path, ca: MiniCA) -> Path:
    """Re-issue the gateway's certificate as enrolment does: gateway role, id in a URI SAN."""
    ident = load_identity(data_dir)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, ident.gateway_id)]))
        .issuer_name(ca.cert.subject).public_key(ident.private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([Role.GATEWAY.purpose, x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri(Role.GATEWAY, ident.gateway_id))]),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    write_cert(ident.directory / "gateway.crt", cert)
    write_cert(ident.directory / "ca.pem", ca.cert)
    return ident.directory / "gateway.crt"


def _kit(gateway_id: str, cert: Path, ca: Path, seconds: float = 6.0):
    proc = spawn_egw("conformance", "mqtt", BROKER, "--gateway", gateway_id, "--seconds", str(seconds),
                     "--cert", str(cert), "--trust", str(ca), "--json")
    time.sleep(1.5)  # subscribed before anything is published (retained topics would arrive anyway)
    return proc


def _result(proc) -> dict:
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return {"exit": proc.returncode, **json.loads(out)}


def _rows(result: dict) -> dict[str, tuple[str, str]]:
    return {row["rule"]: (row["outcome"], row["detail"]) for row in result["rows"]}


def _clear_retained(gateway_id: str, topics: list[str]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    for topic in topics:
        client.publish(f"egw/v1/{gateway_id}/{topic}", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def gateway(tmp_path: Path):
    gateway_id = f"gw-conf-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", gateway_id, check=True)
    ca = MiniCA.create("conformance test CA")
    cert = _give_gateway_role(data, ca)
    write_cert(tmp_path / "ca.pem", ca.cert)
    yield gateway_id, data, cert, tmp_path / "ca.pem"
    _clear_retained(gateway_id, ["state", "custody/sth", "devices/cam-c/state", "evidence/x"])


def test_our_gateway_conforms(gateway, tmp_path: Path):
    gateway_id, data, cert, ca = gateway
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + b"conformance" * 50)
    run_egw("ingest", str(photo), "--device-id", "cam-c", "--officer-id", "o-1", "--data-dir", str(data), check=True)
    kit = _kit(gateway_id, cert, ca)
    run_egw("mqtt", "drain", "--mqtt", BROKER, "--data-dir", str(data), check=True)
    result = _result(kit)
    rows = _rows(result)
    assert result["exit"] == 0 and result["passed"], rows
    assert rows["payload matches its published schema"][0] == "pass"
    assert rows["signed payloads verify with the gateway key"][0] == "pass"  # the tree head
    assert rows["egw-seq on every lane message (MQTT 5)"][0] == "pass"
    assert rows["the certificate holds the gateway role for this id"][0] == "pass"


def test_a_publisher_that_breaks_the_contract_fails_with_named_reasons(gateway):
    gateway_id, _data, cert, ca = gateway
    kit = _kit(gateway_id, cert, ca, seconds=4.0)
    forger = ec.generate_private_key(ec.SECP256R1())
    head = json.dumps({"gateway_id": gateway_id, "root_hash": "00" * 32, "tree_size": 1, "v": "egw.tree-head/1"}).encode()
    envelope = dsse.sign("application/vnd.egw.tree-head.v1+json", head, forger).to_json()
    evidence_id = "01a249dc-cba3-7d03-a6ea-164ff0833981"
    state = {"at": "2026-12-06T05:38:56Z", "evidenceId": "01a249dc-cba3-7d03-a6ea-000000000000",
             "messageId": "01a249dc-cbaf-7d56-9c74-e47a18d75b79", "state": "queued"}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    for topic, payload in ((f"evidence/{evidence_id}", state),
                           ("custody/sth", {"envelope": envelope, "rootHash": "00" * 32, "treeSize": "1"}),
                           ("debug/dump", {"anything": 1})):
        client.publish(f"egw/v1/{gateway_id}/{topic}", json.dumps(payload), qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    result = _result(kit)
    rows = _rows(result)
    assert result["exit"] == 1 and not result["passed"]
    assert rows["ids in the payload agree with the topic"][0] == "FAIL"
    assert evidence_id in rows["ids in the payload agree with the topic"][1]
    assert rows["signed payloads verify with the gateway key"][0] == "FAIL"
    assert rows["topic is one the contract names"][0] == "FAIL"
    assert "debug/dump" in rows["topic is one the contract names"][1]
    assert rows["egw-seq on every lane message (MQTT 5)"][0] == "FAIL"  # a forger does not number its messages
