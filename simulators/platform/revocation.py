"""The platform CA's certificate revocation list: ``DIR/pki/crl.pem``.

Built from the index's append-only revocation log and signed by the CA
(X.509 v2, CRL number, ``nextUpdate`` seven days after issue; docs/trust.md).
Every publication takes the next CRL number, so "the highest number wins" is a
sound rule for verifiers holding several. ``egw platform revoke`` publishes
from its own process while the platform runs, so publication holds a file lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import math
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from protos.files import write_atomically
from simulators.platform.index import Index
from simulators.platform.pki import PlatformPKI

__all__ = ["NEXT_UPDATE", "REFRESH_AFTER", "publish_crl", "current_crl", "crl_number"]

NEXT_UPDATE = dt.timedelta(days=7)
REFRESH_AFTER = dt.timedelta(days=1)
"""A CRL older than this is re-issued when asked for, so a served CRL always has six days or more to run."""


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def _crl_path(pki: PlatformPKI) -> Path:
    return pki.directory / "crl.pem"


def _load(path: Path) -> x509.CertificateRevocationList | None:
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None


def _build(pki: PlatformPKI, index: Index, number: int) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca_cert.subject)
        .last_update(now)
        .next_update(now + NEXT_UPDATE)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.ca_key.public_key()), critical=False)
    )
    for entry in index.revocations():
        reason = x509.ReasonFlags.superseded if entry.reason == "superseded" else x509.ReasonFlags.unspecified
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            # X.509 times have whole seconds: round up, never down, or a receipt issued in the last second
            # before the revocation would read as signed after it (the platform issues none afterwards).
            .revocation_date(dt.datetime.fromtimestamp(math.ceil(entry.revoked_at), dt.UTC))
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    return builder.sign(pki.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def publish_crl(pki: PlatformPKI, index: Index) -> tuple[bytes, int]:
    """Issue a fresh CRL with the next number and write it atomically; (PEM, number)."""
    path = _crl_path(pki)
    with open(pki.directory / "crl.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        previous = _load(path)
        number = 1 if previous is None else crl_number(previous) + 1
        data = _build(pki, index, number)
        write_atomically(path, data, 0o644)
        return data, number


def current_crl(pki: PlatformPKI, index: Index) -> tuple[bytes, int]:
    """The published CRL, re-issued first when missing, stale (older than ``REFRESH_AFTER``) or behind the log."""
    crl = _load(_crl_path(pki))
    if crl is not None:
        fresh = dt.datetime.now(dt.UTC) - crl.last_update_utc < REFRESH_AFTER
        listed = {r.serial_number for r in crl}
        if fresh and listed >= {r.serial for r in index.revocations()}:
            return crl.public_bytes(serialization.Encoding.PEM), crl_number(crl)
    return publish_crl(pki, index)
