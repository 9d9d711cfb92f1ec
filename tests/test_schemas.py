"""The JSON Schemas in docs/schemas/ against real output of ``egw``.

One gateway data directory goes through what an operator does: ingest, export a bundle before
enrolment, enrol with the reference platform (real TLS on loopback), ``egw sync --once`` so the
platform signs a receipt, export again, verify both bundles (and a tampered copy), check the
custody log, ask for the status. Every JSON document those commands print or write is validated
against the schema that publishes its format; so is every MQTT payload a gateway link publishes
through a Mosquitto of our own, as the reference platform's subscriber receives it. The schemas
themselves must be valid draft 2020-12 and each one must be exercised here, and the worked examples
on docs/formats/ must still compute. A schema that drifts from the code, or code that drifts from
its published format, fails this test.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from simulators.platform.cli import issue_token
from tests.conftest import REPO, run_egw
from tests.uplink_support import platform_server

SCHEMAS = REPO / "docs" / "schemas"
NS = "urn:egw:schemas:"


def _load_schemas() -> dict[str, dict[str, Any]]:
    return {path.name.removesuffix(".schema.json"): json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(SCHEMAS.glob("*.schema.json"))}


ALL = _load_schemas()
REGISTRY = Registry().with_resources((NS + name, Resource.from_contents(doc)) for name, doc in ALL.items())


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(ALL[name], registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(name: str, document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator(name).iter_errors(document)]


def egw_json(*args: str, expect: int = 0) -> Any:
    proc = run_egw(*args, "--json")
    assert proc.returncode == expect, f"egw {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def payload(envelope: dict[str, Any]) -> Any:
    return json.loads(base64.b64decode(envelope["payload"]))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every output once; the platform is stopped before the tests look at them."""
    root = tmp_path_factory.mktemp("schemas")
    data = root / "gw"
    run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-schemas", check=True)
    clip, note = root / "clip.mp4", root / "note.txt"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    note.write_text("officer's note\n", encoding="utf-8")
    out: dict[str, Any] = {"data": data}
    out["ingest"] = egw_json("ingest", "--data-dir", str(data), "--device-id", "cam-7", "--officer-id", "000042",
                             "--unit", "Traffic 3", "--important", "--sm3", str(clip), str(note))
    out["ingest-again"] = egw_json("ingest", "--data-dir", str(data), "--device-id", "cam-7",
                                   str(root / "missing.bin"), str(note), expect=1)
    evidence_id = out["ingest"]["items"][0]["evidence_id"]
    out["local"] = root / "bundle-local"
    out["export-local"] = egw_json("export", evidence_id, str(out["local"]), "--data-dir", str(data))
    out["status-local"] = egw_json("status", "--data-dir", str(data))

    platform_data = root / "platform"
    with platform_server(platform_data) as server:
        token = issue_token(platform_data, gateway_id="gw-schemas")["token"]
        out["enroll"] = egw_json("enroll", "--data-dir", str(data), "--platform", server.address, "--token", token)
        out["sync"] = egw_json("sync", "--once", "--data-dir", str(data))
    out["bundle"] = root / "bundle"
    out["export"] = egw_json("export", evidence_id, str(out["bundle"]), "--data-dir", str(data))
    out["verify"] = egw_json("verify", str(out["bundle"]), "--data-dir", str(data))  # the CA pinned at enrolment
    tampered = root / "tampered"
    shutil.copytree(out["bundle"], tampered)
    content = tampered / out["export"]["content"]
    content.write_bytes(content.read_bytes()[:-1] + b"!")
    out["verify-tampered"] = egw_json("verify", str(tampered), "--data-dir", str(data), expect=1)
    out["verify-untrusted"] = egw_json("verify", str(out["bundle"]), "--data-dir", str(root / "elsewhere"), expect=3)
    out["custody"] = egw_json("custody", "verify", "--data-dir", str(data))
    out["status"] = egw_json("status", "--data-dir", str(data))
    with sqlite3.connect(data / "state.db") as db:
        out["entries"] = [bytes(row[0]) for row in db.execute("SELECT entry FROM custody ORDER BY seq")]
    yield out


