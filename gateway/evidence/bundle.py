"""Self-contained evidence bundles: ``egw export`` writes one, ``egw verify`` checks it offline.

Layout of a bundle directory::

    bundle.json            index: format, evidence id, the file names below
    content/<safe name>    the original bytes (name sanitised; the device's name is in the manifest)
    manifest.dsse.json     the gateway-signed manifest
    custody-proof.json     the "ingested" custody entry, its inclusion path and the signed tree head
    certificates.pem       the gateway certificate, then its CA chain (when enrolled)
    receipt.dsse.json      the platform's signed receipt (once uploaded)
    platform.pem           the certificate that signed the receipt

Verification trusts nothing in the bundle by position: every check names
what it compared, and each kind of tampering fails a check of its own.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import shutil
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from gateway.errors import ConfigError, VerificationError
from gateway.evidence import dsse, merkle
from gateway.evidence.custody import verify_tree_head
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.identity import load_pem_certificates, verify_certificate_chain
from gateway.evidence.manifest import MANIFEST_TYPE, parse_manifest
from gateway.evidence.receipt import verify_receipt
from gateway.evidence.store import sha256_file

__all__ = ["export_bundle", "verify_bundle", "Check", "safe_file_name", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = "egw.bundle/1"
_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_file_name(device_path: str, fallback: str = "evidence.bin") -> str:
    """A name that is safe to create: last component only, no control characters,
    no leading dots, bounded length. The device's own name stays in the manifest."""
    name = re.split(r"[\\/]", device_path)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name).lstrip(".")
    if len(name.encode("utf-8")) > 120:
        stem, dot, ext = name.rpartition(".")
        ext = ext[:10] if dot else ""
        name = stem.encode("utf-8")[:100].decode("utf-8", "ignore") + (f".{ext}" if ext else "")
    return name or fallback


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_bundle(service: EvidenceService, evidence_id: str, out_dir: Path) -> dict[str, Any]:
    row = service.state.get(evidence_id)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"export directory {out_dir} is not empty", "choose a new or empty directory")
    # The export itself is a custody event; the proof covers the head signed after it.
    service.record_event(evidence_id, "exported", {"to": str(out_dir)})
    head = service.sign_tree_head()
    seq = service.custody.first_event(evidence_id, "ingested")
    entry = service.custody.entry(seq)
    path = service.custody.inclusion(seq, head.tree_size)

    (out_dir / "content").mkdir(parents=True, exist_ok=True)
    content_name = safe_file_name(row.source_path)
    with service.store.open(row.sha256) as src, open(out_dir / "content" / content_name, "wb") as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    (out_dir / "manifest.dsse.json").write_bytes(row.manifest)
    _write_json(out_dir / "custody-proof.json", {
        "leaf_index": seq,
        "tree_size": head.tree_size,
        "entry": base64.b64encode(entry).decode("ascii"),
        "inclusion_path": [h.hex() for h in path],
        "tree_head": head.envelope.to_json(),
    })
    (out_dir / "certificates.pem").write_bytes(service.identity.chain_pem())
    index: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "evidence_id": evidence_id,
        "content": f"content/{content_name}",
        "manifest": "manifest.dsse.json",
        "custody_proof": "custody-proof.json",
        "certificates": "certificates.pem",
        "receipt": None,
        "platform_certificate": None,
    }
    if row.receipt:
        (out_dir / "receipt.dsse.json").write_bytes(row.receipt)
        index["receipt"] = "receipt.dsse.json"
        platform_pem = service.identity.directory / "platform.pem"
        if platform_pem.exists():
            shutil.copyfile(platform_pem, out_dir / "platform.pem")
            index["platform_certificate"] = "platform.pem"
    _write_json(out_dir / "bundle.json", index)
    return index


# ---- verification --------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


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
        if not isinstance(self.index, dict) or self.index.get("format") != BUNDLE_FORMAT:
            raise VerificationError(f"bundle.json format is not {BUNDLE_FORMAT}")

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


