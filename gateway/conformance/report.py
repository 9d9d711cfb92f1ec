"""One row per rule of the contract: passed, failed (with the reason), or not checked (and why)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Outcome", "Row", "Report"]


class Outcome(Enum):
    PASS = "pass"
    FAIL = "FAIL"
    SKIP = "not checked"


@dataclass
class Row:
    rule: str
    outcome: Outcome
    detail: str = ""


@dataclass
class Report:
    """What a vendor reads: every rule with its outcome; the kit exits 1 when any row failed."""

    subject: str
    rows: list[Row] = field(default_factory=list)

    def add(self, rule: str, ok: bool, detail: str = "") -> None:
        self.rows.append(Row(rule, Outcome.PASS if ok else Outcome.FAIL, detail))

    def skip(self, rule: str, why: str) -> None:
        self.rows.append(Row(rule, Outcome.SKIP, why))

    @property
    def passed(self) -> bool:
        return all(row.outcome is not Outcome.FAIL for row in self.rows) and any(
            row.outcome is Outcome.PASS for row in self.rows)

    def failures(self) -> list[Row]:
        return [row for row in self.rows if row.outcome is Outcome.FAIL]

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "passed": self.passed,
                "rows": [{"rule": r.rule, "outcome": r.outcome.value, "detail": r.detail} for r in self.rows]}

    def lines(self) -> list[str]:
        width = max((len(r.rule) for r in self.rows), default=10)
        out = [f"conformance of {self.subject}", ""]
        out += [f"  {r.outcome.value:<11}  {r.rule:<{width}}  {r.detail}".rstrip() for r in self.rows]
        failed = len(self.failures())
        verdict = "CONFORMS" if self.passed else (f"DOES NOT CONFORM ({failed} rule(s) failed)" if failed
                                                 else "NOTHING CHECKED")
        return [*out, "", verdict]
