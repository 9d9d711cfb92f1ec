"""Trusted time in bundles (issue #16 item 3): `egw export` carries an RFC 3161 token over a signed tree head
that covers the item, and `egw verify` uses its genTime as the signing time when it is earlier than the
receipt's — only from a TSA with the time-stamping role under the trust anchor, only over that very head.

Tokens come from the reference platform's TSA code (simulators/platform/tsa.py) run in this process with a
TSA certificate from the test CA, so that a test can say *when* the token was made; they are stored by the
gateway's own ``tree_head_stamps.store_token``, as ``egw run`` stores the platform's.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from asn1crypto import algos, tsp

from gateway.evidence import tree_head_stamps
from gateway.evidence.bundle import export_bundle
from gateway.evidence.evidence_service import EvidenceService
from protos.pki_roles import Role
from simulators.platform.role_certs import TrustMaterial
from simulators.platform.tsa import TimeStampAuthority, TimeStampResponse
from tests.pki_support import Issued, issue, make_ca, make_crl, now, pem, sign_receipt
from tests.test_attacks_verify import Station, egw, station, verdict
from tests.test_schemas import errors

pytestmark = pytest.mark.timeout(180)


class DatedTSA(TimeStampAuthority):
    """The platform's TSA with its clock set to ``at`` (a test must say when a token was made)."""

    def __init__(self, ca: Issued, name: str = "egw test TSA", at: dt.datetime | None = None,
                 valid: tuple[dt.datetime, dt.datetime] | None = None) -> None:
        not_before, not_after = valid or (now() - dt.timedelta(days=30), now() + dt.timedelta(days=397))
        tsa = issue(ca, Role.TIME_STAMPING, name.replace(" ", "-"), not_before=not_before, not_after=not_after)
        super().__init__(TrustMaterial(tsa.key, tsa.cert), ca.cert)
        self.at = at or now()

    def _tst_info(self, request: tsp.TimeStampReq) -> tsp.TSTInfo:
        info = super()._tst_info(request)
        info["gen_time"] = self.at.replace(microsecond=0)
        return info

    def token(self, data: bytes) -> bytes:
        request = tsp.TimeStampReq({"version": "v1", "cert_req": True, "message_imprint": tsp.MessageImprint({
            "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "hashed_message": hashlib.sha256(data).digest()})})
        return bytes(TimeStampResponse.load(self.respond(request.dump()))["time_stamp_token"].dump())


def stamp_all(data: Path, tsa: DatedTSA) -> list[tree_head_stamps.StampedHead]:
    """Sign the current tree head and time-stamp every head without a token, as `egw run` does with the platform's."""
    with EvidenceService(data) as service:
        service.sign_tree_head()
        with service.state.lock:
            pending = tree_head_stamps.unstamped_heads(service.state.db)
        for size, envelope in pending:
            with service.state.transaction() as db:
                tree_head_stamps.store_token(db, size, tsa.token(envelope), tsa.at.isoformat(), tsa.certificate.subject.rfc4514_string())
        with service.state.lock:
            return tree_head_stamps.stamped_heads(service.state.db)


def export(data: Path, evidence_id: str, bundle: Path) -> dict[str, object]:
    with EvidenceService(data) as service:
        return export_bundle(service, evidence_id, bundle)


@pytest.fixture
def platform(tmp_path: Path) -> tuple[Issued, Path]:
    authority = make_ca()
    ca_file = tmp_path / "platform-ca.pem"
    ca_file.write_bytes(pem(authority.cert))
    return authority, ca_file


def stamped_station(tmp_path: Path, ca: Issued, at: dt.datetime, **kwargs: object) -> tuple[Station, DatedTSA, Path]:
    gw = station(tmp_path, ca, "gw", "gw-time", not_before=now() - dt.timedelta(days=10), **kwargs)  # type: ignore[arg-type]
    tsa = DatedTSA(ca, at=at)
    stamp_all(gw.data, tsa)
    bundle = tmp_path / "stamped"
    export(gw.data, gw.evidence_id, bundle)
    return gw, tsa, bundle


def test_a_token_over_a_covering_head_is_carried_and_is_the_signing_time(tmp_path, platform):
    ca, ca_file = platform
    made = now() - dt.timedelta(hours=2)
    gw, tsa, bundle = stamped_station(tmp_path, ca, made)
    index = json.loads((bundle / "bundle.json").read_text())
    assert index["time_stamp"] == "time-stamp.json" and index["tsa_certificate"] == "tsa.pem"
    proof = json.loads((bundle / "time-stamp.json").read_text())
    assert errors("time-stamp-proof", proof) == [] and errors("bundle-index", index) == []
    custody = json.loads((bundle / "custody-proof.json").read_text())
    assert proof["leaf_index"] == custody["leaf_index"] and proof["tree_size"] < custody["tree_size"]
    assert (bundle / "tsa.pem").read_bytes() == pem(tsa.certificate)

    proc = egw(tmp_path, "verify", str(bundle), "--trust", str(ca_file))
    assert proc.returncode == 0 and verdict(proc) == "VERIFIED", proc.stdout
    when = made.replace(microsecond=0).isoformat()
    name = tsa.certificate.subject.rfc4514_string()
    assert f"ok   time-stamp: token by {name} at {when}" in proc.stdout
    assert f"signing time: {when} from RFC 3161 time-stamp by {name}" in proc.stdout

    # A receipt later than the token: the token is the earlier proof and stays the signing time...
    _receipt(ca, bundle, gw, received=now() - dt.timedelta(minutes=5))
    proc = egw(tmp_path, "verify", str(bundle), "--trust", str(ca_file))
    assert proc.returncode == 0 and f"signing time: {when} from RFC 3161 time-stamp" in proc.stdout, proc.stdout
    # ...and an earlier receipt wins.
    early = made - dt.timedelta(hours=1)
    _receipt(ca, bundle, gw, received=early)
    proc = egw(tmp_path, "verify", str(bundle), "--trust", str(ca_file))
    assert proc.returncode == 0 and "from receipt receivedAt" in proc.stdout, proc.stdout


def _receipt(ca: Issued, bundle: Path, gw: Station, received: dt.datetime) -> None:
    signer = issue(ca, Role.RECEIPT_SIGNER, "platform-real", not_before=now() - dt.timedelta(days=30))
    body = gw.manifest()
    receipt = sign_receipt(signer, evidence_id=str(body["evidence_id"]), gateway_id=str(body["gateway_id"]),
                           sha256=str(body["sha256"]), size=int(body["size"]), received_at=received)  # type: ignore[call-overload]
    (bundle / "receipt.dsse.json").write_bytes(receipt)
    (bundle / "platform.pem").write_bytes(pem(signer.cert))
    index = json.loads((bundle / "bundle.json").read_text())
    index.update(receipt="receipt.dsse.json", platform_certificate="platform.pem")
    (bundle / "bundle.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _replace_token(bundle: Path, token: bytes) -> None:
    proof = json.loads((bundle / "time-stamp.json").read_text())
    proof["token"] = base64.b64encode(token).decode()
    (bundle / "time-stamp.json").write_text(json.dumps(proof, indent=2, sort_keys=True) + "\n")


def test_a_token_from_a_foreign_tsa_fails(tmp_path, platform):
    """A TSA under a look-alike CA (same names) vouches for an early time: the token must chain to the anchor."""
    ca, ca_file = platform
    gw, _, bundle = stamped_station(tmp_path, ca, now() - dt.timedelta(hours=1))
    head = json.loads((bundle / "time-stamp.json").read_text())["tree_head"]

    foreign = DatedTSA(make_ca(), at=now() - dt.timedelta(days=20))
    _replace_token(bundle, foreign.token(base64.b64decode(head)))
    proc = egw(tmp_path, "verify", str(bundle), "--trust", str(ca_file))
    assert proc.returncode == 1 and verdict(proc).startswith("FAILED"), proc.stdout
    assert "FAIL time-stamp: the time-stamp token comes from a TSA that does not chain to the trust anchors" in proc.stdout
    assert "signing time: unproven" in proc.stdout  # a refused token proves no time at all
    del gw


def test_a_token_over_another_head_fails(tmp_path, platform):
    """The token of another (genuine, signed, time-stamped) tree head is moved into the bundle: it is not over
    the bytes of the head that includes the item."""
    ca, ca_file = platform
    at = now() - dt.timedelta(hours=1)
    gw, tsa, bundle = stamped_station(tmp_path, ca, at)
    with EvidenceService(gw.data) as service:
        service.record_event(None, "note", {"text": "later"})
    stamps = stamp_all(gw.data, tsa)
    _replace_token(bundle, stamps[-1].token)
    proc = egw(tmp_path, "verify", str(bundle), "--trust", str(ca_file))
    assert proc.returncode == 1, proc.stdout
    assert "FAIL time-stamp: the time-stamp token is not over these bytes" in proc.stdout

    # The head swapped along with its token: that head is genuine but the inclusion proof is for another one.
    other = tmp_path / "other-head"
    shutil.copytree(bundle, other)
    proof = json.loads((other / "time-stamp.json").read_text())
    proof["tree_head"] = base64.b64encode(stamps[-1].envelope).decode()
    proof["tree_size"] = stamps[-1].tree_size
    (other / "time-stamp.json").write_text(json.dumps(proof))
    proc = egw(tmp_path, "verify", str(other), "--trust", str(ca_file))
    assert proc.returncode == 1 and "FAIL time-stamp" in proc.stdout, proc.stdout


def test_a_back_dated_manifest_whose_only_proof_of_time_is_after_the_revocation_fails(tmp_path, platform):
    """The gateway's key was revoked a day ago; a thief signs with its clock set back three days. A genuine
    token proves the tree head existed two hours ago — after the revocation: FAILED. The same item with a
    token from before the revocation verifies: the token, not the manifest's clock, is what counts."""
    ca, ca_file = platform
    revoked_at = now() - dt.timedelta(days=1)
    gw = station(tmp_path, ca, "thief", "gw-thief", ingest_faketime="-3 days", not_before=now() - dt.timedelta(days=10))
    (gw.data / "identity" / "crl.pem").write_bytes(make_crl(ca, [(gw.cert.cert, revoked_at)], number=3))
    late_tsa = DatedTSA(ca, at=now() - dt.timedelta(hours=2))
    stamp_all(gw.data, late_tsa)
    late = tmp_path / "late"
    export(gw.data, gw.evidence_id, late)
    proc = egw(tmp_path, "verify", str(late), "--trust", str(ca_file))
    assert proc.returncode == 1 and verdict(proc).startswith("FAILED"), proc.stdout
    assert "FAIL signer certificate" in proc.stdout and "was revoked at" in proc.stdout
    assert "signing time: " + late_tsa.at.replace(microsecond=0).isoformat() + " from RFC 3161 time-stamp" in proc.stdout

    early = tmp_path / "early"
    shutil.copytree(late, early)
    head = json.loads((early / "time-stamp.json").read_text())["tree_head"]
    _replace_token(early, DatedTSA(ca, at=revoked_at - dt.timedelta(hours=6)).token(base64.b64decode(head)))
    proc = egw(tmp_path, "verify", str(early), "--trust", str(ca_file))
    assert proc.returncode == 0 and verdict(proc) == "VERIFIED", proc.stdout


def test_a_token_from_the_reference_platforms_tsa_verifies_end_to_end(tmp_path):
    """The real path: the gateway's trust round asks the platform TSA over HTTPS (mutual TLS) for tokens over its
    signed tree heads; `egw export` carries one; `egw verify --trust <platform CA>` counts it."""
    import asyncio

    from gateway.documents.seal import SealService
    from gateway.evidence.manifest import ManifestInput
    from gateway.evidence.state import State
    from gateway.uplink.time_stamps import stamp_tree_heads
    from tests.seal_support import enrolled_gateway, trust_platform

    data = tmp_path / "gw"
    with trust_platform(tmp_path / "platform") as platform:
        identity = enrolled_gateway(data, platform)
        sample = tmp_path / "statement.txt"
        sample.write_text("statement taken at the scene\n")
        with EvidenceService(data) as service:
            evidence_id = service.ingest_file(sample, ManifestInput(source_path=sample.name)).evidence_id
            service.sign_tree_head()
        state = State(data)

        async def stamp() -> int:
            async with SealService(platform.url, identity) as seal:
                return await stamp_tree_heads(state, seal)

        assert asyncio.run(stamp()) >= 1
        state.close()
        ca_file = platform.ca_file()
        tsa_name = platform.services.roles.tsa.certificate.subject.rfc4514_string()
    bundle = tmp_path / "bundle"
    assert export(data, evidence_id, bundle)["time_stamp"] == "time-stamp.json"
    proc = egw(tmp_path, "verify", str(bundle), "--trust", str(ca_file))
    assert proc.returncode == 0 and verdict(proc) == "VERIFIED", proc.stdout
    assert "signing time: " in proc.stdout and f"from RFC 3161 time-stamp by {tsa_name}" in proc.stdout


def test_a_token_outlives_its_tsa_certificate(tmp_path, platform):
    """Years later the TSA's certificate has expired: the token is judged at its genTime, when it was valid."""
    ca, ca_file = platform
    gw = station(tmp_path, ca, "gw", "gw-old", not_before=now() - dt.timedelta(days=400))
    old_tsa = DatedTSA(ca, "retired TSA", at=now() - dt.timedelta(days=300),
                       valid=(now() - dt.timedelta(days=365), now() - dt.timedelta(days=30)))
    stamp_all(gw.data, old_tsa)
    bundle = tmp_path / "old"
    export(gw.data, gw.evidence_id, bundle)
    proc = egw(tmp_path, "verify", str(bundle), "--trust", str(ca_file))
    assert proc.returncode == 0 and verdict(proc) == "VERIFIED", proc.stdout
    assert "from RFC 3161 time-stamp by CN=retired-TSA" in proc.stdout


def test_a_revoked_tsa_is_not_believed_even_for_tokens_dated_before_its_revocation(tmp_path, platform):
    """A stolen TSA key dates its tokens as it likes: once its certificate is revoked, none of its tokens count."""
    ca, ca_file = platform
    tsa = DatedTSA(ca, at=now() - dt.timedelta(days=2))
    gw = station(tmp_path, ca, "gw", "gw-tsa", not_before=now() - dt.timedelta(days=10))
    stamp_all(gw.data, tsa)
    (gw.data / "identity" / "crl.pem").write_bytes(make_crl(ca, [(tsa.certificate, now() - dt.timedelta(hours=1))], number=4))
    bundle = tmp_path / "revoked-tsa"
    export(gw.data, gw.evidence_id, bundle)
    proc = egw(tmp_path, "verify", str(bundle), "--trust", str(ca_file))
    assert proc.returncode == 1 and "FAIL time-stamp" in proc.stdout and "was revoked at" in proc.stdout, proc.stdout
