"""Self-contained evidence bundles: ``egw export`` writes one, ``egw verify`` checks it offline.

Layout of a bundle directory::

    bundle.json            index: format, evidence id, the file names below
    content/<safe name>    the original bytes (name sanitised; the device's name is in the manifest)
    manifest.dsse.json     the gateway-signed manifest
    custody-proof.json     the "ingested" custody entry, its inclusion path and the signed tree head
    certificates.pem       the gateway certificate, then its CA chain (when enrolled)
    receipt.dsse.json      the platform's signed receipt (once uploaded)
    platform.pem           the certificate that signed the receipt
    crl.pem                the newest platform CRL the gateway held (when it had one)
    time-stamp.json        an RFC 3161 token over a signed tree head covering the item, with its proof
    tsa.pem                the certificates the token carries (the TSA's)
    parts/<evidence id>/   each item the exported one references, laid out as above (no parts of its own)

Verification is ``gateway/evidence/bundle_verify.py`` (re-exported here).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import unicodedata
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, NotFoundError, VerificationError
from gateway.evidence import dsse, tree_head_stamps
from gateway.evidence.bundle_parts import MAX_RECORD_BYTES, Reference, references
from gateway.evidence.bundle_time import export_time_stamp
from gateway.evidence.bundle_verify import BUNDLE_FORMAT, PARTS_DIR, Check, Report, judge_bundle, verify_bundle
from gateway.evidence.custody import TreeHead
from gateway.evidence.evidence_service import EvidenceService

__all__ = ["export_bundle", "verify_bundle", "judge_bundle", "Check", "Report", "safe_file_name", "BUNDLE_FORMAT"]

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
    """Write ``evidence_id`` and every part it references (``parts/<id>/``, each laid out like a bundle) to ``out_dir``."""
    service.state.get(evidence_id)  # NotFoundError before anything is recorded
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"export directory {out_dir} is not empty", "choose a new or empty directory")
    parts = _parts_of(service, evidence_id)
    # The export itself is a custody event of every item in it; the proofs cover the head signed after them.
    service.record_event(evidence_id, "exported", {"to": str(out_dir)})
    for part in parts:
        service.record_event(part, "exported", {"to": str(out_dir / PARTS_DIR / part)})
    head = service.sign_tree_head()
    with service.state.lock:
        stamps = tree_head_stamps.stamped_heads(service.state.db)
    index = _write_item(service, evidence_id, out_dir, head, stamps)
    index["parts"] = []  # always in the top index: absent means "written before parts were carried"
    for part in parts:
        part_index = _write_item(service, part, out_dir / PARTS_DIR / part, head, stamps)
        _write_json(out_dir / PARTS_DIR / part / "bundle.json", part_index)
        index["parts"].append({"evidence_id": part, "sha256": service.state.get(part).sha256,
                               "bundle": f"{PARTS_DIR}/{part}"})
    _write_json(out_dir / "bundle.json", index)
    return index


def _parts_of(service: EvidenceService, evidence_id: str) -> list[str]:
    """Every item ``evidence_id`` references, directly or through another part, in the order first found."""
    found: list[str] = []
    pending = [evidence_id]
    while pending:
        current = pending.pop(0)
        for ref in _references_in_store(service, current):
            if ref.evidence_id != evidence_id and ref.evidence_id not in found:
                found.append(ref.evidence_id)
                pending.append(ref.evidence_id)
    return found


def _references_in_store(service: EvidenceService, evidence_id: str) -> list[Reference]:
    row = service.state.get(evidence_id)
    manifest = dsse.Envelope.from_bytes(row.manifest).payload_json()

    def content() -> bytes:  # bounded: one byte more than a record may be, so references() can refuse it
        with service.store.open(row.sha256) as src:
            return bytes(src.read(MAX_RECORD_BYTES + 1))

    try:
        refs = references(manifest, content)
    except VerificationError as exc:
        raise ConfigError(f"evidence {evidence_id} names its parts in a form egw cannot read: {exc}",
                          "export the items it references by their own ids") from exc
    for ref in refs:
        try:
            service.state.get(ref.evidence_id)
        except NotFoundError as exc:
            raise ConfigError(f"evidence {evidence_id} references {ref.evidence_id} ({ref.where}), which is not in "
                              f"this data directory, so the bundle could not carry it",
                              "export from the gateway that holds both, or export the items by their own ids") from exc
    return refs


def _write_item(service: EvidenceService, evidence_id: str, out_dir: Path, head: TreeHead,
                stamps: list[tree_head_stamps.StampedHead]) -> dict[str, Any]:
    """One item's files (content, manifest, proofs, certificates) in ``out_dir``; returns its index (not yet written)."""
    row = service.state.get(evidence_id)
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
    index["crl"] = _export_crl(service.identity.directory, out_dir)
    index.update(export_time_stamp(service, seq, stamps, out_dir))
    return index


def _export_crl(identity_dir: Path, out_dir: Path) -> str | None:
    """The newest CRL the gateway fetched from its platform, so a verifier years later sees what was revoked."""
    crl = identity_dir / "crl.pem"
    if not crl.is_file():
        return None
    shutil.copyfile(crl, out_dir / "crl.pem")
    return "crl.pem"
