"""Attacks on the verifier and on the gateway's checks of what the platform signs (issue #15, docs/trust.md).

Each test is an attack that worked on the code before this change: real bundles made by real `egw`
processes, certificates from a CA that stands in for the platform's (tests/pki_support.py), and the
verdict of a real `egw verify`. ``EGW_DATA_DIR`` points at an empty directory for every verify, so
no gateway on this machine lends its pinned CA by accident.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.errors import VerificationError
from gateway.evidence import dsse
from gateway.evidence.bundle import export_bundle
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.identity import init_identity
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.state import State
from protos.pki_roles import Role
from simulators.platform_mqtt import sign_command
from tests.conftest import REPO, egw_env
from tests.pki_support import (
    Issued,
    add_receipt,
    gateway_key,
    install_identity,
    issue,
    make_ca,
    make_crl,
    now,
    pem,
    reforge,
    sign_receipt,
)

FAKETIME = shutil.which("faketime")


def egw(tmp_path: Path, *args: str, faketime: str | None = None) -> subprocess.CompletedProcess[str]:
    nowhere = tmp_path / "no-gateway-here"
    prefix = [FAKETIME, faketime] if faketime else []
    assert not faketime or FAKETIME, "Debian's faketime is missing: scripts/test installs it"
    return subprocess.run([*prefix, sys.executable, "-m", "gateway", *args], cwd=REPO,  # type: ignore[list-item]
                          env=egw_env(EGW_DATA_DIR=str(nowhere)), capture_output=True, text=True, timeout=120)


def verdict(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else proc.stderr.strip()


@dataclass
class Station:
    """A gateway data directory with a certificate from ``ca``, one ingested item and its exported bundle."""

    data: Path
    gateway_id: str
    cert: Issued
    evidence_id: str
    bundle: Path

    def manifest(self) -> dict[str, object]:
        return dsse.Envelope.from_bytes((self.bundle / "manifest.dsse.json").read_bytes()).payload_json()

    def receipt(self, signer: Issued, *chain: object, **overrides: object) -> None:
        body = self.manifest()
        fields: dict[str, object] = {"evidence_id": body["evidence_id"], "gateway_id": body["gateway_id"],
                                     "sha256": body["sha256"], "size": body["size"]}
        fields.update(overrides)
        add_receipt(self.bundle, sign_receipt(signer, **fields), signer.cert, *chain)  # type: ignore[arg-type]


def station(tmp_path: Path, ca: Issued, name: str, gateway_id: str, *, claimed_id: str | None = None,
            ingest_faketime: str | None = None, **cert_kwargs: object) -> Station:
    """A gateway key, a certificate from ``ca`` installed as enrolment would, one item ingested and exported.
    ``claimed_id``: the gateway id the data directory (and so every manifest) claims, when not its certificate's.
    ``ingest_faketime``: ingest with a real `egw ingest` whose clock is set back (how a thief back-dates)."""
    data = tmp_path / name
    init_identity(data, gateway_id)
    cert = install_identity(data, ca, gateway_id, **cert_kwargs)
    if claimed_id is not None:
        meta = json.loads((data / "identity" / "gateway.json").read_text())
        (data / "identity" / "gateway.json").write_text(json.dumps({**meta, "gateway_id": claimed_id}))
    sample = tmp_path / f"{name}.txt"
    sample.write_text(f"statement taken by {name}\n")
    if ingest_faketime:
        ingested = egw(tmp_path, "ingest", "--data-dir", str(data), "--json", str(sample), faketime=ingest_faketime)
        assert ingested.returncode == 0, ingested.stderr
        evidence_id = json.loads(ingested.stdout)["items"][0]["evidence_id"]
    else:
        with EvidenceService(data) as service:
            evidence_id = service.ingest_file(sample, ManifestInput(source_path=sample.name)).evidence_id
    bundle = tmp_path / f"{name}-bundle"
    export(data, evidence_id, bundle)
    return Station(data, claimed_id or gateway_id, cert, evidence_id, bundle)


def export(data: Path, evidence_id: str, bundle: Path) -> None:
    with EvidenceService(data) as service:
        export_bundle(service, evidence_id, bundle)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Issued, Path]:
    """The platform CA, its receipt signer, and the CA certificate as a file a verifier would be handed."""
    ca = make_ca()
    signer = issue(ca, Role.RECEIPT_SIGNER, "platform-real", not_before=now() - dt.timedelta(days=30))
    ca_file = tmp_path_factory.mktemp("platform") / "platform-ca.pem"
    ca_file.write_bytes(pem(ca.cert))
    return ca, signer, ca_file


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory, platform: tuple[Issued, Issued, Path]) -> Station:
    """gw-real's item, exported without a receipt; tests work on copies (``copy_of``)."""
    return station(tmp_path_factory.mktemp("genuine"), platform[0], "real", "gw-real")


