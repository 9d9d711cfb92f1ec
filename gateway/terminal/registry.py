"""Paired terminals: pairing with a one-time code, authentication of each connection, revocation.

Every change is a custody event under the officer's id, committed in the same transaction as the change
(``terminal-paired``, ``terminal-revoked``); every API call a terminal makes is one too
(``terminal-request``), so the custody log says which officer's handheld did what, when.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from cryptography import x509

from gateway.errors import TerminalError
from gateway.evidence import terminals as repo
from gateway.evidence.evidence_service import EvidenceService
from gateway.terminal.ca import TerminalCA, certificate_sha256, new_terminal_id
from protos.pki_roles import Role, RoleError, require_role

__all__ = ["offer_pairing", "pair", "revoke", "list_terminals", "authenticate", "audit", "PAIRING_TTL_S", "REFUSED_PAIRING"]

PAIRING_TTL_S = 300.0
# One message for an unknown, spent or expired code: a guesser learns nothing from the difference.
REFUSED_PAIRING = "pairing refused: the code is not valid (unknown, already used or expired)"
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud or typed from the screen
CODE_LENGTH = 16  # 80 bits


def _code_digest(code: str) -> str:
    return hashlib.sha256(code.strip().upper().encode("ascii", "replace")).hexdigest()


def offer_pairing(service: EvidenceService, *, officer_id: str | None, issued_by: str, ttl_s: float = PAIRING_TTL_S) -> str:
    """A fresh one-time pairing code, valid ``ttl_s`` seconds; only its SHA-256 is stored."""
    code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(CODE_LENGTH))
    now = time.time()
    with service.state.transaction() as db:
        repo.forget_expired_codes(db, now)
        repo.add_pairing_code(db, _code_digest(code), officer_id=officer_id, issued_by=issued_by, expires_at=now + ttl_s)
    return code


def _clean_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not value.isprintable() or any(c.isspace() for c in value):
        raise TerminalError(f"{what} must be 1-64 printable characters without spaces", f"send a valid {what}")
    return value


def pair(service: EvidenceService, ca: TerminalCA, *, code: str, csr_pem: bytes, officer_id: str | None,
         label: str | None) -> tuple[repo.TerminalRecord, bytes]:
    """Spend ``code``, issue a terminal certificate for the CSR's key, record the terminal: (record, certificate PEM)."""
    if officer_id is not None:
        officer_id = _clean_id(officer_id, "officer_id")
    terminal_id = new_terminal_id()
    issued = ca.issue_terminal(csr_pem, terminal_id)  # a bad CSR is refused before the code is spent
    now = time.time()
    with service.state.transaction() as db:
        try:
            bound = repo.use_pairing_code(db, _code_digest(code), terminal_id=terminal_id, now=now)
        except repo.PairingRefused:
            raise TerminalError(REFUSED_PAIRING, "ask for a fresh code on the station screen (or `egw terminal pair`)") from None
        if bound is not None and officer_id not in (None, bound):
            raise TerminalError(f"this pairing code was issued for officer {bound}, not {officer_id}",
                                "pair with the officer the code was issued for, or get a code without an officer")
        officer = bound or officer_id
        if officer is None:
            raise TerminalError("the pairing request names no officer", "send officer_id: the officer who carries the terminal")
        record = repo.TerminalRecord(id=terminal_id, officer_id=officer, label=(label or "")[:80] or None,
                                     serial=issued.serial_hex, cert_sha256=certificate_sha256(issued.certificate),
                                     not_after=issued.not_after, paired_at=now, revoked_at=None, revoked_by=None,
                                     revoke_reason=None)
        repo.add_terminal(db, record)
        service.custody.append(db, "terminal-paired", None, {
            "terminal_id": terminal_id, "officer_id": officer, "cert_sha256": record.cert_sha256,
            "serial": record.serial, "label": record.label})
    return record, issued.pem()


def revoke(service: EvidenceService, terminal_id: str, *, by: str, reason: str) -> repo.TerminalRecord:
    """Revoke a terminal: from now on it is refused at the TLS layer. Idempotent (the first revocation stands)."""
    with service.state.transaction() as db:
        record = repo.get_terminal(db, terminal_id)
        if record is None:
            raise TerminalError(f"no terminal {terminal_id!r} is paired with this station", "list them with `egw terminal ls`")
        if repo.revoke_terminal(db, terminal_id, by=by, reason=reason, now=time.time()):
            service.custody.append(db, "terminal-revoked", None, {
                "terminal_id": terminal_id, "officer_id": record.officer_id, "revoked_by": by, "reason": reason,
                "serial": record.serial})
        found = repo.get_terminal(db, terminal_id)
    assert found is not None
    return found


def list_terminals(service: EvidenceService) -> list[repo.TerminalRecord]:
    with service.state.lock:
        return repo.list_terminals(service.state.db)


def authenticate(service: EvidenceService, der: bytes | None) -> repo.TerminalRecord:
    """The paired, unrevoked terminal a (CA-verified) client certificate belongs to, else TerminalError.

    The TLS layer has checked the chain; this checks the role, and that the very certificate is the one
    issued at pairing and not revoked (a CA signature alone is not enough: revocation is here)."""
    if not der:
        raise TerminalError("no client certificate", "connect with the certificate received at pairing")
    cert = x509.load_der_x509_certificate(der)
    try:
        terminal_id = require_role(cert, Role.TERMINAL)
    except RoleError as exc:
        raise TerminalError(str(exc)) from exc
    with service.state.lock:
        record = repo.find_by_serial(service.state.db, format(cert.serial_number, "x"))
    if record is None or record.id != terminal_id or record.cert_sha256 != certificate_sha256(cert):
        raise TerminalError(f"terminal {terminal_id} is not paired with this station")
    if record.revoked:
        raise TerminalError(f"terminal {terminal_id} was revoked", "a revoked terminal must be paired again by its officer")
    return record


def audit(service: EvidenceService, terminal: repo.TerminalRecord, action: str, details: dict[str, Any] | None = None,
          evidence_id: str | None = None) -> None:
    """One custody event for a terminal's call, under its officer's id."""
    service.record_event(evidence_id, "terminal-request", {
        "terminal_id": terminal.id, "officer_id": terminal.officer_id, "action": action, **(details or {})})
