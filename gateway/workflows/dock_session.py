"""One dock session per recorder: attach (or adopt) → ingest → wait for receipts → release → verdict.

``egw run`` (the station's watcher) and ``egw dock`` (the command) are thin adapters over
:class:`DockSession`; both get the same :class:`RecorderReport` (typed, frozen) and the same
verdict, so an officer reads the same thing whichever docked the recorder.

Why the session is *fed* rather than polling: a receipt commits in whatever process part uploads
(the service's uploader, or the command's own). :data:`transitions` is told of every state change
of an item a session waits for — by ``EvidenceService.transition_hooks`` (inside the committing
transaction; the session waits for that transaction to end before it reads, so it never acts on a
change that was rolled back) and by the uploader's outcome callback (after its commit). The
session then releases that recording at once (fresh re-hash, compare, delete, custody event). The
only poll left is a slow check that the volume is still there: an unplugged recorder sends nothing.

One session per recorder (keyed by its serial) per process: a second attach of the same serial —
the station's watcher and an ``egw dock`` run inside the service — joins the running session
instead of docking the recorder twice.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.state import EvidenceRow, EvidenceState
from gateway.i18n import _, ngettext
from gateway.workflows.dock import DockCancelled, DockedRecording, DockState, DockWorkflow

__all__ = ["Verdict", "RecordingReport", "RecorderReport", "DockSession", "Delivery", "ServiceDelivery",
           "OwnUploader", "transitions", "UNREACHABLE_TODO"]

log = logging.getLogger("egw.dock")
UNPLUG_POLL_S = 1.0  # the fallback check that the volume is still mounted
# While a recorder is still being copied, what was receipted meanwhile is released at most this often: a
# round between every two copies meant, for tiny recordings, a round (intents, deletions, a signed tree
# head: two more commits) per three recordings. After the copies, every wake still releases at once.
COPY_ROUND_EVERY_S = 0.5
UNREACHABLE_TODO = "The platform is unreachable: copies stored and queued; the recorder keeps its files."
Listener = Callable[["DockSession", str, int], None]  # (session, event, n): identified/scanned/bytes/ingested/report


class Verdict(str, Enum):  # noqa: UP042 - StrEnum changes str() and format() of members
    SAFE = "safe"
    WAITING_FOR_RECEIPTS = "waiting-for-receipts"
    ATTENTION = "attention"
    UNPLUGGED = "unplugged"
    FAILED = "failed"

    @property
    def card_state(self) -> str:
        """The station card's state for this verdict."""
        return {"unplugged": "undocked", "failed": "error"}.get(self.value, self.value)


@dataclass(frozen=True)
class RecordingReport:
    device_path: str
    size: int
    important: bool
    evidence_id: str | None
    sha256: str | None
    state: str  # the evidence state, or "not ingested"
    copied: bool
    released: bool
    changed_on_device: bool
    unplugged: bool
    safe: bool
    problems: tuple[str, ...]
    error: str | None


@dataclass(frozen=True)
class RecorderReport:
    url: str
    serial: str
    device_id: str
    officer_no: str
    officer_name: str
    unit_no: str
    battery_percent: int | None
    clock_offset_s: float | None
    adopted: bool
    recordings: tuple[RecordingReport, ...]
    hostile_entries: tuple[dict[str, Any], ...]
    hostile_total: int
    attention: tuple[str, ...]
    zfy_lossy_fields: tuple[str, ...]
    error: str | None
    verdict: Verdict
    todo: str  # what the officer must do: one short sentence, in the officer's language
    detail: str  # the why, in full (paths, counts)
    files_total: int
    files_stored: int
    files_receipted: int
    files_released: int
    files_on_recorder: int
    bytes_total: int
    bytes_done: int  # this session's copy progress, never above bytes_total
    platform_unreachable: bool
    interrupted: bool

    @property
    def safe_to_undock(self) -> bool:
        return self.verdict is Verdict.SAFE

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        data["safe_to_undock"] = self.safe_to_undock
        data["recordings"] = [asdict(r) for r in self.recordings]
        for row in data["recordings"]:
            row["problems"] = list(row["problems"])
        return data


# ---- being told of committed transitions ----------------------------------------------------------