def copy_of(real: Station, tmp_path: Path) -> Station:
    bundle = tmp_path / "bundle"
    shutil.copytree(real.bundle, bundle)
    return Station(real.data, real.gateway_id, real.cert, real.evidence_id, bundle)


# ---- trust anchors -------------------------------------------------------------------------------------------

def test_a_bundle_forged_from_scratch_under_a_look_alike_ca_is_never_verified(tmp_path, platform, genuine):
    """Before: `egw verify` without --trust believed the CA inside the bundle, so an attacker's own CA named
    like the platform's, with its own gateway certificate and receipt signer, printed VERIFIED and exit 0."""
    ca, signer, ca_file = platform
    fake_ca = make_ca()  # same name as the platform CA, another key
    forged = station(tmp_path, fake_ca, "forger", "gw-victim")
    forged.receipt(issue(fake_ca, Role.RECEIPT_SIGNER, "platform-real"))

    no_anchor = egw(tmp_path, "verify", str(forged.bundle))
    assert no_anchor.returncode == 3, no_anchor.stdout + no_anchor.stderr
    assert verdict(no_anchor) == "CONSISTENT, UNTRUSTED"
    assert "trust anchor: none" in no_anchor.stdout

    anchored = egw(tmp_path, "verify", str(forged.bundle), "--trust", str(ca_file))
    assert anchored.returncode == 1 and verdict(anchored).startswith("FAILED"), anchored.stdout
    assert "FAIL signer certificate" in anchored.stdout and "FAIL receipt" in anchored.stdout

    # On the gateway that made a bundle, its pinned CA is the default anchor, and the report says so.
    real = copy_of(genuine, tmp_path)
    real.receipt(signer)
    pinned = egw(tmp_path, "verify", str(forged.bundle), "--data-dir", str(real.data))
    assert pinned.returncode == 1 and "pinned at enrolment" in pinned.stdout, pinned.stdout
    genuine = egw(tmp_path, "verify", str(real.bundle), "--data-dir", str(real.data))
    assert genuine.returncode == 0 and verdict(genuine) == "VERIFIED", genuine.stdout
    assert "pinned at enrolment" in genuine.stdout and "gateway: gw-real" in genuine.stdout
    assert "platform: platform-test" in genuine.stdout and "signing time: " in genuine.stdout
    assert "receipt receivedAt" in genuine.stdout

    anchors = tmp_path / "anchors"
    anchors.mkdir()
    shutil.copy(ca_file, anchors / "platform.crt")
    both = egw(tmp_path, "verify", str(forged.bundle), "--trust", str(anchors), "--trust", str(ca_file), "--json")
    report = json.loads(both.stdout)
    assert both.returncode == 1 and report["verdict"] == "FAILED" and not report["ok"]


