"""The station screen's pairing page: a QR code (inline SVG, no script: the screen's CSP allows none
inline) carrying a fresh one-time code, the pairing address and the SHA-256 of the station's TLS
certificate, which the terminal pins before it sends its CSR."""

from __future__ import annotations

import io
from html import escape

import segno

from gateway.i18n import _, current_language

__all__ = ["qr_svg", "qr_text", "render_pairing_page"]

HTML_LANG = {"zh_CN": "zh-CN", "en": "en"}


def qr_svg(data: str) -> str:
    """An SVG ``<svg>`` element (no XML declaration) for ``data``, error correction M."""
    out = io.BytesIO()
    segno.make(data, error="m", micro=False).save(out, kind="svg", scale=6, border=2, xmldecl=False, svgns=True,
                                                  title=None, desc=None, svgclass="qr", lineclass=None)
    return out.getvalue().decode("utf-8")


def qr_text(data: str) -> str:
    """The QR code as text for a terminal window (``egw terminal pair``)."""
    out = io.StringIO()
    segno.make(data, error="m", micro=False).terminal(out=out, compact=True, border=2)
    return out.getvalue()


def render_pairing_page(offer: dict[str, str]) -> str:
    language = current_language()
    title = _("Pair a mobile terminal")
    steps = _("Scan this code with the terminal app. It is valid for 5 minutes and for one terminal only.")
    fingerprint = offer["station_sha256"]
    return (f'<!doctype html>\n<html lang="{HTML_LANG.get(language, "zh-CN")}">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{escape(title)}</title>\n<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<link rel="stylesheet" href="/station.css">\n</head>\n<body>\n'
            f'<header><h1>{escape(title)}</h1></header>\n<main id="pairing">\n'
            f'<figure>{qr_svg(offer["uri"])}</figure>\n<p>{escape(steps)}</p>\n<dl>'
            f'<dt>{escape(_("Pairing code"))}</dt><dd><code id="pairing-code">{escape(offer["code"])}</code></dd>'
            f'<dt>{escape(_("Pairing address"))}</dt><dd><code>{escape(offer["pairing_url"])}</code></dd>'
            f'<dt>{escape(_("Station certificate SHA-256"))}</dt><dd><code>{escape(fingerprint)}</code></dd>'
            '</dl>\n</main>\n</body>\n</html>\n')
