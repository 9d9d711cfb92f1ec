"""``egw record``: enforcement documents (on-site record, sampling record, decision, delivery receipt) as PDF/A-3b.

The flow at the scene::

    egw record draft --template onsite --form form.toml --cite ID… -o draft.pdf    # the party reads it
    egw sign --document draft.pdf --signer 王小明 --signpad … --fingerprint …        # and signs it
    egw record new --template onsite --form form.toml --cite ID… \\
        --signing SIGNING_RECORD_ID --signed-draft draft.pdf -o record.pdf         # the record, as evidence

``draft`` only reads the evidence store (it runs beside ``egw run``); ``new`` writes: it runs inside a running
``egw run`` through the control socket like ``egw sign``, stores the PDF as evidence of kind ``document``
(manifested, in custody, delivered like the rest), and seals it first when a sealer is configured
(gateway/documents/sealer.py). ``templates`` lists the kinds.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.commands.common import add_data_dir, add_json, check_cancelled, err, getenv, open_evidence, out, print_json
from gateway.errors import ConfigError
from gateway.i18n import _, current_language, use_language

if TYPE_CHECKING:
    from gateway.documents.form import Form
    from gateway.documents.sealer import Sealer
    from gateway.documents.sources import Citation, SigningParts
    from gateway.documents.templates import Template
    from gateway.evidence.evidence_service import EvidenceService

__all__ = ["register", "run", "store_document", "StoredDocument"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("record", help="render an enforcement document (PDF/A-3b) with its evidence and signature")
    actions = p.add_subparsers(dest="record_action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("templates", help="list the document kinds")
    add_json(listing)
    listing.set_defaults(func=run)
    draft = actions.add_parser("draft", help="render the document for the party to read and sign (not stored)")
    _add_document_options(draft)
    new = actions.add_parser("new", help="render the signed document and store it as evidence")
    _add_document_options(new)
    new.add_argument("--signing", metavar="EVIDENCE_ID", help="the signing record `egw sign` made for the draft")
    new.add_argument("--signed-draft", type=Path, metavar="FILE",
                     help="the draft the party signed (with --signing: it must be the document that session bound)")
    new.add_argument("--officer-id", help="the officer storing the document (default: the form's first officer)")
    _add_deliver(actions)
    new.add_argument("--trust-services", metavar="URL", help="the platform's trust services https://HOST:PORT for the agency seal "
                     "(default: EGW_TRUST_SERVICES, else what egw run's [platform] trust_services left in the data directory)")


def _add_deliver(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway.workflows.delivery import DEFAULT_LINK_MINUTES, METHODS

    p = actions.add_parser("deliver", help="record the delivery (送达) of a sealed document to the party; optionally a one-time link")
    p.add_argument("document", metavar="EVIDENCE_ID", help="the sealed document (`egw record new` printed its evidence id)")
    p.add_argument("--party", required=True, help="the party the document is delivered to")
    p.add_argument("--how", action="append", choices=METHODS, required=True,
                   help="station (shown on the station screen), pad (shown on the signature pad, needs --signpad), "
                        "link (one-time link / QR code), paper; repeatable")
    p.add_argument("--signpad", help="signature pad URL for --how pad (usbip://HOST:PORT/BUSID or usb://VID:PID)")
    p.add_argument("--pad-seconds", type=float, default=None, help="seconds each screenful of the document stays on the pad")
    p.add_argument("--receipt", metavar="EVIDENCE_ID", help="the party's signed, sealed delivery receipt (egw record new --template delivery)")
    p.add_argument("--refused", action="store_true", help="the party refused to sign; needs --witness")
    p.add_argument("--witness", help="the witness present when the party refused")
    p.add_argument("--link-minutes", type=int, default=DEFAULT_LINK_MINUTES, help="how long the one-time link stays valid")
    p.add_argument("--base-url", help="the station screen's address the party's phone reaches (default: the one egw run serves)")
    p.add_argument("--qr", type=Path, metavar="FILE.png", help="also write the link as a QR code image")
    p.add_argument("--officer-id", help="the officer delivering")
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def _add_document_options(p: argparse.ArgumentParser) -> None:
    from gateway.documents.templates import template_kinds

    p.add_argument("--template", required=True, choices=template_kinds(), help="the kind of document")
    p.add_argument("--form", type=Path, help="the filled-in fields (.toml or .json; see docs/formats/document.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a field on the command line (party.name=… for the party)")
    p.add_argument("--cite", action="append", default=[], metavar="EVIDENCE_ID", help="evidence the document cites (repeatable)")
    p.add_argument("--lang", choices=("zh_CN", "en"), help="the document's language (default: EGW_LANG, else zh_CN)")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the PDF")
    add_data_dir(p)
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.record_action == "templates":
        return _templates(args)
    if args.record_action == "deliver":
        return _deliver(args)
    with use_language(args.lang or current_language()):
        return _draft(args) if args.record_action == "draft" else _new(args)


def _deliver(args: argparse.Namespace) -> int:
    from gateway.workflows.delivery import deliver, screen_base_url, show_document_on_pad
    from gateway.workflows.pad_display import DEFAULT_DWELL_S

    if ("pad" in args.how) != bool(args.signpad):
        raise ConfigError("--how pad and --signpad URL go together", "pass both to show the document on the pad, or neither")
    with open_evidence(args) as service:
        base = screen_base_url(service.data_dir, args.base_url) if "link" in args.how else None
        shown = None
        if args.signpad:
            dwell = DEFAULT_DWELL_S if args.pad_seconds is None else max(0.0, args.pad_seconds)
            shown = show_document_on_pad(service, args.document, args.signpad, dwell)
        result = deliver(service, args.document, party=args.party, methods=args.how, receipt_id=args.receipt,
                         refused=args.refused, witness=args.witness, officer_id=args.officer_id, link_base=base,
                         link_minutes=args.link_minutes, shown_on_pad=shown)
    if result.link and args.qr:
        import segno

        segno.make(result.link, error="m").save(str(args.qr), kind="png", scale=8, border=2)
    if args.json:
        print_json({"delivery_id": result.delivery_id, "evidence_id": result.evidence_id, "link": result.link,
                    "record": result.record})
    else:
        out().write(f"{result.evidence_id}  delivery {result.delivery_id}  {result.record['outcome']}\n")
        if result.link:
            out().write(f"{result.link}\n")
            err().write(_("One-time link: it opens once, until {expires}.").format(expires=result.record["link"]["expires_at"]) + "\n")
    return 0


def _templates(args: argparse.Namespace) -> int:
    from gateway.documents.templates import load_template, template_kinds

    kinds = {kind: load_template(kind).title for kind in template_kinds()}
    if args.json:
        print_json(kinds)
    else:
        language = current_language()
        for kind, title in kinds.items():
            out().write(f"{kind:10} {title.get(language) or title['zh_CN']}\n")
    return 0


def _form(args: argparse.Namespace) -> tuple[Template, Form]:
    from gateway.documents.form import check_form, load_form
    from gateway.documents.templates import load_template

    template = load_template(args.template)
    return template, check_form(template, load_form(args.form, args.set))


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(i.strip() for i in ids if i.strip()))


def _check_output(path: Path) -> None:
    if path.suffix.lower() != ".pdf":
        raise ConfigError(f"-o {path} does not end in .pdf", "name the output file something.pdf")
    if not path.parent.is_dir():
        raise ConfigError(f"the directory of -o {path} does not exist", "create it first or write elsewhere")


def _draft(args: argparse.Namespace) -> int:
    from gateway.documents.render import render_document
    from gateway.documents.sources import cite
    from gateway.evidence.ids import uuid7

    template, form = _form(args)
    _check_output(args.output)
    citations: list[Citation] = []
    if _unique(args.cite):  # a draft citing nothing needs no data directory (a form printed before any evidence exists)
        with open_evidence(args, write=False) as service:
            citations = [cite(service, evidence_id) for evidence_id in _unique(args.cite)]
    rendered = render_document(template, form, args.output, document_id=str(uuid7()), citations=citations, draft=True)
    sha256 = hashlib.sha256(args.output.read_bytes()).hexdigest()
    if args.json:
        print_json({"path": str(args.output), "document_id": rendered.document_id, "sha256": sha256, "draft": True})
    else:
        out().write(f"{args.output}  sha256 {sha256}\n")
        err().write(_("Draft written: let the party read it, then sign it with `egw sign --document {path}`.").format(
            path=args.output) + "\n")
    return 0


def _signing(service: EvidenceService, args: argparse.Namespace, form: Form) -> tuple[SigningParts | None, bytes | None]:
    """The signing session's parts and the draft it bound, checked: same draft, same party."""
    from gateway.documents.sources import signing_parts

    if args.signing is None:
        if args.signed_draft is not None:
            raise ConfigError("--signed-draft without --signing", "name the signing record too: --signing EVIDENCE_ID")
        return None, None
    if args.signed_draft is None:
        raise ConfigError("--signing needs --signed-draft FILE: the draft the party signed",
                          "pass the PDF you gave `egw sign --document`; the document carries it")
    if args.signed_draft.resolve() == args.output.resolve():
        raise ConfigError(f"-o {args.output} is the signed draft itself", "write the document to another file; the draft is kept")
    parts = signing_parts(service, args.signing)
    try:
        draft = args.signed_draft.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the signed draft {args.signed_draft}: {exc.strerror}", "check the path") from exc
    bound = str((parts.record.get("document") or {}).get("sha256", ""))
    if hashlib.sha256(draft).hexdigest() != bound:
        raise ConfigError(f"{args.signed_draft} is not the document signing record {args.signing} binds (SHA-256 {bound})",
                          "pass the very draft the party signed, or sign this one with `egw sign` first")
    signer = parts.signer
    party = form.party.get("name", "")
    if signer["role"] != "party":
        raise ConfigError(f"signing record {args.signing} is a {signer['role'] or 'role-less'} signature; the document's signature "
                          "field is the party's", "run `egw sign --role party` for the party")
    if signer["name"] != party:
        raise ConfigError(f"signing record {args.signing} was signed by {signer['name']!r}, but the form's party is {party!r}",
                          "use the signing session of this party, or correct party.name in the form")
    return parts, draft