def test_a_missing_trust_file_is_a_one_line_usage_error(tmp_path, platform, genuine):
    ca, _, _ = platform
    real = copy_of(genuine, tmp_path)
    proc = egw(tmp_path, "verify", str(real.bundle), "--trust", str(tmp_path / "missing.pem"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: cannot read trust anchor") and "missing.pem" in proc.stderr.splitlines()[0]


# ---- roles and identities ------------------------------------------------------------------------------------

def test_a_gateway_cannot_sign_platform_receipts(tmp_path, platform, genuine):
    """Before: any certificate from the platform CA passed as the receipt signer; a gateway signed
    "platform receipts" for its own evidence with its own key."""
    ca, _, ca_file = platform
    real = copy_of(genuine, tmp_path)
    real.receipt(Issued(gateway_key(real.data), real.cert.cert))
    proc = egw(tmp_path, "verify", str(real.bundle), "--trust", str(ca_file))
    assert proc.returncode == 1, proc.stdout
    assert "FAIL receipt" in proc.stdout and "may not act as the platform signing receipts" in proc.stdout


def test_a_certificate_a_gateway_issued_itself_is_no_platform_signer(tmp_path, platform, genuine):
    """A gateway certificate is no CA: one it "issues" with the receipt-signer role does not chain."""
    ca, _, ca_file = platform
    real = copy_of(genuine, tmp_path)
    minted = issue(Issued(gateway_key(real.data), real.cert.cert), Role.RECEIPT_SIGNER, "platform-real")
    real.receipt(minted, real.cert.cert)
    proc = egw(tmp_path, "verify", str(real.bundle), "--trust", str(ca_file))
    assert proc.returncode == 1 and "is not a CA" in proc.stdout, proc.stdout


@pytest.mark.parametrize("overrides, complaint", [
    ({"gateway_id": None}, "receipt names gateway (none)"),
    ({"evidence_id": None}, "receipt names evidence (none)"),
    ({"gateway_id": "gw-other"}, "receipt names gateway gw-other"),
])
def test_a_receipt_must_name_the_manifests_gateway_and_evidence(tmp_path, platform, genuine, overrides, complaint):
    """Before: the receipt's gatewayId was never compared and its evidenceId was optional."""
    ca, signer, ca_file = platform
    real = copy_of(genuine, tmp_path)
    real.receipt(signer, **overrides)
    proc = egw(tmp_path, "verify", str(real.bundle), "--trust", str(ca_file))
    assert proc.returncode == 1 and "FAIL receipt" in proc.stdout, proc.stdout
    assert complaint in proc.stdout or "the receipt does not follow the published schema" in proc.stdout


def test_a_manifest_naming_another_gateway_is_refused(tmp_path, platform):
    """Before: the manifest's gateway_id was not tied to its signer. Gateway A signed a manifest (and tree
    head) naming gateway B, carried B's genuine receipt, and verified with --trust."""
    ca, signer, ca_file = platform
    impostor = station(tmp_path, ca, "gw-a", "gw-a", claimed_id="gw-b")
    impostor.receipt(signer)  # the platform receipted it for gw-b
    proc = egw(tmp_path, "verify", str(impostor.bundle), "--trust", str(ca_file))
    assert proc.returncode == 1, proc.stdout
    assert "FAIL signer certificate" in proc.stdout and "'gw-a' but the signed content claims 'gw-b'" in proc.stdout


# ---- signing time and revocation -----------------------------------------------------------------------------

def test_a_stolen_key_of_an_expired_gateway_cannot_back_date_evidence(tmp_path, platform):
    """Before: validity was judged at the manifest's own claimed time, so the key of a gateway retired a year
    ago signed a bundle dated inside its certificate's life (clock set back) and it verified."""
    ca, _, ca_file = platform
    retired = station(tmp_path, ca, "retired", "gw-retired", ingest_faketime="-500 days",
                      not_before=now() - dt.timedelta(days=800), not_after=now() - dt.timedelta(days=400))
    proc = egw(tmp_path, "verify", str(retired.bundle), "--trust", str(ca_file))
    assert proc.returncode == 1, proc.stdout
    assert "FAIL signer certificate" in proc.stdout and "has expired" in proc.stdout
    assert "signing time: unproven" in proc.stdout


def test_a_revoked_gateway_cannot_back_date_evidence_and_old_receipted_evidence_stays_good(tmp_path, platform):
    ca, signer, ca_file = platform
    revoked_at = now() - dt.timedelta(days=1)
    gw_cert_days = {"not_before": now() - dt.timedelta(days=10)}
    # The CRL must name the serial of the certificate installed below: issue it first, revoke, then install.
    data_probe = station(tmp_path, ca, "revoked", "gw-revoked", ingest_faketime="-3 days", **gw_cert_days)
    crl = make_crl(ca, [(data_probe.cert.cert, revoked_at)], number=2)
    (data_probe.data / "identity" / "crl.pem").write_bytes(crl)
    bundle = tmp_path / "revoked-with-crl"
    assert egw(tmp_path, "export", data_probe.evidence_id, str(bundle), "--data-dir", str(data_probe.data)).returncode == 0
    assert json.loads((bundle / "bundle.json").read_text())["crl"] == "crl.pem"

    # Back-dated, no receipt: nothing proves it was signed before the revocation.
    proc = egw(tmp_path, "verify", str(bundle), "--trust", str(ca_file))
    assert proc.returncode == 1 and "was revoked at" in proc.stdout, proc.stdout
    assert "revocation: CRL #2" in proc.stdout

    # Without the bundle's CRL the verifier brings one; the highest number wins, and a CRL from another CA
    # does not count (it could otherwise hide a revocation behind a higher number).
    bare = data_probe.bundle  # exported before the CRL existed
    fresh, older, alien = tmp_path / "fresh.crl", tmp_path / "older.crl", tmp_path / "alien.crl"
    fresh.write_bytes(crl)
    older.write_bytes(make_crl(ca, [], number=1))
    alien.write_bytes(make_crl(make_ca(), [], number=99))
    assert egw(tmp_path, "verify", str(bare), "--trust", str(ca_file)).returncode == 0
    with_crls = egw(tmp_path, "verify", str(bare), "--trust", str(ca_file),
                    "--crl", str(older), "--crl", str(alien), "--crl", str(fresh))
    assert with_crls.returncode == 1 and "was revoked at" in with_crls.stdout, with_crls.stdout

    # A platform receipt from before the revocation proves the signature older than it: still good.
    receipted = tmp_path / "receipted"
    shutil.copytree(bundle, receipted)
    body = dsse.Envelope.from_bytes((receipted / "manifest.dsse.json").read_bytes()).payload_json()
    add_receipt(receipted, sign_receipt(signer, evidence_id=body["evidence_id"], gateway_id="gw-revoked",
                                        sha256=body["sha256"], size=body["size"],
                                        received_at=revoked_at - dt.timedelta(hours=12)), signer.cert)
    good = egw(tmp_path, "verify", str(receipted), "--trust", str(ca_file))
    assert good.returncode == 0 and verdict(good) == "VERIFIED", good.stdout
    # ...unless the receipt is dated after the revocation.
    late = tmp_path / "late"
    shutil.copytree(bundle, late)
    add_receipt(late, sign_receipt(signer, evidence_id=body["evidence_id"], gateway_id="gw-revoked",
                                   sha256=body["sha256"], size=body["size"]), signer.cert)
    assert egw(tmp_path, "verify", str(late), "--trust", str(ca_file)).returncode == 1


# ---- published schemas (#17) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, complaint", [
    (lambda m: m["digests"].update(sha256="0" * 64), "two SHA-256 digests"),
    (lambda m: m.update(evidence_id="not-a-uuid"), "does not follow the published schema"),
    (lambda m: m.update(size=str(m["size"])), "does not follow the published schema manifest.schema.json at size"),
    (lambda m: m.update(v="egw.manifest/2"), "upgrade egw"),
])
def test_a_manifest_outside_the_published_schema_is_refused(tmp_path, platform, genuine, edit, complaint):
    """Before: a manifest re-signed by its gateway's key with a second digest that disagrees, an id that
    is no UUIDv7 or a size as text verified; a newer major version was refused without saying why."""
    ca, _, ca_file = platform
    real = copy_of(genuine, tmp_path)
    reforge(real.bundle, gateway_key(real.data), manifest_edit=edit)
    proc = egw(tmp_path, "verify", str(real.bundle), "--trust", str(ca_file))
    assert proc.returncode == 1 and complaint in proc.stdout, proc.stdout


