"""Roles in the egw PKI, shared by the gateway, the platform and verifiers.

A signature is believed only from a certificate whose role may make it, and
only when the identity the certificate names equals the identity the signed
payload claims. A role is an extended key usage; an identity is one URI
subject alternative name ``urn:egw:<kind>:<id>``. Both are in the published
contract (``docs/trust.md``), so a third-party verifier needs nothing here.

The private OIDs hang under a UUID-derived arc (ITU-T X.667 ``2.25``), which
needs no registration and cannot collide with anyone else's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

__all__ = [
    "EGW_ARC",
    "Role",
    "RoleError",
    "identity_uri",
    "certificate_identity",
    "require_role",
]

EGW_ARC = "2.25.90269217322632212408011344417497040742"
"""The egw OID arc (UUID 43e93807-da01-4a4f-b8fa-dbd2b2f84766)."""

_PURPOSES = EGW_ARC + ".1"


class RoleError(ValueError):
    """A certificate used for something its role does not allow; the message says which role was needed."""


@dataclass(frozen=True)
class _RoleSpec:
    kind: str
    purpose: ObjectIdentifier
    description: str


class Role(Enum):
    """Who may sign what. ``kind`` is the URI SAN kind, ``purpose`` the EKU that grants the role."""

    GATEWAY = _RoleSpec("gateway", ObjectIdentifier(_PURPOSES + ".1"), "a gateway signing manifests, tree heads and results")
    RECEIPT_SIGNER = _RoleSpec("platform", ObjectIdentifier(_PURPOSES + ".2"), "the platform signing receipts")
    COMMAND_SIGNER = _RoleSpec("platform", ObjectIdentifier(_PURPOSES + ".3"), "the platform signing MQTT commands")
    AGENCY_SEAL = _RoleSpec("agency", ObjectIdentifier(_PURPOSES + ".4"), "an agency's electronic seal on documents")
    TERMINAL = _RoleSpec("terminal", ObjectIdentifier(_PURPOSES + ".5"), "an officer's mobile terminal")
    TIME_STAMPING = _RoleSpec("tsa", ExtendedKeyUsageOID.TIME_STAMPING, "a time-stamping authority (RFC 3161)")

    @property
    def kind(self) -> str:
        return self.value.kind

    @property
    def purpose(self) -> ObjectIdentifier:
        return self.value.purpose

    @property
    def description(self) -> str:
        return self.value.description


def identity_uri(role: Role, identifier: str) -> str:
    """The URI SAN a certificate of ``role`` carries for ``identifier``."""
    if not identifier or ":" in identifier or any(ch.isspace() for ch in identifier):
        raise RoleError(f"identifier {identifier!r} cannot go in a URI SAN: use 1+ characters without ':' or spaces")
    return f"urn:egw:{role.kind}:{identifier}"


def _purposes(cert: x509.Certificate) -> list[ObjectIdentifier]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(uri) for uri in names.get_values_for_type(x509.UniformResourceIdentifier)]


def certificate_identity(cert: x509.Certificate, role: Role) -> str:
    """The identifier the certificate names for ``role``; RoleError if it names none or several."""
    prefix = f"urn:egw:{role.kind}:"
    ids = [uri[len(prefix):] for uri in _uris(cert) if uri.startswith(prefix)]
    if len(ids) != 1:
        raise RoleError(
            f"certificate {cert.subject.rfc4514_string()} names {len(ids)} {role.kind} identities "
            f"(needs exactly one URI SAN {prefix}<id>); it was not issued for {role.description}")
    return ids[0]


def require_role(cert: x509.Certificate, role: Role, claimed_id: str | None = None) -> str:
    """Raise RoleError unless ``cert`` holds ``role`` (and names ``claimed_id`` when given); return its identifier.

    The time-stamping role has no URI SAN of its own (RFC 3161 fixes its EKU), so for it
    the identifier is the subject's RFC 4514 string.
    """
    if role.purpose not in _purposes(cert):
        raise RoleError(
            f"certificate {cert.subject.rfc4514_string()} may not act as {role.description} "
            f"(extended key usage {role.purpose.dotted_string} missing); only such a certificate is accepted here")
    if role is Role.TIME_STAMPING:
        return cert.subject.rfc4514_string()
    identifier = certificate_identity(cert, role)
    if claimed_id is not None and identifier != claimed_id:
        raise RoleError(
            f"certificate is for {role.kind} {identifier!r} but the signed content claims {claimed_id!r}; "
            "a signer may speak only for itself")
    return identifier