def _seal(sealer: Sealer, rendered: Path) -> Path:
    """The sealed copy of ``rendered`` from the configured sealer, checked: a new file, and the rendered one unchanged."""
    from gateway.errors import GatewayError

    before = hashlib.sha256(rendered.read_bytes()).hexdigest()
    try:
        sealed = Path(sealer(rendered))
    except GatewayError:
        raise
    except Exception as exc:  # noqa: BLE001 - another component's failure, reported as one line, nothing stored
        raise GatewayError(f"the agency seal could not be applied to {rendered}: {type(exc).__name__}: {exc}",
                           "nothing was stored; check the sealer's configuration (EGW_DOCUMENT_SEALER) and run again") from exc
    if sealed == rendered or not sealed.is_file():
        raise GatewayError(f"the sealer returned {sealed}, which is not a new file beside {rendered}",
                           "nothing was stored; the sealer must write the sealed copy to a new file")
    if hashlib.sha256(rendered.read_bytes()).hexdigest() != before:
        raise GatewayError(f"the sealer changed the rendered document {rendered}", "nothing was stored; the sealer must not change its input")
    return sealed


def _sealed(service: EvidenceService, explicit_url: str | None, sealer: Sealer | None, rendered: Path,
            url: str | None) -> tuple[Path, str, str | None]:
    """The document to store and how it is sealed: by the configured sealer (``sealer``), else with the agency
    seal from the trust services at ``url`` when known (``agency``, or ``provisional`` when the platform cannot
    seal now: then why), else not at all (``none``)."""
    from gateway.documents.agency import remember_trust_services, seal_document

    if sealer is not None:
        return _seal(sealer, rendered), "sealer", None
    if url is None or not service.identity.enrolled:
        return rendered, "none", None
    if explicit_url:
        remember_trust_services(service.data_dir, url)
    outcome = seal_document(rendered, service.identity, url)
    return outcome.path, outcome.seal, outcome.why