def test_a_tree_head_outside_the_published_schema_is_refused(tmp_path, platform, genuine):
    ca, _, ca_file = platform
    real = copy_of(genuine, tmp_path)
    key = gateway_key(real.data)
    reforge(real.bundle, key)  # the forgery machinery alone leaves a bundle that verifies
    assert egw(tmp_path, "verify", str(real.bundle), "--trust", str(ca_file)).returncode == 0
    reforge(real.bundle, key, head_edit=lambda h: h.update(tree_size="1"))
    proc = egw(tmp_path, "verify", str(real.bundle), "--trust", str(ca_file))
    assert proc.returncode == 1 and "tree-head.schema.json at tree_size" in proc.stdout, proc.stdout


def test_a_bundle_of_a_newer_major_format_says_to_upgrade(tmp_path, platform, genuine):
    ca, _, ca_file = platform
    real = copy_of(genuine, tmp_path)
    index = json.loads((real.bundle / "bundle.json").read_text())
    (real.bundle / "bundle.json").write_text(json.dumps({**index, "format": "egw.bundle/2"}))
    proc = egw(tmp_path, "verify", str(real.bundle), "--trust", str(ca_file))
    assert proc.returncode == 1 and "egw.bundle/2, a major version this egw does not read" in proc.stdout, proc.stdout
    assert "upgrade egw" in proc.stdout


