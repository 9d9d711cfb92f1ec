"""``egw verify`` of the parts a bundle carries (``parts/<evidence id>/``, docs/formats/bundle.md, *Parts*).

Every part is judged as a bundle of its own, by the same anchors and CRLs, and its checks are reported
under its id. Then one check compares what the items say they reference (``bundle_parts.references``,
the same rules ``egw export`` followed) with what ``bundle.json`` lists: a part left out, a part nobody
references, or a part whose manifest is for other bytes than the referencing item states, each fails it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.errors import VerificationError
from gateway.evidence.bundle_parts import MAX_RECORD_BYTES, Reference, references
from gateway.evidence.bundle_verify import PARTS_DIR, Check, Report, judge_bundle
from gateway.evidence.trust import Anchors

__all__ = ["judge_parts", "parts_not_carried"]


def judge_parts(root: Path, index: dict[str, Any], report: Report, anchors: Anchors,
                crls: list[tuple[str, bytes]]) -> list[Check]:
    """The checks of every listed part, then ``parts`` (exactly the referenced items, by digest)."""
    checks: list[Check] = []
    judged: dict[str, Report] = {}
    for listed in index["parts"]:
        evidence_id = listed["evidence_id"]
        directory = _part_directory(root, listed)
        if directory is None:
            checks.append(Check(f"part {evidence_id}", False, f"{listed['bundle']} is not the part's directory "
                                f"({PARTS_DIR}/{evidence_id}, inside the bundle)"))
            continue
        part = judge_bundle(directory, anchors=anchors, crls=crls, is_part=True)
        judged[evidence_id] = part
        checks.extend(Check(f"part {evidence_id} {c.name}", c.ok, c.detail) for c in part.checks)
    try:
        checks.append(Check("parts", True, _references_match(index, report, judged)))
    except VerificationError as exc:
        checks.append(Check("parts", False, str(exc)))
    return checks


def parts_not_carried(report: Report, is_part: bool) -> list[Check]:
    """A bundle without ``parts`` (a part verified on its own, or one written before parts were carried) whose item
    references other evidence: say that those items are not proven here, so nobody reads VERIFIED as covering
    them. Nothing for a part judged inside its bundle: the top bundle's ``parts`` check covers it."""
    if is_part or report.manifest is None:
        return []
    try:
        ids = sorted({ref.evidence_id for ref in references(report.manifest, lambda: _read_record(report))})
    except VerificationError:
        return []
    if not ids:
        return []
    return [Check("parts", True, "not carried (this bundle.json lists no parts: written before parts were carried, "
                  f"or a part verified on its own): the {len(ids)} item(s) this one references "
                  f"({', '.join(ids)}) are not proven by this directory; verify them from their own bundles")]


def _part_directory(root: Path, listed: dict[str, Any]) -> Path | None:
    if listed["bundle"] != f"{PARTS_DIR}/{listed['evidence_id']}":
        return None
    candidate = (root / str(listed["bundle"])).resolve()
    if root.resolve() not in candidate.parents or not candidate.is_dir():
        return None
    return candidate


def _read_record(report: Report) -> bytes:
    """The content of a record whose links live in its content (bounded: records are small)."""
    if report.content is None:
        raise VerificationError("its content did not load")
    with open(report.content, "rb") as src:
        return src.read(MAX_RECORD_BYTES + 1)


def _mentions(evidence_id: str, report: Report) -> list[Reference]:
    if report.manifest is None:
        raise VerificationError(f"cannot check: the manifest of {evidence_id} did not load, so what it references is unknown")
    try:
        return references(report.manifest, lambda: _read_record(report))
    except VerificationError as exc:
        raise VerificationError(f"cannot read what {evidence_id} references: {exc}") from exc


def _references_match(index: dict[str, Any], report: Report, judged: dict[str, Report]) -> str:
    """Exactly the referenced items, each with the digest every mention states; raise naming the first difference."""
    listed = {p["evidence_id"]: p for p in index["parts"]}
    if len(listed) != len(index["parts"]):
        raise VerificationError("bundle.json lists a part twice")
    items = {index["evidence_id"]: report, **judged}
    mentioned: dict[str, list[tuple[str, Reference]]] = {}
    for evidence_id, item in items.items():
        for ref in _mentions(evidence_id, item):
            mentioned.setdefault(ref.evidence_id, []).append((evidence_id, ref))
    missing = [(i, m[0]) for i, m in mentioned.items() if i not in listed and i != index["evidence_id"]]
    if missing:
        part_id, (by, ref) = missing[0]
        raise VerificationError(f"{by} references {part_id} ({ref.where}), but the bundle does not carry it")
    unreferenced = [i for i in listed if i not in mentioned]
    if unreferenced:
        raise VerificationError(f"the bundle carries {unreferenced[0]}, which no item in it references")
    for part_id, entry in listed.items():
        if part_id not in judged:
            raise VerificationError(f"cannot check part {part_id}: its directory is not where bundle.json says")
        _digests_agree(part_id, entry["sha256"], judged[part_id], mentioned[part_id])
    return (f"{len(listed)} part(s), exactly the items referenced, each with the SHA-256 its manifest states"
            if listed else "the item references no other evidence")


def _digests_agree(part_id: str, listed_sha: str, part: Report, mentions: list[tuple[str, Reference]]) -> None:
    if part.manifest is None:
        raise VerificationError(f"cannot check part {part_id}: its manifest did not load")
    if part.manifest.get("evidence_id") != part_id:
        raise VerificationError(f"the part listed as {part_id} holds the manifest of {part.manifest.get('evidence_id')}")
    actual = part.manifest["sha256"]
    if listed_sha != actual:
        raise VerificationError(f"bundle.json lists part {part_id} with SHA-256 {listed_sha}, its manifest states {actual}")
    for by, ref in mentions:
        if ref.sha256 is not None and ref.sha256 != actual:
            raise VerificationError(f"{by} references {part_id} with SHA-256 {ref.sha256} ({ref.where}), but the part "
                                    f"carried is {actual}")
