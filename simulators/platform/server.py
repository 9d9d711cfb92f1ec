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

import json
import os
import re
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
from grpc_reflection.v1alpha import reflection

from protos import dsse
from protos.egw.v1 import evidence_pb2, ingest_pb2, ingest_pb2_grpc
from protos.upload_wire import ChunkView, decode_upload_request
from simulators.platform.index import Index, TokenError
from simulators.platform.pki import PKIError, PlatformPKI, fingerprint, pem
from simulators.platform.uploads import PartialUploads, boot_id

__all__ = ["PlatformServer", "IngestServicer", "RECEIPT_TYPE", "MANIFEST_TYPE", "SERVER_OPTIONS", "RECEIPT_FAULTS", "boot_id"]

RECEIPT_TYPE = "application/vnd.egw.receipt.v1+json"
MANIFEST_TYPE = "application/vnd.egw.manifest.v1+json"
MAX_MESSAGE = 8 * 1024 * 1024
DEFAULT_RESERVE = 64 * 1024 * 1024
RECEIPT_FAULTS = ("wrong-key", "alter")  # test variants: a forged or an altered receipt
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
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


@dataclass
class _Peer:
    gateway_id: str
    certificate: x509.Certificate | None


class IngestServicer(PartialUploads, ingest_pb2_grpc.EvidenceIngestServicer):
    def __init__(self, data_dir: Path, pki: PlatformPKI, index: Index, *, insecure: bool = False,
                 receipt_fault: str | None = None, reserve_bytes: int = DEFAULT_RESERVE) -> None:
        self.data_dir = data_dir
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
                return _Peer(gid, None)
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "no client certificate: this is the enrolment port, which only serves Enroll; "
                          "upload over the ingest port (first line printed by the platform) with the certificate from `egw enroll`")
        cert = x509.load_pem_x509_certificate(certs[0])
        try:
            self.pki.check_issued(cert)
        except PKIError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{exc}; enrol this gateway with `egw enroll`")
        gid = self.index.gateway_by_cert(fingerprint(cert))
        if gid is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"unknown gateway: certificate {cert.subject.rfc4514_string()} was not enrolled on this platform "
                          "(revoked, or the platform data was reset); re-enrol with `egw enroll --token …`")
        return _Peer(gid, cert)

    # ---- Enroll ----------------------------------------------------------
    def Enroll(self, request: ingest_pb2.EnrollRequest, context: grpc.ServicerContext) -> ingest_pb2.EnrollResponse:
        if not _GW_RE.match(request.gateway_id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "gateway_id must be 1–64 characters of A–Z a–z 0–9 . _ -, starting with a letter or digit")
        try:
            cert = self.pki.issue(request.csr_pem, request.gateway_id)
        except PKIError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc}; re-run `egw enroll` (it makes a fresh CSR)")
        try:
            with self.index.tx() as db:
                self.index.use_token(db, request.token, request.gateway_id)
                self.index.add_gateway(db, request.gateway_id, fingerprint(cert), dsse.key_id(cert.public_key()), pem(cert))  # type: ignore[arg-type]
        except TokenError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return ingest_pb2.EnrollResponse(
            certificate_pem=pem(cert), ca_chain_pem=self.pki.ca_pem(), platform_id=self.pki.platform_id,
            platform_certificate_pem=pem(self.pki.signer_cert),
        )

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
        stored = self.index.blob_size(sha)
        if stored is not None:
            self._discard_stale_partial(peer.gateway_id, sha)
            return ingest_pb2.QueryUploadResponse(committed_offset=stored)
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
            stored = self.index.blob_size(sha)
            if stored is None:
                if not self._receive(peer.gateway_id, header, request_iterator, context):
                    # the client ended the stream early: answer how far it got, no receipt
                    return ingest_pb2.UploadResponse(committed_offset=self._recover_partial(*key))
                stored = size
            if stored != size:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"the platform holds {sha} with {stored} bytes, the header says {size}; fix the manifest size")
            envelope = self._issue_receipt(peer.gateway_id, evidence_id, sha, size, manifest_raw)
            return ingest_pb2.UploadResponse(committed_offset=size, receipt=_to_proto(envelope))
        finally:
            lock.release()

    def _check_manifest(self, peer: _Peer, header: ingest_pb2.UploadHeader, context: grpc.ServicerContext) -> tuple[dict[str, Any], bytes]:
        env_pb = header.manifest
        if env_pb.payload_type != MANIFEST_TYPE or not env_pb.signatures:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"header.manifest must be a signed DSSE envelope of type {MANIFEST_TYPE}, got {env_pb.payload_type!r}")
        envelope = dsse.Envelope(env_pb.payload_type, env_pb.payload, tuple((s.keyid, s.sig) for s in env_pb.signatures))
        try:
            body = envelope.payload_json()
        except dsse.EnvelopeError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"manifest: {exc}")
        cert = peer.certificate
        if cert is None:  # plaintext platform: the enrolled certificate of the claimed gateway
            known = self.index.gateway_cert_by_key(envelope.signatures[0][0])
            if known is None or known[0] != peer.gateway_id:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, f"no enrolled gateway {peer.gateway_id} with the manifest's signing key; run `egw enroll`")
            cert = x509.load_pem_x509_certificate(known[1])
        try:
            dsse.verify(envelope, cert.public_key(), MANIFEST_TYPE)  # type: ignore[arg-type]
        except dsse.EnvelopeError as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"the manifest is not signed by the certificate of this connection (gateway {peer.gateway_id}): {exc}; "
                          "upload evidence only from the gateway that signed it")
        if body.get("gateway_id") != peer.gateway_id:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"the manifest names gateway {body.get('gateway_id')!r} but the connection is from {peer.gateway_id!r}")
        if body.get("sha256") != header.sha256 or body.get("size") != header.size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"header says {header.sha256}/{header.size} bytes, the signed manifest says {body.get('sha256')}/{body.get('size')}; "
                          "send the header the manifest was signed for")
        if not isinstance(body.get("evidence_id"), str) or not body["evidence_id"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the manifest has no evidence_id")
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
    })


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


class PlatformServer:
    """The platform in-process: ``start()`` returns (ingest address, enrolment address)."""

    def __init__(self, data_dir: Path, *, listen: str = "127.0.0.1:0", enroll_listen: str = "127.0.0.1:0",
                 insecure: bool = False, receipt_fault: str | None = None, reserve_bytes: int = DEFAULT_RESERVE,
                 workers: int = 16) -> None:
        if receipt_fault is not None and receipt_fault not in RECEIPT_FAULTS:
            raise ValueError(f"receipt_fault must be one of {RECEIPT_FAULTS}")
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pki = PlatformPKI.load_or_create(self.data_dir)
        self.index = Index(self.data_dir)
        self.servicer = IngestServicer(self.data_dir, self.pki, self.index, insecure=insecure,
                                       receipt_fault=receipt_fault, reserve_bytes=reserve_bytes)
        self.listen, self.enroll_listen, self.insecure = listen, enroll_listen, insecure
        self.executor = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="platform")
        self.server = grpc.server(self.executor, options=SERVER_OPTIONS)
        self.server.add_generic_rpc_handlers((_ingest_handlers(self.servicer),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (ingest_pb2.DESCRIPTOR.services_by_name["EvidenceIngest"].full_name,
                 health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
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

    def stop(self, grace: float | None = 1.0) -> None:
        self.server.stop(grace).wait()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.index.close()
