"""The reference ``EvidenceIngest`` server.

Ports. Python gRPC cannot make a client certificate *optional* on one port
(``require_client_auth=False`` means "never ask for one"), so the platform
listens twice on one server object:

* the **ingest port** (printed first): mutual TLS, the client certificate must
  chain to the platform CA; every RPC is allowed;
* the **enrolment port** (printed second): server-authenticated TLS only; only
  ``Enroll`` (plus health and reflection) is served, every other RPC answers
  UNAUTHENTICATED because no client certificate was presented there.

A gateway without a certificate learns the enrolment port and the CA
fingerprint from the enrolment token (see ``protos/enrolment_token.py``), so ``egw enroll
--platform HOST:PORT --token T`` needs nothing else.

Uploads. A partial upload lives in ``DIR/partial/<gateway>/<sha256>``; the
committed offset is the file length. Chunks are written by the gRPC handler
thread while a per-upload hasher thread digests the same immutable ``bytes``
(hashlib releases the GIL), so hashing overlaps receiving instead of halving
it. The file is fdatasync'ed every ``SYNC_EVERY`` bytes and that offset is
recorded with the boot id: after a process kill the page cache still holds
everything written (the whole length counts); after a reboot the file is cut
back to the last synced offset. On completion: size, SHA-256, manifest
signature and signer certificate are checked, the file is fsynced and renamed
into ``DIR/blobs`` and only then indexed; a receipt is signed and recorded in
the same transaction. Nothing half-received ever becomes "stored".
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format, timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import dsse
from protos.egw.v1 import evidence_pb2, ingest_pb2, ingest_pb2_grpc
from protos.enrolment_token import TokenFormatError, parse_token
from protos.pki_roles import Role, RoleError, require_role
from protos.upload_wire import ChunkView, decode_upload_request
from simulators.platform.index import Index, TokenError
from simulators.platform.manifest_check import ManifestRejected, check_manifest
from simulators.platform.pki import PKIError, PlatformPKI, fingerprint, pem
from simulators.platform.reflection import enable_reflection
from simulators.platform.revocation import current_crl, publish_crl
from simulators.platform.uploads import PartialUploads, UploadLimits, boot_id

__all__ = ["PlatformServer", "IngestServicer", "UploadLimits", "RECEIPT_TYPE", "MANIFEST_TYPE", "SERVER_OPTIONS", "RECEIPT_FAULTS", "boot_id"]

RECEIPT_TYPE = "application/vnd.egw.receipt.v1+json"
MANIFEST_TYPE = "application/vnd.egw.manifest.v1+json"
MAX_MESSAGE = 8 * 1024 * 1024
DEFAULT_RESERVE = 64 * 1024 * 1024
DEFAULT_ENROL_FAILURES = 10  # refused enrolments per peer per minute before RESOURCE_EXHAUSTED
RECEIPT_FAULTS = ("wrong-key", "alter")  # test variants: a forged or an altered receipt
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SECRET_RE = re.compile(r"^[0-9a-f]{32}$")
_GW_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # also a directory name: no "." or ".."

# Measured on this class of machine (2 vCPUs, loopback): disabling BDP probing costs 30 %, a 16 MiB
# lookahead wins it back; messages up to 8 MiB so 1 MiB chunks never hit the limit.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.http2.lookahead_bytes", 16 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
    # gateways ping every 20 s during long capped uploads; do not answer that with GOAWAY too_many_pings
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class _AlreadyEnrolled(Exception):
    def __init__(self, gateway_id: str) -> None:
        super().__init__(
            f"enrolment refused: gateway {gateway_id} already has a certificate on this platform and this token may not "
            f"replace it; the operator issues a re-enrolment token with `egw platform reenrol {gateway_id}` "
            "(the old certificate is then revoked)")


class FailureLimiter:
    """Refused enrolments per peer host in a sliding window: past ``limit``, the peer is refused outright."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, peer: str, now: float) -> collections.deque[float]:
        times = self._failures.setdefault(peer, collections.deque())
        while times and times[0] < now - self.window_s:
            times.popleft()
        return times

    def allow(self, peer: str) -> bool:
        with self._lock:
            recent = self._recent(peer, time.monotonic())
            if not recent:
                self._failures.pop(peer, None)  # bounded: only peers with recent failures are remembered
            return len(recent) < self.limit

    def failed(self, peer: str) -> None:
        with self._lock:
            now = time.monotonic()
            self._recent(peer, now).append(now)


