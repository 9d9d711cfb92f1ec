"""Sealed by default: the built-in sealer, the counter-seal queue and trusted time on tree heads.

Why built in: a document the station hands to a party is worth something in court only with the agency's
seal, so an enrolled gateway that knows the platform's trust services seals every document it stores,
without anyone configuring a sealer (``EGW_DOCUMENT_SEALER`` still replaces this one).

Where the trust services are (``https://HOST:PORT``, what ``egw simulate platform`` prints as ``trust …``),
first found wins: ``--trust-services URL`` on the command; ``EGW_TRUST_SERVICES`` in the environment of the
person running it; ``[platform] trust_services`` in ``egw run``'s configuration, which the service writes to
``DATA_DIR/trust-services.url`` at start so commands run beside or through it find it too (as does any
command given ``--trust-services``).

With the platform reachable the document gets the agency seal (``seal_pdf``, PAdES B-LTA). Without it the
gateway signs provisionally (``seal_provisionally``), stores that, and queues the document in
``counter_seal_queue``; ``trust_round`` (called by ``egw sync --once`` and by ``egw run`` every
``EGW_TRUST_ROUND_S`` seconds) counter-seals each queued document, stores the counter-sealed PDF as new
evidence and links the two with a ``counter_sealed`` custody event on the provisional one, then time-stamps
the signed tree heads (``gateway/uplink/time_stamps.py``). docs/documents-sealing.md is the contract.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError, GatewayError, SealingError

if TYPE_CHECKING:
    from gateway.documents.seal import SealService
    from gateway.evidence.evidence_service import EvidenceService
    from gateway.evidence.identity import Identity

__all__ = ["TRUST_SERVICES_SETTING", "TRUST_FILE", "SealOutcome", "TrustRound", "trust_services_url", "remember_trust_services",
           "seal_document", "trust_round", "run_trust_round"]

log = logging.getLogger("egw.documents")


def _unavailable() -> tuple[type[Exception], ...]:
    """What a platform that goes away mid-seal raises: ours, and pyHanko's and aiohttp's own (a TSA request
    inside pyHanko's signing does not pass through SealService)."""
    import aiohttp
    from pyhanko.sign.general import SigningError
    from pyhanko.sign.timestamps.common_utils import TimestampRequestError

    return (GatewayError, SigningError, TimestampRequestError, aiohttp.ClientError, TimeoutError, OSError)

TRUST_SERVICES_SETTING = "EGW_TRUST_SERVICES"
TRUST_FILE = "trust-services.url"
SEAL_AGENCY = "agency"
SEAL_PROVISIONAL = "provisional"


def _checked_url(url: str, where: str) -> str:
    value = url.strip().rstrip("/")
    host = value.removeprefix("https://")
    if not value.startswith("https://") or not host or "/" in host or ":" not in host:
        raise ConfigError(f"{where} {url!r} is not the platform's trust services address https://HOST:PORT",
                          "use the `trust https://…` line `egw simulate platform --agency-unit …` prints, or ask the platform operator")
    return value


def trust_services_url(data_dir: Path, explicit: str | None = None, environment: str | None = None) -> str | None:
    """The trust services' address: ``explicit`` (a flag), else ``environment`` (EGW_TRUST_SERVICES), else the
    one remembered in the data directory, else None (the gateway does not know its platform's trust services)."""
    if explicit:
        return _checked_url(explicit, "--trust-services")
    if environment:
        return _checked_url(environment, TRUST_SERVICES_SETTING)
    try:
        remembered = (data_dir / TRUST_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {data_dir / TRUST_FILE}: {exc.strerror}", "check its permissions, or pass --trust-services") from exc
    return _checked_url(remembered, str(data_dir / TRUST_FILE)) if remembered else None


def remember_trust_services(data_dir: Path, url: str) -> None:
    """Keep ``url`` in the data directory for later commands (written atomically; only when it changed)."""
    target = data_dir / TRUST_FILE
    value = _checked_url(url, "the trust services address")
    try:
        if target.read_text(encoding="utf-8").strip() == value:
            return
    except OSError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(TRUST_FILE + ".tmp")
    tmp.write_text(value + "\n", encoding="utf-8")
    os.replace(tmp, target)


@dataclass(frozen=True)
class SealOutcome:
    """What the built-in sealer did: ``seal`` is ``agency`` or ``provisional`` (then ``why`` says why)."""

    path: Path
    seal: str
    why: str | None = None


def _sealed_name(rendered: Path, suffix: str) -> Path:
    return rendered.with_name(f"{rendered.stem}-{suffix}.pdf")


async def _seal_or_fall_back(rendered: Path, identity: Identity, url: str) -> SealOutcome:
    from gateway.documents.seal import SealService, seal_pdf, seal_provisionally

    target = _sealed_name(rendered, "sealed")
    try:
        async with SealService(url, identity) as service:
            await seal_pdf(rendered, target, service)
        return SealOutcome(target, SEAL_AGENCY)
    except _unavailable() as exc:
        log.warning("agency seal unavailable, sealing provisionally: %s", exc)
        target.unlink(missing_ok=True)
        provisional = _sealed_name(rendered, "provisional")
        await seal_provisionally(rendered, provisional, identity)
        return SealOutcome(provisional, SEAL_PROVISIONAL, str(exc) or type(exc).__name__)


def seal_document(rendered: Path, identity: Identity, url: str) -> SealOutcome:
    """The agency seal on ``rendered`` (a new file beside it), or the gateway's provisional signature when the
    platform cannot seal now. Raises SealingError only when the gateway is not enrolled."""
    if not identity.enrolled:
        raise SealingError(f"gateway {identity.gateway_id} is not enrolled, so it cannot ask the platform for the agency seal",
                           hint="enrol with `egw enroll`, or unset the trust services to store documents unsealed")
    return asyncio.run(_seal_or_fall_back(rendered, identity, url))


def queue_for_counter_seal(service: EvidenceService, evidence_id: str, document_id: str, url: str) -> None:
    """Remember that the provisionally sealed ``evidence_id`` owes its agency seal (custody event included)."""
    from gateway.evidence import counter_seals

    with service.state.transaction() as db:
        counter_seals.await_counter_seal(db, evidence_id, document_id, url)
        service.custody.append(db, "awaiting-counter-seal", evidence_id, {"document_id": document_id, "trust_services": url})


@dataclass
class TrustRound:
    """What one round did: counter-sealed documents (provisional id → sealed id), tree heads stamped, problems."""

    counter_sealed: dict[str, str] = field(default_factory=dict)
    still_awaiting: int = 0
    heads_stamped: int = 0
    problems: list[str] = field(default_factory=list)


def _document_extra(service: EvidenceService, evidence_id: str) -> dict[str, Any]:
    from gateway.evidence import dsse

    manifest = dsse.Envelope.from_bytes(service.state.get(evidence_id).manifest).payload_json()
    document = dict((manifest.get("extra") or {}).get("document") or {})
    return document


async def _counter_seal_one(service: EvidenceService, seal_service: SealService, evidence_id: str, document_id: str) -> str:
    """Counter-seal one provisional document; the new evidence id."""
    from gateway.documents.seal import seal_pdf
    from gateway.evidence import counter_seals
    from gateway.evidence.manifest import ManifestInput

    row = service.state.get(evidence_id)
    document = _document_extra(service, evidence_id)
    with tempfile.TemporaryDirectory(dir=service.data_dir, prefix=".counter-seal-") as work:
        source = Path(work) / f"{document_id}-provisional.pdf"
        with service.store.open(row.sha256) as blob, open(source, "wb") as copy:
            while chunk := blob.read(1 << 20):
                copy.write(chunk)
        target = Path(work) / f"{document_id}-sealed.pdf"
        await seal_pdf(source, target, seal_service)
        extra = {"document": {**document, "sealed": True, "seal": SEAL_AGENCY, "counter_seal_of": evidence_id}}
        result = await asyncio.to_thread(service.ingest_file, target, ManifestInput(
            source_path=f"documents/{document_id}/{target.name}", kind="document", media_type="application/pdf",
            officer_id=row.officer_id, extra=extra), priority=2)
    with service.state.transaction() as db:
        service.custody.append(db, "counter-sealed", evidence_id, {"document_id": document_id, "counter_sealed_by": result.evidence_id,
                                                                     "sha256": result.sha256, "trust_services": seal_service.base_url})
        counter_seals.mark_sealed(db, evidence_id, result.evidence_id)
    return result.evidence_id


async def trust_round(service: EvidenceService, url: str | None, *, counter_seal: bool = True, stamp: bool = True) -> TrustRound:
    """Counter-seal what is queued, then time-stamp every signed tree head without a token (``stamp``: with the
    trust services at ``url``). Failures are reported in ``problems`` (and retried next round), never raised:
    delivery goes on without them."""
    from gateway.documents.seal import SealService
    from gateway.evidence import counter_seals
    from gateway.uplink.time_stamps import stamp_tree_heads

    report = TrustRound()
    with service.state.lock:
        pending = counter_seals.awaiting(service.state.db) if counter_seal else []
    urls = {item.trust_services for item in pending} | ({url} if url and stamp else set())
    for base in sorted(urls):
        try:
            async with SealService(base, service.identity) as seal_service:
                for item in (p for p in pending if p.trust_services == base):
                    try:
                        report.counter_sealed[item.evidence_id] = await _counter_seal_one(service, seal_service, item.evidence_id,
                                                                                            item.document_id)
                    except _unavailable() as exc:
                        report.problems.append(f"counter-seal of {item.evidence_id}: {exc or type(exc).__name__}")
                        with service.state.transaction() as db:
                            counter_seals.mark_failed(db, item.evidence_id, str(exc))
                if stamp and base == url:
                    service.sign_tree_head()  # the log as it is now, so the newest head gets its time
                    report.heads_stamped = await stamp_tree_heads(service.state, seal_service)
        except _unavailable() as exc:
            report.problems.append(f"trust services {base}: {exc or type(exc).__name__}")
    with service.state.lock:
        report.still_awaiting = len(counter_seals.awaiting(service.state.db))
    return report


def run_trust_round(service: EvidenceService, url: str | None, *, counter_seal: bool = True, stamp: bool = True) -> TrustRound:
    """``trust_round`` for synchronous callers (``egw sync --once``; ``egw run`` calls it in a worker thread)."""
    return asyncio.run(trust_round(service, url, counter_seal=counter_seal, stamp=stamp))


def describe(report: TrustRound) -> dict[str, Any]:
    return {"counter_sealed": report.counter_sealed, "still_awaiting": report.still_awaiting,
            "heads_stamped": report.heads_stamped, "problems": report.problems}


def as_json(report: TrustRound) -> str:
    return json.dumps(describe(report), ensure_ascii=False)
