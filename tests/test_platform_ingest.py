"""The reference platform on loopback with real TLS: enrolment, authentication, precise statuses."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.errors import IdentityError, VerificationError
from gateway.evidence import dsse
from gateway.evidence.identity import init_identity, self_signed_certificate
from gateway.uplink.enroll import enroll
from protos.egw.v1 import evidence_pb2, ingest_pb2
from simulators.platform.cli import issue_token, list_received
from tests.uplink_support import ingest_random, make_gateway, platform_server, stub_for

pytestmark = pytest.mark.timeout(60)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _header(gw, item) -> ingest_pb2.UploadRequest:  # type: ignore[no-untyped-def]
    with gw.service() as svc:
        row = svc.state.get(item.evidence_id)
    env = dsse.Envelope.from_bytes(row.manifest)
    return ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(
        manifest=evidence_pb2.Envelope(payload_type=env.payload_type, payload=env.payload,
                                       signatures=[evidence_pb2.Signature(keyid=k, sig=s) for k, s in env.signatures]),
        sha256=row.sha256, size=row.size, start_offset=0))


def test_enrolment_issues_a_chain_and_tokens_are_single_use_and_expire(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g1", tmp_path / "p", server.address)
        link = gw.link
        assert link.identity.enrolled
        assert link.identity.certificate.issuer == server.pki.ca_cert.subject
        assert link.platform_certificate == server.pki.platform_cert
        assert (gw.data_dir / "identity" / "platform.pem").read_bytes() == _pem(server.pki.platform_cert)

        token = issue_token(tmp_path / "p", gateway_id="gw-2")["token"]
        init_identity(tmp_path / "g2", gateway_id="gw-2")
        enroll(tmp_path / "g2", server.address, token)
        init_identity(tmp_path / "g3", gateway_id="gw-3")
        with pytest.raises(IdentityError, match="not valid for this gateway"):  # used, and for another id
            enroll(tmp_path / "g3", server.address, token)
        expired = issue_token(tmp_path / "p", ttl_s=-1, gateway_id="gw-3")["token"]
        with pytest.raises(IdentityError, match="not valid for this gateway"):
            enroll(tmp_path / "g3", server.address, expired)
        unknown = expired[:-32] + "0" * 32
        with pytest.raises(IdentityError, match="not valid for this gateway"):
            enroll(tmp_path / "g3", server.address, unknown)
        # a token pinning another CA: the gateway refuses to talk to this platform at all
        fresh = issue_token(tmp_path / "p", gateway_id="gw-3")["token"]
        parts = fresh.split(".")
        parts[2] = hashlib.sha256(b"another CA").hexdigest()
        with pytest.raises(VerificationError, match="did not present the CA"):
            enroll(tmp_path / "g3", server.address, ".".join(parts))
        assert not (tmp_path / "g3" / "identity" / "platform.pem").exists()


def test_health_and_reflection_are_served(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        channel = grpc.secure_channel(server.address, gw.link.credentials())
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="egw.v1.EvidenceIngest"), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            names = {s.name for r in replies for s in r.list_services_response.service}
            assert {"egw.v1.EvidenceIngest", "grpc.health.v1.Health"} <= names
        finally:
            channel.close()


def test_unknown_and_mismatched_client_certificates_are_refused(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw_a = make_gateway(tmp_path, "a", tmp_path / "p", server.address)
        gw_b = make_gateway(tmp_path, "b", tmp_path / "p", server.address)
        item = ingest_random(gw_a, 1000, "a.bin")
        query = ingest_pb2.QueryUploadRequest(sha256=item.sha256, evidence_id=item.evidence_id)
        ca_pem = server.pki.ca_pem()

        # 1. a certificate from no CA the platform knows: the TLS handshake itself is refused
        stranger = ec.generate_private_key(ec.SECP256R1())
        creds = grpc.ssl_channel_credentials(ca_pem, _key_pem(stranger), _pem(self_signed_certificate(stranger, "intruder")))
        with stub_for(gw_a.link, credentials=creds) as stub, pytest.raises(grpc.RpcError) as refused:
            stub.QueryUpload(query, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # 2. issued by the platform CA but never enrolled (e.g. platform data reset): UNAUTHENTICATED
        rogue = ec.generate_private_key(ec.SECP256R1())
        cert = server.pki.issue_for_key(rogue.public_key(), "rogue")
        creds = grpc.ssl_channel_credentials(ca_pem, _key_pem(rogue), _pem(cert))
        with stub_for(gw_a.link, credentials=creds) as stub, pytest.raises(grpc.RpcError) as unknown:
            stub.QueryUpload(query, timeout=5)
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not enrolled" in unknown.value.details() and "egw enroll" in unknown.value.details()

        # 3. gateway B presenting gateway A's signed manifest: the signer is not the mTLS peer
        data = (gw_a.data_dir.parent / "src-a-a.bin").read_bytes()
        requests = [_header(gw_a, item), ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=0, data=data))]
        with stub_for(gw_b.link) as stub, pytest.raises(grpc.RpcError) as mismatch:
            stub.Upload(iter(requests), timeout=5)
        assert mismatch.value.code() == grpc.StatusCode.PERMISSION_DENIED  # authenticated, but not the signer
        assert "not signed by the certificate of this connection" in mismatch.value.details()

        # 4. the enrolment port (no client certificate) serves Enroll only
        with stub_for(gw_a.link, address=server.enroll_address, credentials=grpc.ssl_channel_credentials(ca_pem)) as stub, \
                pytest.raises(grpc.RpcError) as no_cert:
            stub.QueryUpload(query, timeout=5)
        assert no_cert.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "only serves Enroll" in no_cert.value.details()
        assert list_received(tmp_path / "p") == []
        assert not any((tmp_path / "p" / "blobs" / "sha256").iterdir())


def test_precise_statuses_for_gap_digest_and_size(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 300_000, "x.bin")
        data = (tmp_path / "src-g-x.bin").read_bytes()
        header = _header(gw, item)
        chunk = lambda off, d: ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=off, data=d))  # noqa: E731
        with stub_for(gw.link) as stub:
            # a partial upload, then a stream that skips ahead: FAILED_PRECONDITION naming the committed offset
            reply = stub.Upload(iter([header, chunk(0, data[:100_000])]), timeout=5)
            assert reply.committed_offset == 100_000 and not reply.HasField("receipt")
            with pytest.raises(grpc.RpcError) as gap:
                stub.Upload(iter([header]), timeout=5)
            assert gap.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "100000" in gap.value.details()
            header.header.start_offset = 100_000
            with pytest.raises(grpc.RpcError) as gap2:
                stub.Upload(iter([header, chunk(150_000, data[150_000:])]), timeout=5)
            assert gap2.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            # too many bytes: size mismatch
            with pytest.raises(grpc.RpcError) as big:
                stub.Upload(iter([header, chunk(100_000, data[100_000:] + b"extra")]), timeout=5)
            assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "size" in big.value.details()
            # wrong bytes of the right length: digest mismatch, partial discarded, nothing stored
            bad = bytearray(data[100_000:])
            bad[5] ^= 0xFF
            with pytest.raises(grpc.RpcError) as digest:
                stub.Upload(iter([header, chunk(100_000, bytes(bad))]), timeout=5)
            assert digest.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "digest mismatch" in digest.value.details()
            assert stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=item.sha256, evidence_id=item.evidence_id)).committed_offset == 0
            assert list_received(tmp_path / "p") == []
            # the header must match the signed manifest
            header.header.start_offset = 0
            header.header.size = 5
            with pytest.raises(grpc.RpcError) as lie:
                stub.Upload(iter([header]), timeout=5)
            assert lie.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "signed manifest" in lie.value.details()


def test_storage_full_is_resource_exhausted_and_stores_nothing(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p", reserve_bytes=1 << 62) as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 10_000, "x.bin")
        with stub_for(gw.link) as stub, pytest.raises(grpc.RpcError) as full:
            stub.Upload(iter([_header(gw, item)]), timeout=5)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "storage full" in full.value.details()
        assert list_received(tmp_path / "p") == []


def test_insecure_platform_enrols_and_receipts_only_when_asked(tmp_path: Path) -> None:
    import asyncio

    from gateway.uplink.uploader import Uploader

    with platform_server(tmp_path / "p", insecure=True) as server:
        identity = init_identity(tmp_path / "g")
        token = issue_token(tmp_path / "p", gateway_id=identity.gateway_id)["token"]
        enroll(tmp_path / "g", server.address, token, insecure=True)
        from tests.uplink_support import LinkedGateway
        gw = LinkedGateway(tmp_path / "g")
        assert gw.link.insecure
        item = ingest_random(gw, 70_000, "x.bin")
        outcomes = asyncio.run(Uploader(gw.data_dir).run_once())
        assert [o.status for o in outcomes] == ["receipted"]
        assert [r["evidence_id"] for r in list_received(tmp_path / "p")] == [item.evidence_id]


def test_cli_end_to_end_platform_tokens_enroll_sync_ls(tmp_path: Path) -> None:
    import json

    from tests.conftest import run_egw
    from tests.uplink_support import LinkedGateway, spawn_platform, stop_process

    proc, address, enroll_address = spawn_platform(tmp_path / "p")
    try:
        init_identity(tmp_path / "g", gateway_id="gw-cli")
        token = run_egw("platform", "token", "--data", str(tmp_path / "p"), "--gateway-id", "gw-cli", check=True).stdout.strip()
        assert token.startswith(f"egw1.{enroll_address.rsplit(':', 1)[1]}.")
        enrolled = run_egw("enroll", "--platform", address, "--token", token, "--data-dir", str(tmp_path / "g"), check=True)
        assert "enrolled gateway" in enrolled.stdout
        again = run_egw("enroll", "--platform", address, "--token", token, "--data-dir", str(tmp_path / "g"))
        assert again.returncode == 1 and "not valid for this gateway" in again.stderr and "hint:" in again.stderr
        item = ingest_random(LinkedGateway(tmp_path / "g"), 123_456, "clip.mp4")
        synced = run_egw("sync", "--once", "--data-dir", str(tmp_path / "g"), check=True)
        assert f"receipted {item.evidence_id}" in synced.stdout and "0 left undelivered" in synced.stdout
        listed = json.loads(run_egw("platform", "ls", "--data", str(tmp_path / "p"), "--json", check=True).stdout)
        assert [(r["evidence_id"], r["sha256"], r["size"]) for r in listed] == [(item.evidence_id, item.sha256, item.size)]
        assert Path(listed[0]["blob"]).stat().st_size == item.size
    finally:
        stop_process(proc)
    assert proc.returncode == 0  # SIGTERM: a clean stop


def test_enroll_rejects_bad_gateway_ids_and_csrs_without_burning_the_token(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def csr_for(key) -> bytes:  # type: ignore[no-untyped-def]
        return x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")])).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    with platform_server(tmp_path / "p") as server:
        secret = issue_token(tmp_path / "p", gateway_id="gw-1")["token"].rsplit(".", 1)[1]
        channel = grpc.secure_channel(server.enroll_address, grpc.ssl_channel_credentials(server.pki.ca_pem()))
        try:
            from protos.egw.v1 import ingest_pb2_grpc
            stub = ingest_pb2_grpc.EvidenceIngestStub(channel)
            good_csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
            for gateway_id, csr, fragment in [
                ("..", good_csr, "gateway_id"),  # refused before the token is even looked at
                ("gw-1", b"not a csr", "not a PEM certificate signing request"),
                ("gw-1", csr_for(rsa.generate_private_key(65537, 2048)), "P-256"),
            ]:
                with pytest.raises(grpc.RpcError) as bad:
                    stub.Enroll(ingest_pb2.EnrollRequest(csr_pem=csr, token=secret, gateway_id=gateway_id), timeout=5)
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in bad.value.details()
            reply = stub.Enroll(ingest_pb2.EnrollRequest(csr_pem=good_csr, token=secret, gateway_id="gw-1"), timeout=5)
            issued = x509.load_pem_x509_certificate(reply.certificate_pem)
            issued.verify_directly_issued_by(server.pki.ca_cert)
            assert reply.platform_id == server.pki.platform_id
        finally:
            channel.close()


def test_restarted_platform_keeps_its_addresses_and_each_gateway_its_own_partials(tmp_path: Path) -> None:
    data = (bytes(range(256)) * 2000)
    with platform_server(tmp_path / "p") as server:
        first = (server.address, server.enroll_address)
        gw_a = make_gateway(tmp_path, "a", tmp_path / "p", server.address)
        gw_b = make_gateway(tmp_path, "b", tmp_path / "p", server.address)
        item_a = ingest_random(gw_a, 0, "same.bin", data=data)
        item_b = ingest_random(gw_b, 0, "same.bin", data=data)
        with stub_for(gw_b.link) as stub:  # B leaves a partial copy behind
            stub.Upload(iter([_header(gw_b, item_b), ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=0, data=data[:1000]))]), timeout=5)
        partial_b = tmp_path / "p" / "partial" / gw_b.link.identity.gateway_id / item_b.sha256
        assert partial_b.stat().st_size == 1000
    with platform_server(tmp_path / "p") as server:
        assert (server.address, server.enroll_address) == first  # enrolled gateways and open tokens still work
        with stub_for(gw_a.link) as stub:
            reply = stub.Upload(iter([_header(gw_a, item_a), ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=0, data=data))]), timeout=5)
            assert reply.HasField("receipt")
        with stub_for(gw_b.link) as stub:
            query = stub.QueryUpload(ingest_pb2.QueryUploadRequest(sha256=item_b.sha256, evidence_id=item_b.evidence_id), timeout=5)
        # B learns nothing from A's upload (issue #15): its own partial, its own offset; the sweeper ends it
        assert query.committed_offset == 1000 and not query.complete
        assert partial_b.stat().st_size == 1000


def test_after_a_reboot_a_partial_is_cut_back_to_its_last_synced_offset(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 0, "x.bin", data=data)
        header = _header(gw, item)
        with stub_for(gw.link) as stub:
            reply = stub.Upload(iter([header, ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=0, data=data[:300_000]))]), timeout=5)
            assert reply.committed_offset == 300_000  # a stream that ends early is synced: that offset survives anything
            header.header.start_offset = 300_000
            with pytest.raises(grpc.RpcError):  # then 200 kB more, unsynced, and a rejected chunk ends the stream
                stub.Upload(iter([header, ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=300_000, data=data[300_000:500_000])),
                                  ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=1, data=b"x"))]), timeout=5)
            query = ingest_pb2.QueryUploadRequest(sha256=item.sha256, evidence_id=item.evidence_id)
            assert stub.QueryUpload(query, timeout=5).committed_offset == 500_000  # same boot: the page cache holds it
    # simulate a reboot: the partial was recorded under another boot id
    import sqlite3
    db = sqlite3.connect(tmp_path / "p" / "index.db")
    db.execute("UPDATE partials SET boot_id = 'an-earlier-boot'")
    db.commit()
    db.close()
    with platform_server(tmp_path / "p") as server:
        with stub_for(gw.link) as stub:
            assert stub.QueryUpload(query, timeout=5).committed_offset == 300_000
            header.header.start_offset = 300_000
            reply = stub.Upload(iter([header, ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=300_000, data=data[300_000:]))]), timeout=5)
            assert reply.HasField("receipt")
    assert (tmp_path / "p" / "blobs" / "sha256" / item.sha256[:2] / item.sha256[2:]).read_bytes() == data


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 24 MiB tmpfs for the platform's data, so ENOSPC comes from the kernel, not from a mock."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True, capture_output=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_mid_upload_keeps_exactly_what_was_hashed_and_the_upload_resumes(tmp_path: Path, small_disk: Path) -> None:
    """The platform writes on a thread of the upload's own while the handler receives the next chunk. When
    the disk fills mid-stream: RESOURCE_EXHAUSTED naming the write, the partial cut back to what was written
    and hashed (QueryUpload's offset), nothing stored; with room again the upload resumes there and the
    blob verifies."""
    import os
    import time

    mib = 1 << 20
    with platform_server(small_disk / "p", reserve_bytes=0) as server:
        gw = make_gateway(tmp_path, "g", small_disk / "p", server.address)
        data = os.urandom(6 * mib)
        item = ingest_random(gw, len(data), "x.bin", data=data)
        header = _header(gw, item)
        chunk = lambda off, d: ingest_pb2.UploadRequest(chunk=ingest_pb2.UploadChunk(offset=off, data=d))  # noqa: E731
        partial = small_disk / "p" / "partial"
        filler = small_disk / "filler"

        def then_the_disk_fills():  # type: ignore[no-untyped-def]
            yield header
            yield chunk(0, data[:2 * mib])
            deadline = time.monotonic() + 10
            while sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) < 2 * mib:
                assert time.monotonic() < deadline, "the first chunk never reached the partial file"
                time.sleep(0.01)
            with open(filler, "wb") as out, contextlib.suppress(OSError):  # all the tmpfs has left, then 256 KiB back
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            os.truncate(filler, filler.stat().st_size - 256 * 1024)
            yield chunk(2 * mib, data[2 * mib:4 * mib])
            yield chunk(4 * mib, data[4 * mib:])

        query = ingest_pb2.QueryUploadRequest(sha256=item.sha256, evidence_id=item.evidence_id)
        with stub_for(gw.link) as stub:
            with pytest.raises(grpc.RpcError) as full:
                stub.Upload(then_the_disk_fills(), timeout=20)
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "storage full while writing" in full.value.details(), full.value.details()
            committed = stub.QueryUpload(query, timeout=5).committed_offset
            assert committed == 2 * mib, "the partial does not end where the hash ended"
            assert list_received(small_disk / "p") == []

            filler.unlink()
            header.header.start_offset = committed
            reply = stub.Upload(iter([header, chunk(committed, data[committed:4 * mib]), chunk(4 * mib, data[4 * mib:])]),
                                timeout=20)
            assert reply.HasField("receipt"), reply
        assert [r["sha256"] for r in list_received(small_disk / "p")] == [hashlib.sha256(data).hexdigest()]
