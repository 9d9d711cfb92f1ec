"""The evidence uploader: drains the upload queue in ``state.db`` to the platform.

Order: officer-flagged (``priority``) first, then small before large, then
oldest. Slots: ``concurrency`` general workers take the next item in that
order; ``express_slots`` more workers take ONLY express items (flagged, or at
most ``small_threshold`` bytes). So when every general slot is busy with
50 GB of video, a rapid-test result ingested now still starts within one
poll interval instead of waiting behind the backlog.

Bandwidth: one token bucket shared by all uploads caps bulk bytes/s. Express
items are *charged* to the bucket (bulk traffic slows down to make up for
them) but never wait for it: they are tiny and their latency matters.

Resume: every attempt starts with ``QueryUpload`` and sends from the committed
offset the platform reports — never from zero after a break. Failures back
off exponentially with full jitter, first inside one delivery (``max_attempts``
quick tries), then between deliveries (:class:`RetrySchedule`: 2 s, 4 s, … up
to a minute per item, and at once for every item that only failed because the
platform was unreachable as soon as any upload is receipted again). A receipt is verified (platform signature
chaining to the enrolled CA, digest, size, evidence id, gateway) before the
item becomes ``receipted``; that transition, the stored receipt and the
custody event ``receipted`` are one transaction.

Threads: SQLite calls run on one dedicated thread (one connection, never two
threads at once); blob reads on a small pool, one chunk ahead of the sender,
so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from gateway.errors import GatewayError, VerificationError
from gateway.evidence import dsse
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.state import EvidenceRow, EvidenceState
from gateway.uplink.link import PlatformLink, load_link
from protos.direct_io import DirectReader
from protos.egw.v1 import evidence_pb2, ingest_pb2, ingest_pb2_grpc
from protos.upload_wire import encode_chunk_request

__all__ = ["Uploader", "UploadOutcome", "RetrySchedule", "TokenBucket", "UploadSettings", "CHUNK_SIZE", "parse_rate"]

# 2 MiB messages. Per message, gRPC's Python layer and our loop cost about the same whatever its
# size, so larger messages cost less per GB: gRPC reached 0.27 of a raw socket with 64 KiB messages
# and 0.64 with 1 MiB (an early measurement); bench/dock.py, three pairs run alternately, gave the
# gateway 2.56-2.59 CPU s/GB with 2 MiB against 2.70-2.80 with 1 MiB, and 4 MiB no further gain
# (2.47-2.52) with 40 MB more peak RSS. 2 MiB also keeps what a resume re-sends small (one chunk plus
# the flow-control window) and stays far below the 8 MiB message limit of the contract (docs/grpc.md).
CHUNK_SIZE = 2 * 1024 * 1024
SMALL_THRESHOLD = 8 * 1024 * 1024
POLL_S = 0.05
READ_AHEAD = 2  # blob reads in flight while a chunk is sent (BlobStore.reader has a buffer for each)
RPC_TIMEOUT_S = 30.0
NON_RETRYABLE = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ALREADY_EXISTS,
                 grpc.StatusCode.UNIMPLEMENTED}

# Failures that say "the platform (or the path to it) is not there", not "this item is wrong".
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

T = TypeVar("T")
ChunkFilter = Callable[[EvidenceRow, int, bytes], bytes]


def parse_rate(text: str) -> int:
    """``"8M"``, ``"8MB"``, ``"1.5MiB"``, ``"500k"`` or plain bytes/s → bytes/s (MB = 10⁶, MiB = 2²⁰)."""
    units = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30}
    s = text.strip().lower().removesuffix("/s")
    number = s.rstrip("abgikm")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"bandwidth {text!r} is not a number with an optional unit (k, M, MiB, G …)") from None
    if unit not in units or value <= 0:
        raise ValueError(f"bandwidth {text!r}: unknown unit {unit!r} or not positive")
    return int(value * units[unit])


class TokenBucket:
    """Bytes/s cap shared by concurrent uploads; the balance may go negative (debt)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else CHUNK_SIZE)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, n: int) -> None:
        while True:
            self._refill()
            if self.tokens >= 0:
                self.tokens -= n
                return
            await asyncio.sleep(-self.tokens / self.rate)

    def charge(self, n: int) -> None:
        self._refill()
        self.tokens -= n


