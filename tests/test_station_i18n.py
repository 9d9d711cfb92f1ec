"""The gettext catalogues: every string marked for translation has a Simplified Chinese translation, the
committed ``.mo`` is what the ``.po`` compiles to, and translations keep the placeholders they format."""

import re
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from hypothesis import given, strategies as st

from gateway.i18n import LOCALE_DIR, _, use_language
from tests.conftest import REPO

PO = LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "egw.po"
MO = PO.with_suffix(".mo")
# A second, cruder net under Babel's extractor: it does not see _() inside an f-string's braces.
MARKED = re.compile(r"""\b(?:_|gettext)\(\s*(?P<q>["'])(?P<text>(?:\\.|(?!(?P=q)).)*)(?P=q)\s*\)""")
PLACEHOLDER = re.compile(r"\{[a-z_]*\}")


def _po_catalogue():
    with PO.open("rb") as fh:
        return read_po(fh, locale="zh_CN")


def _marked_in_code() -> set[str]:
    """Every msgid marked in gateway/, by Babel's extractor (as configured in babel.cfg) and by the regex."""
    found = {message[2] if isinstance(message[2], str) else message[2][0]
             for message in extract_from_dir(str(REPO), method_map=[("gateway/**.py", "python")])}
    for source in (REPO / "gateway").rglob("*.py"):
        found |= {m.group("text").encode().decode("unicode_escape").encode("latin-1").decode("utf-8")
                  for m in MARKED.finditer(source.read_text(encoding="utf-8"))}
    return {m for m in found if m}


def test_every_marked_string_has_a_chinese_translation():
    catalogue = _po_catalogue()
    untranslated = sorted(m for m in _marked_in_code()
                          if m not in catalogue or not catalogue[m].string or catalogue[m].fuzzy)
    assert not untranslated, f"add these to {PO.relative_to(REPO)} (see README, Translations): {untranslated}"


def test_the_page_strings_are_found_by_the_extractor():
    marked = _marked_in_code()
    assert {"Evidence station", "Safe to undock", "Do not undock: copying {done}/{total}", "live", "none yet"} <= marked


def _hashable(value):
    """Plural entries carry tuples of ids and lists of translations."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


def test_committed_mo_is_compiled_from_the_po():
    with MO.open("rb") as fh:
        compiled = {_hashable(m.id): _hashable(m.string) for m in read_mo(fh) if m.id}
    expected = {_hashable(m.id): _hashable(m.string) for m in _po_catalogue() if m.id and m.string and not m.fuzzy}
    assert compiled == expected, "egw.mo is stale: run `pybabel compile -d gateway/locale -D egw` and commit it"


def test_translations_keep_their_placeholders():
    for message in _po_catalogue():
        if message.id and message.string:
            source = message.id[0] if isinstance(message.id, tuple) else message.id
            forms = message.string if isinstance(message.string, (list, tuple)) else [message.string]
            for form in forms:
                assert sorted(PLACEHOLDER.findall(source)) == sorted(PLACEHOLDER.findall(form)), message.id


@given(done=st.integers(0, 10**6), total=st.integers(0, 10**6))
def test_card_sentences_format_in_both_languages(done, total):
    for language, word in (("zh_CN", "请勿拔出"), ("en", "Do not undock")):
        with use_language(language):
            sentence = _("Do not undock: copying {done}/{total}").format(done=done, total=total)
        assert sentence.startswith(word) and f"{done}/{total}" in sentence


def test_babel_config_covers_the_gateway_package():
    assert "[python: gateway/**.py]" in Path(REPO / "babel.cfg").read_text(encoding="utf-8")
