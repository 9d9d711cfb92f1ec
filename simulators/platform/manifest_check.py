"""The platform enforces the published manifest schema (``docs/schemas/manifest.schema.json``, egw.manifest/1).

A signed manifest is what a court reads later: the platform refuses one that does not follow the schema it
publishes, with a message that names the field and says what is wrong, never a validator's internals or a
Python ``None``. Common mistakes of other implementations get their own words: another major version, camelCase
keys (the proto JSON style), ``size`` as a string (proto JSON's uint64), a ``digests.sha256`` that disagrees.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from protos.schemas import validator

__all__ = ["SUPPORTED_VERSION", "ManifestRejected", "check_manifest"]

SUPPORTED_VERSION = "egw.manifest/1"
_VERSION_RE = re.compile(r"^egw\.manifest/(\d+)(?:\.\d+)*$")
_CAMEL_RE = re.compile(r"[a-z0-9][A-Z]")


class ManifestRejected(ValueError):
    """A manifest the platform does not accept; the message names the field and what to do."""


def _validator() -> Draft202012Validator:
    return validator("manifest")  # the published schema, one loader for everyone (protos/schemas.py)


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value[:80]!r}"
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    return json.dumps(value)


def _check_version(body: dict[str, Any]) -> None:
    version = body.get("v")
    if not isinstance(version, str):
        raise ManifestRejected(f"the manifest has no schema version (field v); this platform accepts {SUPPORTED_VERSION}")
    match = _VERSION_RE.match(version)
    if match is None:
        raise ManifestRejected(f"the manifest's schema version {version[:80]!r} is not of the form egw.manifest/<major>; "
                               f"this platform accepts {SUPPORTED_VERSION}")
    if match.group(1) != "1":
        raise ManifestRejected(f"manifest schema {version} is a major version this platform does not know (it accepts "
                               f"{SUPPORTED_VERSION} only); deliver it to a platform that supports it, or upgrade this one")


def _check_common_mistakes(body: dict[str, Any]) -> None:
    camel = sorted(key for key in body if _CAMEL_RE.search(key))
    if camel:
        raise ManifestRejected(f"manifest key {camel[0]!r} is not part of {SUPPORTED_VERSION}: its keys are snake_case "
                               f"(did you mean {_snake(camel[0])!r}?)")
    size = body.get("size")
    if isinstance(size, str):
        raise ManifestRejected(f"manifest field size must be a JSON integer (bytes), not {_describe(size)}")
    digests = body.get("digests")
    if isinstance(digests, dict) and "sha256" in digests and digests["sha256"] != body.get("sha256"):
        raise ManifestRejected(f"manifest field digests.sha256 ({str(digests['sha256'])[:64]}) differs from sha256 "
                               f"({str(body.get('sha256'))[:64]}): a manifest names one content")


def check_manifest(body: Any) -> dict[str, Any]:
    """``body`` if it is an egw.manifest/1 manifest, else ManifestRejected saying which field is wrong and how."""
    if not isinstance(body, dict):
        raise ManifestRejected(f"the manifest payload must be a JSON object, not {_describe(body)}")
    _check_version(body)
    _check_common_mistakes(body)
    error = best_match(_validator().iter_errors(body))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        if error.validator == "required":
            missing = [key for key in error.validator_value if key not in error.instance]
            raise ManifestRejected(f"the manifest lacks the field {'.'.join([*map(str, error.absolute_path), missing[0]])} "
                                   f"that {SUPPORTED_VERSION} requires")
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            raise ManifestRejected(f"manifest field {'.'.join([*map(str, error.absolute_path), extra[0]])} is not part of "
                                   f"{SUPPORTED_VERSION}; put vendor data under extra")
        if where == "evidence_id":
            raise ManifestRejected(f"manifest field evidence_id must be a lowercase UUIDv7 (RFC 9562), not {_describe(error.instance)}")
        raise ManifestRejected(f"manifest field {where} {_expectation(error.validator, error.validator_value)}, "
                               f"not {_describe(error.instance)} (docs/schemas/manifest.schema.json)")
    return body


def _expectation(keyword: Any, value: Any) -> str:
    """What the schema keyword asks for, in words."""
    if keyword == "type":
        kinds = [value] if isinstance(value, str) else list(value)
        return "must be " + " or ".join("null" if k == "null" else f"a JSON {k}" for k in kinds)
    if keyword == "enum":
        return "must be one of " + ", ".join(str(v) for v in value)
    if keyword == "const":
        return f"must be {value}"
    if keyword == "minimum":
        return f"must be at least {value}"
    if keyword in ("pattern", "format"):
        return "does not have the form the schema requires"
    return f"breaks the schema rule {keyword!r}"
