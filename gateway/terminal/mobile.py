"""The mobile web page for terminals without the app: ``/m/`` on the terminal API port (mutual TLS).

Laid out for 360-412 px wide screens: take a photo or a video (or read a test strip), see rapid-test
results live, look at a case and put the uploads in it, and have the party sign a record on the station's
pad ("签字 / Sign": start, follow, show the sealed record's one-time link as a QR code the party scans). Server-rendered in the officer's language
(Simplified Chinese by default; ``?lang=en`` switches and a cookie remembers); the script
(``/m/app.js``) only sends and fetches, under a strict Content-Security-Policy (nothing inline). Uploads
use tus like every other client, so a cut connection resumes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from html import escape
from importlib import resources

from aiohttp import web

from gateway.i18n import LANGUAGES, _, normalise_language, use_language
from gateway.terminal.context import terminal_of

__all__ = ["add_mobile_routes", "render_mobile_page"]

LANGUAGE_COOKIE = "egw_lang"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}
STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
HTML_LANG = {"zh_CN": "zh-CN", "en": "en"}


def _script_strings() -> dict[str, str]:
    """Words the script shows, in the page's language (data-t-* attributes: no inline script)."""
    return {"uploading": _("Uploading"), "stored": _("Stored as evidence"), "failed": _("Upload failed; try again"),
            "resuming": _("Connection lost: resuming"), "reading": _("Reading the strip"), "no-reading": _("No reading"),
            "added": _("Added to the case"), "empty": _("Nothing yet"), "live": _("live"), "offline": _("reconnecting…"),
            "state-rendering": _("Preparing the record"), "state-waiting_for_party": _("Waiting for the party to sign on the pad"),
            "state-signed": _("Signed"), "state-sealed": _("Sealed"), "state-stored": _("Stored as evidence"),
            "state-delivered": _("Ready: let the party scan the code"), "state-failed": _("Not signed"),
            "scan": _("One-time link: it opens once")}


def _field_inputs(officer_id: str, language: str) -> str:
    """One fieldset per template (the script shows the chosen one): its text fields, the officer, the party."""
    from gateway.documents.form import PARTY_KEYS
    from gateway.documents.templates import load_template, template_kinds

    party_labels = {"name": _("Name"), "id_number": _("ID number"), "address": _("Address"), "phone": _("Phone"),
                    "representative": _("Representative")}
    sets = []
    for kind in template_kinds():
        template = load_template(kind)
        inputs = []
        for field in template.fields:
            label = escape(field.label.get(language) or field.label["zh_CN"])
            required = " required" if field.required else ""
            if field.type == "officers":
                inputs.append(f'<label>{label}<input data-officer-name autocomplete="name"{required}></label>'
                              f'<input data-officer-id type="hidden" value="{escape(officer_id)}">')
            elif field.type == "party":
                inputs += [f'<label>{label} · {escape(party_labels[key])}<input data-party="{key}"'
                           f'{" required" if key == "name" else ""}></label>' for key in PARTY_KEYS]
            elif field.type == "text":
                inputs.append(f'<label>{label}<textarea data-key="{escape(field.key)}" rows="3"{required}></textarea></label>')
            else:
                inputs.append(f'<label>{label}<input data-key="{escape(field.key)}"{required}></label>')
        hidden = "" if kind == "onsite" else " hidden disabled"  # disabled: a hidden form's required fields do not block
        sets.append(f'<fieldset data-template="{kind}"{hidden}>{"".join(inputs)}</fieldset>')
    options = "".join(f'<option value="{kind}"{" selected" if kind == "onsite" else ""}>'
                      f'{escape(load_template(kind).title.get(language) or load_template(kind).title["zh_CN"])}</option>'
                      for kind in template_kinds())
    return f'<label>{escape(_("Document"))}<select id="sign-template">{options}</select></label>' + "".join(sets)


def render_mobile_page(officer_id: str, language: str) -> str:
    data = " ".join(f'data-t-{key}="{escape(value)}"' for key, value in _script_strings().items())
    current = ' aria-current="true"'
    switch = " | ".join(f'<a href="/m/?lang={code}"{current if code == language else ""}>{name}</a>'
                        for code, name in (("zh_CN", "中文"), ("en", "English")))
    return (f'<!doctype html>\n<html lang="{HTML_LANG[language]}">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{escape(_("Mobile terminal"))}</title>\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<link rel="stylesheet" href="/m/app.css">\n<script src="/m/app.js" defer></script>\n</head>\n'
            f'<body {data}>\n<header><h1>{escape(_("Mobile terminal"))}</h1>'
            f'<p>{escape(_("Officer"))} <b id="officer">{escape(officer_id)}</b> <span id="conn"></span></p>'
            f'<nav id="lang">{switch}</nav></header>\n<main>\n'
            f'<section id="capture"><h2>{escape(_("Photo or video"))}</h2>'
            f'<label class="big" for="file">{escape(_("Take a photo / choose a file"))}</label>'
            '<input id="file" type="file" accept="image/*,video/*" capture="environment">'
            f'<label class="check"><input id="strip" type="checkbox"> {escape(_("This is a test strip: read it"))}</label>'
            '<ul id="uploads"></ul></section>\n'
            f'<section id="results-box"><h2>{escape(_("Rapid-test results"))}</h2><ul id="results"></ul></section>\n'
            f'<section id="case-box"><h2>{escape(_("Case"))}</h2>'
            f'<div class="row"><input id="case-no" inputmode="text" autocomplete="off" placeholder="{escape(_("Case number"))}">'
            f'<button id="case-show" type="button">{escape(_("Show"))}</button></div>'
            f'<button id="case-add" class="big" type="button">{escape(_("Add my uploads to this case"))}</button>'
            '<ul id="case"></ul></section>\n'
            f'<section id="sign-box"><h2>{escape(_("Sign"))}</h2><form id="sign-form">{_field_inputs(officer_id, language)}'
            f'<p class="note">{escape(_("The record cites your uploads and goes into the case above."))}</p>'
            f'<button id="sign-start" class="big" type="submit">{escape(_("Start signing on the station pad"))}</button></form>'
            '<p id="sign-state" role="status"></p><div id="sign-qr"></div><p id="sign-result" class="id"></p></section>\n'
            '</main>\n</body>\n</html>\n')


def add_mobile_routes(app: web.Application) -> None:
    static = {name: resources.files("gateway.terminal").joinpath(f"mobile.{name.split('.')[1]}").read_bytes() for name in STATIC}

    async def page(request: web.Request) -> web.Response:
        language = normalise_language(request.query.get("lang") or request.cookies.get(LANGUAGE_COOKIE))
        with use_language(language):
            body = render_mobile_page(terminal_of(request).officer_id, language)
        response = web.Response(text=body, content_type="text/html", charset="utf-8", headers=HEADERS)
        if request.query.get("lang") in LANGUAGES:
            response.set_cookie(LANGUAGE_COOKIE, language, max_age=365 * 86400, samesite="Strict", httponly=True, secure=True)
        return response

    def serve(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_: web.Request) -> web.Response:
            return web.Response(body=static[name], content_type=STATIC[name], charset="utf-8", headers=HEADERS)
        return handler

    app.router.add_get("/m/", page)
    for name in STATIC:
        app.router.add_get(f"/m/{name}", serve(name))
