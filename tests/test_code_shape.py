"""The shape of the code: what the state database looks like is known to a few modules only.

The SQLite schema is not an API. Every query lives in a repository module under
``gateway/evidence/``; everything else calls those. A query written anywhere else would
make a schema change (a new column, a renamed state) break code nobody thinks of.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = ROOT / "gateway"

# The only modules that may talk SQL to state.db (paths relative to the repository root).
DATABASE_MODULES = frozenset({
    "gateway/evidence/state.py",        # the connection, migrations, the evidence queue
    "gateway/evidence/custody.py",      # the custody log, tree heads, custody queries
    "gateway/evidence/outbox.py",       # the MQTT outbox table
    "gateway/evidence/link_status.py",  # what `egw status` shows of each uplink
    "gateway/evidence/nonces.py",       # nonces of signed MQTT commands already used
    "gateway/evidence/tree_head_stamps.py",  # RFC 3161 tokens over signed tree heads
    "gateway/evidence/terminals.py",    # paired mobile terminals, pairing codes, cases
    "gateway/evidence/counter_seals.py",  # provisionally sealed documents awaiting the agency counter-seal
    "gateway/evidence/delivery_links.py",  # one-time download links of delivered documents
})

# What only code that talks to SQLite writes: a statement, a batch, the raw connection, a new one.
DATABASE_ACCESS = re.compile(r"\bexecute\(|\bexecutemany\(|\.db\.|sqlite3\.connect\(")


def offending_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for n, line in enumerate(text.splitlines(), 1) if DATABASE_ACCESS.search(line)]


def test_only_the_repository_modules_touch_the_database() -> None:
    found = [line for path in sorted(GATEWAY.rglob("*.py"))
             if path.relative_to(ROOT).as_posix() not in DATABASE_MODULES for line in offending_lines(path)]
    assert not found, "SQL outside the repository modules (move it into one of DATABASE_MODULES):\n" + "\n".join(found)


def test_the_repository_modules_exist() -> None:
    """A renamed repository module must be renamed here too, not silently drop out of the list."""
    assert all((ROOT / module).is_file() for module in DATABASE_MODULES), sorted(DATABASE_MODULES)


@pytest.mark.parametrize("line", [
    'rows = state.db.execute("SELECT id FROM evidence").fetchall()',
    "db.executemany('DELETE FROM outbox WHERE id = ?', ids)",
    "conn = sqlite3.connect(path)",
    "cur.execute(sql)",
])
def test_the_pattern_catches_database_access(line: str) -> None:
    assert DATABASE_ACCESS.search(line)


def test_no_select_star_and_no_positional_rows() -> None:
    """Rows are read by column name: ``SELECT *`` into ``EvidenceRow(*row)`` shifts every field the day a
    migration adds a column."""
    star = re.compile(r"SELECT\s+(\w+\s*,\s*)*\*", re.IGNORECASE)
    positional = re.compile(r"\b(EvidenceRow|EvidenceListing)\(\*(?!\*)")
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for path in sorted(GATEWAY.rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if star.search(line) or positional.search(line)]
    assert not found, "\n".join(found)


def test_evidence_states_are_the_stored_and_printed_strings() -> None:
    """``EvidenceState`` replaced string literals: what is stored, printed and put in JSON must not change."""
    import json

    from gateway.evidence.state import STATES, UNRECEIPTED, EvidenceState

    assert STATES == ("ingested", "queued", "uploading", "receipted", "released")
    assert UNRECEIPTED == ("ingested", "queued", "uploading")
    for state in EvidenceState:
        assert state == state.value and str(state) == f"{state}" == "%s" % state == state.value  # noqa: UP031 - the old-style format must print the value too
        assert json.dumps({"state": state}) == json.dumps({"state": state.value})