def _peer_host(peer: str) -> str:
    """``ipv4:127.0.0.1:5555`` → ``ipv4:127.0.0.1``: a peer is its address, whatever source port it picks."""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


@dataclass
class _Peer:
    gateway_id: str
    certificate: x509.Certificate | None


class IngestServicer(PartialUploads, ingest_pb2_grpc.EvidenceIngestServicer):
    def __init__(self, data_dir: Path, pki: PlatformPKI, index: Index, *, insecure: bool = False,
                 receipt_fault: str | None = None, reserve_bytes: int = DEFAULT_RESERVE,
                 enrol_failures: int = DEFAULT_ENROL_FAILURES, limits: UploadLimits | None = None) -> None:
        self.data_dir = data_dir
        self.limits = limits or UploadLimits()
        self.enrol_limiter = FailureLimiter(enrol_failures)
        self.pki = pki
        self.index = index
        self.insecure = insecure
        self.receipt_fault = receipt_fault
        self.reserve_bytes = reserve_bytes
        self.blobs = data_dir / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._init_partials(data_dir)
        self._forger = ec.generate_private_key(ec.SECP256R1())

    # ---- who is calling -------------------------------------------------
    def _peer(self, context: grpc.ServicerContext) -> _Peer:
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:
            if self.insecure:
                md = dict(context.invocation_metadata())
                gid = str(md.get("egw-gateway-id", ""))
                if not _GW_RE.match(gid):
                    context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                  "plaintext platform: send your gateway id in the egw-gateway-id metadata (egw does this with --insecure)")
                if self.index.active_certificate(gid) is None:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                  f"gateway {gid} is not enrolled on this platform, or its certificate was revoked; "
                                  f"enrol it with a token from `egw platform token --gateway-id {gid}`")
                return _Peer(gid, None)
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "no client certificate: this is the enrolment port, which only serves Enroll; "
                          "upload over the ingest port (first line printed by the platform) with the certificate from `egw enroll`")
        cert = x509.load_pem_x509_certificate(certs[0])
        try:
            self.pki.check_issued(cert)
        except PKIError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{exc}; enrol this gateway with `egw enroll`")
        try:
            claimed = require_role(cert, Role.GATEWAY)
        except RoleError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{exc}; connect with the certificate `egw enroll` stored")
        row = self.index.gateway_by_cert(fingerprint(cert))
        if row is None or row.gateway_id != claimed:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"unknown gateway: certificate {cert.subject.rfc4514_string()} was not enrolled on this platform "
                          "(the platform data was reset?); re-enrol with `egw enroll --token …`")
        if row.revoked_at is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"the certificate of gateway {claimed} was revoked on this platform; "
                          f"the operator issues a new token with `egw platform reenrol {claimed}` or `egw platform token --gateway-id {claimed}`")
        return _Peer(claimed, cert)

    # ---- Enroll ----------------------------------------------------------
    def Enroll(self, request: ingest_pb2.EnrollRequest, context: grpc.ServicerContext) -> ingest_pb2.EnrollResponse:
        peer = _peer_host(context.peer())
        if not self.enrol_limiter.allow(peer):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many refused enrolments from {peer}: wait {self.enrol_limiter.window_s:g} s before trying again, "
                          "with a token issued for this gateway id")
        if not _GW_RE.match(request.gateway_id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "gateway_id must be 1–64 characters of A–Z a–z 0–9 . _ -, starting with a letter or digit")
        secret = self._token_secret(request.token)
        try:
            with self.index.tx() as db:
                grant = self.index.redeem_token(db, secret, request.gateway_id)
                replaces = self.index.active_certificate(grant.gateway_id, db) is not None
                if replaces and not grant.reenrol:
                    raise _AlreadyEnrolled(grant.gateway_id)
                cert = self.pki.issue(request.csr_pem, grant.gateway_id)  # only now: the token was good
                if replaces:
                    self.index.revoke(db, grant.gateway_id, "superseded")
                self.index.add_gateway(db, grant.gateway_id, fingerprint(cert), dsse.key_id(cert.public_key()), pem(cert),  # type: ignore[arg-type]
                                       grant.site)
        except TokenError as exc:
            self.enrol_limiter.failed(peer)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except _AlreadyEnrolled as exc:
            self.enrol_limiter.failed(peer)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except PKIError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc}; re-run `egw enroll` (it makes a fresh CSR; the token was not used)")
        if replaces:
            publish_crl(self.pki, self.index)
        return ingest_pb2.EnrollResponse(
            certificate_pem=pem(cert), ca_chain_pem=self.pki.ca_pem(), platform_id=self.pki.platform_id,
            platform_certificate_pem=pem(self.pki.signer_cert),
        )

    def _token_secret(self, token: str) -> str:
        """The secret of a whole ``egw1.…`` token (which must pin this CA) or of a bare secret; "" when neither."""
        if token.startswith("egw1."):
            try:
                parsed = parse_token(token)
            except TokenFormatError:
                return ""
            return parsed.secret if parsed.ca_sha256 == fingerprint(self.pki.ca_cert) else ""
        return token if _SECRET_RE.match(token) else ""

    # ---- GetRevocationList -------------------------------------------------
    def GetRevocationList(self, request: ingest_pb2.RevocationListRequest, context: grpc.ServicerContext) -> ingest_pb2.RevocationList:
        self._peer(context)
        data, number = current_crl(self.pki, self.index)
        return ingest_pb2.RevocationList(crl_pem=data, crl_number=number)

    # ---- QueryUpload ------------------------------------------------------
    def QueryUpload(self, request: ingest_pb2.QueryUploadRequest, context: grpc.ServicerContext) -> ingest_pb2.QueryUploadResponse:
        peer = self._peer(context)
        sha = request.sha256
        if not _SHA_RE.match(sha):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"sha256 must be 64 lowercase hex digits, got {sha[:80]!r}")
        found = (self.index.receipt_for(peer.gateway_id, request.evidence_id) if request.evidence_id
                 else self.index.receipt_by_digest(peer.gateway_id, sha))
        if found is not None and found.sha256 == sha:
            return ingest_pb2.QueryUploadResponse(committed_offset=found.size, complete=True, receipt=_to_proto(found.envelope))
        # only this gateway's own progress: whether anyone else stored these bytes is not the caller's business
        return ingest_pb2.QueryUploadResponse(committed_offset=self._recover_partial(peer.gateway_id, sha))

    # ---- Upload ------------------------------------------------------------
    def Upload(self, request_iterator: Iterator[ingest_pb2.UploadRequest | ChunkView], context: grpc.ServicerContext) -> ingest_pb2.UploadResponse:
        peer = self._peer(context)
        first = next(request_iterator, None)
        if first is None or isinstance(first, ChunkView) or first.WhichOneof("part") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first Upload message must be a header (manifest, sha256, size, start_offset)")
        header = first.header
        sha, size = header.sha256, header.size
        if not _SHA_RE.match(sha):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"sha256 must be 64 lowercase hex digits, got {sha[:80]!r}")
        manifest, manifest_raw = self._check_manifest(peer, header, context)
        evidence_id = str(manifest["evidence_id"])
        found = self.index.receipt_for(peer.gateway_id, evidence_id)
        if found is not None:
            if found.sha256 != sha or found.size != size:
                context.abort(grpc.StatusCode.ALREADY_EXISTS,
                              f"evidence {evidence_id} was already receipted with digest {found.sha256} and size {found.size}; "
                              "an evidence id names one content forever — ingest changed content as new evidence")
            return ingest_pb2.UploadResponse(committed_offset=found.size, receipt=_to_proto(found.envelope))
        key = (peer.gateway_id, sha)
        with self._mutex:
            lock = self._locks.setdefault(key, threading.Lock())
        if not lock.acquire(blocking=False):
            context.abort(grpc.StatusCode.ABORTED,
                          f"an upload of {sha} from this gateway is already in progress; retry after QueryUpload")
        try:
            self._admit(peer.gateway_id, context)
        except BaseException:
            lock.release()
            raise
        try:
            # the bytes are always streamed and hashed, even when the blob is stored already: a receipt
            # says this gateway delivered them, which knowing a digest does not prove
            if not self._receive(peer.gateway_id, header, request_iterator, context):
                # the client ended the stream early: answer how far it got, no receipt
                return ingest_pb2.UploadResponse(committed_offset=self._recover_partial(*key))
            envelope = self._issue_receipt(peer.gateway_id, evidence_id, sha, size, manifest_raw)
            return ingest_pb2.UploadResponse(committed_offset=size, receipt=_to_proto(envelope))
        finally:
            self._release(peer.gateway_id)
            lock.release()

    def _check_manifest(self, peer: _Peer, header: ingest_pb2.UploadHeader, context: grpc.ServicerContext) -> tuple[dict[str, Any], bytes]:
        env_pb = header.manifest
        if env_pb.payload_type != MANIFEST_TYPE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"header.manifest must be a DSSE envelope of type {MANIFEST_TYPE}, "
                          f"not {env_pb.payload_type[:80]!r}" if env_pb.payload_type else
                          f"header.manifest is missing or has no payload type: send the signed manifest envelope ({MANIFEST_TYPE})")
        if not env_pb.signatures:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "the manifest envelope carries no signature: the platform accepts only manifests signed with the "
                          "gateway key (egw signs at ingest); send the signed envelope")
        envelope = dsse.Envelope(env_pb.payload_type, env_pb.payload, tuple((s.keyid, s.sig) for s in env_pb.signatures))
        try:
            body = envelope.payload_json()
        except dsse.EnvelopeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the manifest payload is not UTF-8 JSON; send the manifest as signed at ingest")
        cert = peer.certificate
        if cert is None:  # plaintext platform: the enrolled certificate of the claimed gateway
            known = self.index.gateway_cert_by_key(envelope.signatures[0][0])
            if known is None or known[0] != peer.gateway_id:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, f"no enrolled gateway {peer.gateway_id} with the manifest's signing key; run `egw enroll`")
            cert = x509.load_pem_x509_certificate(known[1])
        try:
            dsse.verify(envelope, cert.public_key(), MANIFEST_TYPE)  # type: ignore[arg-type]
        except dsse.EnvelopeError as exc:  # the caller is authenticated; it may not upload what another key signed
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"the manifest is not signed by the certificate of this connection (gateway {peer.gateway_id}): {exc}; "
                          "upload evidence only from the gateway that signed it")
        try:
            check_manifest(body)
        except ManifestRejected as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if body["gateway_id"] != peer.gateway_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"the manifest names gateway {body['gateway_id'][:80]!r} but the connection is from {peer.gateway_id!r}: "
                          "a gateway may deliver only evidence it signed itself")
        if body["sha256"] != header.sha256 or body["size"] != header.size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the header says {header.sha256} with {header.size} bytes, the signed manifest says {body['sha256']} "
                          f"with {body['size']} bytes; send the header the manifest was signed for")
        return body, env_pb.payload

    # ---- receipts ---------------------------------------------------------
    def _issue_receipt(self, gateway_id: str, evidence_id: str, sha: str, size: int, manifest: bytes) -> bytes:
        with self.index.tx() as db:
            row = db.execute("SELECT envelope FROM receipts WHERE gateway_id = ? AND evidence_id = ?", (gateway_id, evidence_id)).fetchone()
            if row is not None:
                return bytes(row[0])
            now = time.time()
            ts = timestamp_pb2.Timestamp()
            ts.FromNanoseconds(int(now * 1e9))
            receipt = evidence_pb2.Receipt(
                receipt_id=str(uuid.uuid4()), evidence_id=evidence_id, sha256=sha, size=size, received_at=ts,
                platform_id=self.pki.platform_id, gateway_id=gateway_id,
            )
            payload = json_format.MessageToJson(receipt, indent=2, sort_keys=True).encode("utf-8")
            key = self._forger if self.receipt_fault == "wrong-key" else self.pki.signer_key
            envelope = dsse.sign(RECEIPT_TYPE, payload, key)
            if self.receipt_fault == "alter":
                receipt.size = size + 1
                altered = json_format.MessageToJson(receipt, indent=2, sort_keys=True).encode("utf-8")
                envelope = dsse.Envelope(RECEIPT_TYPE, altered, envelope.signatures)
            raw = envelope.to_bytes()
            db.execute("INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (receipt.receipt_id, gateway_id, evidence_id, sha, size, now, manifest, raw))
            return raw


def _to_proto(raw: bytes) -> evidence_pb2.Envelope:
    env = dsse.Envelope.from_bytes(raw)
    return evidence_pb2.Envelope(payload_type=env.payload_type, payload=env.payload,
                                 signatures=[evidence_pb2.Signature(keyid=k, sig=s) for k, s in env.signatures])


def _ingest_handlers(servicer: IngestServicer) -> grpc.GenericRpcHandler:
    """The generated registration, except that Upload decodes chunks without copying (protos.upload_wire)."""
    return grpc.method_handlers_generic_handler("egw.v1.EvidenceIngest", {
        "QueryUpload": grpc.unary_unary_rpc_method_handler(
            servicer.QueryUpload, request_deserializer=ingest_pb2.QueryUploadRequest.FromString,
            response_serializer=ingest_pb2.QueryUploadResponse.SerializeToString),
        "Upload": grpc.stream_unary_rpc_method_handler(
            servicer.Upload, request_deserializer=decode_upload_request,
            response_serializer=ingest_pb2.UploadResponse.SerializeToString),
        "Enroll": grpc.unary_unary_rpc_method_handler(
            servicer.Enroll, request_deserializer=ingest_pb2.EnrollRequest.FromString,
            response_serializer=ingest_pb2.EnrollResponse.SerializeToString),
        "GetRevocationList": grpc.unary_unary_rpc_method_handler(
            servicer.GetRevocationList, request_deserializer=ingest_pb2.RevocationListRequest.FromString,
            response_serializer=ingest_pb2.RevocationList.SerializeToString),
    })


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


class PlatformServer:
    """The platform in-process: ``start()`` returns (ingest address, enrolment address)."""

    def __init__(self, data_dir: Path, *, listen: str = "127.0.0.1:0", enroll_listen: str = "127.0.0.1:0",
                 insecure: bool = False, receipt_fault: str | None = None, reserve_bytes: int = DEFAULT_RESERVE,
                 workers: int = 16, enrol_failures: int = DEFAULT_ENROL_FAILURES, limits: UploadLimits | None = None,
                 max_rpcs: int | None = None) -> None:
        if receipt_fault is not None and receipt_fault not in RECEIPT_FAULTS:
            raise ValueError(f"receipt_fault must be one of {RECEIPT_FAULTS}")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pki = PlatformPKI.load_or_create(self.data_dir)
        self.index = Index(self.data_dir)
        self.servicer = IngestServicer(self.data_dir, self.pki, self.index, insecure=insecure,
                                       receipt_fault=receipt_fault, reserve_bytes=reserve_bytes, enrol_failures=enrol_failures,
                                       limits=limits)
        current_crl(self.pki, self.index)  # pki/crl.pem exists (and is fresh) from the first start on
        self.listen, self.enroll_listen, self.insecure = listen, enroll_listen, insecure
        self.executor = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="platform")
        # RPCs beyond max_rpcs are refused (RESOURCE_EXHAUSTED) rather than queued without end
        self.server = grpc.server(self.executor, options=SERVER_OPTIONS, maximum_concurrent_rpcs=max_rpcs or workers * 8)
        self._stopping = threading.Event()
        self._housekeeper = threading.Thread(target=self._housekeeping, name="platform-housekeeping", daemon=True)
        self.server.add_generic_rpc_handlers((_ingest_handlers(self.servicer),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (ingest_pb2.DESCRIPTOR.services_by_name["EvidenceIngest"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        enable_reflection(names, self.server)  # v1 and v1alpha
        self.address = ""
        self.enroll_address = ""

    def start(self) -> tuple[str, str]:
        """Bind and serve. With port 0, a restarted platform first tries the ports it had before,
        so enrolled gateways (which stored the ingest address) and outstanding tokens (which name
        the enrolment port) keep working."""
        previous: dict[str, Any] = {}
        try:
            previous = json.loads((self.data_dir / "platform.json").read_text())
        except (OSError, ValueError):
            pass
        if self.insecure:
            port = self._bind(self.listen, previous.get("address"), None)
            self.address = self.enroll_address = f"{_host(self.listen)}:{port}"
        else:
            mtls = grpc.ssl_server_credentials([(self.pki.server_key_pem(), self.pki.server_chain_pem())],
                                               root_certificates=self.pki.ca_pem(), require_client_auth=True)
            tls = grpc.ssl_server_credentials([(self.pki.server_key_pem(), self.pki.server_chain_pem())])
            port = self._bind(self.listen, previous.get("address"), mtls)
            eport = self._bind(self.enroll_listen, previous.get("enroll_address"), tls)
            self.address = f"{_host(self.listen)}:{port}"
            self.enroll_address = f"{_host(self.enroll_listen)}:{eport}"
        self.server.start()
        self._housekeeper.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set("egw.v1.EvidenceIngest", health_pb2.HealthCheckResponse.SERVING)
        (self.data_dir / "platform.json").write_text(json.dumps({
            "address": self.address, "enroll_address": self.enroll_address, "insecure": self.insecure,
            "platform_id": self.pki.platform_id, "ca_sha256": fingerprint(self.pki.ca_cert), "pid": os.getpid(),
        }, indent=2))
        return self.address, self.enroll_address

    def _bind(self, listen: str, previous: str | None, credentials: grpc.ServerCredentials | None) -> int:
        def add(address: str) -> int:
            if credentials is None:
                return int(self.server.add_insecure_port(address))
            return int(self.server.add_secure_port(address, credentials))

        if listen.endswith(":0") and previous and _host(previous) == _host(listen):
            try:
                return add(previous)
            except RuntimeError:
                pass  # taken by now: any free port, the caller prints it
        return add(listen)

    def _housekeeping(self) -> None:
        """Cancel idle upload streams and sweep stale partials, until stopped."""
        limits = self.servicer.limits
        tick = max(0.05, min(1.0, limits.idle_timeout_s / 4))
        sweep_every = max(tick, min(60.0, limits.partial_ttl_s / 4))
        next_sweep = 0.0
        while not self._stopping.wait(tick):
            self.servicer.cancel_idle_streams()
            if time.monotonic() >= next_sweep:
                removed = self.servicer.sweep_partials()
                if removed:
                    print(f"platform: swept {removed} partial upload(s) untouched for {limits.partial_ttl_s:g} s",
                          file=sys.stderr, flush=True)
                next_sweep = time.monotonic() + sweep_every

    def stop(self, grace: float | None = 1.0) -> None:
        self._stopping.set()
        if self._housekeeper.is_alive():
            self._housekeeper.join()
        self.server.stop(grace).wait()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.index.close()