@dataclass(frozen=True)
class StoredDocument:
    """A document `egw record new` stored: its evidence, how it is sealed (``why`` when only provisionally)."""

    evidence_id: str
    document_id: str
    path: Path
    sha256: str
    size: int
    seal: str
    why: str | None
    embedded: dict[str, str]
    citations: list[Citation]

    @property
    def sealed(self) -> bool:
        return self.seal in ("sealer", "agency")


def store_document(service: EvidenceService, template: Template, form: Form, output: Path, *, citations: list[Citation],
                   signing: SigningParts | None, draft: bytes | None, sealer: Sealer | None, officer_id: str | None,
                   trust_services: str | None = None, before_storing: Callable[[], None] = lambda: None) -> StoredDocument:
    """Render, seal and store one document: the ``egw record new`` path, shared with the terminal's signing sessions
    (gateway/terminal/signing.py) so both store the same thing the same way."""
    from gateway.documents.agency import TRUST_SERVICES_SETTING, queue_for_counter_seal, trust_services_url
    from gateway.documents.approvals import approve_document
    from gateway.documents.render import render_document
    from gateway.evidence.ids import uuid7
    from gateway.evidence.manifest import ManifestInput

    document_id = str(uuid7())
    officer = officer_id or (form.officers[0].id if form.officers and form.officers[0].id else None)
    rendered = render_document(template, form, output, document_id=document_id, citations=citations,
                               signing=signing, signed_draft=draft, officer_id=officer)
    url = trust_services_url(service.data_dir, trust_services, getenv(TRUST_SERVICES_SETTING))
    # the party's and the officer's signatures on the document (station key), before the agency seal covers them
    approve_document(output, service.identity, rendered.description, signing, url if url and service.identity.enrolled else None)
    final, seal, why = _sealed(service, trust_services, sealer, output, url)
    before_storing()
    extra = {"document": {"id": document_id, "template": template.kind, "case_number": form.values.get("case_number"),
                          "format": "PDF/A-3b", "sealed": seal in ("sealer", "agency"), "seal": seal,
                          "cites": [c.evidence_id for c in citations],
                          "signing_record": signing.evidence_id if signing is not None else None}}
    result = service.ingest_file(final, ManifestInput(
        source_path=f"documents/{document_id}/{final.name}", kind="document", media_type="application/pdf",
        officer_id=officer, extra=extra), priority=2)
    if seal == "provisional" and url is not None and not result.duplicate:
        queue_for_counter_seal(service, result.evidence_id, document_id, url)
    service.sign_tree_head()
    return StoredDocument(result.evidence_id, document_id, final, result.sha256, result.size, seal, why,
                          dict(rendered.embedded), citations)


