"""The station screen as HTML, rendered on the server in the visitor's language.

Why on the server: the first thing a browser paints is then the station as it is (never a blank
"connecting…" page while recorders are docked), every word comes from the gettext catalogue through
``_()`` (one place to translate, checked by a test), and the page needs no inline script or style,
so it runs under a strict Content-Security-Policy. The page's script only asks for this fragment
again when the event stream says something changed.

Each card's headline is ONE short sentence saying what the officer must do, derived from the card's
``state`` and counts; whatever the workflow wrote into ``detail`` is one click away, never the headline.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from gateway.i18n import _, current_language

__all__ = ["render_page", "render_screen", "officer_sentence", "LANGUAGE_NAMES"]

LANGUAGE_NAMES = {"zh_CN": "中文", "en": "English"}
HTML_LANG = {"zh_CN": "zh-CN", "en": "en"}
BODYCAM = "bodycam"


def officer_sentence(card: dict[str, Any]) -> tuple[str, str]:
    """(tone, sentence): what the officer must do with this device, in one short sentence.

    Tones: ``ok`` (green), ``wait`` (amber), ``bad`` (red), ``idle`` (grey). Unknown states say
    "do not undock" for a recorder: a wrong "safe" can lose evidence, a wrong "wait" costs a minute.
    """
    state = card.get("state", "")
    if card.get("kind") != BODYCAM:
        return _peripheral_sentence(card, state)
    if state == "failing" or (state == "undocked" and card.get("failures")):
        return "bad", _("Not connected: retrying by itself")
    if state in ("error", "attention"):
        return "bad", _("Call the evidence administrator")
    if state == "undocked":
        return "idle", _("Undocked")
    if state == "safe" and card.get("safe_to_undock"):
        return "ok", _("Safe to undock")
    total = card.get("files_total") or 0
    if state == "offloading" and total:
        done = min(card.get("files_ingested") or 0, total)
        return "wait", _("Do not undock: copying {done}/{total}").format(done=done, total=total)
    if state == "waiting-for-receipts" and total:
        done = min(card.get("files_receipted") or 0, total)
        return "wait", _("Do not undock: waiting for the platform {done}/{total}").format(done=done, total=total)
    if state in ("docked", "offloading"):
        return "wait", _("Do not undock: reading the recorder")
    return "wait", _("Do not undock")


def _peripheral_sentence(card: dict[str, Any], state: str) -> tuple[str, str]:
    """Analyzers, pads and fingerprint readers hold no evidence of their own: the question is whether they work."""
    if state in ("error", "attention", "failing") or card.get("failures"):
        return "bad", _("Check the device and its cable")
    if state == "undocked":
        return "idle", _("Not connected")
    return "ok", _("Ready")


# ---- pieces ----------------------------------------------------------------------------------------

def _kind_name(kind: str) -> str:
    names = {"bodycam": _("Body-worn camera"), "rapidtest": _("Rapid-test analyzer"),
             "signpad": _("Signature pad"), "fingerprint": _("Fingerprint reader")}
    return names.get(kind, kind)


def _delivery(state: str) -> tuple[str, str]:
    """(css class, text) for an item's committed state: has the platform got it yet?"""
    if state in ("receipted", "released"):
        return "done", _("receipted by the platform")
    if state == "uploading":
        return "wait", _("uploading")
    if state in ("ingested", "queued"):
        return "wait", _("signed, queued")
    return "wait", state


def _judgement(value: str) -> str:
    names = {"positive": _("positive"), "negative": _("negative"), "suspicious": _("suspicious"),
             "invalid": _("invalid")}
    return names.get(value, value)


def _clock(epoch: Any) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(float(epoch)))
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _line(label: str, value: str) -> str:
    return f'<div class="line"><span>{label}</span><span>{value}</span></div>'


def _progress(done: int, total: int) -> str:
    return f'<progress max="{max(total, 1)}" value="{min(done, total)}"></progress>'


