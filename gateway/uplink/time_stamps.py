"""RFC 3161 time-stamps from the platform TSA over signed tree heads (docs/documents-sealing.md).

``stamp_tree_heads`` asks the platform's TSA (over the gateway's mutual-TLS
session) for a token over each signed tree head that has none yet, checks the
token before keeping it and stores it with ``gateway/evidence/tree_head_stamps``.
A token is kept only when it is over exactly those bytes, signed by a
certificate with the time-stamping role that chains to the CA pinned at
enrolment, and answers our nonce: a token from any other TSA is refused.
``check_token`` is the same check for a verifier holding the token offline.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import aiohttp
from asn1crypto import cms
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyhanko.sign.general import SigningError
from pyhanko.sign.timestamps.common_utils import TimestampRequestError
from pyhanko.sign.validation.errors import SignatureValidationError
from pyhanko.sign.validation.generic_cms import validate_tst_signed_data
from pyhanko_certvalidator import ValidationContext

from gateway.documents.seal import SealService
from gateway.errors import SealingError, VerificationError
from gateway.evidence import tree_head_stamps
from gateway.evidence.state import State
from protos.pki_roles import Role, RoleError, require_role

__all__ = ["TokenCheck", "check_token", "check_token_sync", "request_token", "stamp_tree_heads"]


@dataclass(frozen=True)
class TokenCheck:
    gen_time: str
    tsa: str


def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


async def check_token(token: bytes, data: bytes, anchors: list[x509.Certificate],
                      crls: list[x509.CertificateRevocationList] | None = None, at: datetime | None = None) -> TokenCheck:
    """VerificationError unless ``token`` time-stamps exactly ``data`` and its TSA chains to ``anchors`` in its role.
    ``at``: judge the TSA's certificate path at that moment (a verifier years later: the token's genTime), else now."""
    try:
        signed_data = cms.ContentInfo.load(token)["content"]
        context = ValidationContext(
            trust_roots=[_asn1_cert(a) for a in anchors], allow_fetching=False, moment=at,
            crls=[asn1_crl.CertificateList.load(c.public_bytes(serialization.Encoding.DER)) for c in crls or []],
            revocation_mode="soft-fail" if not crls else "hard-fail")
        status = await validate_tst_signed_data(signed_data, context, lambda algorithm: hashlib.new(algorithm, data).digest())
    except (ValueError, KeyError, TypeError, SignatureValidationError) as exc:
        raise VerificationError(f"not a usable RFC 3161 time-stamp token: {exc}") from exc
    if not (status.get("intact") and status.get("valid")):
        raise VerificationError("the time-stamp token is not over these bytes, or its signature does not hold")
    signer = x509.load_der_x509_certificate(status["signing_cert"].dump())
    try:
        tsa = require_role(signer, Role.TIME_STAMPING)
    except RoleError as exc:
        raise VerificationError(f"the time-stamp token is not from a time-stamping authority: {exc}") from exc
    if status.get("trust_problem_indic") is not None or status.get("validation_path") is None:
        raise VerificationError("the time-stamp token comes from a TSA that does not chain to the trust anchors")
    moment = status["timestamp"]
    return TokenCheck(moment.isoformat().replace("+00:00", "Z"), tsa)


def check_token_sync(token: bytes, data: bytes, anchors: list[x509.Certificate],
                     crls: list[x509.CertificateRevocationList] | None = None, at: datetime | None = None) -> TokenCheck:
    """``check_token`` for synchronous callers, also when one runs inside an event loop (``egw demo``
    verifies a bundle from its own loop): then the check gets a loop of its own on a helper thread."""
    def run() -> TokenCheck:
        return asyncio.run(check_token(token, data, anchors, crls, at))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsa-check") as pool:
        return pool.submit(run).result()


async def request_token(service: SealService, data: bytes) -> bytes:
    """A DER time-stamp token over ``data`` from the platform TSA (nonce checked); SealingError if none can be had."""
    try:
        token = await service.timestamper().async_timestamp(hashlib.sha256(data).digest(), "sha256")
    except (TimeoutError, TimestampRequestError, SigningError, aiohttp.ClientError, OSError, ValueError) as exc:
        raise SealingError(f"the platform TSA gave no time-stamp: {exc}") from exc
    return bytes(token.dump())


async def stamp_tree_heads(state: State, service: SealService, limit: int = 100) -> int:
    """Time-stamp every signed tree head that has no token yet; return how many were stamped."""
    with state.lock:
        pending = tree_head_stamps.unstamped_heads(state.db, limit)
    if not pending:
        return 0
    crl = (await service.profile()).crl
    anchors = service.identity.ca_certificates
    stamped = 0
    for tree_size, envelope in pending:
        token = await request_token(service, envelope)
        checked = await check_token(token, envelope, anchors, [crl])
        with state.transaction() as db:
            tree_head_stamps.store_token(db, tree_size, token, checked.gen_time, checked.tsa)
        stamped += 1
    return stamped
