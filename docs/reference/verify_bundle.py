"""A bundle verifier written from docs/ alone (no egw code imported): formats/bundle.md,
formats/manifest.md, formats/custody.md, formats/receipt.md, formats/dsse.md and trust.md.

    python verify_bundle.py BUNDLE_DIR --trust PLATFORM_CA.pem [--crl CRL.pem]

Exit 0 and "VERIFIED" when every rule holds against the chosen trust anchor; 1 and the first rule
broken otherwise; 3 ("CONSISTENT, UNTRUSTED") when the bundle is consistent but no --trust was
given. The test suite runs this file as it stands against real `egw export` bundles.

Not checked here (egw verify does): the parts a bundle carries (parts/<id>/, bundle.json "parts") and the
RFC 3161 time-stamp token (time-stamp.json), so the signing time is the receipt's or unproven.
"""

import argparse
import base64
import datetime
import hashlib
import json
import sys
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

ARC = "2.25.90269217322632212408011344417497040742.1."
GATEWAY_ROLE, RECEIPT_ROLE = ARC + "1", ARC + "2"


class Broken(Exception):
    pass


def need(ok: bool, why: str) -> None:
    if not ok:
        raise Broken(why)


def envelope(doc: dict, kind: str, key) -> dict:  # dsse.md; returns the payload object
    need(doc["payloadType"] == kind, f"payloadType {doc['payloadType']} is not {kind}")
    payload = base64.b64decode(doc["payload"])
    message = b"DSSEv1 %d %s %d %s" % (len(kind), kind.encode(), len(payload), payload)
    for sig in doc["signatures"]:
        try:
            key.verify(base64.b64decode(sig["sig"]), message, ec.ECDSA(hashes.SHA256()))
            return json.loads(payload)
        except Exception:  # noqa: BLE001 - try the next signature
            continue
    raise Broken(f"no signature on the {kind} verifies")


def identity(cert: x509.Certificate, role: str, kind: str) -> str:  # trust.md: role = EKU, id = one URI SAN
    usages = [u.dotted_string for u in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    need(role in usages, f"{cert.subject.rfc4514_string()} does not hold the {kind} role")
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    ids = [u.removeprefix(f"urn:egw:{kind}:") for u in uris if u.startswith(f"urn:egw:{kind}:")]
    need(len(ids) == 1, f"{cert.subject.rfc4514_string()} names {len(ids)} {kind} identities")
    return ids[0]


def valid_at(cert: x509.Certificate, anchor: x509.Certificate, at: datetime.datetime, revoked: dict) -> None:
    cert.verify_directly_issued_by(anchor)
    need(cert.not_valid_before_utc <= at <= cert.not_valid_after_utc, f"{cert.subject.rfc4514_string()} not valid at {at}")
    when = revoked.get(cert.serial_number)
    need(when is None or at < when, f"{cert.subject.rfc4514_string()} was revoked at {when}, before {at}")


def leaf_to_root(leaf: bytes, index: int, size: int, path: list) -> bytes:  # RFC 9162 §2.1.3.2
    need(index < size, "leaf index outside the tree")
    fn, sn, node = index, size - 1, hashlib.sha256(b"\0" + leaf).digest()
    for sibling in (bytes.fromhex(p) for p in path):
        need(sn != 0, "inclusion path too long")
        if fn & 1 or fn == sn:
            node = hashlib.sha256(b"\1" + sibling + node).digest()
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            node = hashlib.sha256(b"\1" + node + sibling).digest()
        fn, sn = fn >> 1, sn >> 1
    need(sn == 0, "inclusion path too short")
    return node


def rfc3339(text: str) -> datetime.datetime:  # proto3 JSON Timestamp: "…T…[.fraction]Z", up to 9 digits
    whole, _, fraction = text.removesuffix("Z").partition(".")
    micros = int((fraction + "000000")[:6]) if fraction else 0
    return datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC) + datetime.timedelta(microseconds=micros)