def _rapid_test_result() -> Any:
    """One rapid-test result as the ASTM driver hands it over (the pipeline makes it evidence)."""
    import hashlib
    from datetime import datetime, timezone

    from drivers.rapidtest import Judgement, RapidTestResult

    text = b"H|\\^&|||RT-9^1.0^SN42\rR|1|^^^OPPEST^organophosphates|62.5|%|0^50|H||F\rL|1|N\r"
    return RapidTestResult(
        instrument_id="SN42", instrument_model="RT-9", instrument_version="1.0", message_id="M7", sample_id="S1",
        sample_description="spinach", item_code="OPPEST", item_name="organophosphates", method="enzyme inhibition",
        standard="GB/T 5009.199-2003", value="62.5", unit="%", reference_range="0^50", cutoff="50", abnormal_flag="H",
        status="F", judgement=Judgement.POSITIVE, operator="op", started_at=None,
        tested_at=datetime(2026, 5, 1, 9, 30, tzinfo=timezone.utc), comments=(), result_index=1, results_in_message=1,
        termination_code="N", message_digest=hashlib.sha256(text).hexdigest(), message_text=text, transcript=b"\x05" + text)


@pytest.fixture(scope="module")
def mqtt_produced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Any]]]:
    """What a gateway publishes, as the reference platform's MQTT side receives it from a broker of our own:
    birth and will, an evidence state, a rapid-test result, a device state, the tree head, a command and replies."""
    from gateway.evidence.identity import init_identity
    from gateway.evidence.evidence_service import EvidenceService
    from gateway.station.delivery import device_message
    from gateway.uplink.mqtt_config import LinkConfig
    from gateway.uplink.mqtt_link import MqttLink
    from gateway.workflows.rapidtest import RapidTestPipeline
    from simulators.platform.pki import PlatformPKI
    from simulators.platform_mqtt import PlatformMqtt
    from tests.mqtt_support import Mosquitto, wait_for

    root = tmp_path_factory.mktemp("mqtt-schemas")
    gateway_id = "gw-mqtt-schemas"
    identity = init_identity(root / "gw", gateway_id)
    pki = PlatformPKI.load_or_create(root / "platform")
    broker = Mosquitto(root).start()
    recorder = PlatformMqtt(root / "platform", broker.url, signing_key=pki.platform_key,
                            gateway_keys={gateway_id: identity.certificate}).start()
    try:
        with EvidenceService(root / "gw") as service:
            link = MqttLink(root / "gw", LinkConfig(broker.url, platform_cert=pki.platform_cert), evidence_service=service)
            link.start()
            try:
                assert link.wait_connected(15), "the gateway's MQTT link did not come up"
                pipeline = RapidTestPipeline(service)  # queues results/rapidtest itself, in the result's transaction
                pipeline.record(_rapid_test_result())
                link.put_device_state(device_message({
                    "device_id": "cam-9", "kind": "bodycam", "state": "docked", "safe_to_undock": True, "updated": 1796535600,
                    "battery_percent": 80, "files_total": 3, "files_receipted": 3, "bytes_total": 3000,
                    "bytes_ingested": 3000, "officer_no": "000042", "detail": "all recordings receipted"}))
                assert recorder.send_command(gateway_id, "ping").ok
                assert not recorder.send_command(gateway_id, "reboot").ok  # signed, but unknown to the gateway
                kinds = ("state", "evidence", "result", "device-state", "custody-sth", "command", "command-reply")
                wait_for(lambda: all(recorder.records(kind=k) for k in kinds), 20, "every kind of message")
            finally:
                link.stop()
        wait_for(lambda: any(r.json()["state"] == "offline" for r in recorder.records(kind="state")), 10, "offline")
        records = recorder.records()
    finally:
        recorder.stop()
        broker.kill()
    out: dict[str, list[Any]] = {}
    for record in records:
        out.setdefault(record.kind, []).append(record)
    yield out


