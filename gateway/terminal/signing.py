"""Signing sessions started from a terminal (issue #19): the party signs a record on the station's own pad and reader.

``POST /api/v1/signing-sessions`` checks the form, the cited evidence and the devices at once (a mistake is a
4xx before the party is called), then one worker thread runs the very steps an officer types at the station:
``egw record draft`` (the draft the party reads), ``egw sign`` (``SigningSession`` on the pad and fingerprint
reader configured for ``egw run``), ``egw record new`` (``store_document``: rendered with the signature, sealed by
the agency or provisionally, stored as evidence), the case (when one is named) and a one-time link to the sealed
document with its QR code. Each step is a custody event (``terminal-request``) under the officer's id, and the
session's state is what ``GET /api/v1/signing-sessions/{id}`` and its event stream show.

Only the officer whose terminal started a session may read it (another officer gets 404, as if it did not exist).
The station has one pad: one session at a time (409 while one runs). A session lives in memory: after a restart
its evidence is still in the store and in custody, but the session id is forgotten.

The link is the party's copy of what they signed (``/delivery/<evidence id>/<token>``, served once by the station
screen like the links of ``egw record deliver``). It is not a delivery record (送达): an acknowledged or refused
delivery is still recorded with ``egw record deliver``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import DeviceConfig
from gateway.errors import ConfigError, GatewayError, NotFoundError, TerminalError
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.terminals import TerminalRecord
from gateway.terminal import registry

__all__ = ["SigningSessions", "SessionRequest", "SigningJob", "parse_request", "MAX_SESSIONS_KEPT"]

log = logging.getLogger("egw.terminal.signing")
MAX_SESSIONS_KEPT = 200
STATES = ("rendering", "waiting_for_party", "signed", "sealed", "stored", "delivered", "failed")
MAX_CITES = 50
# what a step found that the session shows at its top level (GET /api/v1/signing-sessions/{id})
RESULT_KEYS = frozenset({"draft_sha256", "signing_evidence_id", "seal", "provisional_because", "evidence_id", "sha256",
                         "document_id", "link_expires_at"})
DEFAULT_LINK_MINUTES = 30
DevicesSource = Callable[[], Sequence[DeviceConfig]]


@dataclass(frozen=True)
class SessionRequest:
    """What the terminal asked for, checked: the form's fields (with the party), the template, the case, the citations."""

    template: str
    form: dict[str, Any]
    party: str
    case_no: str | None
    cites: list[str]
    place: str | None
    language: str
    link_minutes: int