def revocations(crl_paths: list, anchor: x509.Certificate) -> dict:
    revoked = {}
    for path in crl_paths:
        crl = x509.load_pem_x509_crl(Path(path).read_bytes())
        need(crl.is_signature_valid(anchor.public_key()), f"{path} is not signed by the trust anchor")
        revoked.update({r.serial_number: r.revocation_date_utc for r in crl})
    return revoked


def verify(root: Path, anchor: x509.Certificate | None, crls: list) -> list:
    index = json.loads((root / "bundle.json").read_text())
    need(index["format"] == "egw.bundle/1", "not an egw.bundle/1")
    read = lambda name: (root / index[name]).read_bytes()  # noqa: E731
    chain = x509.load_pem_x509_certificates(read("certificates"))
    gateway_cert = chain[0]
    manifest = envelope(json.loads(read("manifest")), "application/vnd.egw.manifest.v1+json", gateway_cert.public_key())
    need(manifest["v"] == "egw.manifest/1" and manifest["evidence_id"] == index["evidence_id"], "manifest version or id")
    content = read("content")
    need(hashlib.sha256(content).hexdigest() == manifest["sha256"] and len(content) == manifest["size"], "content digest")
    proof = json.loads(read("custody_proof"))
    head = envelope(proof["tree_head"], "application/vnd.egw.tree-head.v1+json", gateway_cert.public_key())
    need(head["gateway_id"] == manifest["gateway_id"] and head["tree_size"] == proof["tree_size"], "tree head")
    entry_bytes = base64.b64decode(proof["entry"])
    entry = json.loads(entry_bytes)
    need(entry["evidence_id"] == manifest["evidence_id"] and entry["sha256"] == manifest["sha256"], "custody entry")
    need(entry["manifest_sha256"] == hashlib.sha256(base64.b64decode(json.loads(read("manifest"))["payload"])).hexdigest(), "entry's manifest hash")
    need(leaf_to_root(entry_bytes, proof["leaf_index"], proof["tree_size"], proof["inclusion_path"]).hex() == head["root_hash"], "inclusion proof")
    said = [f"content {manifest['sha256'][:16]}… in the custody log at {proof['leaf_index']}"]
    if anchor is None:
        return [*said, "no trust anchor: who signed is not established"]
    gateway_id = identity(gateway_cert, GATEWAY_ROLE, "gateway")
    need(gateway_id == manifest["gateway_id"], f"certificate is for {gateway_id}, the manifest names {manifest['gateway_id']}")
    revoked = revocations(crls, anchor)
    signed_at = None
    if index.get("receipt"):
        signer = x509.load_pem_x509_certificate(read("platform_certificate"))
        platform_id = identity(signer, RECEIPT_ROLE, "platform")
        receipt = envelope(json.loads(read("receipt")), "application/vnd.egw.receipt.v1+json", signer.public_key())
        need((receipt["sha256"], int(receipt["size"])) == (manifest["sha256"], manifest["size"]), "receipt digest or size")
        need((receipt["evidenceId"], receipt["gatewayId"]) == (manifest["evidence_id"], gateway_id), "receipt ids")
        signed_at = rfc3339(receipt["receivedAt"])
        valid_at(signer, anchor, signed_at, revoked)
        said.append(f"receipted by platform {platform_id} at {signed_at.isoformat()}")
    valid_at(gateway_cert, anchor, signed_at or datetime.datetime.now(datetime.UTC), revoked)
    said.append(f"signed by gateway {gateway_id}, time " + ("proven by the receipt" if signed_at else "unproven (judged now)"))
    return said


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--trust", type=Path)
    parser.add_argument("--crl", action="append", default=[])
    args = parser.parse_args()
    anchor = x509.load_pem_x509_certificate(args.trust.read_bytes()) if args.trust else None
    try:
        lines = verify(args.bundle, anchor, args.crl)
    except (Broken, KeyError, ValueError, InvalidSignature) as exc:
        print(f"FAILED: {exc}")
        return 1
    print("\n".join(lines))
    print("VERIFIED" if anchor else "CONSISTENT, UNTRUSTED")
    return 0 if anchor else 3


if __name__ == "__main__":
    sys.exit(main())
