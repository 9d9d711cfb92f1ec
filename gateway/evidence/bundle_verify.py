"""``egw verify``: judge an exported bundle offline, by the rules of ``docs/trust.md``.

Nothing inside a bundle is believed because it is there: the CA certificate it carries only helps
build a chain; proof of origin needs a trust anchor the person verifying chose. Without one, the
best verdict is "CONSISTENT, UNTRUSTED" (every signature and digest agrees with the others, but
anyone could have made the whole set). Each signature counts only from a certificate with the role
for it, naming the identity the payload claims, valid and not revoked at the signing time — the
earliest independent proof of when it was made (a receipt, or a time-stamp token over a tree head that
includes the item: ``bundle_time.py``), never the signer's own clock. The parts a bundle carries are judged
by ``bundle_parts_verify.py``.

Every check runs whatever the others found and names what it compared, so each kind of tampering
fails a check of its own; a check whose input did not load says "cannot check".
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.errors import VerificationError
from gateway.evidence import dsse, merkle
from gateway.evidence.bundle_time import check_time_stamp, read_time_stamp
from gateway.evidence.custody import verify_tree_head
from gateway.evidence.identity import load_pem_certificates
from gateway.evidence.manifest import MANIFEST_TYPE, parse_manifest
from gateway.evidence.receipt import parse_receipt, received_at, verify_receipt
from gateway.evidence.schemas import check_major_version, check_schema
from gateway.evidence.store import sha256_file
from gateway.evidence.trust import Anchors, Revocations, SigningTime, check_signer, select_crl
from protos.pki_roles import Role

__all__ = ["BUNDLE_FORMAT", "PARTS_DIR", "Check", "Report", "judge_bundle", "verify_bundle"]

BUNDLE_FORMAT = "egw.bundle/1"
PARTS_DIR = "parts"
VERIFIED, FAILED, UNTRUSTED = "VERIFIED", "FAILED", "CONSISTENT, UNTRUSTED"
EXIT_CODES = {VERIFIED: 0, FAILED: 1, UNTRUSTED: 3}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


@dataclass
class Report:
    """The checks, and whom and what they relied on: the trust anchor, the gateway, the platform, the time."""

    checks: list[Check]
    anchors: Anchors
    gateway: str = "unknown (the gateway certificate did not check out)"
    platform: str = "none (no receipt in the bundle)"
    signing_time: SigningTime = field(default_factory=lambda: SigningTime.from_proofs(None))
    revocation: Revocations = field(default_factory=Revocations)
    # What a parent bundle needs of a part to see what it references (None when it did not load).
    manifest: dict[str, Any] | None = None
    content: Path | None = None

    @property
    def verdict(self) -> str:
        if not all(c.ok for c in self.checks):
            return FAILED
        return VERIFIED if self.anchors.chosen else UNTRUSTED

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def relied_on(self) -> dict[str, str]:
        """What the verdict rests on, one line each (the text report and ``--json``)."""
        revocation = self.revocation.describe() if self.anchors.chosen else \
            "not checked: a CRL counts only when a trust anchor signed it"
        return {"trust anchor": self.anchors.describe(), "gateway": self.gateway, "platform": self.platform,
                "signing time": self.signing_time.describe(), "revocation": revocation}


class _Bundle:
    """Reads bundle files, refusing names that would leave the bundle directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        try:
            self.index = json.loads((self.root / "bundle.json").read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise VerificationError(f"{root} has no bundle.json: not an egw bundle") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise VerificationError(f"bundle.json is not valid JSON: {exc}") from exc
        check_major_version(self.index, "format", "egw.bundle", "bundle.json format")
        check_schema("bundle-index", self.index, "bundle.json")

    def path(self, key: str) -> Path | None:
        name = self.index.get(key)
        if name is None:
            return None
        if not isinstance(name, str):
            raise VerificationError(f"bundle.json {key} is not a file name")
        candidate = (self.root / name).resolve()
        if self.root not in candidate.parents:
            raise VerificationError(f"bundle.json {key} points outside the bundle ({name!r})")
        if not candidate.is_file():
            raise VerificationError(f"bundle file {name} is missing")
        return candidate

    def read(self, key: str) -> bytes:
        path = self.path(key)
        if path is None:
            raise VerificationError(f"bundle.json names no {key}")
        return path.read_bytes()


def judge_bundle(root: Path, *, anchors: Anchors | None = None, crls: list[tuple[str, bytes]] | None = None,
                 document: Path | None = None, is_part: bool = False) -> Report:
    """Run every check against the chosen ``anchors``; ``crls`` are (origin, bytes) beyond the bundle's own.
    ``is_part``: judging ``parts/<id>/`` of another bundle, which lists no parts of its own."""
    anchors = anchors or Anchors()
    try:
        bundle = _Bundle(root)
    except VerificationError as exc:
        return Report([Check("bundle", False, str(exc))], anchors)
    report = _Verification(bundle, anchors, list(crls or []), document).run_all()
    from gateway.evidence.bundle_parts_verify import judge_parts, parts_not_carried

    if is_part and "parts" in bundle.index:
        report.checks.append(Check("bundle", False, "a part lists parts of its own; only the top bundle.json lists them"))
    elif "parts" in bundle.index:
        report.checks.extend(judge_parts(bundle.root, bundle.index, report, anchors, list(crls or [])))
    else:
        report.checks.extend(parts_not_carried(report, is_part))
    return report


def verify_bundle(root: Path, *, anchors: Anchors | None = None, document: Path | None = None) -> list[Check]:
    """The checks alone (callers that only list failures); ``judge_bundle`` has the verdict."""
    return judge_bundle(root, anchors=anchors, document=document).checks


_Step = Callable[[], tuple[str, Any]]


class _Verification:
    """One verification of one bundle: a method per check, in the order the report lists them."""

    def __init__(self, bundle: _Bundle, anchors: Anchors, crls: list[tuple[str, bytes]], document: Path | None) -> None:
        self.bundle = bundle
        self.anchors = anchors
        self.document = document
        self.report = Report([], anchors)
        self.envelope: dsse.Envelope | None = None
        self.manifest: dict[str, Any] | None = None
        self.certs: list[x509.Certificate] | None = None
        self.material: dict[str, Any] | None = None
        self.head: tuple[int, bytes] | None = None
        self.receipt_time: tuple[Any, str] | None = None
        self.crl_candidates = crls

    def run(self, name: str, step: _Step) -> Any:
        """Record the check's outcome; its value (None when it failed) feeds the checks after it."""
        try:
            detail, value = step()
            self.report.checks.append(Check(name, True, detail))
            return value
        except VerificationError as exc:
            self.report.checks.append(Check(name, False, str(exc)))
            return None

    def run_all(self) -> Report:
        loaded = self.run("manifest", self.load_manifest)
        self.envelope, self.manifest = loaded if loaded else (None, None)
        self.run("content digest", self.content)
        self.report.revocation = self.revocations()
        bundle_certs = self._bundle_certificates()
        if self.bundle.index.get("receipt") is not None:
            self.report.platform = "unknown (the receipt did not check out)"
            self.run("receipt", lambda: self.receipt(bundle_certs))
        try:
            self.material = self.proof_material()
        except VerificationError as exc:
            self.report.checks.append(Check("inclusion proof", False, str(exc)))
        stamp = self.run("time-stamp", lambda: self.time_stamp(bundle_certs)) \
            if self.bundle.index.get("time_stamp") is not None else None
        # The signing time is the earliest of what the receipt and the time-stamp token prove, never the
        # manifest's own clock.
        when = self.receipt_time
        self.report.signing_time = SigningTime.from_proofs(when[0] if when else None, when[1] if when else "", stamp)
        self.certs = self.run("signer certificate", lambda: self.certificates(bundle_certs))
        self.run("manifest signature", self.manifest_signature)
        self.head = self.run("tree-head signature", self.tree_head)
        self.run("inclusion proof", self.inclusion)
        if self.document is not None:
            self.run("document", self.binds_document)
        self.report.manifest = self.manifest
        try:
            self.report.content = self.bundle.path("content")
        except VerificationError:
            self.report.content = None
        return self.report

    # ---- inputs ---------------------------------------------------------------------------------------

    def load_manifest(self) -> tuple[str, tuple[dsse.Envelope, dict[str, Any]]]:
        bundle = self.bundle
        envelope = dsse.Envelope.from_bytes(bundle.read("manifest"))
        if envelope.payload_type == MANIFEST_TYPE:
            body_any = envelope.payload_json()
            check_major_version(body_any, "v", "egw.manifest", "manifest version")
            check_schema("manifest", body_any, "the manifest")
        body = parse_manifest(envelope)
        digests = body.get("digests") or {}
        if digests.get("sha256", body["sha256"]) != body["sha256"]:
            raise VerificationError(f"manifest states two SHA-256 digests ({body['sha256']} and digests.sha256 "
                                    f"{digests['sha256']}); one of them is false")
        if body["evidence_id"] != bundle.index.get("evidence_id"):
            raise VerificationError(f"manifest is for {body['evidence_id']}, bundle.json says {bundle.index.get('evidence_id')}")
        return f"evidence {body['evidence_id']} from gateway {body['gateway_id']} (as the manifest claims)", (envelope, body)

    def _bundle_certificates(self) -> list[x509.Certificate] | None:
        try:
            return load_pem_certificates(self.bundle.read("certificates")) or None
        except VerificationError:
            return None

    def _chain_anchors(self, bundle_certs: list[x509.Certificate]) -> list[x509.Certificate]:
        """The chosen anchors; without any, the bundle's own self-signed CA — for consistency only (verdict 3)."""
        if self.anchors.chosen:
            return self.anchors.certificates
        return [c for c in bundle_certs[1:] if c.issuer == c.subject]

    def revocations(self) -> Revocations:
        candidates = list(self.crl_candidates)
        try:
            crl_path = self.bundle.path("crl")
        except VerificationError:
            crl_path = None
        if crl_path is not None:
            candidates.insert(0, ("the bundle's crl.pem", crl_path.read_bytes()))
        return select_crl(candidates, self.anchors) if self.anchors.chosen else Revocations()

    # ---- checks ---------------------------------------------------------------------------------------

    def receipt(self, bundle_certs: list[x509.Certificate] | None) -> tuple[str, None]:
        manifest = self.manifest
        if manifest is None:
            raise VerificationError("cannot check: the manifest did not load")
        env = dsse.Envelope.from_bytes(self.bundle.read("receipt"))
        payload = env.payload_json() if env.payload_type.endswith("+json") else None
        check_schema("receipt", payload, "the receipt")
        platform_certs = load_pem_certificates(self.bundle.read("platform_certificate"))
        if not platform_certs:
            raise VerificationError("platform.pem holds no certificate")
        signer = platform_certs[0]
        anchors = self._chain_anchors(bundle_certs or [])
        receipt = verify_receipt(env, signer, anchors, intermediates=platform_certs[1:],
                                 evidence_id=manifest["evidence_id"], sha256=manifest["sha256"], size=manifest["size"],
                                 gateway_id=manifest["gateway_id"], at_signing_time=True)
        when = received_at(parse_receipt(env))
        # The receipt signer's own time proves nothing about itself: revoked at all, it is not believed.
        self.report.revocation.check(signer, SigningTime.from_proofs(None))
        self.receipt_time = (when, receipt.platform_id)
        self.report.platform = f"{receipt.platform_id} (receipt signer {signer.subject.rfc4514_string()})"
        return (f"receipt {receipt.receipt_id} from platform {receipt.platform_id} for gateway {receipt.gateway_id}, "
                f"received {when.isoformat()}; signer {signer.subject.rfc4514_string()} holds the receipt-signer role, "
                f"valid at receivedAt"), None

    def time_stamp(self, bundle_certs: list[x509.Certificate] | None) -> tuple[str, tuple[dt.datetime, str] | None]:
        """An RFC 3161 token over a signed tree head that includes the item's entry (bundle_time.py)."""
        material, manifest = self.material, self.manifest
        if material is None or manifest is None or not bundle_certs:
            raise VerificationError("cannot check: the manifest, the custody proof or the gateway certificate did not load")
        proof = read_time_stamp(self.bundle.read("time_stamp"))
        when, tsa, tsa_cert, covered = check_time_stamp(
            proof, entry=material["entry"], leaf_index=material["index"], gateway_key=bundle_certs[0].public_key(),
            gateway_id=manifest["gateway_id"], anchors=self._chain_anchors(bundle_certs))
        # genTime is the TSA's own statement, as receivedAt is the platform's: a TSA revoked at all is not believed
        # (a stolen TSA key would date its tokens before the revocation).
        self.report.revocation.check(tsa_cert, SigningTime.from_proofs(None))
        return (f"token by {tsa} at {when.isoformat()} over the gateway's {covered}; the TSA certificate "
                f"{tsa_cert.subject.rfc4514_string()} holds the time-stamping role and chains to the "
                f"{'trust anchor' if self.anchors.chosen else 'bundle CA'}"), (when, tsa)

    def certificates(self, certs: list[x509.Certificate] | None) -> tuple[str, list[x509.Certificate]]:
        if not certs:
            raise VerificationError("certificates.pem holds no certificate")
        claimed = self.manifest["gateway_id"] if self.manifest else None
        when = self.report.signing_time
        how, gateway = check_signer(certs[0], certs[1:], self._chain_anchors(certs), Role.GATEWAY, claimed, when.at)
        self.report.revocation.check(certs[0], when)
        self.report.gateway = f"{gateway} (certificate {certs[0].subject.rfc4514_string()})"
        if self.envelope is not None:
            kid = dsse.key_id(certs[0].public_key())  # type: ignore[arg-type]  # key_id() only needs public_bytes(), which every key type has
            signed = [k for k, _ in self.envelope.signatures]
            if kid not in signed:
                raise VerificationError(
                    f"certificate {certs[0].subject.rfc4514_string()} (key {kid[:16]}…) is not the key that signed "
                    f"the manifest (key {signed[0][:16]}…)")
        judged = f"at {when.at.isoformat()}" if when.at else "now (signing time unproven)"
        return f"gateway {gateway}, {how}, valid and not revoked {judged}{self._clock_note(certs[0])}", certs

    def _clock_note(self, cert: x509.Certificate) -> str:
        """The manifest's own time proves nothing, but one outside its certificate's life tells an investigator
        the gateway's clock was wrong when it ingested."""
        try:
            claimed = dt.datetime.fromisoformat(str((self.manifest or {})["ingested_at"]))
        except (KeyError, ValueError):
            return ""
        claimed = claimed if claimed.tzinfo else claimed.replace(tzinfo=dt.UTC)
        if cert.not_valid_before_utc <= claimed <= cert.not_valid_after_utc:
            return ""
        return (f"; note: the manifest's own time {claimed.isoformat()} is outside this certificate's validity: "
                "the gateway's clock was probably wrong then (that time is not relied on)")

    def content(self) -> tuple[str, None]:
        manifest = self.manifest
        if manifest is None:
            raise VerificationError("cannot check: the manifest did not load")
        path = self.bundle.path("content")
        assert path is not None
        sha, size = sha256_file(path)
        if size != manifest["size"]:
            raise VerificationError(f"content is {size} bytes, manifest says {manifest['size']}")
        if sha != manifest["sha256"]:
            raise VerificationError(f"content SHA-256 {sha} differs from the manifest's {manifest['sha256']}")
        return f"sha256 {sha}, {size} bytes", None

    def manifest_signature(self) -> tuple[str, None]:
        if self.envelope is None or not self.certs:
            raise VerificationError("cannot check: manifest or signer certificate did not load")
        signer = self.certs[0].public_key()
        dsse.verify(self.envelope, signer, MANIFEST_TYPE)  # type: ignore[arg-type]  # a non-EC key fails verify()
        return f"signed by key {dsse.key_id(signer)[:16]}…", None  # type: ignore[arg-type]

    def proof_material(self) -> dict[str, Any]:
        try:
            proof = json.loads(self.bundle.read("custody_proof"))
        except ValueError as exc:
            raise VerificationError(f"custody-proof.json is not JSON: {exc}") from exc
        check_schema("custody-proof", proof, "custody-proof.json")
        try:
            return {
                "index": int(proof["leaf_index"]),
                "size": int(proof["tree_size"]),
                "entry": base64.b64decode(proof["entry"], validate=True),
                "path": [bytes.fromhex(h) for h in proof["inclusion_path"]],
                "head": dsse.Envelope.from_json(proof["tree_head"]),
            }
        except (KeyError, ValueError, TypeError, binascii.Error) as exc:
            raise VerificationError(f"custody-proof.json is malformed: {exc}") from exc

    def tree_head(self) -> tuple[str, tuple[int, bytes]]:
        material = self.material
        if material is None or not self.certs:
            raise VerificationError("cannot check: proof or signer certificate did not load")
        size, root_hash, body = verify_tree_head(material["head"], self.certs[0].public_key())
        check_major_version(body, "v", "egw.tree-head", "tree head version")
        check_schema("tree-head", body, "the signed tree head")
        if self.manifest is not None and body["gateway_id"] != self.manifest["gateway_id"]:
            raise VerificationError(f"tree head is signed for gateway {body['gateway_id']!r}, the manifest is from "
                                    f"{self.manifest['gateway_id']!r}; one gateway cannot vouch for another's log")
        if size != material["size"]:
            raise VerificationError(f"signed tree head covers {size} entries, the proof claims {material['size']}")
        return f"gateway {body['gateway_id']}, size {size}, root {root_hash.hex()[:16]}…", (size, root_hash)

    def inclusion(self) -> tuple[str, None]:
        material, head = self.material, self.head
        if material is None or head is None:
            raise VerificationError("cannot check: the signed tree head did not verify")
        try:
            entry = json.loads(material["entry"])
        except ValueError as exc:
            raise VerificationError("custody entry is not JSON") from exc
        check_major_version(entry, "v", "egw.custody", "custody entry version")
        check_schema("custody-entry", entry, "the custody entry")
        self._entry_matches_manifest(entry)
        merkle.verify_inclusion(merkle.leaf_hash(material["entry"]), material["index"], head[0], material["path"], head[1])
        return f"entry {material['index']} ({entry.get('event')}) is in the signed tree", None

    def _entry_matches_manifest(self, entry: dict[str, Any]) -> None:
        manifest, envelope = self.manifest, self.envelope
        if manifest is not None and envelope is not None:
            if entry.get("evidence_id") != manifest["evidence_id"]:
                raise VerificationError("custody entry is for another evidence id")
            if entry.get("gateway_id") != manifest["gateway_id"]:
                raise VerificationError("custody entry is from another gateway's log")
            if entry.get("manifest_sha256") != hashlib.sha256(envelope.payload).hexdigest():
                raise VerificationError("custody entry commits to a different manifest")
            if entry.get("sha256") != manifest["sha256"]:
                raise VerificationError("custody entry commits to a different content digest")

    def binds_document(self) -> tuple[str, None]:
        manifest, document = self.manifest, self.document
        if manifest is None:
            raise VerificationError("cannot check: the manifest did not load")
        assert document is not None
        bound = (manifest.get("extra") or {}).get("document", {}).get("sha256")
        if not bound:
            raise VerificationError("this evidence binds no document")
        sha, _ = sha256_file(document)
        if sha != bound:
            raise VerificationError(f"{document} has SHA-256 {sha}; the record binds document SHA-256 {bound}")
        return f"binds {document.name} (sha256 {sha})", None
