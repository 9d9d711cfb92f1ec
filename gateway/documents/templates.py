"""Document templates: one JSON data file per document kind, under ``templates/``.

Why data files: an agency adds or rewords a kind (its title, its fields, the closing statement the party
confirms) without touching the renderer. Labels are given per language in the file itself (``zh_CN`` and
``en``): they are the agency's wording, not the program's, so they do not go through the gettext catalogue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.i18n import LANGUAGES

__all__ = ["FIELD_TYPES", "Field", "Template", "TEMPLATE_DIR", "load_template", "template_kinds"]

TEMPLATE_DIR = Path(__file__).with_name("templates")
FIELD_TYPES = ("line", "text", "officers", "party")


@dataclass(frozen=True)
class Field:
    key: str
    type: str  # one of FIELD_TYPES
    required: bool
    label: dict[str, str]  # language -> label


@dataclass(frozen=True)
class Template:
    kind: str
    title: dict[str, str]
    fields: tuple[Field, ...]
    statement: dict[str, str]
    signature_label: dict[str, str]

    def text(self, value: dict[str, str], language: str) -> str:
        """A per-language string of this template in ``language`` (Chinese when it lacks that one)."""
        return value.get(language) or value["zh_CN"]


def template_kinds() -> list[str]:
    """The document kinds this gateway can render: the template files present."""
    return sorted(path.stem for path in TEMPLATE_DIR.glob("*.json"))


@cache
def load_template(kind: str) -> Template:
    kinds = template_kinds()
    if kind not in kinds:
        raise ConfigError(f"no document template {kind!r}", f"use one of: {', '.join(kinds)}")
    path = TEMPLATE_DIR / f"{kind}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return _parse(kind, data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"the document template {path} is broken: {exc}",
                          "restore it from the egw release (templates are data files shipped with egw)") from exc


def _texts(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not isinstance(value.get("zh_CN"), str):
        raise ValueError(f"{what} needs at least a zh_CN text")
    return {lang: str(value[lang]) for lang in LANGUAGES if isinstance(value.get(lang), str)}


def _parse(kind: str, data: dict[str, Any]) -> Template:
    if data.get("kind") != kind:
        raise ValueError(f"its kind {data.get('kind')!r} is not its file name {kind!r}")
    fields = []
    for raw in data["fields"]:
        if raw["type"] not in FIELD_TYPES:
            raise ValueError(f"field {raw['key']!r} has unknown type {raw['type']!r}")
        fields.append(Field(str(raw["key"]), str(raw["type"]), bool(raw.get("required", False)),
                            _texts(raw["label"], f"field {raw['key']!r}")))
    return Template(kind, _texts(data["title"], "title"), tuple(fields), _texts(data["statement"], "statement"),
                    _texts(data["signature_label"], "signature_label"))
