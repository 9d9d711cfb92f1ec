"""The custody log: append-only events in a Merkle tree (RFC 9162 hashing).

Each entry is a JSON object serialised once, at append time; those exact
bytes are the Merkle leaf and are what a verifier hashes, so nothing depends
on JSON canonicalisation. Signed tree heads (DSSE, gateway key) commit to a
size and root; publishing them makes rewriting history detectable.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from gateway.errors import VerificationError
from gateway.evidence import dsse, merkle
from gateway.evidence.identity import Identity
from gateway.evidence.state import State

__all__ = ["CustodyLog", "TREE_HEAD_TYPE", "TreeHead", "LogProblem", "verify_tree_head"]

TREE_HEAD_TYPE = "application/vnd.egw.tree-head.v1+json"
ENTRY_VERSION = "egw.custody/1"


@dataclass(frozen=True)
class TreeHead:
    tree_size: int
    root_hash: bytes
    envelope: dsse.SignedEnvelope


@dataclass(frozen=True)
class LogProblem:
    seq: int | None
    message: str


def verify_tree_head(envelope: dsse.Envelope, public_key: Any) -> tuple[int, bytes, dict[str, Any]]:
    """Check a tree head's signature; return (size, root, payload)."""
    dsse.verify(envelope, public_key, TREE_HEAD_TYPE)
    body = envelope.payload_json()
    try:
        size = int(body["tree_size"])
        root = bytes.fromhex(body["root_hash"])
    except (KeyError, ValueError, TypeError) as exc:
        raise VerificationError(f"tree head payload is malformed: {exc}") from exc
    return size, root, body


def log_size(state: State) -> int:
    """How many entries the custody log holds (what the next tree head will cover)."""
    with state.lock:
        return int(state.db.execute("SELECT COUNT(*) FROM custody").fetchone()[0])


def last_docked(state: State, serial: str) -> dict[str, Any] | None:
    """The newest ``docked`` event whose ``serial`` equals ``serial`` exactly.

    Matched with ``json_extract`` over the entry as text: the serial is a value compared with ``=``,
    never a ``LIKE`` pattern (where ``_`` and ``%`` in a serial are wildcards, and which over the
    BLOB column matched nothing at all)."""
    with state.lock:  # the connection is shared with the copy workers and the uplinks
        row = state.db.execute(
            "SELECT entry FROM custody WHERE event = 'docked' AND json_valid(CAST(entry AS TEXT)) "
            "AND json_extract(CAST(entry AS TEXT), '$.serial') = ? ORDER BY seq DESC LIMIT 1",
            (serial,)).fetchone()
    return None if row is None else dict(json.loads(bytes(row[0])))


