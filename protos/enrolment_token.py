"""Enrolment tokens, shared by the gateway and the platform: one string an operator copies.

    egw1.<enrolment port>.<CA SHA-256 fingerprint, 64 hex>.<secret, 32 hex>

The fingerprint pins the platform CA (as kubeadm's discovery hash does), so a
gateway that trusts nothing yet can still tell the real platform from a
machine in the middle; the port says where the enrolment listener is (the
ingest port demands a client certificate the gateway does not have yet). The
platform keeps only a hash of the secret; it is single-use and expires.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["EnrolmentToken", "TokenFormatError", "format_token", "parse_token"]

_TOKEN_RE = re.compile(r"^egw1\.(\d{1,5})\.([0-9a-f]{64})\.([0-9a-f]{32})$")


class TokenFormatError(ValueError):
    """A token string that is not ``egw1.PORT.CAFP.SECRET``."""


@dataclass(frozen=True)
class EnrolmentToken:
    enroll_port: int
    ca_sha256: str
    secret: str


def format_token(enroll_port: int, ca_sha256: str, secret: str) -> str:
    return f"egw1.{enroll_port}.{ca_sha256}.{secret}"


def parse_token(text: str) -> EnrolmentToken:
    match = _TOKEN_RE.match(text.strip())
    if not match:
        raise TokenFormatError(
            "the enrolment token is not of the form egw1.PORT.CA_SHA256.SECRET; copy it whole from `egw platform tokens`"
        )
    port = int(match.group(1))
    if not 0 < port < 65536:
        raise TokenFormatError(f"the enrolment token names port {port}, which is not a TCP port")
    return EnrolmentToken(port, match.group(2), match.group(3))
