"""Electronic delivery (送达) of a sealed enforcement document to the party, recorded as evidence.

A delivery says what (the document's evidence id and SHA-256), to whom (the party), how (``station``: shown
on the station screen; ``pad``: shown on the signature pad's screen, view by view; ``link``: a one-time download link / QR code served by the station; ``paper``), when,
and the outcome: ``acknowledged`` (the party signed a delivery receipt 送达回证, itself a sealed document of
template ``delivery``) or ``refused`` (the party would not sign; a witness attests it: a refusal with a
witness is a legal delivery too). It is stored as a signed evidence item
(``application/vnd.egw.delivery.v1+json``) that reaches the platform over gRPC like all evidence, with a
``delivered`` custody event on the document and a ``DocumentDelivery`` MQTT message queued in the same
transaction (docs/delivery.md).

A one-time link is ``<station screen>/delivery/<document evidence id>/<token>``: 32 random bytes, only their
SHA-256 stored (``gateway/evidence/delivery_links.py``); it opens once, for that document only, until it
expires, and each opening is a ``delivery-link-used`` custody event (``gateway/web/screen.py`` serves it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError, NotFoundError, VerificationError
from gateway.evidence.ids import uuid7

if TYPE_CHECKING:
    from gateway.evidence.evidence_service import EvidenceService

__all__ = ["METHODS", "DELIVERY_MEDIA_TYPE", "DeliveryResult", "deliver", "open_link", "LinkRefused", "LINK_PATH",
           "SCREEN_URL_FILE", "screen_base_url"]

METHODS = ("station", "pad", "link", "paper")
DELIVERY_MEDIA_TYPE = "application/vnd.egw.delivery.v1+json"
LINK_PATH = "/delivery/{evidence_id}/{token}"
SCREEN_URL_FILE = "screen.url"
DEFAULT_LINK_MINUTES = 30
MAX_LINK_MINUTES = 7 * 24 * 60


@dataclass(frozen=True)
class DeliveryResult:
    delivery_id: str
    evidence_id: str
    record: dict[str, Any]
    link: str | None


def _iso(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _document_of(service: EvidenceService, evidence_id: str, what: str) -> tuple[Any, dict[str, Any]]:
    """The evidence row and the manifest's ``extra.document`` of a stored document, or a ConfigError saying why not."""
    from gateway.evidence import dsse

    try:
        row = service.state.get(evidence_id)
    except NotFoundError as exc:
        raise ConfigError(f"{what} {evidence_id!r} is not evidence in {service.data_dir}", "check the id with `egw ls`") from exc
    manifest = dsse.Envelope.from_bytes(row.manifest).payload_json()
    document = (manifest.get("extra") or {}).get("document")
    if row.kind != "document" or not isinstance(document, dict):
        raise ConfigError(f"{what} {evidence_id} is {row.kind!r} evidence, not a document from `egw record new`",
                          "pass the evidence id `egw record new` printed")
    return row, document


def _check_sealed(evidence_id: str, document: dict[str, Any], what: str) -> None:
    if not document.get("sealed") and document.get("seal") != "provisional":
        raise ConfigError(f"{what} {evidence_id} is not sealed: an unsealed document is not delivered",
                          "configure the platform's trust services ([platform] trust_services or --trust-services) and "
                          "store the document again with `egw record new`")


