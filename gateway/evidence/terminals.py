"""The terminal tables: mobile terminals paired with this station, one-time pairing codes, cases.

Every function runs on the caller's connection; writers call them inside ``State.transaction()`` so the
change and its custody event commit together, readers under ``State.lock``. Pairing codes are kept only
as their SHA-256: a copy of ``state.db`` does not let anyone pair.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields

__all__ = ["TerminalRecord", "CaseItem", "PairingRefused", "add_pairing_code", "use_pairing_code", "forget_expired_codes", "add_terminal",
           "list_terminals", "get_terminal", "find_by_serial", "revoke_terminal", "add_case_item", "case_items"]


class PairingRefused(Exception):
    """The pairing code is unknown, used already or expired (deliberately not said which)."""


@dataclass(frozen=True)
class TerminalRecord:
    id: str
    officer_id: str
    label: str | None
    serial: str  # the certificate's serial number, hex
    cert_sha256: str
    not_after: float
    paired_at: float
    revoked_at: float | None
    revoked_by: str | None
    revoke_reason: str | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class CaseItem:
    case_no: str
    evidence_id: str
    officer_id: str
    terminal_id: str | None
    added_at: float


_TERMINAL_FIELDS = tuple(f.name for f in fields(TerminalRecord))
_TERMINAL_COLUMNS = ", ".join(_TERMINAL_FIELDS)
_CASE_FIELDS = tuple(f.name for f in fields(CaseItem))
_CASE_COLUMNS = ", ".join(_CASE_FIELDS)


def _terminal(row: tuple[object, ...]) -> TerminalRecord:
    return TerminalRecord(**dict(zip(_TERMINAL_FIELDS, row)))  # type: ignore[arg-type]


def add_pairing_code(db: sqlite3.Connection, code_sha256: str, *, officer_id: str | None, issued_by: str,
                     expires_at: float) -> None:
    db.execute("INSERT INTO terminal_pairing_codes (code_sha256, officer_id, issued_by, expires_at) VALUES (?, ?, ?, ?)",
               (code_sha256, officer_id, issued_by, expires_at))


def use_pairing_code(db: sqlite3.Connection, code_sha256: str, *, terminal_id: str, now: float) -> str | None:
    """Spend the code for ``terminal_id``; return the officer it was issued for (None: any officer).

    Raises ``PairingRefused`` when the code is unknown, spent or expired."""
    row = db.execute("SELECT officer_id, expires_at, used_at FROM terminal_pairing_codes WHERE code_sha256 = ?",
                     (code_sha256,)).fetchone()
    if row is None or row[2] is not None or float(row[1]) <= now:
        raise PairingRefused(code_sha256)
    db.execute("UPDATE terminal_pairing_codes SET used_at = ?, terminal_id = ? WHERE code_sha256 = ?",
               (now, terminal_id, code_sha256))
    return None if row[0] is None else str(row[0])


def forget_expired_codes(db: sqlite3.Connection, now: float) -> None:
    """Drop codes that expired unused a day ago (spent ones stay: they name the terminal they paired)."""
    db.execute("DELETE FROM terminal_pairing_codes WHERE expires_at < ? AND used_at IS NULL", (now - 86400,))


def add_terminal(db: sqlite3.Connection, record: TerminalRecord) -> None:
    db.execute(f"INSERT INTO terminals ({_TERMINAL_COLUMNS}) VALUES ({', '.join('?' for _ in _TERMINAL_FIELDS)})",
               tuple(getattr(record, name) for name in _TERMINAL_FIELDS))


def list_terminals(db: sqlite3.Connection) -> list[TerminalRecord]:
    return [_terminal(row) for row in db.execute(f"SELECT {_TERMINAL_COLUMNS} FROM terminals ORDER BY paired_at")]


def get_terminal(db: sqlite3.Connection, terminal_id: str) -> TerminalRecord | None:
    row = db.execute(f"SELECT {_TERMINAL_COLUMNS} FROM terminals WHERE id = ?", (terminal_id,)).fetchone()
    return None if row is None else _terminal(row)


def find_by_serial(db: sqlite3.Connection, serial: str) -> TerminalRecord | None:
    row = db.execute(f"SELECT {_TERMINAL_COLUMNS} FROM terminals WHERE serial = ?", (serial,)).fetchone()
    return None if row is None else _terminal(row)


def revoke_terminal(db: sqlite3.Connection, terminal_id: str, *, by: str, reason: str, now: float) -> bool:
    """Mark the terminal revoked; False when it already was (the first revocation stands)."""
    cursor = db.execute("UPDATE terminals SET revoked_at = ?, revoked_by = ?, revoke_reason = ? "
                        "WHERE id = ? AND revoked_at IS NULL", (now, by, reason, terminal_id))
    return cursor.rowcount == 1


def add_case_item(db: sqlite3.Connection, item: CaseItem) -> bool:
    """Put an evidence id in a case; False when it was there already (adding twice changes nothing)."""
    cursor = db.execute(f"INSERT OR IGNORE INTO case_items ({_CASE_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                        tuple(getattr(item, name) for name in _CASE_FIELDS))
    return cursor.rowcount == 1


def case_items(db: sqlite3.Connection, case_no: str) -> list[CaseItem]:
    return [CaseItem(**dict(zip(_CASE_FIELDS, row)))
            for row in db.execute(f"SELECT {_CASE_COLUMNS} FROM case_items WHERE case_no = ? ORDER BY added_at, evidence_id",
                                  (case_no,))]
