"""The published JSON Schemas (``docs/schemas/``), loaded once, for whoever must enforce them.

The platform checks manifests against them, ``egw verify`` checks what a bundle holds, and the
conformance kit checks what a gateway publishes: one loader, so all three judge by the same
documents an integrator reads. Schemas reference each other as ``urn:egw:schemas:<name>``.
The files are the repository's ``docs/schemas``, shipped in the package as
``protos/published_schemas`` (a link to it), so what is published is what is enforced;
``EGW_SCHEMAS_DIR`` points elsewhere.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

__all__ = ["SCHEMA_NS", "schema_dir", "schema_names", "schema_errors", "validator"]

SCHEMA_NS = "urn:egw:schemas:"


def schema_dir() -> Path:
    return Path(os.environ.get("EGW_SCHEMAS_DIR") or Path(__file__).resolve().parent / "published_schemas")


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    directory = schema_dir()
    found = {path.name.removesuffix(".schema.json"): json.loads(path.read_text(encoding="utf-8"))
             for path in sorted(directory.glob("*.schema.json"))}
    if not found:
        raise FileNotFoundError(f"no JSON Schemas in {directory}: reinstall egw (they ship in protos/published_schemas) "
                                "or set EGW_SCHEMAS_DIR")
    return found


def schema_names() -> list[str]:
    return sorted(_schemas())


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator for ``docs/schemas/<name>.schema.json`` (with formats checked: uuid, date-time, …)."""
    schemas = _schemas()
    if name not in schemas:
        raise KeyError(f"no published schema {name!r}; known: {', '.join(sorted(schemas))}")
    registry: Registry[Any] = Registry().with_resources(
        (SCHEMA_NS + other, Resource.from_contents(doc)) for other, doc in schemas.items())
    return Draft202012Validator(schemas[name], registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_errors(name: str, document: Any, limit: int = 5) -> list[str]:
    """Up to ``limit`` readable violations (``path: message``), best first; empty when valid."""
    found = sorted(validator(name).iter_errors(document), key=lambda e: (len(e.absolute_path), str(e.message)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found[:limit]]
