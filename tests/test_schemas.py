"""The JSON Schemas in docs/schemas/ against real output of ``egw``.

One gateway data directory goes through what an operator does: ingest, export a bundle before
enrolment, enrol with the reference platform (real TLS on loopback), ``egw sync --once`` so the
platform signs a receipt, export again, verify both bundles (and a tampered copy), check the
custody log, ask for the status. Every JSON document those commands print or write is validated
against the schema that publishes its format; the schemas themselves must be valid draft 2020-12
and each one must be exercised here. A schema that drifts from the code, or code that drifts from
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
        token = issue_token(platform_data)["token"]
        out["enroll"] = egw_json("enroll", "--data-dir", str(data), "--platform", server.address, "--token", token)
        out["sync"] = egw_json("sync", "--once", "--data-dir", str(data))
    out["bundle"] = root / "bundle"
    out["export"] = egw_json("export", evidence_id, str(out["bundle"]), "--data-dir", str(data))
    out["verify"] = egw_json("verify", str(out["bundle"]))
    tampered = root / "tampered"
    shutil.copytree(out["bundle"], tampered)
    content = tampered / out["export"]["content"]
    content.write_bytes(content.read_bytes()[:-1] + b"!")
    out["verify-tampered"] = egw_json("verify", str(tampered), expect=1)
    out["custody"] = egw_json("custody", "verify", "--data-dir", str(data))
    out["status"] = egw_json("status", "--data-dir", str(data))
    with sqlite3.connect(data / "state.db") as db:
        out["entries"] = [bytes(row[0]) for row in db.execute("SELECT entry FROM custody ORDER BY seq")]
    yield out


def test_every_schema_is_valid_draft_2020_12() -> None:
    assert ALL, f"no schema in {SCHEMAS}"
    for name, doc in ALL.items():
        Draft202012Validator.check_schema(doc)
        assert doc["$id"] == NS + name, f"{name}: $id must be {NS + name} (references use it)"


# (schema, what it is checked against): every schema file must appear here.
SAMPLES = {
    "cli-ingest": ["ingest", "ingest-again"],
    "cli-export": ["export-local", "export"],
    "cli-status": ["status-local", "status"],
    "cli-enroll": ["enroll"],
    "cli-sync": ["sync"],
    "cli-verify": ["verify", "verify-tampered"],
    "cli-custody-verify": ["custody"],
    "bundle-index": ["bundle.json of both bundles"],
    "dsse-envelope": ["manifest.dsse.json, receipt.dsse.json, the tree head"],
    "manifest": ["manifest payloads"],
    "receipt": ["receipt payload"],
    "tree-head": ["tree-head payloads"],
    "custody-proof": ["custody-proof.json of both bundles"],
    "custody-entry": ["every entry in state.db and both proofs"],
}


def test_every_schema_file_is_checked_against_real_output() -> None:
    assert sorted(SAMPLES) == sorted(ALL), "a schema without a sample here, or a sample without a schema file"


@pytest.mark.parametrize("name", [n for n in SAMPLES if n.startswith("cli-")])
def test_command_output_matches_its_schema(produced: dict[str, Any], name: str) -> None:
    for key in SAMPLES[name]:
        assert errors(name, produced[key]) == [], f"{key}: output of egw does not match docs/schemas/{name}.schema.json"


def test_the_outputs_are_the_interesting_cases(produced: dict[str, Any]) -> None:
    """The schema tests above see a failure, a duplicate, a receipt and a tampered bundle, not just the easy path."""
    assert [i.get("duplicate") for i in produced["ingest-again"]["items"]] == [None, True]
    assert produced["export-local"]["receipt"] is None and produced["export"]["receipt"] == "receipt.dsse.json"
    assert produced["sync"]["outcomes"][0]["status"] == "receipted"
    assert produced["status"]["counts"]["receipted"] == 2 and produced["status"]["enrolled"]
    assert produced["verify"]["ok"] and not produced["verify-tampered"]["ok"]
    assert any(c["name"] == "receipt" and c["ok"] for c in produced["verify"]["checks"])


def test_bundle_files_match_their_schemas(produced: dict[str, Any]) -> None:
    for bundle in (produced["local"], produced["bundle"]):
        index = read_json(bundle / "bundle.json")
        assert errors("bundle-index", index) == []
        manifest_envelope = read_json(bundle / index["manifest"])
        assert errors("dsse-envelope", manifest_envelope) == []
        assert manifest_envelope["payloadType"] == "application/vnd.egw.manifest.v1+json"
        assert errors("manifest", payload(manifest_envelope)) == []
        proof = read_json(bundle / index["custody_proof"])
        assert errors("custody-proof", proof) == []
        assert proof["tree_head"]["payloadType"] == "application/vnd.egw.tree-head.v1+json"
        assert errors("tree-head", payload(proof["tree_head"])) == []
        assert errors("custody-entry", json.loads(base64.b64decode(proof["entry"]))) == []
    receipt_envelope = read_json(produced["bundle"] / "receipt.dsse.json")
    assert errors("dsse-envelope", receipt_envelope) == []
    assert receipt_envelope["payloadType"] == "application/vnd.egw.receipt.v1+json"
    assert errors("receipt", payload(receipt_envelope)) == []


def test_every_custody_entry_matches_the_schema(produced: dict[str, Any]) -> None:
    entries = [json.loads(raw) for raw in produced["entries"]]
    assert {e["event"] for e in entries} >= {"ingested", "exported", "receipted"}
    for entry in entries:
        assert errors("custody-entry", entry) == [], entry


def test_the_second_manifest_carries_sm3_and_both_manifests_match(produced: dict[str, Any]) -> None:
    """Both items of the first ingest: the schema sees the optional SM3 digest and the officer flag."""
    from gateway.evidence.service import EvidenceService

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