def test_every_schema_is_valid_draft_2020_12() -> None:
    assert ALL, f"no schema in {SCHEMAS}"
    for name, doc in ALL.items():
        Draft202012Validator.check_schema(doc)
        assert doc["$id"] == NS + name, f"{name}: $id must be {NS + name} (references use it)"


def _bundle_json(produced: dict[str, Any], name: str) -> list[Any]:
    return [read_json(produced[b] / name) for b in ("local", "bundle")]


def _envelopes(produced: dict[str, Any]) -> list[Any]:
    proofs = _bundle_json(produced, "custody-proof.json")
    return [*_bundle_json(produced, "manifest.dsse.json"), read_json(produced["bundle"] / "receipt.dsse.json"),
            *(p["tree_head"] for p in proofs)]


# For every schema file: the real documents it is checked against.
SAMPLES: dict[str, Any] = {
    "cli-ingest": lambda p: [p["ingest"], p["ingest-again"]],
    "cli-export": lambda p: [p["export-local"], p["export"]],
    "cli-status": lambda p: [p["status-local"], p["status"]],
    "cli-enroll": lambda p: [p["enroll"]],
    "cli-sync": lambda p: [p["sync"]],
    "cli-verify": lambda p: [p["verify"], p["verify-tampered"], p["verify-untrusted"]],
    "cli-custody-verify": lambda p: [p["custody"]],
    "bundle-index": lambda p: _bundle_json(p, "bundle.json"),
    "dsse-envelope": _envelopes,
    "manifest": lambda p: [payload(e) for e in _bundle_json(p, "manifest.dsse.json")],
    "receipt": lambda p: [payload(read_json(p["bundle"] / "receipt.dsse.json"))],
    "tree-head": lambda p: [payload(proof["tree_head"]) for proof in _bundle_json(p, "custody-proof.json")],
    "custody-proof": lambda p: _bundle_json(p, "custody-proof.json"),
    "custody-entry": lambda p: [json.loads(raw) for raw in p["entries"]]
    + [json.loads(base64.b64decode(proof["entry"])) for proof in _bundle_json(p, "custody-proof.json")],
}
# For every MQTT schema: the kind under which the reference platform records those messages.
MQTT_SAMPLES = {
    "mqtt-gateway-state": "state",
    "mqtt-evidence-state": "evidence",
    "mqtt-rapidtest-result": "result",
    "mqtt-device-state": "device-state",
    "mqtt-signed-tree-head": "custody-sth",
    "mqtt-signed-command": "command",
    "mqtt-command-reply": "command-reply",
}


# Schemas whose real output is produced and checked by a test of their own (named here, so it cannot vanish).
CHECKED_ELSEWHERE = {"mqtt-delivery": "tests/test_delivery.py", "time-stamp-proof": "tests/test_bundle_time.py"}


def _command_payloads(request: pytest.FixtureRequest) -> list[Any]:
    return [payload(r.json()["envelope"]) for r in request.getfixturevalue("mqtt_produced")["command"]]


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_schema_matches_real_output(request: pytest.FixtureRequest, name: str) -> None:
    """Parametrised over the schema files themselves: a schema nobody checks fails here."""
    if name in MQTT_SAMPLES:
        documents = [r.json() for r in request.getfixturevalue("mqtt_produced")[MQTT_SAMPLES[name]]]
    elif name == "mqtt-command":
        documents = _command_payloads(request)
    elif name in CHECKED_ELSEWHERE:
        source = (Path(__file__).resolve().parent.parent / CHECKED_ELSEWHERE[name]).read_text(encoding="utf-8")
        assert f'errors("{name}"' in source, f"{CHECKED_ELSEWHERE[name]} no longer checks docs/schemas/{name}.schema.json"
        return
    else:
        assert name in SAMPLES, f"docs/schemas/{name}.schema.json is not checked against any real output"
        documents = SAMPLES[name](request.getfixturevalue("produced"))
    assert documents
    for document in documents:
        assert errors(name, document) == [], f"real output does not match docs/schemas/{name}.schema.json: {document}"