class TransitionNotifier:
    """Routes "this item changed state" to the session waiting for that item."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: dict[str, DockSession] = {}
        self._sessions: set[DockSession] = set()
        self._hooked: weakref.WeakSet[EvidenceService] = weakref.WeakSet()

    def attach(self, service: EvidenceService) -> None:
        """Be told of every transition ``service`` commits (once per service object)."""
        with self._lock:
            if service in self._hooked:
                return
            self._hooked.add(service)
        committer = service.state.lock  # held until that transaction has committed or rolled back

        def on_transition(db: sqlite3.Connection, row: EvidenceRow, details: dict[str, Any]) -> None:
            self._route(row.id, committer, unreachable=None)

        service.transition_hooks.append(on_transition)

    def upload_outcome(self, outcome: Any) -> None:
        """The uploader's outcome callback (called after the outcome's transition committed)."""
        self._route(getattr(outcome, "evidence_id", ""), None,
                    unreachable=bool(getattr(outcome, "unreachable", False)) if getattr(outcome, "status", "") != EvidenceState.RECEIPTED else False)

    def wake_all(self) -> None:
        """Something every session cares about happened (the delivery ended)."""
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session._wake(None, None, None)

    def _route(self, evidence_id: str, committer: Any, unreachable: bool | None) -> None:
        with self._lock:
            session = self._owner.get(evidence_id)
        if session is not None:
            session._wake(evidence_id, committer, unreachable)

    def _watch(self, session: DockSession, evidence_id: str | None = None) -> None:
        with self._lock:
            self._sessions.add(session)
            if evidence_id is not None:
                self._owner[evidence_id] = session

    def _forget(self, session: DockSession) -> None:
        with self._lock:
            self._sessions.discard(session)
            for evidence_id in [e for e, s in self._owner.items() if s is session]:
                del self._owner[evidence_id]


transitions = TransitionNotifier()


# ---- delivery: who uploads ------------------------------------------------------------------------

class Delivery(Protocol):
    def finished(self) -> bool:
        """True once nothing more will be delivered in this run (then the session stops waiting)."""

    def note(self) -> str:
        """One line on what delivery did, for the report."""


class ServiceDelivery:
    """Inside ``egw run``: the service's uploader delivers (continuously); the session only waits."""

    def finished(self) -> bool:
        return False

    def note(self) -> str:
        return "the station's uploader delivers"


class NoPlatform:
    """Not enrolled: nothing is uploaded; recordings stay on the recorder unless the policy says otherwise."""

    def finished(self) -> bool:
        return True

    def note(self) -> str:
        return "no platform enrolled: recordings kept on the recorders"