# ---- live checks on the gateway ------------------------------------------------------------------------------

def test_live_receipts_need_the_pinned_signer_with_its_role_and_our_gateway_id(tmp_path, platform, genuine):
    """Before: the uploader accepted a receipt without gatewayId, and any pinned certificate from the CA
    (a TLS-only one, say) as the receipt signer."""
    from gateway.uplink.link import load_link

    ca, signer, _ = platform
    real = copy_of(genuine, tmp_path)
    body = real.manifest()
    item = {"evidence_id": str(body["evidence_id"]), "sha256": str(body["sha256"]), "size": int(body["size"])}  # type: ignore[call-overload]

    def receipt(by: Issued, **overrides: object) -> dsse.Envelope:
        fields: dict[str, object] = {**item, "gateway_id": "gw-real"}
        fields.update(overrides)
        return dsse.Envelope.from_bytes(sign_receipt(by, **fields))  # type: ignore[arg-type]

    (real.data / "identity" / "platform.pem").write_bytes(pem(signer.cert))
    link = load_link(real.data)
    assert link.verify_receipt(receipt(signer), **item).gateway_id == "gw-real"
    for bad, complaint in [(receipt(signer, gateway_id=None), "names gateway (none)"),
                           (receipt(signer, gateway_id="gw-other"), "names gateway gw-other"),
                           (receipt(issue(ca, Role.RECEIPT_SIGNER, "platform-other")), "signature")]:
        with pytest.raises(VerificationError, match=re.escape(complaint)):
            link.verify_receipt(bad, **item)

    tls_only = issue(ca, None, "platform-tls")
    (real.data / "identity" / "platform.pem").write_bytes(pem(tls_only.cert))
    with pytest.raises(VerificationError, match="may not act as the platform signing receipts"):
        load_link(real.data).verify_receipt(receipt(tls_only), **item)


def test_commands_need_the_command_signer_role(tmp_path, platform, genuine):
    """Before: commands were checked against the pinned certificate's key whatever that certificate was
    issued for; a receipt-only signer (or the TLS certificate) could command gateways."""
    from gateway.uplink.commands import CommandRejected, CommandVerifier, load_command_signer

    ca, _, _ = platform
    real = copy_of(genuine, tmp_path)
    receipt_only = issue(ca, Role.RECEIPT_SIGNER, "platform-real")
    commander = issue(ca, Role.COMMAND_SIGNER, "platform-real")
    pinned = real.data / "identity" / "platform.pem"

    def run(signer: Issued) -> str:
        pinned.write_bytes(pem(signer.cert))
        verifier = CommandVerifier("gw-real", load_command_signer(pinned))
        signed, _ = sign_command(signer.key, "gw-real", "ping")
        with State(real.data) as state, state.transaction() as db:
            try:
                return verifier.verify(db, "ping", signed).name
            except CommandRejected as exc:
                return exc.code

    assert run(receipt_only) == "wrong-role"
    assert run(commander) == "ping"
