"""Certificates for trust tests, built with ``cryptography`` by the rules of ``protos/pki_roles.py``.

A real platform issues the same kinds; these let a test play an attacker with a CA of its own
(named exactly like the platform's), a retired gateway, or a gateway posing as the platform.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.evidence import dsse
from gateway.evidence.receipt import RECEIPT_TYPE
from protos.pki_roles import Role, identity_uri

PLATFORM_CA_NAME = "egw reference platform CA"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_ca(name: str = PLATFORM_CA_NAME) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egw")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now() - dt.timedelta(days=3650)).not_valid_after(now() + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(key, cert)


def issue(issuer: Issued, role: Role | None, identifier: str, *, key: ec.EllipticCurvePrivateKey | None = None,
          not_before: dt.datetime | None = None, not_after: dt.datetime | None = None, ca: bool = False) -> Issued:
    """A certificate for ``role`` naming ``identifier`` (``role`` None: no egw role, e.g. a TLS-only certificate)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identifier)]))
               .issuer_name(issuer.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now() - dt.timedelta(minutes=5))
               .not_valid_after(not_after or now() + dt.timedelta(days=397))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if role is not None:
        purposes = [role.purpose] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if role is Role.GATEWAY else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri(role, identifier))]), critical=False)
    return Issued(key, builder.sign(issuer.key, hashes.SHA256()))


def make_crl(ca: Issued, revoked: list[tuple[x509.Certificate, dt.datetime]], number: int) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(now()).next_update(now() + dt.timedelta(days=7))
               .add_extension(x509.CRLNumber(number), critical=False))
    for cert, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(when).build())
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def gateway_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((data_dir / "identity" / "gateway.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def install_identity(data_dir: Path, ca: Issued, gateway_id: str, **issue_kwargs: object) -> Issued:
    """Give a data directory (after ``egw keys init``) a certificate from ``ca`` for its own key, as enrolment does."""
    issued = issue(ca, Role.GATEWAY, gateway_id, key=gateway_key(data_dir), **issue_kwargs)  # type: ignore[arg-type]
    ident = data_dir / "identity"
    (ident / "gateway.crt").write_bytes(pem(issued.cert))
    (ident / "ca.pem").write_bytes(pem(ca.cert))
    (ident / "gateway.json").write_text(json.dumps({"gateway_id": gateway_id, "enrolled": True, "platform": "127.0.0.1:1"}))
    return issued


def sign_receipt(signer: Issued, *, evidence_id: str | None, gateway_id: str | None, sha256: str, size: int,
                 received_at: dt.datetime | None = None, platform_id: str = "platform-test") -> bytes:
    """A receipt envelope as the platform writes it (proto3 JSON, sorted keys), signed by ``signer``."""
    body: dict[str, object] = {
        "receiptId": str(uuid.uuid4()), "sha256": sha256, "size": str(size), "platformId": platform_id,
        "receivedAt": (received_at or now()).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    }
    if evidence_id is not None:
        body["evidenceId"] = evidence_id
    if gateway_id is not None:
        body["gatewayId"] = gateway_id
    payload = json.dumps(body, indent=2, sort_keys=True).encode()
    return dsse.sign(RECEIPT_TYPE, payload, signer.key).to_bytes()


def add_receipt(bundle: Path, receipt: bytes, *signer_chain: x509.Certificate) -> None:
    """Put a receipt and its signer into a bundle (bundle.json is an unsigned index: anyone can)."""
    (bundle / "receipt.dsse.json").write_bytes(receipt)
    (bundle / "platform.pem").write_bytes(pem(*signer_chain))
    index = json.loads((bundle / "bundle.json").read_text())
    index.update(receipt="receipt.dsse.json", platform_certificate="platform.pem")
    (bundle / "bundle.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def reforge(bundle: Path, key: ec.EllipticCurvePrivateKey, *, manifest_edit=None, head_edit=None) -> None:
    """Rewrite a bundle as its gateway key's holder can: an edited manifest re-signed, a one-entry custody
    log committing to it, a tree head over that log re-signed, bundle.json following. Every signature and
    hash agrees afterwards; only the published formats (or who holds the key) can tell it apart."""
    import base64
    import hashlib

    from gateway.evidence import merkle
    from gateway.evidence.custody import TREE_HEAD_TYPE
    from gateway.evidence.manifest import MANIFEST_TYPE, manifest_bytes

    index = json.loads((bundle / "bundle.json").read_text())
    body = dsse.Envelope.from_bytes((bundle / index["manifest"]).read_bytes()).payload_json()
    if manifest_edit:
        manifest_edit(body)
    payload = manifest_bytes(body)
    (bundle / index["manifest"]).write_bytes(dsse.sign(MANIFEST_TYPE, payload, key).to_bytes())
    proof = json.loads((bundle / index["custody_proof"]).read_text())
    entry = json.loads(base64.b64decode(proof["entry"]))
    entry.update(evidence_id=body["evidence_id"], sha256=body["sha256"], gateway_id=body["gateway_id"],
                 manifest_sha256=hashlib.sha256(payload).hexdigest(), seq=0)
    entry_bytes = json.dumps(entry, sort_keys=True).encode()
    head = dsse.Envelope.from_json(proof["tree_head"]).payload_json()
    head.update(tree_size=1, root_hash=merkle.leaf_hash(entry_bytes).hex(), gateway_id=body["gateway_id"])
    if head_edit:
        head_edit(head)
    signed_head = dsse.sign(TREE_HEAD_TYPE, json.dumps(head, sort_keys=True).encode(), key)
    proof.update(leaf_index=0, tree_size=1, entry=base64.b64encode(entry_bytes).decode(), inclusion_path=[],
                 tree_head=signed_head.to_json())
    (bundle / index["custody_proof"]).write_text(json.dumps(proof, indent=2, sort_keys=True) + "\n")
    index["evidence_id"] = body["evidence_id"]
    (bundle / "bundle.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
