"""The platform CA's revocation list on the gateway: ``DATA_DIR/identity/crl.pem``.

Fetched with ``GetRevocationList`` right after enrolment and on every sync, so
that ``egw export`` can put a recent CRL in a bundle and a verifier can judge
revocation (docs/trust.md). A CRL is kept only when the pinned platform CA
signed it and its CRL number is not lower than the one already kept: a
platform (or a machine in the middle) cannot roll the list back.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509

from gateway.errors import ConfigError, VerificationError
from gateway.uplink.link import CHANNEL_OPTIONS, PlatformLink
from protos.egw.v1 import ingest_pb2, ingest_pb2_grpc
from protos.files import write_atomically

__all__ = ["CRL_FILE", "refresh_revocation_list", "accept_revocation_list"]

CRL_FILE = "crl.pem"
TIMEOUT_S = 10.0


def _number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound as exc:
        raise VerificationError("the platform's CRL has no CRL number", "report this to the platform operator") from exc


def accept_revocation_list(identity_dir: Path, crl_pem: bytes, cas: list[x509.Certificate]) -> int:
    """Keep ``crl_pem`` in ``identity_dir/crl.pem`` if a CA in ``cas`` signed it and it is not older; its number."""
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
    except ValueError as exc:
        raise VerificationError("the platform sent a revocation list that is not a PEM X.509 CRL",
                                "report this to the platform operator") from exc
    if not any(ca.subject == crl.issuer and crl.is_signature_valid(ca.public_key()) for ca in cas):  # type: ignore[arg-type]
        raise VerificationError("the platform's revocation list is not signed by the platform CA pinned at enrolment; it was not kept",
                                "check that the gateway talks to its own platform")
    number = _number(crl)
    path = identity_dir / CRL_FILE
    if path.exists():
        kept = _number(x509.load_pem_x509_crl(path.read_bytes()))
        if number < kept:
            raise VerificationError(f"the platform sent CRL number {number}, older than the kept number {kept}; it was not kept",
                                    "check that the gateway talks to its own platform")
    write_atomically(path, crl_pem, 0o644)
    return number


def refresh_revocation_list(link: PlatformLink, address: str | None = None) -> int:
    """Fetch the CRL over the mutual-TLS link and keep it; its CRL number. Raises ConfigError when unreachable."""
    if link.insecure:
        channel = grpc.insecure_channel(address or link.address, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.secure_channel(address or link.address, link.credentials(), options=CHANNEL_OPTIONS)
    try:
        with channel:
            reply = ingest_pb2_grpc.EvidenceIngestStub(channel).GetRevocationList(
                ingest_pb2.RevocationListRequest(), metadata=link.metadata, timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        raise ConfigError(f"could not fetch the revocation list from {address or link.address} ({exc.code().name}): {exc.details()}",
                          "the CRL is fetched again on the next sync; check the platform is reachable") from exc
    return accept_revocation_list(link.identity.directory, reply.crl_pem, link.identity.ca_certificates)