def screen_base_url(data_dir: Path, explicit: str | None) -> str:
    """Where the station screen serves links: ``explicit``, else the address ``egw run`` wrote at start."""
    if explicit:
        return explicit.rstrip("/")
    try:
        remembered = (data_dir / SCREEN_URL_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        remembered = ""
    if not remembered:
        raise ConfigError("a one-time link needs the station screen's address, and no `egw run` has published one here",
                          "run `egw run` with [screen] listen set to an address the party's phone reaches, or pass --base-url")
    return remembered.rstrip("/")


def deliver(service: EvidenceService, document_id: str, *, party: str, methods: list[str], receipt_id: str | None = None,
            refused: bool = False, witness: str | None = None, officer_id: str | None = None,
            link_base: str | None = None, link_minutes: int = DEFAULT_LINK_MINUTES,
            shown_on_pad: dict[str, Any] | None = None) -> DeliveryResult:
    """Record one delivery of the sealed document ``document_id`` (an evidence id); with ``link`` among the
    methods also issue its one-time link (``link_base`` is the station screen's URL)."""
    row, document = _document_of(service, document_id, "document")
    _check_sealed(document_id, document, "document")
    party = party.strip()
    if not party:
        raise ConfigError("--party is empty", "name the party the document is delivered to")
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ConfigError(f"delivery method(s) {unknown or methods!r} not understood", f"use --how with {', '.join(METHODS)}")
    receipt = _receipt(service, receipt_id, document_id, party, refused, witness)
    if ("pad" in methods) != (shown_on_pad is not None):
        raise ConfigError("--how pad means the document was shown on the pad", "pass --signpad URL with --how pad")
    if "link" in methods and not 1 <= link_minutes <= MAX_LINK_MINUTES:
        raise ConfigError(f"--link-minutes {link_minutes} is out of range", f"give 1 to {MAX_LINK_MINUTES} minutes")
    now = time.time()
    delivery_id = str(uuid7())
    token = secrets.token_urlsafe(32) if "link" in methods else None
    record = {
        "v": "egw.delivery/1", "delivery_id": delivery_id, "at": _iso(now),
        "document": {"evidence_id": document_id, "sha256": row.sha256, "size": row.size, "document_id": document.get("id"),
                     "template": document.get("template"), "case_number": document.get("case_number"),
                     "seal": document.get("seal", "agency" if document.get("sealed") else "none")},
        "party": {"name": party}, "methods": sorted(set(methods)),
        "outcome": "refused" if refused else "acknowledged",
        "receipt": receipt, "witness": {"name": witness.strip()} if refused and witness else None,
        "link": {"expires_at": _iso(now + link_minutes * 60)} if token else None,
        "pad": shown_on_pad,
        "officer_id": officer_id,
    }
    return _store(service, record, token, now + link_minutes * 60, link_base)


def _receipt(service: EvidenceService, receipt_id: str | None, document_id: str, party: str, refused: bool,
             witness: str | None) -> dict[str, Any] | None:
    """The sealed delivery receipt (acknowledged), or nothing but a witness (refused): exactly one of them."""
    if refused:
        if receipt_id:
            raise ConfigError("--refused with --receipt: a party who signed the receipt did not refuse", "pass one of them")
        if not (witness or "").strip():
            raise ConfigError("a refusal needs a witness (--witness NAME)", "name the witness present when the party refused")
        return None
    if not receipt_id:
        raise ConfigError("a delivery is acknowledged by the party's signed delivery receipt, or refused before a witness",
                          "pass --receipt EVIDENCE_ID (egw record new --template delivery …), or --refused --witness NAME")
    row, receipt = _document_of(service, receipt_id, "receipt")
    if receipt.get("template") != "delivery":
        raise ConfigError(f"receipt {receipt_id} is a {receipt.get('template')!r} document, not a delivery receipt (送达回证)",
                          "render it with `egw record new --template delivery`")
    _check_sealed(receipt_id, receipt, "receipt")
    if receipt_id == document_id:
        raise ConfigError("the receipt is the document itself", "pass the delivery receipt's own evidence id")
    if document_id not in (receipt.get("cites") or []):
        raise ConfigError(f"receipt {receipt_id} does not cite document {document_id}",
                          f"render the receipt with `--cite {document_id}`, so it names what was delivered")
    if not receipt.get("signing_record"):
        raise ConfigError(f"receipt {receipt_id} carries no signature of the party", "have the party sign it with `egw sign` first")
    return {"evidence_id": receipt_id, "sha256": row.sha256, "signing_record": receipt.get("signing_record"), "party": party}


def _store(service: EvidenceService, record: dict[str, Any], token: str | None, expires_at: float,
           link_base: str | None) -> DeliveryResult:
    from gateway.evidence import delivery_links, outbox
    from gateway.evidence.manifest import ManifestInput

    document_id = record["document"]["evidence_id"]
    data = json.dumps(record, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")
    stored = service.ingest_bytes(data, ManifestInput(
        source_path=f"deliveries/{record['delivery_id']}.json", kind="document", media_type=DELIVERY_MEDIA_TYPE,
        officer_id=record.get("officer_id"), extra={"delivery": {"id": record["delivery_id"], "document": document_id,
                                                                 "outcome": record["outcome"]}}), priority=2)
    root = outbox.topic_root(service.identity.gateway_id)
    with service.state.transaction() as db:
        service.custody.append(db, "delivered", document_id, {
            "delivery_id": record["delivery_id"], "delivery_evidence_id": stored.evidence_id, "sha256": record["document"]["sha256"],
            "party": record["party"]["name"], "methods": record["methods"], "outcome": record["outcome"],
            "receipt_evidence_id": (record["receipt"] or {}).get("evidence_id"), "witness": (record["witness"] or {}).get("name")})
        if token is not None:
            delivery_links.add_link(db, hashlib.sha256(token.encode()).hexdigest(), record["delivery_id"], document_id,
                                    time.time(), expires_at)
        outbox.enqueue(db, root, "results", f"{root}deliveries/{document_id}",
                       outbox.to_json_bytes(_message(record, stored.evidence_id)))
    service.sign_tree_head()
    link = None
    if token is not None and link_base is not None:
        link = link_base.rstrip("/") + LINK_PATH.format(evidence_id=document_id, token=token)
    return DeliveryResult(record["delivery_id"], stored.evidence_id, record, link)


def _message(record: dict[str, Any], evidence_id: str) -> Any:
    from protos.egw.v1 import events_pb2

    message = events_pb2.DocumentDelivery(
        message_id=str(uuid.uuid4()), delivery_id=record["delivery_id"], delivery_evidence_id=evidence_id,
        document_evidence_id=record["document"]["evidence_id"], document_sha256=record["document"]["sha256"],
        party=record["party"]["name"], methods=record["methods"], outcome=record["outcome"],
        receipt_evidence_id=(record["receipt"] or {}).get("evidence_id", ""), witness=(record["witness"] or {}).get("name", ""),
        officer_id=record.get("officer_id") or "")
    message.at.FromDatetime(dt.datetime.fromisoformat(record["at"].replace("Z", "+00:00")))
    return message


def check_deliverable(service: EvidenceService, document_id: str) -> None:
    """ConfigError unless ``document_id`` is a sealed document (before the party is shown anything)."""
    _, document = _document_of(service, document_id, "document")
    _check_sealed(document_id, document, "document")


def show_document_on_pad(service: EvidenceService, document_id: str, signpad_url: str, dwell_s: float) -> dict[str, Any]:
    """Show the stored document (its bytes checked against its digest) on the pad at ``signpad_url``; what was shown."""
    from drivers.errors import DriverError
    from drivers.signpad import SignaturePad
    from gateway.workflows.pad_display import show_on_pad

    check_deliverable(service, document_id)
    row = service.state.get(document_id)
    with tempfile.TemporaryDirectory(prefix="egw-deliver-") as work:
        copy = Path(work) / "document.pdf"
        with service.store.open(row.sha256) as blob, open(copy, "wb") as out:
            while chunk := blob.read(1 << 20):
                out.write(chunk)
        if hashlib.sha256(copy.read_bytes()).hexdigest() != row.sha256:
            raise VerificationError(f"document {document_id} no longer hashes to {row.sha256} in the store; not shown")
        try:
            with SignaturePad.open(signpad_url) as pad:
                views = show_on_pad(pad, copy, dwell_s)
                serial = pad.identity.serial_number
        except DriverError as exc:
            raise ConfigError(f"the signature pad {signpad_url} could not show the document: {exc}",
                              "check the pad's URL and connection, or deliver with --how station") from exc
    return {"views": views, "sha256": row.sha256, "pad_serial": serial, "dwell_s": dwell_s}


class LinkRefused(Exception):
    """A one-time link that does not open: ``status`` 404 (no such link for this document) or 410 (used, expired)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def open_link(service: EvidenceService, evidence_id: str, token: str, client: str) -> tuple[bytes, str]:
    """The document's bytes (checked against its SHA-256) and a file name, claiming the link; LinkRefused otherwise.

    The claim and its custody event commit before a byte is handed out: a link opens once even when two phones
    race for it. A document whose stored bytes no longer hash to its digest is not served (and the link stays)."""
    from gateway.evidence import delivery_links

    digest = hashlib.sha256(token.encode()).hexdigest()
    with service.state.lock:
        link = delivery_links.find_link(service.state.db, digest)
    if link is None or not secrets.compare_digest(link.evidence_id, evidence_id):
        raise LinkRefused(404, "no such delivery link for this document")
    if link.used_at is not None:
        raise LinkRefused(410, "this delivery link was used already")
    if link.expires_at <= time.time():
        raise LinkRefused(410, "this delivery link has expired")
    row = service.state.get(evidence_id)
    with service.store.open(row.sha256) as blob:
        data = blob.read()
    if hashlib.sha256(data).hexdigest() != row.sha256:
        raise VerificationError(f"document {evidence_id} no longer hashes to {row.sha256} in the store; not served")
    with service.state.transaction() as db:
        if not delivery_links.claim_link(db, digest, time.time(), client):
            raise LinkRefused(410, "this delivery link was used already or has expired")
        service.custody.append(db, "delivery-link-used", evidence_id, {"delivery_id": link.delivery_id, "sha256": row.sha256,
                                                                         "client": client})
    return data, f"{evidence_id}.pdf"