def _details(key: str, text: str) -> str:
    if not text:
        return ""
    summary = _("Details")
    return (f'<details data-key="{escape(key)}"><summary>{summary}</summary>'
            f'<p class="detail">{escape(text)}</p></details>')


def _bodycam_lines(card: dict[str, Any]) -> str:
    files_total, bytes_total = card.get("files_total") or 0, card.get("bytes_total") or 0
    files_done = min(card.get("files_ingested") or 0, files_total)
    # The workflow adds each copied chunk to the card, and a re-dock copies again on top of the first
    # attempt's count: never show more copied than there is.
    bytes_done = min(card.get("bytes_ingested") or 0, bytes_total)
    receipted = min(card.get("files_receipted") or 0, files_total)
    copied = _("{done}/{total} files · {size}").format(done=files_done, total=files_total,
                                                        size=f"{_megabytes(bytes_done)} / {_megabytes(bytes_total)}")
    return (_line(_("Copied"), escape(copied)) + _progress(bytes_done, bytes_total)
            + _line(_("Receipted by the platform"), f"{receipted}/{files_total}") + _progress(receipted, files_total))


def _card_lines(card: dict[str, Any]) -> str:
    lines = ""
    if card.get("battery_percent") is not None:
        lines += _line(_("Battery"), f"{int(card['battery_percent'])}%")
    if card.get("kind") == BODYCAM and card.get("files_total"):
        lines += _bodycam_lines(card)
    if card.get("failures"):
        attempts = _("{n} · retrying automatically").format(n=int(card["failures"]))
        lines += _line(_("Failed attempts"), escape(attempts))
    if card.get("clock_offset_s") is not None:
        lines += _line(_("Clock offset"), f"{float(card['clock_offset_s']):.1f} s")
    return lines


def render_card(card: dict[str, Any]) -> str:
    tone, sentence = officer_sentence(card)
    device_id, state = str(card.get("device_id", "")), str(card.get("state", ""))
    officer = " · ".join(escape(str(v)) for v in (card.get("officer_name"), card.get("officer_no"), card.get("unit")) if v)
    who = escape(_kind_name(str(card.get("kind", "")))) + (" · " + officer if officer else "")
    safe = "true" if tone == "ok" and card.get("kind") == BODYCAM else "false"
    return (f'<article class="card {tone}" data-device="{escape(device_id)}" data-state="{escape(state)}" data-safe="{safe}">'
            f'<h2>{escape(str(card.get("name") or device_id))}</h2><div class="who">{who}</div>'
            f'<p class="sentence">{escape(sentence)}</p>{_card_lines(card)}'
            f'{_details("card:" + device_id, str(card.get("detail") or ""))}</article>')


def _alarm_headline(key: str) -> str:
    if key == "disk":
        return _("Disk nearly full: copying has stopped, the data stays on the devices")
    if key == "uplink":
        return _("Not delivering to the platform")
    return _("A device needs attention")


def render_alarms(alarms: dict[str, str]) -> str:
    return "".join(f'<div class="alarm"><strong>{escape(_alarm_headline(key))}</strong>{_details("alarm:" + key, text)}</div>'
                   for key, text in sorted(alarms.items()))


def _empty_row(columns: int) -> str:
    text = _("none yet")
    return f'<tr><td colspan="{columns}" class="empty">{text}</td></tr>'


