"""Attacks on the reference platform's trust model (issue #15), each against a real platform on loopback
with real TLS: every test here failed on the code before the fix and must keep failing if the hole reopens."""

from __future__ import annotations

import datetime as dt
import json
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.evidence import dsse as gateway_dsse
from gateway.evidence.identity import init_identity, load_identity
from gateway.uplink.enroll import enroll
from protos import dsse
from protos.egw.v1 import evidence_pb2, ingest_pb2, ingest_pb2_grpc
from protos.pki_roles import Role, RoleError, require_role
from simulators.platform.cli import PlatformAdminError, issue_token, revoke_gateway
from simulators.platform.index import TOKEN_REFUSED, Index
from simulators.platform.pki import _leaf, fingerprint, pem
from simulators.platform.revocation import crl_number
from simulators.platform.server import MANIFEST_TYPE, RECEIPT_TYPE, PlatformServer
from simulators.platform_mqtt import TREE_HEAD_TYPE, PlatformMqtt
from tests.conftest import run_egw
from tests.mqtt_support import Mosquitto
from tests.uplink_support import LinkedGateway, ingest_random, make_gateway, platform_server, spawn_platform, stop_process, stub_for

pytestmark = pytest.mark.timeout(90)


def _purposes(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _presented_certificate(address: str) -> x509.Certificate:
    """The leaf certificate a TLS server presents (no verification: we only inspect it)."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def upload_requests(gw: LinkedGateway, evidence_id: str, data: bytes | None, *, start: int = 0) -> list[ingest_pb2.UploadRequest]:
    """The header for one ingested item, then its bytes from ``start`` in one chunk (none when ``data`` is None)."""
    with gw.service() as svc:
        row = svc.state.get(evidence_id)
    assert row is not None
    env = gateway_dsse.Envelope.from_bytes(row.manifest)
    header = ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(
        manifest=evidence_pb2.Envelope(payload_type=env.payload_type, payload=env.payload,
                                       signatures=[evidence_pb2.Signature(keyid=k, sig=s) for k, s in env.signatures]),
        sha256=row.sha256, size=row.size, start_offset=start))
    if data is None:
        return [header]
    return [header, ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=start, data=data[start:]))]


def source_bytes(gw: LinkedGateway, name: str) -> bytes:
    return (gw.data_dir.parent / f"src-{gw.data_dir.name}-{name}").read_bytes()


# ---- roles --------------------------------------------------------------------------------------------------------

def test_certificates_are_issued_by_role_and_the_tls_key_signs_no_receipt(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g1", tmp_path / "p", server.address)
        link = gw.link
        gateway_id = link.identity.gateway_id

        # the gateway certificate: gateway role + clientAuth, its own id, and nothing that signs for the platform
        gateway_cert = link.identity.certificate
        assert require_role(gateway_cert, Role.GATEWAY, gateway_id) == gateway_id
        assert ExtendedKeyUsageOID.CLIENT_AUTH in _purposes(gateway_cert)
        for role in (Role.RECEIPT_SIGNER, Role.COMMAND_SIGNER):
            with pytest.raises(RoleError):
                require_role(gateway_cert, role)

        # what the gateway pinned at enrolment: the signer, with both platform signing roles and the platform id
        signer = x509.load_pem_x509_certificate((gw.data_dir / "identity" / "platform.pem").read_bytes())
        platform_id = server.pki.platform_id
        assert require_role(signer, Role.RECEIPT_SIGNER, platform_id) == platform_id
        assert require_role(signer, Role.COMMAND_SIGNER, platform_id) == platform_id
        assert ExtendedKeyUsageOID.SERVER_AUTH not in _purposes(signer)

        # the certificate the TLS listeners present: serverAuth only, a different key, no signing role
        for address in (server.address, server.enroll_address):
            tls_cert = _presented_certificate(address)
            assert _purposes(tls_cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
            assert tls_cert.public_key() != signer.public_key()
            for role in (Role.RECEIPT_SIGNER, Role.COMMAND_SIGNER, Role.GATEWAY):
                with pytest.raises(RoleError):
                    require_role(tls_cert, role)

        # a real receipt verifies with the signer and not with the TLS key
        item = ingest_random(gw, 2048, "r.bin")
        with stub_for(link) as stub:
            reply = stub.Upload(iter(upload_requests(gw, item.evidence_id, source_bytes(gw, "r.bin"))), timeout=10)
        envelope = dsse.Envelope(reply.receipt.payload_type, reply.receipt.payload,
                                 tuple((s.keyid, s.sig) for s in reply.receipt.signatures))
        dsse.verify(envelope, signer.public_key(), RECEIPT_TYPE)
        with pytest.raises(dsse.EnvelopeError):
            dsse.verify(envelope, _presented_certificate(server.address).public_key(), RECEIPT_TYPE)


def test_an_existing_platform_directory_gets_a_signer_and_keeps_its_id(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        platform_id = server.pki.platform_id
    (tmp_path / "p" / "pki" / "signer.key").unlink()
    (tmp_path / "p" / "pki" / "signer.pem").unlink()
    with platform_server(tmp_path / "p") as server:
        assert server.pki.platform_id == platform_id
        assert require_role(server.pki.signer_cert, Role.RECEIPT_SIGNER, platform_id) == platform_id
        assert server.pki.signer_cert.public_key() != server.pki.tls_cert.public_key()


# ---- enrolment bound to one gateway id ----------------------------------------------------------------------------

def _csr(key: ec.EllipticCurvePrivateKey, name: str = "gw") -> bytes:
    return (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def _enrol_stub(server: PlatformServer) -> tuple[grpc.Channel, ingest_pb2_grpc.EvidenceIngestStub]:
    channel = grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(server.pki.ca_pem()))
    return channel, ingest_pb2_grpc.EvidenceIngestStub(channel)


def _refusal(stub: ingest_pb2_grpc.EvidenceIngestStub, token: str, gateway_id: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        stub.Enroll(ingest_pb2.EnrollRequest(csr_pem=_csr(ec.generate_private_key(ec.SECP256R1())), token=token,
                                             gateway_id=gateway_id), timeout=10)
    return refused.value


def test_a_token_enrols_only_its_gateway_id_and_every_bad_token_gets_the_same_answer(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        channel, stub = _enrol_stub(server)
        try:
            for_a = issue_token(tmp_path / "p", gateway_id="gw-a")["token"]
            # someone holding gw-a's token cannot enrol any other id, and the token survives the attempt
            wrong_id = _refusal(stub, for_a, "gw-evil")
            assert wrong_id.code() == grpc.StatusCode.PERMISSION_DENIED
            reply = stub.Enroll(ingest_pb2.EnrollRequest(csr_pem=_csr(ec.generate_private_key(ec.SECP256R1())), token=for_a,
                                                         gateway_id="gw-a"), timeout=10)  # the whole egw1.… token
            assert require_role(x509.load_pem_x509_certificate(reply.certificate_pem), Role.GATEWAY, "gw-a") == "gw-a"
            used = _refusal(stub, for_a, "gw-a")
            expired = _refusal(stub, issue_token(tmp_path / "p", -1, gateway_id="gw-b")["token"], "gw-b")
            unknown = _refusal(stub, "0" * 32, "gw-b")
            garbage = _refusal(stub, "egw1.1.x.y", "gw-b")
            answers = {(e.code(), e.details()) for e in (wrong_id, used, expired, unknown, garbage)}
            assert answers == {(grpc.StatusCode.PERMISSION_DENIED, TOKEN_REFUSED)}
            assert "egw platform token --gateway-id" in TOKEN_REFUSED
            # the bare secret is accepted as well as the whole token
            secret = issue_token(tmp_path / "p", gateway_id="gw-c")["token"].rsplit(".", 1)[1]
            stub.Enroll(ingest_pb2.EnrollRequest(csr_pem=_csr(ec.generate_private_key(ec.SECP256R1())), token=secret,
                                                 gateway_id="gw-c"), timeout=10)
        finally:
            channel.close()


def test_an_enrolled_id_gets_no_second_certificate_without_a_reenrol_token(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        first, second = (issue_token(tmp_path / "p", gateway_id="gw-a")["token"] for _ in range(2))
        channel, stub = _enrol_stub(server)
        try:
            stub.Enroll(ingest_pb2.EnrollRequest(csr_pem=_csr(ec.generate_private_key(ec.SECP256R1())), token=first,
                                                 gateway_id="gw-a"), timeout=10)
            refused = _refusal(stub, second, "gw-a")  # issued before the first enrolment: still no second certificate
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "egw platform reenrol gw-a" in refused.details()
        finally:
            channel.close()
        with pytest.raises(PlatformAdminError, match="reenrol gw-a"):
            issue_token(tmp_path / "p", gateway_id="gw-a")
        with pytest.raises(PlatformAdminError, match="no certificate"):
            issue_token(tmp_path / "p", gateway_id="gw-new", reenrol=True)
        index = Index(tmp_path / "p")
        try:
            assert index.db.execute("SELECT COUNT(*) FROM gateways WHERE gateway_id = 'gw-a'").fetchone()[0] == 1
        finally:
            index.close()


def test_reenrolment_revokes_the_old_certificate_and_the_crl_says_so(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        gateway_id = gw.link.identity.gateway_id
        crl_after_enrol = x509.load_pem_x509_crl((gw.data_dir / "identity" / "crl.pem").read_bytes())  # fetched at enrolment
        old_cert = gw.link.identity.certificate
        old_credentials = gw.link.credentials()
        token = issue_token(tmp_path / "p", gateway_id=gateway_id, reenrol=True)["token"]
        init_identity(gw.data_dir, gateway_id=gateway_id, force=True)  # a replaced device: new key, same id
        enroll(gw.data_dir, server.address, token)

        with stub_for(gw.link, credentials=old_credentials) as stub, pytest.raises(grpc.RpcError) as revoked:
            stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256="0" * 64), timeout=10)
        assert revoked.value.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in revoked.value.details()
        with stub_for(gw.link) as stub:
            listed = stub.GetRevocationList(ingest_pb2.RevocationListRequest(), timeout=10)
        crl = x509.load_pem_x509_crl(listed.crl_pem)
        assert crl.is_signature_valid(server.pki.ca_cert.public_key())  # type: ignore[arg-type]
        assert crl.get_revoked_certificate_by_serial_number(old_cert.serial_number) is not None
        assert crl.get_revoked_certificate_by_serial_number(gw.link.identity.certificate.serial_number) is None
        assert listed.crl_number == crl_number(crl) > crl_number(crl_after_enrol)
        assert (crl.next_update_utc - crl.last_update_utc) == dt.timedelta(days=7)
        assert (gw.data_dir / "identity" / "crl.pem").read_bytes() == listed.crl_pem  # the re-enrolment fetched it too
        assert (tmp_path / "p" / "pki" / "crl.pem").read_bytes() == listed.crl_pem


def test_egw_platform_revoke_locks_the_gateway_out_and_the_log_is_append_only(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        gateway_id = gw.link.identity.gateway_id
        out = run_egw("platform", "revoke", "--data", str(tmp_path / "p"), gateway_id, "--reason", "key-compromise", check=True)
        assert f"revoked gateway {gateway_id}" in out.stdout
        with stub_for(gw.link) as stub, pytest.raises(grpc.RpcError) as revoked:
            stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256="0" * 64), timeout=10)
        assert revoked.value.code() == grpc.StatusCode.PERMISSION_DENIED
        crl = x509.load_pem_x509_crl((tmp_path / "p" / "pki" / "crl.pem").read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(gw.link.identity.certificate.serial_number) is not None
        again = run_egw("platform", "revoke", "--data", str(tmp_path / "p"), gateway_id)
        assert again.returncode != 0 and "nothing was revoked" in again.stderr and "Traceback" not in again.stderr

        index = Index(tmp_path / "p")
        try:
            assert index.check_revocation_log() == 1
            for sql in ("UPDATE revocations SET reason = 'x'", "DELETE FROM revocations"):
                with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                    index.db.execute(sql)
        finally:
            index.close()


def test_refused_enrolments_are_rate_limited_per_peer(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p", enrol_failures=3) as server:
        good = issue_token(tmp_path / "p", gateway_id="gw-a")["token"]
        channel, stub = _enrol_stub(server)
        try:
            for _ in range(3):
                assert _refusal(stub, "f" * 32, "gw-a").code() == grpc.StatusCode.PERMISSION_DENIED
            limited = _refusal(stub, good, "gw-a")  # even a good token waits: guessing must not pay
            assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "wait" in limited.details()
        finally:
            channel.close()


# ---- who may upload -----------------------------------------------------------------------------------------------

def test_a_client_certificate_without_the_gateway_role_is_refused(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        gateway_id = gw.link.identity.gateway_id
        # issued by the platform CA for this gateway's id and registered, but with clientAuth only: no gateway role
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"urn:egw:gateway:{gateway_id}")]
        cert = _leaf(gateway_id, key.public_key(), server.pki.ca_key, server.pki.ca_cert, 30, names, [ExtendedKeyUsageOID.CLIENT_AUTH])
        with server.index.tx() as db:
            server.index.add_gateway(db, gateway_id, fingerprint(cert), "k", pem(cert))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        creds = grpc.ssl_channel_credentials(server.pki.ca_pem(), key_pem, pem(cert))
        with stub_for(gw.link, credentials=creds) as stub, pytest.raises(grpc.RpcError) as refused:
            stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256="0" * 64), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not act as a gateway" in refused.value.details()


def test_a_manifest_naming_another_gateway_is_permission_denied(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 500, "m.bin")
        [header] = upload_requests(gw, item.evidence_id, None)
        body = json.loads(header.header.manifest.payload)
        body["gateway_id"] = "gw-someone-else"
        forged = dsse.sign(MANIFEST_TYPE, json.dumps(body).encode(), load_identity(gw.data_dir).private_key)
        header.header.manifest.CopyFrom(evidence_pb2.Envelope(
            payload_type=forged.payload_type, payload=forged.payload,
            signatures=[evidence_pb2.Signature(keyid=k, sig=s) for k, s in forged.signatures]))
        chunk = ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=0, data=source_bytes(gw, "m.bin")))
        with stub_for(gw.link) as stub, pytest.raises(grpc.RpcError) as refused:
            stub.Upload(iter([header, chunk]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "gw-someone-else" in refused.value.details()


# ---- receipts only for bytes delivered ----------------------------------------------------------------------------

def test_no_receipt_and_no_hint_for_bytes_another_gateway_stored(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    with platform_server(tmp_path / "p") as server:
        owner = make_gateway(tmp_path, "owner", tmp_path / "p", server.address)
        snoop = make_gateway(tmp_path, "snoop", tmp_path / "p", server.address)
        mine = ingest_random(owner, 0, "x.bin", data=data)
        with stub_for(owner.link) as stub:
            stub.Upload(iter(upload_requests(owner, mine.evidence_id, data)), timeout=10)
        # the snoop knows only the digest (and makes its own signed manifest for it)
        theirs = ingest_random(snoop, 0, "x.bin", data=data)
        assert theirs.sha256 == mine.sha256
        with stub_for(snoop.link) as stub:
            query = stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=theirs.sha256, evidence_id=theirs.evidence_id), timeout=10)
            assert (query.committed_offset, query.complete, query.HasField("receipt")) == (0, False, False)
            header_only = stub.Upload(iter(upload_requests(snoop, theirs.evidence_id, None)), timeout=10)
            assert not header_only.HasField("receipt") and header_only.committed_offset == 0
            # half the bytes and a lie about the start: still nothing
            half = upload_requests(snoop, theirs.evidence_id, data[: len(data) // 2])
            assert not stub.Upload(iter(half), timeout=10).HasField("receipt")
            resumed = stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=theirs.sha256), timeout=10)
            assert resumed.committed_offset == len(data) // 2  # its own progress, nothing more
            # streaming the rest earns the receipt; the blob is still stored once
            done = stub.Upload(iter(upload_requests(snoop, theirs.evidence_id, data, start=len(data) // 2)), timeout=10)
            assert done.HasField("receipt")
        assert sum(1 for _ in (tmp_path / "p" / "blobs" / "sha256").rglob("*") if _.is_file()) == 1
        assert not any((tmp_path / "p" / "partial").rglob("*.*"))


def test_a_gateway_learns_nothing_about_another_gateways_partial_upload(tmp_path: Path) -> None:
    data = b"z" * 5000
    with platform_server(tmp_path / "p") as server:
        owner = make_gateway(tmp_path, "owner", tmp_path / "p", server.address)
        snoop = make_gateway(tmp_path, "snoop", tmp_path / "p", server.address)
        item = ingest_random(owner, 0, "y.bin", data=data)
        with stub_for(owner.link) as stub:
            stub.Upload(iter(upload_requests(owner, item.evidence_id, data[:3000])), timeout=10)
        with stub_for(snoop.link) as stub:
            assert stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=item.sha256), timeout=10).committed_offset == 0
        with stub_for(owner.link) as stub:
            assert stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=item.sha256), timeout=10).committed_offset == 3000


# ---- bounded resources ----------------------------------------------------------------------------------------------

def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _one_byte(gw: LinkedGateway, evidence_id: str, data: bytes, start: int = 0) -> list[ingest_pb2.UploadRequest]:
    header, _ = upload_requests(gw, evidence_id, data, start=start)
    return [header, ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=start, data=data[start:start + 1]))]


def _hanging(requests: list[ingest_pb2.UploadRequest], release: threading.Event) -> Iterator[ingest_pb2.UploadRequest]:
    yield from requests
    release.wait(60)  # sends nothing more and does not end the stream


def _partial_size(platform: Path, sha256: str) -> int:
    return sum(p.stat().st_size for p in (platform / "partial").glob(f"*/{sha256}"))


def test_abandoned_uploads_hold_no_threads_hang_no_longer_than_the_idle_timeout_and_are_swept(tmp_path: Path) -> None:
    proc, address, _ = spawn_platform(tmp_path / "p", "--workers", "4", "--max-uploads-per-gateway", "2",
                                      "--upload-idle-timeout", "1", "--partial-ttl", "3")
    try:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", address)
        payloads = [f"item {n} ".encode() * 50 for n in range(30)]
        items = [ingest_random(gw, 0, f"{n}.bin", data=data) for n, data in enumerate(payloads)]
        with stub_for(gw.link, address=address) as stub:
            stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256="0" * 64), timeout=10)
            baseline = _threads(proc.pid)
            for item, data in zip(items, payloads):  # one byte each, then the stream ends
                reply = stub.Upload(iter(_one_byte(gw, item.evidence_id, data)), timeout=10)
                assert reply.committed_offset == 1 and not reply.HasField("receipt")
            assert _threads(proc.pid) <= baseline + 4  # at most the worker pool fills up; nothing per partial
            assert sum(p.is_file() for p in (tmp_path / "p" / "partial").rglob("*")) == 30

            # streams that send one more byte and then hang: two at a time per gateway, a third is refused
            release = threading.Event()
            hung = [stub.Upload.future(_hanging(_one_byte(gw, item.evidence_id, data, start=1), release), timeout=30)
                    for item, data in zip(items[:2], payloads[:2])]
            _wait_for(lambda: all(_partial_size(tmp_path / "p", item.sha256) == 2 for item in items[:2]), "the hanging uploads")
            with pytest.raises(grpc.RpcError) as third:
                stub.Upload(iter(_one_byte(gw, items[2].evidence_id, payloads[2], start=1)), timeout=10)
            assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "uploads in progress" in third.value.details()
            # the idle timeout ends them without the client's help
            for future in hung:
                with pytest.raises(grpc.RpcError) as cancelled:
                    future.result(timeout=20)
                assert cancelled.value.code() == grpc.StatusCode.CANCELLED
            release.set()
        # and the sweeper removes every partial nobody touched for the TTL
        _wait_for(lambda: not any(p.is_file() for p in (tmp_path / "p" / "partial").rglob("*")), "the sweeper")
        assert _threads(proc.pid) <= baseline + 4
    finally:
        stop_process(proc)


# ---- MQTT: the platform checks gateway signatures ------------------------------------------------------------------

def _tree_head(gateway_id: str, key: ec.EllipticCurvePrivateKey, size: int) -> bytes:
    payload = json.dumps({"gateway_id": gateway_id, "treeSize": str(size), "rootHash": "00" * 32}).encode()
    return json.dumps({"envelope": dsse.sign(TREE_HEAD_TYPE, payload, key).to_json()}).encode()


def test_forged_mqtt_tree_heads_are_rejected_and_counted(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    try:
        with platform_server(tmp_path / "p") as server:
            gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
            gid = gw.link.identity.gateway_id
            recorder = PlatformMqtt(tmp_path / "p", broker.url).start()  # no keys given: the platform's own index
            try:
                publisher.connect("127.0.0.1", broker.port)
                publisher.loop_start()
                attacker = ec.generate_private_key(ec.SECP256R1())
                sent = [
                    (gid, load_identity(gw.data_dir).private_key, True),   # genuine
                    (gid, attacker, False),                                # forged for an enrolled gateway
                    ("gw-never-enrolled", attacker, False),                # a gateway the platform does not know
                ]
                for n, (topic_id, key, _) in enumerate(sent):
                    publisher.publish(f"egw/v1/{topic_id}/custody/sth", _tree_head(topic_id, key, n + 1), qos=1).wait_for_publish(10)
                _wait_for(lambda: len(recorder.records(kind="custody-sth")) == 3, "three tree heads recorded")
                verdicts = [r.verified for r in recorder.records(kind="custody-sth")]
                assert verdicts == [expected for *_, expected in sent]
                assert recorder.status() == {"verified": 1, "failed": 2, "unchecked": 0}
                notes = [r.note for r in recorder.records(kind="custody-sth")]
                assert "not enrolled" in str(notes[2])

                # a result: the signed manifest must be this gateway's and the evidence the message names
                item = ingest_random(gw, 100, "result.json")
                with gw.service() as svc:
                    row = svc.state.get(item.evidence_id)
                assert row is not None
                signed = dsse.Envelope.from_bytes(row.manifest).to_json()
                for evidence_id in (item.evidence_id, "01890a5d-ac96-774b-bcce-b302099a8057"):
                    message = {"messageId": evidence_id, "evidenceId": evidence_id, "signedResult": signed, "value": "0.1"}
                    publisher.publish(f"egw/v1/{gid}/results/rapidtest", json.dumps(message).encode(), qos=1).wait_for_publish(10)
                _wait_for(lambda: len(recorder.records(kind="result")) == 2, "two results recorded")
                assert [r.verified for r in recorder.records(kind="result")] == [True, False]
                assert "another evidence id" in str(recorder.records(kind="result")[1].note)

                # once revoked, even the gateway's real key is no longer believed
                revoke_gateway(tmp_path / "p", gid)
                publisher.publish(f"egw/v1/{gid}/custody/sth", _tree_head(gid, load_identity(gw.data_dir).private_key, 9), qos=1)
                _wait_for(lambda: len(recorder.records(kind="custody-sth")) == 4, "the fourth tree head")
                assert recorder.records(kind="custody-sth")[-1].verified is False
            finally:
                recorder.stop()
        status = json.loads(run_egw("platform", "status", "--data", str(tmp_path / "p"), "--json", check=True).stdout)
        assert status["mqtt_signatures"] == {"verified": 2, "failed": 4, "unchecked": 0}
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        broker.kill()


# ---- the manifest schema, enforced, in words an integrator can act on (issue #17) -----------------------------------

def _resigned_header(gw: LinkedGateway, evidence_id: str, mutate: Callable[[dict[str, Any]], None]) -> ingest_pb2.UploadRequest:
    [header] = upload_requests(gw, evidence_id, None)
    body = json.loads(header.header.manifest.payload)
    mutate(body)
    signed = dsse.sign(MANIFEST_TYPE, json.dumps(body).encode(), load_identity(gw.data_dir).private_key)
    header.header.manifest.CopyFrom(evidence_pb2.Envelope(
        payload_type=signed.payload_type, payload=signed.payload,
        signatures=[evidence_pb2.Signature(keyid=k, sig=s) for k, s in signed.signatures]))
    return header


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = body
        for key in parents:
            target = target[key]
        target[last] = value
    return mutate


def _rename(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.__setitem__(new, body.pop(old))


def test_manifests_outside_the_published_schema_are_refused_with_a_clear_message(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 300, "s.bin")
        data = source_bytes(gw, "s.bin")
        chunk = ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=0, data=data))
        cases = [
            (_set("v", "egw.manifest/2"), ["egw.manifest/2", "accepts egw.manifest/1 only"]),
            (_set("evidence_id", "4f1c6a53-2b1e-4c3a-9d0e-1a2b3c4d5e6f"), ["evidence_id", "UUIDv7"]),
            (_set("digests.sha256", "ab" * 32), ["digests.sha256", "differs from sha256"]),
            (_rename("evidence_id", "evidenceId"), ["'evidenceId'", "snake_case", "'evidence_id'"]),
            (_set("size", str(item.size)), ["size", "JSON integer", f"'{item.size}'"]),
            (_set("kind", "hologram"), ["kind", "one of"]),
            (lambda body: body.pop("gateway_id"), ["lacks the field gateway_id"]),
            (_set("officer_id", 7), ["officer_id", "null"]),
        ]
        with stub_for(gw.link) as stub:
            messages = []
            for mutate, fragments in cases:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Upload(iter([_resigned_header(gw, item.evidence_id, mutate), chunk]), timeout=10)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
                for fragment in fragments:
                    assert fragment in refused.value.details()
                messages.append(refused.value.details())
            # an unsigned envelope: said as such
            [unsigned] = upload_requests(gw, item.evidence_id, None)
            del unsigned.header.manifest.signatures[:]
            with pytest.raises(grpc.RpcError) as no_signature:
                stub.Upload(iter([unsigned, chunk]), timeout=10)
            assert no_signature.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "carries no signature" in no_signature.value.details()
            messages.append(no_signature.value.details())
            # the genuine manifest still goes through
            assert stub.Upload(iter(upload_requests(gw, item.evidence_id, data)), timeout=10).HasField("receipt")
        for message in messages:
            assert "None" not in message and "jsonschema" not in message and "Traceback" not in message and "{" not in message

        channel, enrol = _enrol_stub(server)
        try:
            token = issue_token(tmp_path / "p", gateway_id="gw-csr")["token"]
            with pytest.raises(grpc.RpcError) as bad_csr:
                enrol.Enroll(ingest_pb2.EnrollRequest(csr_pem=b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n", token=token,
                                                      gateway_id="gw-csr"), timeout=10)
            assert bad_csr.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a PEM certificate signing request" in bad_csr.value.details()
            assert "the token was not used" in bad_csr.value.details()
            assert "ValueError" not in bad_csr.value.details() and "Unable to load" not in bad_csr.value.details()
        finally:
            channel.close()
