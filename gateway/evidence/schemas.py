"""The published JSON schemas (``docs/schemas``), enforced on what a verifier reads.

A verifier that accepted any JSON shaped roughly right would let a bundle say things the format
does not allow (a second digest that disagrees, an id that is not a UUIDv7, a field of the wrong
type) and still print VERIFIED. The schemas ship inside the package (``gateway/schemas`` is the
repository's ``docs/schemas``), so what is published is what is enforced.

A document of an unknown **major** version is refused with its own message: it is not
malformed, this egw is too old to read it.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from gateway.errors import VerificationError

__all__ = ["check_schema", "check_major_version"]

NS = "urn:egw:schemas:"


@cache
def _registry() -> tuple[Registry, dict[str, Any]]:
    folder = resources.files("gateway") / "schemas"
    docs = {entry.name.removesuffix(".schema.json"): json.loads(entry.read_text(encoding="utf-8"))
            for entry in folder.iterdir() if entry.name.endswith(".schema.json")}
    registry: Registry = Registry().with_resources((NS + name, Resource.from_contents(doc)) for name, doc in docs.items())
    return registry, docs


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
    registry, docs = _registry()
    if name not in docs:
        raise VerificationError(f"the published schema {name} is missing from this egw installation; reinstall egw")
    validator = Draft202012Validator(docs[name], registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise VerificationError(f"{what} does not follow the published schema {name}.schema.json at {where}: {first.message}")