class OwnUploader:
    """``egw dock`` outside the service: an uploader on its own thread and event loop, started before
    the first copy, draining the queue while ``producing()`` says recorders are still being ingested,
    then to empty. Each outcome is routed to the waiting session as it commits."""

    def __init__(self, data_dir: Path, producing: Callable[[], bool]) -> None:
        self._outcomes: list[Any] = []
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._thread = threading.Thread(target=self._run, args=(data_dir, producing), name="dock-upload", daemon=True)
        self._thread.start()

    def _run(self, data_dir: Path, producing: Callable[[], bool]) -> None:
        from gateway.uplink.uploader import Uploader, UploadSettings

        try:
            uploader = Uploader(data_dir, UploadSettings.from_env(), on_outcome=transitions.upload_outcome)
            self._loop = asyncio.new_event_loop()
            self._task = self._loop.create_task(uploader.run_once(producing=producing))
            self._outcomes = self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            self._error = DockCancelled("uploads stopped: interrupted (what was in flight resumes next time)")
        except BaseException as exc:  # reported by note(): the recordings stay queued, nothing is released
            self._error = exc
        finally:
            if self._loop is not None:
                self._loop.close()
            self._done.set()
            transitions.wake_all()

    def finished(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop uploading now: uploads in flight go back to the queue and resume at the platform's
        committed offset next time."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not self._done.is_set():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:
                pass  # the loop has just closed
        self._done.wait(10)

    def unreachable(self) -> bool:
        return any(getattr(o, "unreachable", False) and o.status != EvidenceState.RECEIPTED for o in self._outcomes)

    def note(self) -> str:
        if not self._done.wait(30):
            return "uploads still stopping: what is in flight resumes next time"
        if self._error is not None:
            return f"uploads stopped: {self._error}"
        failed = [o for o in self._outcomes if o.status != EvidenceState.RECEIPTED]
        if failed and all(o.unreachable for o in failed):
            return f"{len(self._outcomes) - len(failed)} receipted, {len(failed)} not delivered: the platform is unreachable"
        return f"{len(self._outcomes) - len(failed)} receipted, {len(failed)} not delivered" + (
            f" (first error: {failed[0].error})" if failed else "")


# ---- the session ----------------------------------------------------------------------------------

class DockSession:
    """One recorder, from attach to verdict. ``run()`` blocks (call it in a thread of its own)."""

    _running: dict[str, DockSession] = {}
    _running_lock = threading.Lock()

    def __init__(self, workflow: DockWorkflow, source: str, *, key: str, delivery: Delivery,
                 cancelled: Callable[[], bool] = lambda: False, poll_s: float = UNPLUG_POLL_S) -> None:
        self.workflow = workflow
        self.source = source  # usbip://…/BUSID, usb://…, or volume://SERIAL (adopt a mounted volume)
        self.key = key
        self.delivery = delivery
        self.poll_s = poll_s
        self._cancelled_by_caller = cancelled
        self._cancel = threading.Event()
        self.state = DockState(url=source)
        self.state.listener = self._progress
        self.state.cancelled = self.cancelled
        self.listeners: list[Listener] = []
        self.bytes_done = 0
        self.attach_failed = False
        self._unreachable: set[str] = set()
        self._cond = threading.Condition()
        self._pending: dict[str, Any] = {}
        self._poked = False
        self._last_copy_round = float("-inf")  # time.monotonic() of the last round between two copies
        self._watched_upto = 0  # recordings before this index are copied (or failed) and watched
        self._by_evidence: dict[str, list[DockedRecording]] = {}  # two files with the same bytes share an item
        self._done = threading.Event()
        self.attached = threading.Event()  # attach/adopt and ingest are over (delivery may stop waiting for copies)
        self._last: RecorderReport | None = None
        self._last_verdict: Verdict | None = None
        transitions.attach(workflow.service)

    # ---- one per recorder -------------------------------------------------------------------------
    @classmethod
    def start_or_join(cls, workflow: DockWorkflow, source: str, *, key: str, delivery: Delivery,
                      cancelled: Callable[[], bool] = lambda: False) -> tuple[DockSession, bool]:
        """The running session for this recorder (joined: True), or a new one registered as running.
        The caller of a new one must call ``run()``; a joiner calls ``wait()``."""
        with cls._running_lock:
            running = cls._running.get(key)
            if running is not None and not running._done.is_set():
                return running, True
            session = cls(workflow, source, key=key, delivery=delivery, cancelled=cancelled)
            cls._running[key] = session
            return session, False

    def cancelled(self) -> bool:
        return self._cancel.is_set() or self._cancelled_by_caller()

    def cancel(self) -> None:
        self._cancel.set()
        self._wake(None, None, None)

    def finished(self, timeout: float | None = None) -> bool:
        """Has ``run()`` returned (waiting up to ``timeout`` seconds)?"""
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> RecorderReport:
        self._done.wait(timeout)
        return self.report()

    # ---- the lifecycle -----------------------------------------------------------------------------
    def run(self) -> RecorderReport:
        transitions._watch(self)
        try:
            try:
                attached = self._attach()
            finally:
                self.attached.set()
            if attached:
                self._watch_copied(self.state)  # also what the last copy made evidence if no event followed it
                self._release_round(all_recordings=True)
                self._wait_and_release()
            report = self.report()
            self._emit("report", 0)
            return report
        finally:
            transitions._forget(self)
            with self._running_lock:
                if self._running.get(self.key) is self:
                    del self._running[self.key]
            self._done.set()

    def _attach(self) -> bool:
        try:
            if self.source.startswith("volume://"):
                self.workflow.adopt(self.source.removeprefix("volume://"), self.state)
            else:
                self.workflow.attach(self.source, self.state)
        except DockCancelled:
            return False
        except Exception as exc:  # noqa: BLE001 - e.g. SQLite "disk full" is not a GatewayError: still say it
            self.attach_failed = self.state.volume is None or not self.state.recordings
            if self.state.error is None:
                self.state.error = str(exc) if isinstance(exc, GatewayError) else f"unexpected {type(exc).__name__}: {exc}"
            log.warning("dock %s failed: %s", self.source, self.state.error, exc_info=not isinstance(exc, GatewayError))
            return not self.attach_failed
        s = self.state
        log.info("recorder %s docked%s: officer %s %s, %d files, %d bytes", s.serial, " (adopted)" if s.adopted else "",
                 s.officer_no, s.officer_name, len(s.recordings), s.bytes_total)
        return True

    def _wait_and_release(self) -> None:
        while True:
            report = self.report()
            self._announce(report)
            if self._settled(report):
                return
            woken = self._wait_for_wake()
            if woken:
                self._release_round(ids=woken)
            elif self.delivery.finished():  # nothing more will be receipted in this run: one last look
                self._release_round(all_recordings=True)
                self._announce(self.report())
                return

    def _settled(self, report: RecorderReport) -> bool:
        if self.cancelled() or report.verdict in (Verdict.UNPLUGGED, Verdict.FAILED):
            return True
        if report.verdict not in (Verdict.SAFE, Verdict.ATTENTION):
            return False
        wf = self.workflow
        return wf.release_policy != "receipt" or not wf.platform_enrolled or all(r.released for r in report.recordings if r.safe)

    def _wait_for_wake(self) -> dict[str, Any]:
        """Sleep until an item of this session changed state (then return {id: committer lock}),
        or the fallback period passed (unplug check), or the session was poked."""
        with self._cond:
            if not self._pending and not self._poked:
                self._cond.wait(self.poll_s)
            pending, self._pending, self._poked = self._pending, {}, False
        _after_commits(pending)
        return pending

    def _wake(self, evidence_id: str | None, committer: Any, unreachable: bool | None) -> None:
        with self._cond:
            if evidence_id is None:
                self._poked = True
            else:
                self._pending[evidence_id] = committer
                if unreachable is not None:
                    (self._unreachable.add if unreachable else self._unreachable.discard)(evidence_id)
            self._cond.notify_all()

    def _release_round(self, *, ids: dict[str, Any] | None = None, all_recordings: bool = False) -> None:
        """Release the recordings whose items changed (or all), then sign the log once."""
        if self.state.volume is None:
            return
        if all_recordings:
            chosen = list(self.state.recordings)
        else:
            chosen = [r for evidence_id in ids or () for r in self._by_evidence.get(evidence_id, ())]
        released = self.workflow.release_many(self.state, chosen)  # a failed release keeps its file: said, not fatal
        if released:
            self.workflow.service.sign_tree_head()
            log.info("recorder %s: released %d recording%s from the recorder", self.state.serial, released,
                     "" if released == 1 else "s")

    # ---- progress and events ----------------------------------------------------------------------
    def _progress(self, state: DockState, event: str, n: int) -> None:
        if event == "bytes":
            self.bytes_done += n
        elif event == "scanned":
            self.bytes_done = 0
        elif event == "ingested":
            self._watch_copied(state)
            self._release_between_copies()
        self._emit(event, n)

    def _watch_copied(self, state: DockState) -> None:
        """Be woken for what the copies made evidence. Copies finish in list order, so only the recordings
        after the last one seen are looked at: looking at every recording after every copy made a dock
        of 10,000 tiny recordings O(n²), 50 million calls."""
        recordings = state.recordings
        while self._watched_upto < len(recordings):
            recording = recordings[self._watched_upto]
            if recording.evidence_id is None and recording.error is None:
                return  # not copied yet
            if recording.evidence_id is not None:
                transitions._watch(self, recording.evidence_id)
                self._by_evidence.setdefault(recording.evidence_id, []).append(recording)
            self._watched_upto += 1

    def _release_between_copies(self) -> None:
        """Release what was receipted while the copies go on (uploads overlap them), at most every
        COPY_ROUND_EVERY_S; what waits stays pending for the next round."""
        now = time.monotonic()
        if now - self._last_copy_round < COPY_ROUND_EVERY_S:
            return
        with self._cond:
            pending, self._pending = self._pending, {}
        if pending:
            self._last_copy_round = now
            _after_commits(pending)
            self._release_round(ids=pending)

    def _emit(self, event: str, n: int) -> None:
        for listener in list(self.listeners):
            try:
                listener(self, event, n)
            except Exception:  # noqa: BLE001 - a display problem must not stop a dock
                log.exception("dock listener failed on %s", event)

    def _announce(self, report: RecorderReport) -> None:
        if report.verdict is not self._last_verdict:
            log.info("recorder %s: %s (%s)", report.serial or self.source, report.verdict.value, report.detail)
            self._last_verdict = report.verdict
        self._emit("report", 0)

    # ---- the report ---------------------------------------------------------------------------------
    def report(self) -> RecorderReport:
        """What is true now, read from the committed state."""
        s = self.state
        states = self._states([r.evidence_id for r in s.recordings if r.evidence_id])
        rows = tuple(self._row(r, states) for r in s.recordings)
        unplugged = s.volume is not None and not s.volume.present() or any(r.unplugged for r in s.recordings)
        verdict, todo, detail = self._verdict(rows, unplugged)
        report = RecorderReport(
            url=s.url, serial=s.serial, device_id=s.device_id or f"bodycam-{self.key}", officer_no=s.officer_no,
            officer_name=s.officer_name, unit_no=s.unit_no, battery_percent=s.battery_percent,
            clock_offset_s=s.clock_offset_s, adopted=s.adopted, recordings=rows,
            hostile_entries=tuple(s.hostile), hostile_total=s.hostile_total, attention=tuple(s.attention),
            zfy_lossy_fields=tuple(s.zfy_lossy), error=s.error, verdict=verdict, todo=todo, detail=detail,
            files_total=len(rows), files_stored=sum(1 for r in rows if r.evidence_id),
            files_receipted=sum(1 for r in rows if r.state in (EvidenceState.RECEIPTED, EvidenceState.RELEASED)),
            files_released=sum(1 for r in rows if r.released), files_on_recorder=sum(1 for r in rows if not r.released),
            bytes_total=s.bytes_total, bytes_done=min(self.bytes_done, s.bytes_total),
            platform_unreachable=self._platform_unreachable(rows), interrupted=self.cancelled())
        self._last = report
        return report

    def _states(self, ids: list[str]) -> dict[str, str]:
        """Current state of each item, a few queries for a recorder with thousands of recordings."""
        found: dict[str, str] = {}
        state = self.workflow.service.state
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            found.update(state.states_of(chunk))  # locked: the connection is shared with the copy workers and the uplinks
        return found

    def _row(self, r: DockedRecording, states: dict[str, str]) -> RecordingReport:
        state = states.get(r.evidence_id, "not ingested") if r.evidence_id else "not ingested"
        return RecordingReport(r.device_path, r.size, r.important, r.evidence_id, r.sha256, state, r.copied, r.released,
                               r.changed_on_device, r.unplugged, self.workflow.safe(self.state, r, state),
                               tuple(r.problems), r.error)

    def _platform_unreachable(self, rows: tuple[RecordingReport, ...]) -> bool:
        waiting = {r.evidence_id for r in rows if r.evidence_id and not r.safe and not r.changed_on_device}
        return bool(waiting) and bool(waiting & self._unreachable)

    def _verdict(self, rows: tuple[RecordingReport, ...], unplugged: bool) -> tuple[Verdict, str, str]:
        """(verdict, what the officer must do, why). ATTENTION when waiting will not make the recorder
        safe: something on it was not copied, or changed after it was copied."""
        s = self.state
        if self.attach_failed:
            return (Verdict.FAILED, _("The recorder could not be read: dock it again; if this repeats, call the "
                                      "evidence administrator."), s.error or "not attached")
        safe = all(r.safe for r in rows) and not s.attention and s.error is None
        if safe:
            detail = "every recording is safe" if rows else "no recordings on the recorder"
            return Verdict.SAFE, _("Safe to undock: every recording is safe."), detail
        problems = list(s.attention)
        failed = [r for r in rows if not r.evidence_id]
        if failed:
            problems.append(f"{len(failed)} recording{'s' if len(failed) > 1 else ''} could not be copied (e.g. "
                            f"{failed[0].device_path}: {failed[0].error or 'not ingested'}); re-dock the recorder "
                            "to copy again.")
        problems += [f"{r.device_path}: {r.error}" for r in rows if r.changed_on_device][:1]
        waiting = sum(1 for r in rows if r.evidence_id and not r.safe and not r.changed_on_device)
        if unplugged:
            kept = sum(1 for r in rows if not r.safe)
            return (Verdict.UNPLUGGED, _("Unplugged before every recording was safe: dock it again."),
                    " ".join([f"the recorder was unplugged; {kept} recording{'s' if kept != 1 else ''} not safe yet "
                              "stay on it (nothing was deleted that was not receipted)", *problems[:1]]))
        if waiting or not problems:
            todo = _("The platform is unreachable: copies stored and queued; the recorder keeps its files.") \
                if self._platform_unreachable(rows) else \
                ngettext("Do not undock: waiting for the platform's receipt for {n} recording.",
                         "Do not undock: waiting for the platform's receipts for {n} recordings.", waiting).format(n=waiting)
            return Verdict.WAITING_FOR_RECEIPTS, todo, " ".join(
                ["waiting for platform receipts" + (f" ({waiting} to go)" if waiting else ""), *problems])
        copied = "Every recording it copied is safe." if any(r.safe for r in rows) else ""
        todo = _("Do not put this recorder back into service: hand it to the evidence administrator.") if s.attention \
            else _("Not everything was copied: dock it again later to copy what is left.")
        return Verdict.ATTENTION, todo, " ".join([*problems, copied]).strip()


def _after_commits(pending: dict[str, Any]) -> None:
    """Wait until each transaction that woke us has ended: what is read afterwards is what it committed."""
    for committer in pending.values():
        if committer is not None:  # held by a transaction until it ends: taking it once is the wait
            committer.acquire()
            committer.release()