def test_no_sample_without_a_schema_file() -> None:
    named = set(SAMPLES) | set(MQTT_SAMPLES) | {"mqtt-command"}
    assert named <= set(ALL), f"samples for missing schema files: {named - set(ALL)}"


def test_mqtt_signatures_verify_as_documented(mqtt_produced: dict[str, list[Any]]) -> None:
    """docs/mqtt.md: the tree head and the signed result verify with the gateway's key; the result's readable
    fields are those of the signed manifest's extra.rapidtest."""
    for kind in ("custody-sth", "result"):
        assert all(r.verified for r in mqtt_produced[kind]), [(r.topic, r.note) for r in mqtt_produced[kind]]
    (result,) = (r.json() for r in mqtt_produced["result"])
    manifest = payload(result["signedResult"])
    assert result["signedResult"]["payloadType"] == "application/vnd.egw.manifest.v1+json"
    assert errors("manifest", manifest) == []
    signed = manifest["extra"]["rapidtest"]
    assert (result["sampleId"], result["itemCode"], result["value"], result["judgement"]) == (
        signed["sample"]["id"], signed["item"]["code"], signed["value"], signed["judgement"])
    replies = [r.json() for r in mqtt_produced["command-reply"]]
    assert any(r.get("ok") for r in replies) and any(r.get("error", "").startswith("unknown-command: ") for r in replies)


def test_the_outputs_are_the_interesting_cases(produced: dict[str, Any]) -> None:
    """The schema tests above see a failure, a duplicate, a receipt and a tampered bundle, not just the easy path."""
    assert [i.get("duplicate") for i in produced["ingest-again"]["items"]] == [None, True]
    assert produced["export-local"]["receipt"] is None and produced["export"]["receipt"] == "receipt.dsse.json"
    assert produced["sync"]["outcomes"][0]["status"] == "receipted"
    assert produced["status"]["counts"]["receipted"] == 2 and produced["status"]["enrolled"]
    assert produced["verify"]["ok"] and not produced["verify-tampered"]["ok"] and not produced["verify-untrusted"]["ok"]
    assert (produced["verify"]["verdict"], produced["verify-untrusted"]["verdict"]) == ("VERIFIED", "CONSISTENT, UNTRUSTED")
    assert any(c["name"] == "receipt" and c["ok"] for c in produced["verify"]["checks"])


def test_bundle_envelopes_carry_the_documented_payload_types(produced: dict[str, Any]) -> None:
    for envelope in _bundle_json(produced, "manifest.dsse.json"):
        assert envelope["payloadType"] == "application/vnd.egw.manifest.v1+json"
    for proof in _bundle_json(produced, "custody-proof.json"):
        assert proof["tree_head"]["payloadType"] == "application/vnd.egw.tree-head.v1+json"
        assert json.loads(base64.b64decode(proof["entry"]))["event"] == "ingested"
    assert read_json(produced["bundle"] / "receipt.dsse.json")["payloadType"] == "application/vnd.egw.receipt.v1+json"


def test_the_custody_entries_checked_cover_the_conditional_parts(produced: dict[str, Any]) -> None:
    """custody-entry.schema.json has rules per event: the log checked above holds each of those events."""
    assert {json.loads(raw)["event"] for raw in produced["entries"]} >= {"ingested", "exported", "receipted"}