def _text_or_none(body: dict[str, Any], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= limit:
        raise TerminalError(f"{key} must be text of 1-{limit} characters", f"send {key} as a string, or leave it out")
    return value.strip()


def parse_request(body: Any, case_pattern: Any, evidence_pattern: Any) -> SessionRequest:
    """The JSON body checked for shape (the form's contents are checked by the template, later): TerminalError saying why not."""
    from gateway.documents.templates import template_kinds

    example = 'send {"template": "onsite", "form": {…fields…}, "party": {"name": "王小明"}, "case_no": "A-17", "cites": ["…"]}'
    if not isinstance(body, dict):
        raise TerminalError("the signing session request is not a JSON object", example)
    template = body.get("template")
    if template not in template_kinds():
        raise TerminalError(f"template {template!r} is not one of {', '.join(template_kinds())}", example)
    form = body.get("form", {})
    party = body.get("party")
    if not isinstance(form, dict) or not isinstance(party, dict):
        raise TerminalError("form and party must be JSON objects", example)
    name = party.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 80:
        raise TerminalError("party.name is missing: the party who signs must be named", example)
    if any(not isinstance(v, str) for v in party.values()):
        raise TerminalError("every party field (name, id_number, address…) must be text", example)
    case_no = _text_or_none(body, "case_no", 64)
    if case_no is not None and not case_pattern.match(case_no):
        raise TerminalError("a case number is 1-64 letters, digits, '.', '_' or '-'", "check the case number")
    cites = body.get("cites", [])
    if not isinstance(cites, list) or len(cites) > MAX_CITES or not all(isinstance(c, str) and evidence_pattern.match(c) for c in cites):
        raise TerminalError(f"cites must be a list of at most {MAX_CITES} evidence ids", "use ids from GET /api/v1/evidence")
    language = body.get("lang", "zh_CN")
    if language not in ("zh_CN", "en"):
        raise TerminalError(f"lang {language!r} is not zh_CN or en", "leave lang out for Simplified Chinese")
    minutes = body.get("link_minutes", DEFAULT_LINK_MINUTES)
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= 7 * 24 * 60:
        raise TerminalError("link_minutes must be a whole number of minutes from 1 to 10080", "leave it out for 30 minutes")
    return SessionRequest(template, {**form, "party": {**party, "name": name.strip()}}, name.strip(), case_no,
                          list(dict.fromkeys(cites)), _text_or_none(body, "place", 200), language, minutes)


@dataclass
class SigningJob:
    """One session as the terminal sees it; changed by the worker thread, read by the handlers (under ``lock``)."""

    id: str
    terminal: TerminalRecord
    request: SessionRequest
    created_at: float
    state: str = "rendering"
    steps: list[dict[str, Any]] = field(default_factory=list)
    prompt: str | None = None
    error: dict[str, str] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def terminal_id(self) -> str:
        return self.terminal.id

    @property
    def officer_id(self) -> str:
        return self.terminal.officer_id

    @property
    def finished(self) -> bool:
        return self.state in ("delivered", "failed")

    def as_json(self) -> dict[str, Any]:
        with self.lock:
            return {"session_id": self.id, "state": self.state, "finished": self.finished, "officer_id": self.officer_id,
                    "terminal_id": self.terminal_id, "template": self.request.template, "party": self.request.party,
                    "case_no": self.request.case_no, "created_at": self.created_at, "prompt": self.prompt,
                    "steps": list(self.steps), "error": self.error, **self.result}


def _devices(configured: Sequence[DeviceConfig]) -> tuple[str, str | None]:
    """(signature pad URL, fingerprint reader URL or None) of the station's configuration; ConfigError without a pad."""
    pads = [d for d in configured if d.kind == "signpad"]
    readers = [d for d in configured if d.kind == "fingerprint"]
    if not pads:
        raise ConfigError("no signature pad is configured on this station, so the party cannot sign here",
                          "add a [[devices]] entry with kind = \"signpad\" to the station's configuration and reload it "
                          "(systemctl reload egw, or SIGHUP), or sign on paper")
    pad = pads[0]
    pad_url = pad.usbip_url or (f"usb://{pad.usb}" if pad.usb else pad.port)
    reader_url = None
    if readers:
        reader = readers[0]
        reader_url = reader.port or _serial_by_usb(reader.usb)
    assert pad_url is not None, "the configuration requires an endpoint for every device"
    return pad_url, reader_url


def _serial_by_usb(vid_pid: str | None) -> str | None:
    if not vid_pid:
        return None
    from serial.tools import list_ports

    vid, pid = (int(x, 16) for x in vid_pid.split(":"))
    return next((str(p.device) for p in list_ports.comports() if p.vid == vid and p.pid == pid), None)


class SigningSessions:
    """The sessions started from terminals on this station (in memory), and the worker that runs each."""

    def __init__(self, service: EvidenceService, devices: DevicesSource) -> None:
        self.service = service
        self.devices = devices
        self.jobs: dict[str, SigningJob] = {}
        self.lock = threading.Lock()
        self.running: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wakeup = asyncio.Event()

    # ---- start ------------------------------------------------------------------------
    def start(self, terminal: TerminalRecord, request: SessionRequest, loop: asyncio.AbstractEventLoop) -> SigningJob:
        """Check everything the party need not wait for, then run the session in its own thread.

        Raises ConfigError (no pad: 409), NotFoundError (a cited id: 404), TerminalError (the form: 400),
        or TerminalError with ``busy`` (409) when another session holds the pad."""
        from gateway.documents.form import check_form
        from gateway.documents.templates import load_template

        self.loop = loop
        pad_url, reader_url = _devices(self.devices())
        try:
            form = check_form(load_template(request.template), request.form)
        except ConfigError as exc:
            raise TerminalError(f"the form does not fit template {request.template}: {exc}", exc.hint) from exc
        known = self.service.state.states_of(request.cites)
        missing = [c for c in request.cites if c not in known]
        if missing:
            raise NotFoundError(f"no evidence {', '.join(missing)} at this station to cite", "use ids from GET /api/v1/evidence")
        job = SigningJob(id=secrets.token_hex(12), terminal=terminal, request=request,
                         created_at=time.time())
        with self.lock:
            if self.running is not None:
                raise SessionBusy("another signing session is using the station's signature pad",
                                  "wait until it has finished (follow it on the terminal that started it), then start again")
            self.running = job.id
            self._forget_old()
            self.jobs[job.id] = job
        self._audit(job, "signing_session_started", {"template": request.template, "party": request.party, "case_no": request.case_no,
                                                    "cites": request.cites, "signpad": pad_url, "fingerprint": reader_url})
        threading.Thread(target=self._run, args=(job, terminal, form, pad_url, reader_url), name=f"signing-{job.id}",
                         daemon=True).start()
        return job

    def find(self, session_id: str, officer_id: str) -> SigningJob:
        """The session, only for the officer who started it (NotFoundError for anyone else, as for an unknown id)."""
        with self.lock:
            job = self.jobs.get(session_id)
        if job is None or not secrets.compare_digest(job.officer_id, officer_id):
            raise NotFoundError(f"no signing session {session_id} of yours at this station",
                                "use the session_id POST /api/v1/signing-sessions returned to your terminal")
        return job

    def _forget_old(self) -> None:
        finished = [j.id for j in self.jobs.values() if j.finished]
        for old in finished[:max(0, len(self.jobs) - MAX_SESSIONS_KEPT + 1)]:
            del self.jobs[old]

    # ---- the worker -------------------------------------------------------------------
    def _run(self, job: SigningJob, terminal: TerminalRecord, form: Any, pad_url: str, reader_url: str | None) -> None:
        try:
            with tempfile.TemporaryDirectory(prefix="egw-terminal-sign-") as work:
                self._steps(job, terminal, form, Path(work), pad_url, reader_url)
        except GatewayError as exc:
            self._fail(job, str(exc), exc.hint or "start the session again")
        except Exception as exc:  # noqa: BLE001 - the session ends with a reason, the station keeps running
            log.exception("signing session %s failed", job.id)
            self._fail(job, f"the signing session failed: {type(exc).__name__}: {exc}",
                       "start the session again; if it fails again, send the station's log to support")
        finally:
            with self.lock:
                if self.running == job.id:
                    self.running = None
            self._changed()

    def _steps(self, job: SigningJob, terminal: TerminalRecord, form: Any, work: Path, pad_url: str, reader_url: str | None) -> None:
        from gateway.commands.common import getenv
        from gateway.commands.record import store_document
        from gateway.documents.render import render_document
        from gateway.documents.sealer import SEALER_SETTING, find_sealer
        from gateway.documents.sources import cite, signing_parts
        from gateway.documents.templates import load_template
        from gateway.evidence.ids import uuid7
        from gateway.i18n import use_language
        from gateway.workflows.signing import SigningSession

        request = job.request
        template = load_template(request.template)
        sealer = find_sealer(getenv(SEALER_SETTING))
        with use_language(request.language):
            citations = [cite(self.service, evidence_id) for evidence_id in request.cites]
            draft = work / "draft.pdf"
            render_document(template, form, draft, document_id=str(uuid7()), citations=citations, draft=True)
            draft_sha = hashlib.sha256(draft.read_bytes()).hexdigest()
            self._step(job, "waiting_for_party", {"draft_sha256": draft_sha}, prompt=f"{request.party}: please sign on the pad")
            session = SigningSession(self.service, place=request.place, officer_id=job.officer_id,
                                     prompt=lambda text: self._prompt(job, text))
            signed = session.run(draft, request.party, "party", signpad_url=pad_url, fingerprint_url=reader_url)
            self._step(job, "signed", {"signing_evidence_id": signed.evidence_id}, evidence_id=signed.evidence_id)
            stored = store_document(self.service, template, form, work / "record.pdf", citations=citations,
                                    signing=signing_parts(self.service, signed.evidence_id), draft=draft.read_bytes(),
                                    sealer=sealer, officer_id=job.officer_id)
        if stored.seal == "none":
            raise ConfigError(f"the signed record was stored as evidence {stored.evidence_id}, but unsealed: this station has no "
                              "agency seal configured, and an unsealed document is not handed to the party",
                              "enrol the station and configure the platform's trust services ([platform] trust_services)")
        self._step(job, "sealed", {"seal": stored.seal, "provisional_because": stored.why}, evidence_id=stored.evidence_id)
        self._step(job, "stored", {"evidence_id": stored.evidence_id, "sha256": stored.sha256, "document_id": stored.document_id},
                   evidence_id=stored.evidence_id)
        if request.case_no is not None:
            self._add_to_case(terminal, request.case_no, stored.evidence_id)
        link, expires = self._issue_link(job, stored.evidence_id, request.link_minutes)
        self._step(job, "delivered", {"link_expires_at": expires, "evidence_id": stored.evidence_id},
                   evidence_id=stored.evidence_id, link=link, qr_svg=_qr_svg(link))

    def _add_to_case(self, terminal: TerminalRecord, case_no: str, evidence_id: str) -> None:
        from gateway.evidence import terminals as repo

        with self.service.state.transaction() as db:
            if repo.add_case_item(db, repo.CaseItem(case_no, evidence_id, terminal.officer_id, terminal.id, time.time())):
                self.service.custody.append(db, "case-item-added", evidence_id, {
                    "case_no": case_no, "officer_id": terminal.officer_id, "terminal_id": terminal.id})

    def _issue_link(self, job: SigningJob, evidence_id: str, minutes: int) -> tuple[str, str]:
        """A one-time link to the sealed document (only its token's SHA-256 stored), issued in custody in one transaction."""
        import datetime as dt

        from gateway.evidence import delivery_links
        from gateway.evidence.ids import uuid7
        from gateway.workflows.delivery import LINK_PATH, check_deliverable, screen_base_url

        check_deliverable(self.service, evidence_id)
        base = screen_base_url(self.service.data_dir, None)  # the address `egw run` serves its screen on
        token, link_id, now = secrets.token_urlsafe(32), str(uuid7()), time.time()
        expires_at = now + minutes * 60
        expires = dt.datetime.fromtimestamp(expires_at, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        with self.service.state.transaction() as db:
            delivery_links.add_link(db, hashlib.sha256(token.encode()).hexdigest(), link_id, evidence_id, now, expires_at)
            self.service.custody.append(db, "terminal-request", evidence_id, {
                "terminal_id": job.terminal_id, "officer_id": job.officer_id, "action": "signing_session_link_issued",
                "session_id": job.id, "link_id": link_id, "party": job.request.party, "expires_at": expires})
        return base + LINK_PATH.format(evidence_id=evidence_id, token=token), expires

    # ---- state, custody, wake-ups -----------------------------------------------------
    def _step(self, job: SigningJob, state: str, details: dict[str, Any], *, prompt: str | None = None,
              evidence_id: str | None = None, **result: Any) -> None:
        assert state in STATES
        with job.lock:
            job.state, job.prompt = state, prompt
            job.steps.append({"state": state, "at": time.time(), **details})
            job.result.update({k: v for k, v in details.items() if k in RESULT_KEYS})
            job.result.update(result)
            job.version += 1
        self._audit(job, f"signing_session_{state}", details, evidence_id)
        self._changed()

    def _prompt(self, job: SigningJob, text: str) -> None:
        with job.lock:
            job.prompt = text
            job.version += 1
        self._changed()

    def _fail(self, job: SigningJob, message: str, hint: str) -> None:
        with job.lock:
            job.state, job.prompt, job.error = "failed", None, {"error": message, "hint": hint}
            job.steps.append({"state": "failed", "at": time.time(), "error": message})
            job.version += 1
        try:
            self._audit(job, "signing_session_failed", {"error": message})
        except GatewayError as exc:  # the station is stopping (or its disk is full): the log still says why
            log.error("signing session %s failed (%s) and could not be audited: %s", job.id, message, exc)

    def _audit(self, job: SigningJob, action: str, details: dict[str, Any], evidence_id: str | None = None) -> None:
        registry.audit(self.service, job.terminal, action, {"session_id": job.id, **details}, evidence_id)

    def _changed(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        old, self.wakeup = self.wakeup, asyncio.Event()
        old.set()


class SessionBusy(TerminalError):
    """Another signing session holds the station's pad (409)."""


def _qr_svg(link: str) -> str:
    import io

    import segno

    buffer = io.BytesIO()
    segno.make(link, error="m").save(buffer, kind="svg", scale=4, border=2, xmldecl=False, omitsize=True)  # viewBox: scales to the screen
    return buffer.getvalue().decode("utf-8")
