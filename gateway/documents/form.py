"""The filled-in fields of a document: a TOML or JSON form, plus ``--set KEY=VALUE`` from the command line.

A form is flat where it can be (``case_number``, ``time``, ``place``, ``findings`` …), with two structured
fields: ``officers`` (a list of ``{name, id}``) and ``party`` (``{name, id_number, address, phone,
representative}``). ``agency`` names the issuing authority printed above the title. Checked against the
template before anything is rendered: a missing required field or a wrong shape is an operator's mistake
named in one line, never a half-rendered record.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.documents.templates import Template
from gateway.errors import ConfigError

__all__ = ["Form", "Officer", "PARTY_KEYS", "load_form", "check_form"]

PARTY_KEYS = ("name", "id_number", "address", "phone", "representative")
MAX_FIELD_CHARS = 20_000  # a findings text longer than this is a pasted file, not a record


@dataclass(frozen=True)
class Officer:
    name: str
    id: str


@dataclass(frozen=True)
class Form:
    values: dict[str, str]  # line and text fields by key
    officers: tuple[Officer, ...]
    party: dict[str, str]  # PARTY_KEYS present
    agency: str

    def as_json(self) -> dict[str, Any]:
        """The form as embedded in the PDF (``document.json``): what was filled in, machine-readable."""
        return {"agency": self.agency, "fields": dict(sorted(self.values.items())),
                "officers": [{"name": o.name, "id": o.id} for o in self.officers], "party": dict(self.party)}


def load_form(path: Path | None, overrides: list[str]) -> dict[str, Any]:
    """The raw form: the file (``.toml`` or ``.json``), then each ``KEY=VALUE`` (``party.name=王小明`` for the party)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the form {path}: {exc}", "give a readable UTF-8 .toml or .json file") from exc
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"the form {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}",
                              "fix the line named above") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"the form {path} must be a table of fields", "see docs/formats/document.md for an example")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", "e.g. --set case_number=2026-017 or --set party.name=王小明")
        key = key.strip()
        if key.startswith("party."):
            party = data.setdefault("party", {})
            if not isinstance(party, dict):
                raise ConfigError("the form's party is not a table", "write [party] with name = \"…\"")
            party[key.removeprefix("party.")] = value
        else:
            data[key] = value
    return data


def _text(value: Any, what: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if hasattr(value, "isoformat"):  # a TOML date or date-time
        value = value.isoformat()
    if not isinstance(value, str):
        raise ConfigError(f"the form's {what} must be text, got {type(value).__name__}", f"write {what} = \"…\"")
    if len(value) > MAX_FIELD_CHARS:
        raise ConfigError(f"the form's {what} is {len(value)} characters long (at most {MAX_FIELD_CHARS})",
                          "shorten it; attach long material as evidence and cite it with --cite")
    return value.strip()


def _officers(value: Any) -> tuple[Officer, ...]:
    if not isinstance(value, list):
        raise ConfigError("the form's officers must be a list", 'write [[officers]] tables with name = "…" and id = "…"')
    officers = []
    for i, entry in enumerate(value, 1):
        if not isinstance(entry, dict) or not entry.get("name"):
            raise ConfigError(f"officer {i} in the form has no name", 'each [[officers]] needs name = "…" and id = "…"')
        officers.append(Officer(_text(entry["name"], f"officer {i}'s name"), _text(entry.get("id", ""), f"officer {i}'s id")))
    return tuple(officers)


def _party(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError("the form's party must be a table", '[party] with name = "…" (and id_number, address, phone)')
    unknown = sorted(set(value) - set(PARTY_KEYS))
    if unknown:
        raise ConfigError(f"the form's party has unknown keys: {', '.join(unknown)}", f"use {', '.join(PARTY_KEYS)}")
    return {key: _text(value[key], f"party.{key}") for key in PARTY_KEYS if key in value and str(value[key]).strip()}


def check_form(template: Template, data: dict[str, Any]) -> Form:
    """The form as ``template`` wants it, or a ConfigError naming the first field that is missing or wrong."""
    known = {f.key for f in template.fields} | {"agency"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"the form has fields the {template.kind} template does not know: {', '.join(unknown)}",
                          f"its fields are: {', '.join(sorted(known))}")
    values: dict[str, str] = {}
    officers: tuple[Officer, ...] = ()
    party: dict[str, str] = {}
    for field in template.fields:
        raw = data.get(field.key)
        if field.type == "officers":
            officers = _officers(raw) if raw is not None else ()
            present = bool(officers)
        elif field.type == "party":
            party = _party(raw) if raw is not None else {}
            present = bool(party.get("name"))
        else:
            values[field.key] = _text(raw, field.key) if raw is not None else ""
            present = bool(values[field.key])
        if field.required and not present:
            raise ConfigError(f"the form lacks {field.key!r} ({field.label['zh_CN']}), which the {template.kind} record requires",
                              f"add {field.key} to the form or pass --set {field.key}=…")
    return Form(values, officers, party, _text(data.get("agency", ""), "agency"))
