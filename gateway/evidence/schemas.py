"""The published JSON schemas (``docs/schemas``), enforced on what a verifier reads.

A verifier that accepted any JSON shaped roughly right would let a bundle say things the format
does not allow (a second digest that disagrees, an id that is not a UUIDv7, a field of the wrong
type) and still print VERIFIED. The schemas are loaded by ``protos.schemas`` (shared with the
platform and the conformance kit), so what is published is what is enforced.

A document of an unknown **major** version is refused with its own message: it is not
malformed, this egw is too old to read it.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import VerificationError
from protos.schemas import validator

__all__ = ["check_schema", "check_major_version"]

def check_major_version(value: Any, field: str, family: str, what: str, reads: int = 1) -> None:
    """Refuse ``<family>/<major>`` of a major version other than ``reads``, before the schema says "invalid"."""
    if not isinstance(value, dict):
        return
    found = re.fullmatch(re.escape(family) + r"/(\d+)", str(value.get(field, "")))
    if found and int(found[1]) != reads:
        raise VerificationError(
            f"{what} is {value[field]}, a major version this egw does not read (it reads {family}/{reads}); "
            "upgrade egw to verify it")


def check_schema(name: str, value: Any, what: str) -> None:
    """Raise VerificationError naming the first place ``value`` breaks ``docs/schemas/<name>.schema.json``."""
    try:
        checker = validator(name)
    except (KeyError, FileNotFoundError) as exc:
        raise VerificationError(f"the published schema {name} is missing from this egw installation; reinstall egw") from exc
    errors = sorted(checker.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise VerificationError(f"{what} does not follow the published schema {name}.schema.json at {where}: {first.message}")