def _signed_at(manifest: dict[str, Any] | None) -> dt.datetime | None:
    """When the manifest says it was signed (its ``ingested_at``); None when there is no usable time."""
    if not manifest:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(manifest["ingested_at"]))
    except (KeyError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def verify_bundle(root: Path, *, trust: list[x509.Certificate] | None = None, document: Path | None = None) -> list[Check]:
    """Run every check; a failure in one does not hide the others."""
    try:
        bundle = _Bundle(root)
    except VerificationError as exc:
        return [Check("bundle", False, str(exc))]
    return _Verification(bundle, trust or [], document).run_all()


_Step = Callable[[], tuple[str, Any]]


class _Verification:
    """One verification of one bundle: a method per check, in the order the report lists them. A check that
    depends on an earlier one (the content digest on the manifest, the inclusion proof on the tree head) says
    "cannot check" when that one failed, so each kind of tampering fails a check of its own."""

    def __init__(self, bundle: _Bundle, trust: list[x509.Certificate], document: Path | None) -> None:
        self.bundle = bundle
        self.trust = trust
        self.document = document
        self.checks: list[Check] = []
        self.envelope: dsse.Envelope | None = None
        self.manifest: dict[str, Any] | None = None
        self.certs: list[x509.Certificate] | None = None
        self.signer: Any = None
        self.material: dict[str, Any] | None = None
        self.head: tuple[int, bytes] | None = None

    def run(self, name: str, step: _Step) -> Any:
        """Record the check's outcome; its value (None when it failed) feeds the checks after it."""
        try:
            detail, value = step()
            self.checks.append(Check(name, True, detail))
            return value
        except VerificationError as exc:
            self.checks.append(Check(name, False, str(exc)))
            return None

    def run_all(self) -> list[Check]:
        loaded = self.run("manifest", self.load_manifest)
        self.envelope, self.manifest = loaded if loaded else (None, None)
        self.certs = self.run("signer certificate", self.certificates)
        self.signer = self.certs[0].public_key() if self.certs else None
        self.run("content digest", self.content)
        self.run("manifest signature", self.manifest_signature)
        try:
            self.material = self.proof_material()
        except VerificationError as exc:
            self.checks.append(Check("inclusion proof", False, str(exc)))
        self.head = self.run("tree-head signature", self.tree_head)
        self.run("inclusion proof", self.inclusion)
        if self.bundle.index.get("receipt") is not None:
            self.run("receipt", self.receipt)
        if self.document is not None:
            self.run("document", self.binds_document)
        return self.checks

    def load_manifest(self) -> tuple[str, tuple[dsse.Envelope, dict[str, Any]]]:
        bundle = self.bundle
        envelope = dsse.Envelope.from_bytes(bundle.read("manifest"))
        body = parse_manifest(envelope)
        if body["evidence_id"] != bundle.index.get("evidence_id"):
            raise VerificationError(f"manifest is for {body['evidence_id']}, bundle.json says {bundle.index.get('evidence_id')}")
        return f"evidence {body['evidence_id']}", (envelope, body)

    def certificates(self) -> tuple[str, list[x509.Certificate]]:
        certs = load_pem_certificates(self.bundle.read("certificates"))
        if not certs:
            raise VerificationError("certificates.pem holds no certificate")
        how, when = self._chain_validity(certs)
        if self.envelope is not None:
            kid = dsse.key_id(certs[0].public_key())  # type: ignore[arg-type]  # key_id() only needs public_bytes(), which every key type has
            claimed = [k for k, _ in self.envelope.signatures]
            if kid not in claimed:
                raise VerificationError(
                    f"certificate {certs[0].subject.rfc4514_string()} (key {kid[:16]}…) is not the key that signed "
                    f"the manifest (key {claimed[0][:16]}…)"
                )
        return f"{certs[0].subject.rfc4514_string()}, {how}, {when}", certs

    def _chain_validity(self, certs: list[x509.Certificate]) -> tuple[str, str]:
        """(how the chain verified, when it was valid). Validity is checked when the manifest was signed, not
        today: evidence is read in court years after the gateway's certificate (397 days when a platform issued
        it) has expired."""
        signed_at = _signed_at(self.manifest)
        try:
            how = verify_certificate_chain(certs[0], certs[1:], self.trust, at=signed_at)
            when = f"valid when signed ({signed_at.isoformat()})" if signed_at else "valid now"
        except VerificationError as at_signing:
            if signed_at is None:
                raise
            try:  # the signing time the gateway's own clock wrote may be wrong (a stepped clock): say so
                how = verify_certificate_chain(certs[0], certs[1:], self.trust)
            except VerificationError:
                raise at_signing from None
            when = (f"valid now, but NOT at the signing time the manifest states ({signed_at.isoformat()}): "
                    f"the gateway's clock was probably wrong then")
        return how, when

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
        if self.envelope is None or self.signer is None:
            raise VerificationError("cannot check: manifest or signer certificate did not load")
        dsse.verify(self.envelope, self.signer, MANIFEST_TYPE)
        kid = dsse.key_id(self.signer)
        return f"signed by key {kid[:16]}…", None

    def proof_material(self) -> dict[str, Any]:
        try:
            proof = json.loads(self.bundle.read("custody_proof"))
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
        if material is None or self.signer is None:
            raise VerificationError("cannot check: proof or signer certificate did not load")
        size, root_hash, _ = verify_tree_head(material["head"], self.signer)
        if size != material["size"]:
            raise VerificationError(f"signed tree head covers {size} entries, the proof claims {material['size']}")
        return f"size {size}, root {root_hash.hex()[:16]}…", (size, root_hash)

    def inclusion(self) -> tuple[str, None]:
        material, head = self.material, self.head
        if material is None or head is None:
            raise VerificationError("cannot check: the signed tree head did not verify")
        try:
            entry = json.loads(material["entry"])
        except ValueError as exc:
            raise VerificationError("custody entry is not JSON") from exc
        self._entry_matches_manifest(entry)
        merkle.verify_inclusion(merkle.leaf_hash(material["entry"]), material["index"], head[0], material["path"], head[1])
        return f"entry {material['index']} ({entry.get('event')}) is in the signed tree", None

    def _entry_matches_manifest(self, entry: dict[str, Any]) -> None:
        manifest, envelope = self.manifest, self.envelope
        if manifest is not None and envelope is not None:
            if entry.get("evidence_id") != manifest["evidence_id"]:
                raise VerificationError("custody entry is for another evidence id")
            if entry.get("manifest_sha256") != hashlib.sha256(envelope.payload).hexdigest():
                raise VerificationError("custody entry commits to a different manifest")
            if entry.get("sha256") != manifest["sha256"]:
                raise VerificationError("custody entry commits to a different content digest")

    def receipt(self) -> tuple[str, None]:
        manifest, certs = self.manifest, self.certs
        if manifest is None or certs is None:
            raise VerificationError("cannot check: manifest or certificates did not load")
        env = dsse.Envelope.from_bytes(self.bundle.read("receipt"))
        platform_certs = load_pem_certificates(self.bundle.read("platform_certificate"))
        anchors = self.trust or certs[1:]
        r = verify_receipt(env, platform_certs[0], anchors, evidence_id=manifest["evidence_id"],
                           sha256=manifest["sha256"], size=manifest["size"], at_signing_time=True)
        return f"receipt {r.receipt_id} from {r.platform_id}", None

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
