"""What officers and parties read, in their language: Simplified Chinese by default, English selectable.

Standard gettext: messages are marked with ``_()`` (and ``ngettext()`` for counts) in English, the
source language, and translated through catalogues under ``gateway/locale/<lang>/LC_MESSAGES/egw.mo``
compiled from the ``.po`` files beside them. Why English in the source: the code, logs and operator
hints stay readable for integrators; the officer-facing text is looked up at the moment it is shown.

The language is chosen by ``EGW_LANG`` (``zh_CN`` or ``en``), else ``zh_CN``. ``use_language()``
switches it for the current thread/context only (the station screen renders each request in the
language its visitor chose).
"""

from __future__ import annotations

import contextvars
import gettext
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

__all__ = ["DOMAIN", "LANGUAGES", "DEFAULT_LANGUAGE", "LOCALE_DIR", "_", "ngettext", "current_language",
           "normalise_language", "use_language", "translator"]

DOMAIN = "egw"
LANGUAGES = ("zh_CN", "en")
DEFAULT_LANGUAGE = "zh_CN"
LOCALE_DIR = Path(__file__).with_name("locale")

_language: contextvars.ContextVar[str | None] = contextvars.ContextVar("egw_language", default=None)


def normalise_language(value: str | None) -> str:
    """``zh``, ``zh-CN``, ``zh_CN.UTF-8`` → ``zh_CN``; ``en``, ``en_US`` → ``en``; anything else → the default."""
    if not value:
        return DEFAULT_LANGUAGE
    base = value.split(".")[0].replace("-", "_")
    if base.lower().startswith("en"):
        return "en"
    if base.lower().startswith("zh"):
        return "zh_CN"
    return DEFAULT_LANGUAGE


def current_language() -> str:
    chosen = _language.get()
    return chosen if chosen is not None else normalise_language(os.environ.get("EGW_LANG"))


@contextmanager
def use_language(language: str | None) -> Iterator[str]:
    token = _language.set(normalise_language(language))
    try:
        yield _language.get() or DEFAULT_LANGUAGE
    finally:
        _language.reset(token)


@cache
def translator(language: str) -> gettext.NullTranslations:
    """The catalogue for ``language``; English (the source text) needs none."""
    if language == "en":
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, localedir=str(LOCALE_DIR), languages=[language], fallback=True)


def _(message: str) -> str:
    return translator(current_language()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translator(current_language()).ngettext(singular, plural, n)