def test_manifests_with_sm3_and_the_officer_flag_match(produced: dict[str, Any]) -> None:
    """Both items of the first ingest, read from state.db: the schema sees the optional SM3 digest and the officer flag."""
    from gateway.evidence.evidence_service import EvidenceService

    with EvidenceService(produced["data"]) as service:
        manifests = [json.loads(base64.b64decode(json.loads(service.state.get(i["evidence_id"]).manifest)["payload"]))
                     for i in produced["ingest"]["items"]]
    for manifest in manifests:
        assert errors("manifest", manifest) == []
        assert "sm3" in manifest["digests"] and manifest["important"] is True


@pytest.mark.parametrize(("name", "mutate"), [
    ("manifest", lambda m: m.update(surprise=1)),
    ("manifest", lambda m: m.update(sha256=m["sha256"].upper())),
    ("manifest", lambda m: m.update(evidence_id="not-a-uuid")),
    ("manifest", lambda m: m.update(ingested_at="2026-12-06 05:37:58")),
    ("manifest", lambda m: m.pop("capture")),
    ("custody-entry", lambda e: e.pop("manifest_sha256")),
    ("custody-entry", lambda e: e.update(event="invented")),
    ("tree-head", lambda t: t.update(tree_size="4")),
    ("receipt", lambda r: r.update(size=12)),
    ("bundle-index", lambda b: b.update(content="../outside")),
])
def test_the_schemas_are_tight(produced: dict[str, Any], name: str, mutate: Any) -> None:
    """A real document that passes, changed in one way the code never writes, must fail."""
    bundle = produced["bundle"]
    proof = read_json(bundle / "custody-proof.json")
    document = {
        "manifest": lambda: payload(read_json(bundle / "manifest.dsse.json")),
        "custody-entry": lambda: json.loads(base64.b64decode(proof["entry"])),
        "tree-head": lambda: payload(proof["tree_head"]),
        "receipt": lambda: payload(read_json(bundle / "receipt.dsse.json")),
        "bundle-index": lambda: read_json(bundle / "bundle.json"),
    }[name]()
    assert errors(name, document) == []
    mutate(document)
    assert errors(name, document) != []


def test_the_worked_examples_on_the_format_pages_hold() -> None:
    """docs/formats/custody.md and dsse.md quote one real entry, its inclusion path and the tree head it leads to,
    and the PAE of that head: recomputing them with the code's own hashing must give the numbers printed there."""
    import re

    from gateway.evidence import merkle
    from protos.dsse import pae

    custody = (REPO / "docs" / "formats" / "custody.md").read_text(encoding="utf-8")
    lines = custody.splitlines()
    entry = next(line for line in lines if line.startswith('{"at":') and '"event":"ingested"' in line)
    leaf = merkle.leaf_hash(entry.encode("ascii"))
    assert leaf.hex() in custody, "the leaf hash printed in custody.md is not SHA-256(0x00 || the entry printed there)"
    proof_block = custody.split('```json\n{\n  "entry"', 1)[1].split("```", 1)[0]
    path = [bytes.fromhex(h) for h in re.findall(r'^    "([0-9a-f]{64})",?$', proof_block, re.M)]
    index = int(re.search(r'"leaf_index": (\d+)', proof_block).group(1))
    size = int(re.search(r'"tree_size": (\d+)', proof_block).group(1))
    head_line = next(line for line in lines if line.startswith('{"gateway_id": "gw-example"'))
    head = json.loads(head_line)
    assert len(path) == 2 and head["tree_size"] == size
    merkle.verify_inclusion(leaf, index, size, path, bytes.fromhex(head["root_hash"]))
    dsse_page = (REPO / "docs" / "formats" / "dsse.md").read_text(encoding="utf-8")
    printed = next(line for line in dsse_page.splitlines() if line.startswith("DSSEv1 "))
    assert printed.encode() == pae("application/vnd.egw.tree-head.v1+json", head_line.encode())
    assert re.search(r"payload (\d+) bytes", dsse_page).group(1) == str(len(head_line.encode()))