def render_results(results: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in (_("Time"), _("Sample"), _("Test item"), _("Value"), _("Judgement"), _("Delivery")))
    rows = []
    for r in results:
        css, delivery = _delivery(str(r.get("state", "")))
        judgement = str(r.get("judgement", ""))
        rows.append(f'<tr data-evidence="{escape(str(r.get("evidence_id", "")))}" data-state="{escape(str(r.get("state", "")))}">'
                    f'<td>{_clock(r.get("at"))}</td><td>{escape(str(r.get("sample_id", "")))} {escape(str(r.get("sample_description") or ""))}</td>'
                    f'<td>{escape(str(r.get("item_name") or r.get("item_code") or ""))}</td>'
                    f'<td>{escape(str(r.get("value", "")))} {escape(str(r.get("unit") or ""))}</td>'
                    f'<td class="{escape(judgement)}">{escape(_judgement(judgement))}</td><td class="{css}">{escape(delivery)}</td></tr>')
    body = "".join(rows) or _empty_row(6)
    return f'<table id="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_signings(signings: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in (_("Time"), _("Document"), _("Signer"), _("Role"), _("Fingerprint quality"), _("Delivery")))
    roles = {"party": _("party"), "witness": _("witness"), "officer": _("officer")}
    rows = []
    for s in signings:
        css, delivery = _delivery(str(s.get("state", "")))
        quality = s.get("fingerprint_quality")
        role = str(s.get("role") or "")
        rows.append(f'<tr data-evidence="{escape(str(s.get("evidence_id", "")))}" data-state="{escape(str(s.get("state", "")))}">'
                    f'<td>{_clock(s.get("at"))}</td><td>{escape(str(s.get("document", "")))}</td><td>{escape(str(s.get("signer", "")))}</td>'
                    f'<td>{escape(roles.get(role, role))}</td><td>{"" if quality is None else escape(str(quality))}</td>'
                    f'<td class="{css}">{escape(delivery)}</td></tr>')
    body = "".join(rows) or _empty_row(6)
    return f'<table id="signings"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_counts(counts: dict[str, int]) -> str:
    names = {"ingested": _("ingested"), "queued": _("queued for upload"), "uploading": _("uploading"),
             "receipted": _("receipted"), "released": _("released")}
    return "".join(f'<span>{escape(names.get(k, k))}: <b>{int(v)}</b></span>' for k, v in counts.items())


def render_screen(snapshot: dict[str, Any]) -> str:
    """Everything below the header: what the page swaps in when the station changes."""
    devices = snapshot.get("devices") or []
    no_devices = _("No devices docked.")
    cards = "".join(render_card(c) for c in devices) or f'<p class="empty">{no_devices}</p>'
    titles = {"results": _("Rapid-test results"), "signings": _("Signing sessions"), "counts": _("Evidence")}
    return (f'<div id="alarms">{render_alarms(snapshot.get("alarms") or {})}</div>'
            f'<div id="cards" data-count="{len(devices)}">{cards}</div>'
            f'<section><h2>{titles["results"]}</h2>{render_results(snapshot.get("results") or [])}</section>'
            f'<section><h2>{titles["signings"]}</h2>{render_signings(snapshot.get("signings") or [])}</section>'
            f'<section><h2>{titles["counts"]}</h2><div id="counts" class="line">{render_counts(snapshot.get("counts") or {})}</div></section>')


def _language_switch(language: str) -> str:
    links = []
    for code, name in LANGUAGE_NAMES.items():
        current = ' aria-current="true"' if code == language else ""
        links.append(f'<a href="/?lang={code}" hreflang="{HTML_LANG[code]}"{current}>{name}</a>')
    return f'<nav id="lang">{" | ".join(links)}</nav>'


def render_page(snapshot: dict[str, Any]) -> str:
    """The whole page, its first paint already showing the station (language: ``current_language()``)."""
    language = current_language()
    gateway_id = escape(str(snapshot.get("gateway_id") or ""))
    title, live, reconnecting = _("Evidence station"), escape(_("live")), escape(_("reconnecting…"))
    return (f'<!doctype html>\n<html lang="{HTML_LANG[language]}">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{title}</title>\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<link rel="stylesheet" href="/station.css">\n<script src="/station.js" defer></script>\n</head>\n'
            f'<body data-lang="{language}" data-live="{live}" data-reconnecting="{reconnecting}">\n'
            f'<header><h1>{title} <span id="gw">{gateway_id}</span></h1>'
            f'<div><span id="conn"></span> {_language_switch(language)}</div></header>\n'
            f'<main id="screen">{render_screen(snapshot)}</main>\n</body>\n</html>\n')