class RetrySchedule:
    """When an item whose delivery failed may be tried again (continuous mode, ``egw run``).

    Why not one fixed delay: a platform restart or a short network outage used to park every
    failed item for a full minute after the platform was back (the fault campaign saw 77 s to
    settle after a 10 s outage). So the delay per item doubles from ``first_s`` up to ``max_s``
    (with jitter, so a fleet does not retry in step), and the moment any upload is receipted —
    the platform is reachable again — every item that failed only because it was unreachable is
    due at once. Items that failed for their own reasons (refused, digest mismatch) keep their
    back-off so a bad item cannot make the uploader spin.
    """

    def __init__(self, first_s: float = 2.0, max_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.first_s, self.max_s = first_s, max_s
        self._rng = rng or random.Random()
        self._failures: dict[str, int] = {}
        self._due_at: dict[str, float] = {}
        self._unreachable: set[str] = set()

    def __contains__(self, evidence_id: str) -> bool:
        return evidence_id in self._due_at

    def failed(self, evidence_id: str, now: float, *, unreachable: bool) -> float:
        """Record a failed delivery; return the delay until the item is due again."""
        n = self._failures.get(evidence_id, 0) + 1
        self._failures[evidence_id] = n
        delay: float = min(self.max_s, self.first_s * 2 ** (n - 1)) * self._rng.uniform(0.5, 1.0)
        self._due_at[evidence_id] = now + delay
        if unreachable:
            self._unreachable.add(evidence_id)
        else:
            self._unreachable.discard(evidence_id)
        return delay

    def succeeded(self, evidence_id: str) -> None:
        """An item was receipted: forget it, and retry now whatever only waited for the platform."""
        self._failures.pop(evidence_id, None)
        self._due_at.pop(evidence_id, None)
        self._unreachable.discard(evidence_id)
        for eid in self._unreachable:
            self._due_at[eid] = 0.0
        self._unreachable.clear()

    def release_due(self, now: float) -> list[str]:
        """Items whose wait is over; they leave the schedule (their failure count stays)."""
        due = [eid for eid, at in self._due_at.items() if at <= now]
        for eid in due:
            del self._due_at[eid]
            self._unreachable.discard(eid)
        return due


@dataclass
class UploadSettings:
    # Three general slots plus the express slot fill the reference platform's default of four uploads
    # per gateway. Measured on a 4 × 1 GiB dock (bench/dock.py, same machine, alternating runs): 265-268 MB/s
    # with two, 251-339 with three, 314-337 with four: one stream's pipeline (read, send, the platform's
    # synchronous write) leaves a core idle that a third stream fills.
    concurrency: int = 3
    express_slots: int = 1
    bandwidth: int | None = None  # bytes/s, None = unlimited
    chunk_size: int = CHUNK_SIZE
    small_threshold: int = SMALL_THRESHOLD
    max_attempts: int = 6
    backoff_base_s: float = 0.25
    backoff_max_s: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> UploadSettings:
        """EGW_UPLOAD_CONCURRENCY / EGW_UPLOAD_BANDWIDTH, then explicit (non-None) overrides."""
        s = cls()
        if os.environ.get("EGW_UPLOAD_CONCURRENCY"):
            s.concurrency = int(os.environ["EGW_UPLOAD_CONCURRENCY"])
        if os.environ.get("EGW_UPLOAD_BANDWIDTH"):
            s.bandwidth = parse_rate(os.environ["EGW_UPLOAD_BANDWIDTH"])
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        if s.concurrency < 1 or s.express_slots < 0:
            raise ValueError("concurrency must be ≥ 1 and express slots ≥ 0")
        return s


@dataclass
class UploadOutcome:
    """What happened to one item in this run."""

    evidence_id: str
    sha256: str
    size: int
    status: str  # "receipted" (EvidenceState.RECEIPTED) | "failed"
    receipt_id: str | None = None
    bytes_sent: int = 0
    resumed_from: list[int] = field(default_factory=list)  # committed offset at the start of each attempt
    attempts: int = 0
    error: str | None = None
    unreachable: bool = False  # the last attempt failed because the platform could not be reached
    started_at: float = 0.0
    finished_at: float = 0.0
    express: bool = False


class _Fatal(Exception):
    """Retrying this run will not help (bad receipt, authentication)."""


class Uploader:
    def __init__(self, data_dir: Path, settings: UploadSettings | None = None, *, link: PlatformLink | None = None,
                 chunk_filter: ChunkFilter | None = None,
                 on_outcome: Callable[[UploadOutcome], None] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings or UploadSettings()
        self.link = link or load_link(self.data_dir)
        self.chunk_filter = chunk_filter  # fault injection for tests: alter bytes after they were read
        self.on_outcome = on_outcome
        self.bucket = TokenBucket(self.settings.bandwidth, max(self.settings.chunk_size, self.settings.bandwidth // 10)) \
            if self.settings.bandwidth else None
        self._db_pool = ThreadPoolExecutor(1, thread_name_prefix="uplink-db")
        self._io_pool = ThreadPoolExecutor(4, thread_name_prefix="uplink-io")
        self._service: EvidenceService | None = None
        self._claimed: set[str] = set()
        self._given_up: set[str] = set()  # failed in this run; in run_once never tried again
        self._retries = RetrySchedule()
        self._busy = 0
        self._producing: Callable[[], bool] = lambda: False
        self.outcomes: list[UploadOutcome] = []

    # ---- plumbing ---------------------------------------------------------
    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, lambda: fn(*args, **kwargs))

    def _open_service(self) -> EvidenceService:
        # Its own connection (the uploader's SQL runs on its one DB thread), but never a recovery: opening
        # a service removes nothing, and inside `egw run` this is re-opened at every uploader restart,
        # while a dock may be copying. Leftover temporary copies are the writer lock's to clean, once.
        self._service = EvidenceService(self.data_dir)
        return self._service

    @property
    def service(self) -> EvidenceService:
        assert self._service is not None
        return self._service

    def _requeue_interrupted(self) -> int:
        """Items left 'uploading' by a killed gateway go back to the queue (resume happens via QueryUpload)."""
        ids = self.service.state.ids_in_state(EvidenceState.UPLOADING)
        for eid in ids:
            self.service.transition(eid, EvidenceState.QUEUED, last_error="interrupted: the gateway stopped during the upload")
        return len(ids)

    def _claim(self, express_only: bool) -> EvidenceRow | None:
        s = self.settings
        item = self.service.state.next_queued(max_size=s.small_threshold if express_only else None,
                                              skip=self._claimed | self._given_up)
        if item is None:
            return None
        self._claimed.add(item.id)
        return item

    # ---- running -----------------------------------------------------------
    async def run_once(self, *, producing: Callable[[], bool] | None = None) -> list[UploadOutcome]:
        """Drain the queue (including items queued while running) and return what happened per item.

        ``producing``, when given, is asked whenever the queue looks empty:
        while it returns True something is still being ingested (e.g. the dock
        copying other recorders), so the workers wait for it instead of
        finishing — upload overlaps ingest and the run ends with a final drain.
        """
        self._producing = producing or (lambda: False)
        await self._serve(None)
        return self.outcomes

    async def run(self, stop: asyncio.Event, *, idle_poll_s: float = 1.0, first_retry_s: float = 2.0,
                  retry_after_s: float = 60.0) -> None:
        """Deliver continuously until ``stop`` is set (for ``egw run``).

        Items that failed are tried again after ``first_retry_s``, doubling up
        to ``retry_after_s`` (see :class:`RetrySchedule`); a stop interrupts
        uploads in flight, which go back to the queue and resume from the
        platform's committed offset next time.
        """
        self._retries = RetrySchedule(first_retry_s, retry_after_s)
        await self._serve(stop, idle_poll_s)

    async def _serve(self, stop: asyncio.Event | None, idle_poll_s: float = POLL_S) -> None:
        try:
            await self._db(self._open_service)
        except BaseException:  # e.g. the state database cannot be opened: do not leave the pools' threads behind
            self._db_pool.shutdown(wait=True)
            self._io_pool.shutdown(wait=True)
            raise
        try:
            await self._db(self._requeue_interrupted)
            channel = self.link.aio_channel()
            try:
                self._stub = ingest_pb2_grpc.EvidenceIngestStub(channel)
                # Upload takes pre-encoded bytes (protos.upload_wire): one copy per chunk instead of two plus upb work
                self._upload: grpc.aio.StreamUnaryMultiCallable[bytes, ingest_pb2.UploadResponse] = channel.stream_unary("/egw.v1.EvidenceIngest/Upload", request_serializer=None,
                                                    response_deserializer=ingest_pb2.UploadResponse.FromString)
                tasks = [asyncio.ensure_future(self._worker(False, stop, idle_poll_s)) for _ in range(self.settings.concurrency)]
                tasks += [asyncio.ensure_future(self._worker(True, stop, idle_poll_s)) for _ in range(self.settings.express_slots)]
                if stop is None:
                    await asyncio.gather(*tasks)
                else:
                    stopper = asyncio.ensure_future(stop.wait())
                    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
                    for task in [stopper, *tasks]:
                        task.cancel()
                    ended = await asyncio.gather(stopper, *tasks, return_exceptions=True)
                    # A worker that died (e.g. a full disk refused a state write) must not end the uploader
                    # silently: the caller restarts it, and says why.
                    failures = [e for e in ended if isinstance(e, Exception) and not isinstance(e, asyncio.CancelledError)]
                    if failures and not stop.is_set():
                        raise failures[0]
            finally:
                await channel.close()
        finally:
            await self._db(self.service.close)
            self._db_pool.shutdown(wait=True)
            self._io_pool.shutdown(wait=True)

    async def _worker(self, express_only: bool, stop: asyncio.Event | None = None, idle_poll_s: float = POLL_S) -> None:
        while stop is None or not stop.is_set():
            if stop is not None:  # continuous mode: failed items become eligible again after a while
                self._given_up.difference_update(self._retries.release_due(time.monotonic()))
            producing = self._producing()  # asked before the claim: anything queued earlier is seen by it
            item = await self._db(self._claim, express_only)
            if item is None:
                if stop is None and self._busy == 0 and not producing:
                    return
                # others are busy (or we run continuously): something new may be queued meanwhile
                await asyncio.sleep(POLL_S if self._busy else idle_poll_s)
                continue
            self._busy += 1
            try:
                outcome = await self._deliver(item, express_only or item.priority > 0 or item.size <= self.settings.small_threshold)
            finally:
                self._busy -= 1
                self._claimed.discard(item.id)
            if outcome.status == EvidenceState.RECEIPTED:
                self._retries.succeeded(item.id)  # also: what only waited for the platform is due now
            else:
                self._given_up.add(item.id)
                self._retries.failed(item.id, time.monotonic(), unreachable=outcome.unreachable)
            self.outcomes.append(outcome)
            if stop is not None and len(self.outcomes) > 1000:
                del self.outcomes[:500]
            if self.on_outcome:
                self.on_outcome(outcome)

    async def _deliver(self, item: EvidenceRow, express: bool) -> UploadOutcome:
        out = UploadOutcome(item.id, item.sha256, item.size, "failed", started_at=time.time(), express=express)
        await self._db(self.service.transition, item.id, EvidenceState.UPLOADING, attempts=item.attempts + 1)
        try:
            return await self._attempts(item, out, express)
        except asyncio.CancelledError:
            # stopping: the item goes back to the queue; the platform keeps what it committed
            await asyncio.shield(self._db(self._requeue_if_uploading, item.id))
            raise

    def _requeue_if_uploading(self, evidence_id: str) -> None:
        # runs on the DB thread after any transition already submitted (e.g. a receipt that just arrived)
        if self.service.state.get(evidence_id).state == EvidenceState.UPLOADING:
            self.service.transition(evidence_id, EvidenceState.QUEUED,
                                    last_error="interrupted: the uploader was stopped; resumes at the committed offset")

    async def _attempts(self, item: EvidenceRow, out: UploadOutcome, express: bool) -> UploadOutcome:
        s = self.settings
        error = "not attempted"
        for attempt in range(1, s.max_attempts + 1):
            out.attempts = attempt
            try:
                receipt_raw, receipt = await self._attempt(item, out, express)
            except _Fatal as exc:
                error = str(exc)
                out.unreachable = False
                break
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
                out.unreachable = exc.code() in UNREACHABLE
                if exc.code() in NON_RETRYABLE:
                    break
                details = (exc.details() or "").lower()
                if exc.code() == grpc.StatusCode.UNAVAILABLE and "not yet valid" in details:
                    error += (" — the TLS handshake failed: a certificate is not yet valid by this gateway's clock; "
                              "check the clock (NTP); uploads resume by themselves once it is right")
                elif exc.code() == grpc.StatusCode.UNAVAILABLE and "handshake" in details:
                    error += (" — the TLS handshake failed: the platform may not accept this gateway's certificate "
                              "(issued by another CA, or expired); re-enrol with `egw enroll`")
            except (OSError, GatewayError) as exc:
                error = f"{exc.__class__.__name__}: {exc}"
                out.unreachable = False
            except Exception as exc:  # a bug must not leave the item 'uploading' nor stop the other workers
                error = f"unexpected {exc.__class__.__name__}: {exc} (please report this)"
                out.unreachable = False
                break
            else:
                await self._db(self.service.transition, item.id, EvidenceState.RECEIPTED, custody_event="receipted",
                               details={"receipt_id": receipt.receipt_id, "platform_id": receipt.platform_id,
                                        "sha256": receipt.sha256, "size": receipt.size},
                               receipt=receipt_raw, upload_offset=item.size, last_error=None)
                out.status, out.receipt_id, out.finished_at = EvidenceState.RECEIPTED.value, receipt.receipt_id, time.time()
                return out
            if attempt < s.max_attempts:
                delay = random.uniform(0, min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempt - 1)))  # full jitter
                await asyncio.sleep(delay)
        out.error, out.finished_at = error, time.time()
        await self._db(self.service.transition, item.id, EvidenceState.QUEUED, last_error=error[:2000])
        return out

    async def _attempt(self, item: EvidenceRow, out: UploadOutcome, express: bool) -> tuple[bytes, evidence_pb2.Receipt]:
        md = self.link.metadata
        query = await self._stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=item.sha256, evidence_id=item.id),
                                             timeout=RPC_TIMEOUT_S, metadata=md)
        if query.complete and query.HasField("receipt"):
            return self._check_receipt(item, query.receipt)
        offset = int(query.committed_offset)
        if offset > item.size:
            raise _Fatal(f"platform reports {offset} bytes committed for a {item.size}-byte item; check the platform")
        out.resumed_from.append(offset)
        if offset:
            await self._db(self._note_offset, item.id, offset)
        reply = await self._upload(self._requests(item, offset, out, express), metadata=md)
        if not reply.HasField("receipt"):
            raise OSError(f"upload ended at {reply.committed_offset} of {item.size} bytes without a receipt; resuming")
        return self._check_receipt(item, reply.receipt)

    def _note_offset(self, evidence_id: str, offset: int) -> None:
        self.service.state.set_upload_offset(evidence_id, offset)

    def _check_receipt(self, item: EvidenceRow, pb: evidence_pb2.Envelope) -> tuple[bytes, evidence_pb2.Receipt]:
        envelope = dsse.Envelope(pb.payload_type, bytes(pb.payload), tuple((sg.keyid, bytes(sg.sig)) for sg in pb.signatures))
        try:
            receipt = self.link.verify_receipt(envelope, evidence_id=item.id, sha256=item.sha256, size=item.size)
        except VerificationError as exc:
            raise _Fatal(f"receipt rejected: {exc} — the item stays queued; check the platform's signing key") from exc
        return envelope.to_bytes(), receipt

    async def _requests(self, item: EvidenceRow, offset: int, out: UploadOutcome, express: bool) -> AsyncIterator[bytes]:
        """The Upload stream as wire bytes: the header, then chunks from ``offset``."""
        manifest = dsse.Envelope.from_bytes(item.manifest)
        yield ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(
            manifest=evidence_pb2.Envelope(payload_type=manifest.payload_type, payload=manifest.payload,
                                           signatures=[evidence_pb2.Signature(keyid=k, sig=sg) for k, sg in manifest.signatures]),
            sha256=item.sha256, size=item.size, start_offset=offset)).SerializeToString()
        if offset >= item.size:
            return
        loop = asyncio.get_running_loop()
        chunk = self.settings.chunk_size
        reader = self.service.store.reader(item.sha256, chunk)  # one buffer per read in flight (READ_AHEAD)

        def read(pos: int) -> memoryview:
            length = min(chunk, item.size - pos)
            view = reader.read_at(pos, length)
            if len(view) != length:
                raise OSError(f"blob {item.sha256} ended at {pos + len(view)} of {item.size} bytes; the store is damaged")
            return view

        # READ_AHEAD reads in flight while the loop sends: with one, the loop waited for every read, and the
        # read's thread then waited for the GIL the loop held (py-spy: five times longer than the read itself).
        # A chunk is encoded (copied out of its buffer) before the read that reuses the buffer is started.
        starts = iter(range(offset, item.size, chunk))
        in_flight: deque[tuple[int, asyncio.Future[memoryview]]] = deque(
            (pos, loop.run_in_executor(self._io_pool, read, pos)) for pos in itertools.islice(starts, READ_AHEAD))
        try:
            while in_flight:
                pos, pending = in_flight[0]
                view = await pending
                in_flight.popleft()
                if self.bucket is not None:
                    if express:
                        self.bucket.charge(len(view))
                    else:
                        await self.bucket.take(len(view))
                data: bytes | memoryview = view if self.chunk_filter is None else self.chunk_filter(item, pos, bytes(view))
                message = encode_chunk_request(pos, data)  # the one copy: into the message gRPC sends
                following = next(starts, None)
                if following is not None:  # its buffer is free now
                    in_flight.append((following, loop.run_in_executor(self._io_pool, read, following)))
                out.bytes_sent += len(data)
                yield message
        finally:
            _close_after([pending for _, pending in in_flight], reader)


def _close_after(pending: list[asyncio.Future[memoryview]], reader: DirectReader) -> None:
    """Close the reader once no read runs into its buffers: a stream cut short may leave reads in flight,
    and closing its file under them could let a read land in a file opened later with the same number.
    Their outcomes are collected (``return_exceptions``): the stream already ended for its own reason."""
    if not pending:
        reader.close()
        return
    asyncio.gather(*pending, return_exceptions=True).add_done_callback(lambda _: reader.close())


def pending_count(service: EvidenceService) -> int:
    """Items not yet delivered (ingested, queued or uploading)."""
    return service.state.count_unreceipted()