def _new(args: argparse.Namespace) -> int:
    from gateway.documents.sealer import SEALER_SETTING, find_sealer
    from gateway.documents.sources import cite

    template, form = _form(args)
    _check_output(args.output)
    sealer = find_sealer(getenv(SEALER_SETTING))  # a misnamed sealer fails before anything is rendered
    with open_evidence(args) as service:
        citations = [cite(service, evidence_id) for evidence_id in _unique(args.cite)]
        signing, draft = _signing(service, args, form)
        stored = store_document(service, template, form, args.output, citations=citations, signing=signing, draft=draft,
                                sealer=sealer, officer_id=args.officer_id, trust_services=args.trust_services,
                                before_storing=check_cancelled)
    if args.json:
        print_json({"evidence_id": stored.evidence_id, "document_id": stored.document_id, "path": str(stored.path),
                    "sha256": stored.sha256, "size": stored.size, "sealed": stored.sealed, "seal": stored.seal,
                    "embedded": stored.embedded, "citations": [c.as_json() for c in citations]})
    else:
        title = template.text(template.title, current_language())
        out().write(f"{stored.evidence_id}  {title} {form.values.get('case_number', '')}  {stored.path}  (sha256 {stored.sha256})\n")
    if stored.seal == "none":
        err().write(_("Not sealed: no agency seal is configured on this gateway; the document was stored unsealed.") + "\n")
    elif stored.seal == "provisional":
        err().write(_("Sealed provisionally with this station's key: the platform cannot seal now ({why}). "
                      "The agency seal is added when the platform is reachable again (egw sync --once, or egw run).").format(why=stored.why) + "\n")
    err().flush()
    return 0