class CustodyLog:
    def __init__(self, state: State, identity: Identity) -> None:
        self.state = state
        self.identity = identity

    # ---- appending ------------------------------------------------------
    def append(self, db: sqlite3.Connection, event: str, evidence_id: str | None, details: dict[str, Any]) -> int:
        """Append inside the caller's transaction, so the event and the change it records commit together."""
        seq = int(db.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM custody").fetchone()[0])
        now = time.time()
        entry = {
            "v": ENTRY_VERSION,
            "seq": seq,
            "at": round(now, 6),
            "gateway_id": self.identity.gateway_id,
            "event": event,
            "evidence_id": evidence_id,
            **details,
        }
        raw = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        leaf = merkle.leaf_hash(raw)
        db.execute(
            "INSERT INTO custody (seq, evidence_id, event, entry, leaf_hash, at) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, evidence_id, event, raw, leaf, now),
        )
        frontier = self._frontier(db)
        frontier.append(leaf)
        db.execute("DELETE FROM custody_frontier")
        db.executemany("INSERT INTO custody_frontier (height, hash) VALUES (?, ?)", frontier.nodes)
        return seq

    def _frontier(self, db: sqlite3.Connection) -> merkle.Frontier:
        rows = db.execute("SELECT height, hash FROM custody_frontier ORDER BY height DESC").fetchall()
        return merkle.Frontier([(int(h), bytes(v)) for h, v in rows])

    @property
    def size(self) -> int:
        return log_size(self.state)

    def last_docked(self, serial: str) -> dict[str, Any] | None:
        """The newest ``docked`` event of the recorder with exactly this serial (None: never docked here)."""
        return last_docked(self.state, serial)

    def sign_tree_head(self) -> TreeHead:
        """Sign the current head (or return the stored one when nothing changed)."""
        with self.state.transaction() as db:
            frontier = self._frontier(db)
            size = frontier.size
            existing = db.execute("SELECT root_hash, envelope FROM tree_heads WHERE tree_size = ?", (size,)).fetchone()
            if existing is not None:
                return TreeHead(size, bytes(existing[0]), dsse.Envelope.from_bytes(bytes(existing[1])))
            root = frontier.root()
            payload = json.dumps(
                {
                    "v": "egw.tree-head/1",
                    "gateway_id": self.identity.gateway_id,
                    "tree_size": size,
                    "root_hash": root.hex(),
                    "timestamp": round(time.time(), 3),
                },
                sort_keys=True,
            ).encode()
            envelope = dsse.sign(TREE_HEAD_TYPE, payload, self.identity.private_key)
            db.execute(
                "INSERT INTO tree_heads (tree_size, root_hash, envelope, at) VALUES (?, ?, ?, ?)",
                (size, root, envelope.to_bytes(), time.time()),
            )
        return TreeHead(size, root, envelope)

    # ---- reading --------------------------------------------------------
    def leaf_hashes(self, up_to: int | None = None) -> list[bytes]:
        query = "SELECT leaf_hash FROM custody ORDER BY seq"
        rows = self.state.db.execute(query if up_to is None else query + " LIMIT ?", () if up_to is None else (up_to,))
        return [bytes(r[0]) for r in rows]

    def entry(self, seq: int) -> bytes:
        row = self.state.db.execute("SELECT entry FROM custody WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise VerificationError(f"custody entry {seq} does not exist")
        return bytes(row[0])

    def first_event(self, evidence_id: str, event: str) -> int:
        row = self.state.db.execute(
            "SELECT seq FROM custody WHERE evidence_id = ? AND event = ? ORDER BY seq LIMIT 1", (evidence_id, event)
        ).fetchone()
        if row is None:
            raise VerificationError(f"no {event!r} custody event for evidence {evidence_id}")
        return int(row[0])

    def events_for(self, evidence_id: str) -> list[dict[str, Any]]:
        rows = self.state.db.execute("SELECT entry FROM custody WHERE evidence_id = ? ORDER BY seq", (evidence_id,))
        return [json.loads(bytes(r[0])) for r in rows]

    def inclusion(self, seq: int, tree_size: int) -> list[bytes]:
        return merkle.inclusion_proof(seq, self.leaf_hashes(tree_size))

    # ---- verification ----------------------------------------------------
    def verify(self) -> tuple[int, list[LogProblem]]:
        """Recompute every leaf and every signed head from the stored entries.

        Returns (entries checked, problems); the first problem names the first
        entry (by sequence number) that fails.
        """
        problems: list[LogProblem] = []
        frontier = merkle.Frontier()
        roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
        expected_seq = 0
        for seq, raw, stored_leaf in self.state.db.execute("SELECT seq, entry, leaf_hash FROM custody ORDER BY seq"):
            raw = bytes(raw)
            if seq != expected_seq:
                problems.append(LogProblem(expected_seq, f"entry {expected_seq} is missing (next is {seq})"))
                expected_seq = seq
            try:
                body = json.loads(raw)
                if body.get("seq") != seq:
                    problems.append(LogProblem(seq, f"entry {seq} says it is entry {body.get('seq')}"))
            except (ValueError, AttributeError):
                problems.append(LogProblem(seq, f"entry {seq} is not JSON"))
            leaf = merkle.leaf_hash(raw)
            if leaf != bytes(stored_leaf):
                problems.append(LogProblem(seq, f"entry {seq} does not match its recorded leaf hash (altered)"))
            frontier.append(leaf)
            roots[frontier.size] = frontier.root()
            expected_seq += 1
        public_key = self.identity.certificate.public_key()
        for size, root, raw_env in self.state.db.execute("SELECT tree_size, root_hash, envelope FROM tree_heads ORDER BY tree_size"):
            try:
                signed_size, signed_root, _ = verify_tree_head(dsse.Envelope.from_bytes(bytes(raw_env)), public_key)
            except VerificationError as exc:
                problems.append(LogProblem(None, f"tree head at size {size}: {exc}"))
                continue
            if signed_size != size or signed_root != bytes(root):
                problems.append(LogProblem(None, f"tree head at size {size}: stored row differs from the signed head"))
            recomputed = roots.get(signed_size)
            if recomputed is None:
                problems.append(LogProblem(signed_size, f"a signed tree head covers {signed_size} entries but the log has {frontier.size} (entries removed)"))
            elif recomputed != signed_root:
                first_bad = self._first_divergence(signed_size, signed_root)
                problems.append(LogProblem(first_bad, f"signed tree head of size {signed_size} does not match the log; first differing entry {first_bad}"))
        problems.sort(key=lambda p: (p.seq is None, p.seq if p.seq is not None else 0))
        return frontier.size, problems

    def _first_divergence(self, size: int, signed_root: bytes) -> int | None:
        """Entries whose leaf hash was also rewritten only show up as a root mismatch;
        search for the first position where a prefix no longer matches any signed head."""
        heads = {
            int(s): bytes(r) for s, r in self.state.db.execute("SELECT tree_size, root_hash FROM tree_heads WHERE tree_size <= ?", (size,))
        }
        frontier = merkle.Frontier()
        last_good = 0
        for seq, raw in self.state.db.execute("SELECT seq, entry FROM custody ORDER BY seq LIMIT ?", (size,)):
            frontier.append(merkle.leaf_hash(bytes(raw)))
            expected = heads.get(frontier.size)
            if expected is not None:
                if frontier.root() != expected:
                    return last_good
                last_good = frontier.size
        return last_good
