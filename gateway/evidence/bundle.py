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

from gateway.errors import ConfigError
from gateway.evidence.bundle_verify import BUNDLE_FORMAT, Check, Report, judge_bundle, verify_bundle
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
    index["crl"] = _export_crl(service.identity.directory, out_dir)
    _write_json(out_dir / "bundle.json", index)
    return index


def _export_crl(identity_dir: Path, out_dir: Path) -> str | None:
    """The newest CRL the gateway fetched from its platform, so a verifier years later sees what was revoked."""
    crl = identity_dir / "crl.pem"
    if not crl.is_file():
        return None
    shutil.copyfile(crl, out_dir / "crl.pem")
    return "crl.pem"
