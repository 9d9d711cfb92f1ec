"""The agency's sealing service: the seal key stays on the platform, gateways send digests.

A gateway prepares the PDF (signature field, visible seal appearance, the
``/ByteRange`` placeholder) and sends only the document digest. The platform
returns a complete detached CMS signature made with the agency seal key:
PAdES signed attributes (ESS signing-certificate-v2, no ``signingTime``), the
seal certificate and the CA, and an RFC 3161 signature time-stamp from its own
TSA. The platform never sees the document; every seal it makes is recorded in
``DIR/seals.jsonl`` (who asked, which digest, when), so a seal nobody can
account for is visible.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
from pathlib import Path

from asn1crypto import cms
from pyhanko.sign.signers.pdf_cms import SimpleSigner
from pyhanko_certvalidator.registry import SimpleCertificateStore

from simulators.platform.role_certs import RoleCertificates
from simulators.platform.tsa import LocalTimeStamper, TimeStampAuthority, asn1_certificate, asn1_private_key

__all__ = ["SealingService", "SealRequestError", "DIGEST_ALGORITHMS"]

DIGEST_ALGORITHMS = {"sha256": 32, "sha384": 48, "sha512": 64}


class SealRequestError(ValueError):
    """A seal request the platform refuses; the message says what to send instead."""


class SealingService:
    """Signs PDF byte-range digests with the agency seal; thread-safe."""

    def __init__(self, data_dir: Path, roles: RoleCertificates, authority: TimeStampAuthority, ca_pem: bytes) -> None:
        from cryptography import x509

        self.roles = roles
        self._ca_cert = x509.load_pem_x509_certificate(ca_pem)
        self._signer = SimpleSigner(
            signing_cert=asn1_certificate(roles.seal.certificate), signing_key=asn1_private_key(roles.seal),
            cert_registry=SimpleCertificateStore.from_certs([asn1_certificate(self._ca_cert)]))
        self._timestamper = LocalTimeStamper(authority)
        self._log_path = data_dir / "seals.jsonl"
        self._lock = threading.Lock()

    def seal_digest(self, digest_hex: str, algorithm: str, gateway_id: str) -> bytes:
        """DER CMS signature over ``digest_hex`` (a PDF byte-range digest), time-stamped; recorded in seals.jsonl."""
        if algorithm not in DIGEST_ALGORITHMS:
            raise SealRequestError(f"digest algorithm {algorithm!r} is not accepted; use one of {', '.join(DIGEST_ALGORITHMS)}")
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError as exc:
            raise SealRequestError("document_digest must be hex") from exc
        if len(digest) != DIGEST_ALGORITHMS[algorithm]:
            raise SealRequestError(f"a {algorithm} digest is {DIGEST_ALGORITHMS[algorithm]} bytes, not {len(digest)}")
        signature: cms.ContentInfo = asyncio.run(
            self._signer.async_sign(digest, algorithm, use_pades=True, timestamper=self._timestamper))
        self._record(gateway_id, algorithm, digest_hex)
        return bytes(signature.dump())

    def _record(self, gateway_id: str, algorithm: str, digest_hex: str) -> None:
        line = json.dumps({"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "gateway_id": gateway_id,
                           "unit_code": self.roles.unit_code, "digest_algorithm": algorithm, "document_digest": digest_hex},
                          ensure_ascii=False)
        with self._lock, open(self._log_path, "a", encoding="utf-8") as log:
            log.write(line + "\n")
            log.flush()
            os.fsync(log.fileno())
