"""Attacks on the reference platform's trust model (issue #15), each against a real platform on loopback
with real TLS: every test here failed on the code before the fix and must keep failing if the hole reopens."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.evidence import dsse as gateway_dsse
from protos import dsse
from protos.egw.v1 import evidence_pb2, ingest_pb2
from protos.pki_roles import Role, RoleError, require_role
from simulators.platform.server import RECEIPT_TYPE
from tests.uplink_support import LinkedGateway, ingest_random, make_gateway, platform_server, stub_for

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
