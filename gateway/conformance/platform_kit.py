"""``egw conformance platform``: play a gateway against any ``EvidenceIngest`` and judge the answers.

The kit is a real gateway in a throw-away directory: it enrols with the operator's token
(``egw platform token --gateway-id ID`` on our platform; whatever the vendor's platform
offers), ingests generated content with our own evidence core (so its manifests are right
by construction), and then drives the protocol by hand: complete, interrupted and resumed
uploads, and every refusal docs/grpc.md promises. Each rule is one row; an unexpected
status code fails the row and names the code that came back.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.conformance.report import Report
from gateway.errors import GatewayError
from gateway.evidence import dsse
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.identity import init_identity
from gateway.evidence.manifest import ManifestInput
from gateway.uplink.enroll import enroll, fetch_pinned_ca, split_address
from gateway.uplink.link import CHANNEL_OPTIONS, PlatformLink, load_link
from protos.egw.v1 import evidence_pb2, ingest_pb2, ingest_pb2_grpc
from protos.enrolment_token import parse_token
from protos.pki_roles import Role, RoleError, require_role

__all__ = ["KitGateway", "check_platform"]

CHUNK = 64 * 1024
TIMEOUT_S = 30.0
MESSAGE_LIMIT = 8 * 1024 * 1024
StatusCode = grpc.StatusCode
# The kit must be able to send what a well-behaved gateway never would (a message over the limit).
_KIT_OPTIONS = [*(o for o in CHANNEL_OPTIONS if o[0] != "grpc.max_send_message_length"), ("grpc.max_send_message_length", -1)]


@dataclass
class _Item:
    evidence_id: str
    sha256: str
    size: int
    data: bytes
    manifest: dsse.SignedEnvelope


class KitGateway:
    """One enrolled throw-away gateway of the kit."""

    def __init__(self, root: Path, gateway_id: str) -> None:
        self.data_dir = root / gateway_id
        self.gateway_id = gateway_id
        init_identity(self.data_dir, gateway_id)
        self.link: PlatformLink | None = None

    def enrol(self, address: str, token: str) -> None:
        enroll(self.data_dir, address, token)
        self.link = load_link(self.data_dir)

    def item(self, size: int, name: str) -> _Item:
        data = os.urandom(size)
        source = self.data_dir.parent / f"{self.gateway_id}-{name}"
        source.write_bytes(data)
        with EvidenceService(self.data_dir) as service:
            result = service.ingest_file(source, ManifestInput(source_path=name, kind="photo", device_id="conformance-kit"))
            manifest = dsse.Envelope.from_bytes(service.state.get(result.evidence_id).manifest)
        return _Item(result.evidence_id, result.sha256, result.size, data, manifest)

    def resign(self, item: _Item, edit: Callable[[dict[str, object]], None], key: ec.EllipticCurvePrivateKey | None = None) -> dsse.SignedEnvelope:
        """The item's manifest with ``edit`` applied, signed by this gateway (or ``key``)."""
        body = item.manifest.payload_json()
        edit(body)
        signer = key or self._key()
        return dsse.sign(item.manifest.payload_type, json.dumps(body, sort_keys=True).encode(), signer)

    def _key(self) -> ec.EllipticCurvePrivateKey:
        assert self.link is not None
        return self.link.identity.private_key

    @contextmanager
    def stub(self) -> Iterator[ingest_pb2_grpc.EvidenceIngestStub]:
        assert self.link is not None, "enrol first"
        channel = grpc.secure_channel(self.link.address, self.link.credentials(), options=_KIT_OPTIONS)
        try:
            yield ingest_pb2_grpc.EvidenceIngestStub(channel)
        finally:
            channel.close()


def _header(manifest: dsse.SignedEnvelope, sha256: str, size: int, start: int = 0) -> ingest_pb2.UploadRequest:
    envelope = evidence_pb2.Envelope(payload_type=manifest.payload_type, payload=manifest.payload,
                                     signatures=[evidence_pb2.Signature(keyid=k, sig=s) for k, s in manifest.signatures])
    return ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(manifest=envelope, sha256=sha256, size=size, start_offset=start))


def _chunks(data: bytes, start: int, stop: int | None = None) -> Iterator[ingest_pb2.UploadRequest]:
    end = len(data) if stop is None else stop
    for pos in range(start, end, CHUNK):
        yield ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=pos, data=data[pos:min(pos + CHUNK, end)]))


def _upload(gw: KitGateway, requests: list[ingest_pb2.UploadRequest] | Iterator[ingest_pb2.UploadRequest]) -> ingest_pb2.UploadResponse:
    with gw.stub() as stub:
        reply: ingest_pb2.UploadResponse = stub.Upload(iter(requests), timeout=TIMEOUT_S)
        return reply


def _code(call: Callable[[], object]) -> tuple[StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return StatusCode.OK, ""


def _expect(report: Report, rule: str, expected: StatusCode, call: Callable[[], object]) -> None:
    code, details = _code(call)
    report.add(rule, code == expected, f"got {code.name}" + (f": {details}" if details else "")
               if code != expected else f"{code.name}" + (f": {details}" if details else ""))


class _Run:
    """The rules, in the order a gateway meets them."""

    def __init__(self, report: Report, address: str, root: Path) -> None:
        self.report = report
        self.address = address
        self.root = root

    # ---- enrolment ----------------------------------------------------------
    def enrolment(self, token: str, gateway_id: str, *, probe: bool = True) -> KitGateway | None:
        gw = KitGateway(self.root, gateway_id)
        if not probe:
            try:
                gw.enrol(self.address, token)
            except GatewayError as exc:
                self.report.add("Enroll of the second gateway issues a certificate", False, str(exc))
                return None
            return gw
        wrong = token[: -8] + ("0" * 8 if not token.endswith("0" * 8) else "1" * 8)
        _expect(self.report, "Enroll with an unknown token is refused", StatusCode.PERMISSION_DENIED,
                lambda: self._raw_enrol(gw, wrong))
        try:
            gw.enrol(self.address, token)
        except GatewayError as exc:
            self.report.add("Enroll with the operator's token issues a certificate", False, str(exc))
            return None
        self.report.add("Enroll with the operator's token issues a certificate", True)
        self._judge_certificates(gw)
        _expect(self.report, "the same token a second time is refused (single use)", StatusCode.PERMISSION_DENIED,
                lambda: self._raw_enrol(KitGateway(self.root, gateway_id + "-again"), token, gateway_id))
        return gw

    def _raw_enrol(self, gw: KitGateway, token: str, gateway_id: str | None = None) -> None:
        host, _port = split_address(self.address)
        parsed = parse_token(token)
        ca = fetch_pinned_ca(host, parsed.enroll_port, parsed.ca_sha256)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, gateway_id or gw.gateway_id)]))
               .sign(key, hashes.SHA256()))
        with grpc.secure_channel(f"{host}:{parsed.enroll_port}", grpc.ssl_channel_credentials(root_certificates=ca),
                                 options=CHANNEL_OPTIONS) as channel:
            ingest_pb2_grpc.EvidenceIngestStub(channel).Enroll(
                ingest_pb2.EnrollRequest(csr_pem=csr.public_bytes(serialization.Encoding.PEM), token=token,
                                         gateway_id=gateway_id or gw.gateway_id), timeout=TIMEOUT_S)

    def _judge_certificates(self, gw: KitGateway) -> None:
        assert gw.link is not None
        for rule, cert, role, claimed in (
                ("the gateway certificate holds the gateway role for our id", gw.link.identity.certificate, Role.GATEWAY, gw.gateway_id),
                ("the platform signing certificate holds the receipt-signer role", gw.link.platform_certificate, Role.RECEIPT_SIGNER, None)):
            try:
                require_role(cert, role, claimed)
                self.report.add(rule, True)
            except RoleError as exc:
                self.report.add(rule, False, str(exc))

    # ---- uploads --------------------------------------------------------------
    def uploads(self, gw: KitGateway) -> _Item | None:
        item = gw.item(3 * CHUNK + 123, "complete.bin")
        with gw.stub() as stub:
            query = stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=item.sha256, evidence_id=item.evidence_id), timeout=TIMEOUT_S)
        self.report.add("QueryUpload of new content: offset 0, not complete",
                        query.committed_offset == 0 and not query.complete,
                        f"offset {query.committed_offset}, complete {query.complete}")
        try:
            reply = _upload(gw, [_header(item.manifest, item.sha256, item.size), *_chunks(item.data, 0)])
        except grpc.RpcError as exc:
            self.report.add("a complete Upload returns a receipt that verifies", False, f"got {exc.code().name}: {exc.details()}")
            return None
        self._judge_receipt(gw, item, reply, "a complete Upload returns a receipt that verifies")
        self._resume(gw)
        return item

    def _judge_receipt(self, gw: KitGateway, item: _Item, reply: ingest_pb2.UploadResponse, rule: str) -> None:
        if not reply.HasField("receipt"):
            self.report.add(rule, False, f"no receipt (committed_offset {reply.committed_offset})")
            return
        from gateway.evidence.receipt import verify_receipt

        assert gw.link is not None
        envelope = dsse.Envelope(reply.receipt.payload_type, bytes(reply.receipt.payload),
                                 tuple((s.keyid, bytes(s.sig)) for s in reply.receipt.signatures))
        try:
            receipt = verify_receipt(envelope, gw.link.platform_certificate, gw.link.identity.ca_certificates,
                                     evidence_id=item.evidence_id, sha256=item.sha256, size=item.size,
                                     gateway_id=gw.gateway_id)
        except GatewayError as exc:
            self.report.add(rule, False, str(exc))
            return
        self.report.add(rule, True, f"receipt {receipt.receipt_id}, gateway {receipt.gateway_id}, evidence {receipt.evidence_id}")

    def _resume(self, gw: KitGateway) -> None:
        item = gw.item(4 * CHUNK + 7, "resumed.bin")
        half = 2 * CHUNK
        first = _upload(gw, [_header(item.manifest, item.sha256, item.size), *_chunks(item.data, 0, half)])
        self.report.add("an Upload ended early answers without a receipt", not first.HasField("receipt")
                        and 0 <= first.committed_offset <= half, f"committed_offset {first.committed_offset}")
        with gw.stub() as stub:
            query = stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=item.sha256, evidence_id=item.evidence_id), timeout=TIMEOUT_S)
        offset = int(query.committed_offset)
        self.report.add("QueryUpload reports the committed offset", 0 <= offset <= half and not query.complete,
                        f"offset {offset} after {half} bytes sent")
        _expect(self.report, "a start_offset other than the committed one is refused", StatusCode.FAILED_PRECONDITION,
                lambda: _upload(gw, [_header(item.manifest, item.sha256, item.size, offset + 1), *_chunks(item.data, offset + 1)]))
        reply = _upload(gw, [_header(item.manifest, item.sha256, item.size, offset), *_chunks(item.data, offset)])
        self._judge_receipt(gw, item, reply, "resuming from the committed offset completes with a receipt")
        again = _upload(gw, [_header(item.manifest, item.sha256, item.size, 0), *_chunks(item.data, 0)])
        self.report.add("the same item again gets the same receipt (idempotent)",
                        again.HasField("receipt") and bytes(again.receipt.payload) == bytes(reply.receipt.payload))

    # ---- refusals ---------------------------------------------------------------
    def refusals(self, gw: KitGateway) -> None:
        """Each refusal on fresh content: a platform that wrongly accepts one must not spoil the next."""
        item = gw.item(CHUNK + 5, "oversized.bin")
        big = ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=0, data=b"\0" * (MESSAGE_LIMIT + CHUNK)))
        _expect(self.report, "a message over 8 MiB is refused", StatusCode.RESOURCE_EXHAUSTED,
                lambda: _upload(gw, [_header(item.manifest, item.sha256, item.size), big]))
        item = gw.item(CHUNK + 5, "tampered.bin")
        wrong = bytearray(item.data)
        wrong[-1] ^= 0xFF
        _expect(self.report, "bytes that hash to another digest are refused", StatusCode.INVALID_ARGUMENT,
                lambda: _upload(gw, [_header(item.manifest, item.sha256, item.size), *_chunks(bytes(wrong), 0)]))
        stranger = ec.generate_private_key(ec.SECP256R1())
        self._refused(gw, "a manifest not signed by the caller is refused", StatusCode.PERMISSION_DENIED,
                      lambda body: None, stranger)
        self._refused(gw, "a manifest naming another gateway is refused", StatusCode.PERMISSION_DENIED,
                      lambda body: body.update(gateway_id="someone-else"))
        self._refused(gw, "an unknown manifest schema version is refused", StatusCode.INVALID_ARGUMENT,
                      lambda body: body.update(v="egw.manifest/99"))
        self._refused(gw, "an evidence id that is not a UUIDv7 is refused", StatusCode.INVALID_ARGUMENT,
                      lambda body: body.update(evidence_id="not-a-uuid"))
        self._refused(gw, "digests.sha256 contradicting sha256 is refused", StatusCode.INVALID_ARGUMENT,
                      lambda body: body.update(digests={**_dict(body.get("digests")), "sha256": "0" * 64}))

    def _refused(self, gw: KitGateway, rule: str, expected: StatusCode, edit: Callable[[dict[str, object]], None],
                 key: ec.EllipticCurvePrivateKey | None = None) -> None:
        item = gw.item(CHUNK + 5, "refused.bin")
        manifest = gw.resign(item, edit, key)
        _expect(self.report, rule, expected, lambda: _upload(gw, [_header(manifest, item.sha256, item.size), *_chunks(item.data, 0)]))

    # ---- possession -------------------------------------------------------------
    def possession(self, first: KitGateway, stored: _Item, second: KitGateway) -> None:
        with second.stub() as stub:
            query = stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=stored.sha256), timeout=TIMEOUT_S)
        self.report.add("QueryUpload reveals nothing of another gateway's uploads",
                        query.committed_offset == 0 and not query.complete and not query.HasField("receipt"),
                        f"offset {query.committed_offset}, complete {query.complete}")
        copy = second.item(1, "placeholder")  # a manifest of the second gateway, re-pointed at the other's digest
        manifest = second.resign(copy, lambda body: body.update(sha256=stored.sha256, size=stored.size,
                                                                digests={**_dict(body.get("digests")), "sha256": stored.sha256}))
        rule = "no receipt for content the caller did not send"
        try:
            reply = _upload(second, [_header(manifest, stored.sha256, stored.size)])
        except grpc.RpcError as exc:
            self.report.add(rule, True, f"header-only upload of another gateway's digest refused: {exc.code().name}")
            return
        self.report.add(rule, not reply.HasField("receipt"),
                        "a receipt was issued for bytes never sent" if reply.HasField("receipt")
                        else f"no receipt (committed_offset {reply.committed_offset})")


def _dict(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, dict) else {}


def check_platform(address: str, token: str, gateway_id: str, *, second: tuple[str, str] | None = None,
                   workdir: Path | None = None) -> Report:
    """Run every rule against the platform at ``address``; ``second`` = (token, id) of a second gateway."""
    report = Report(f"platform {address}")
    with tempfile.TemporaryDirectory(prefix="egw-conformance-", dir=workdir) as tmp:
        run = _Run(report, address, Path(tmp))
        gw = run.enrolment(token, gateway_id)
        if gw is None:
            return report
        stored = run.uploads(gw)
        run.refusals(gw)
        if second is not None and stored is not None:
            other = run.enrolment(*second, probe=False)
            if other is not None:
                run.possession(gw, stored, other)
        else:
            report.skip("QueryUpload reveals nothing of another gateway's uploads", "give a second token (--second-token)")
            report.skip("no receipt for content the caller did not send", "give a second token (--second-token)")
    return report

