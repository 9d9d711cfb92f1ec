"""The platform's RFC 3161 TSA over HTTPS: tokens a standard verifier (openssl ts) accepts, and only from this CA."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import ssl
import subprocess
from pathlib import Path

import pytest
from asn1crypto import algos, tsp
from cryptography import x509

from gateway.documents.seal import SealService
from gateway.errors import VerificationError
from gateway.evidence import tree_head_stamps
from gateway.evidence.custody import CustodyLog
from gateway.evidence.identity import Identity
from gateway.evidence.state import State
from gateway.uplink.time_stamps import check_token_sync, stamp_tree_heads
from simulators.platform.pki import PlatformPKI, pem
from simulators.platform.role_certs import load_or_issue
from simulators.platform.tsa import QUERY_TYPE, REPLY_TYPE, TSA_POLICY, TimeStampAuthority, TimeStampResponse
from tests.conftest import spawn_egw
from tests.seal_support import enrolled_gateway, https, trust_platform

pytestmark = pytest.mark.timeout(60)


def _openssl_query(tmp_path: Path, data: Path, *extra: str) -> bytes:
    query = tmp_path / "request.tsq"
    subprocess.run(["openssl", "ts", "-query", "-data", str(data), "-sha256", *extra, "-out", str(query)],
                   check=True, capture_output=True)
    return query.read_bytes()


def _openssl_verify(tmp_path: Path, data: Path, reply: bytes, ca: bytes, tsa: bytes) -> subprocess.CompletedProcess[str]:
    (tmp_path / "reply.tsr").write_bytes(reply)
    (tmp_path / "ca.pem").write_bytes(ca)
    (tmp_path / "tsa.pem").write_bytes(tsa)
    return subprocess.run(["openssl", "ts", "-verify", "-data", str(data), "-in", str(tmp_path / "reply.tsr"),
                           "-CAfile", str(tmp_path / "ca.pem"), "-untrusted", str(tmp_path / "tsa.pem")],
                          capture_output=True, text=True)


def test_a_token_from_the_platform_tsa_verifies_with_openssl(tmp_path: Path) -> None:
    data = tmp_path / "tree-head.json"
    data.write_bytes(b'{"size": 42, "root": "ab12"}')
    with trust_platform(tmp_path / "platform") as platform:
        gateway = enrolled_gateway(tmp_path / "gw", platform)
        status, reply, content_type = https(platform, "POST", "/tsa", _openssl_query(tmp_path, data, "-cert"), QUERY_TYPE, gateway)
        tsa_pem = pem(platform.services.roles.tsa.certificate)
        ca_pem = pem(platform.pki.ca_cert)
    assert status == 200 and content_type == REPLY_TYPE
    verified = _openssl_verify(tmp_path, data, reply, ca_pem, tsa_pem)
    assert verified.returncode == 0 and "Verification: OK" in verified.stdout, verified.stdout + verified.stderr
    text = subprocess.run(["openssl", "ts", "-reply", "-in", str(tmp_path / "reply.tsr"), "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "Status: Granted." in text and TSA_POLICY in text and "Nonce:" in text

    data.write_bytes(b'{"size": 43, "root": "ab12"}')  # the token is for the old bytes only
    assert _openssl_verify(tmp_path, data, reply, ca_pem, tsa_pem).returncode != 0


def test_the_tsa_certificate_holds_the_time_stamping_role_alone_and_critical(tmp_path: Path) -> None:
    pki = PlatformPKI.load_or_create(tmp_path)
    roles = load_or_issue(pki, tmp_path, "https://127.0.0.1:9/crl", "110105000000", "测试单位")
    usage = roles.tsa.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert usage.critical and list(usage.value) == [x509.oid.ExtendedKeyUsageOID.TIME_STAMPING]
    again = load_or_issue(pki, tmp_path, "https://127.0.0.1:9/crl", "110105000000", "测试单位")
    assert again.tsa.certificate == roles.tsa.certificate and again.seal.certificate == roles.seal.certificate
    moved = load_or_issue(pki, tmp_path, "https://127.0.0.1:10/crl", "110105000000", "测试单位")
    assert moved.tsa.certificate != roles.tsa.certificate  # a new CRL address means new certificates naming it


def test_a_token_from_a_foreign_tsa_fails_against_the_platform_ca(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"evidence")
    foreign_pki = PlatformPKI.load_or_create(tmp_path / "foreign")
    foreign = load_or_issue(foreign_pki, tmp_path / "foreign", "https://127.0.0.1:9/crl", "999", "冒名单位")
    reply = TimeStampAuthority(foreign.tsa, foreign_pki.ca_cert).respond(_openssl_query(tmp_path, data, "-cert"))
    ours = PlatformPKI.load_or_create(tmp_path / "ours")
    result = _openssl_verify(tmp_path, data, reply, pem(ours.ca_cert), pem(foreign.tsa.certificate))
    assert result.returncode != 0 and "Verification: OK" not in result.stdout
    # and the same token is fine for its own CA: the failure above is the anchor, not a broken token
    assert _openssl_verify(tmp_path, data, reply, pem(foreign_pki.ca_cert), pem(foreign.tsa.certificate)).returncode == 0


def _request(algorithm: str, digest: bytes, policy: str | None = None) -> bytes:
    fields = {"version": "v1", "message_imprint": tsp.MessageImprint({
        "hash_algorithm": algos.DigestAlgorithm({"algorithm": algorithm}), "hashed_message": digest}), "cert_req": True}
    if policy:
        fields["req_policy"] = policy
    return bytes(tsp.TimeStampReq(fields).dump())


def test_bad_requests_are_rejected_with_the_rfc_failure_reason(tmp_path: Path) -> None:
    pki = PlatformPKI.load_or_create(tmp_path)
    authority = TimeStampAuthority(load_or_issue(pki, tmp_path, "https://127.0.0.1:9/crl", "1", "单位").tsa, pki.ca_cert)
    cases = {
        "bad_alg": _request("md5", bytes(16)),
        "bad_data_format": _request("sha256", bytes(20)),
        "unaccepted_policy": _request("sha256", bytes(32), policy="1.2.3.4"),
    }
    for failure, request in cases.items():
        reply = TimeStampResponse.load(authority.respond(request))
        assert reply["status"]["status"].native == "rejection"
        assert failure in reply["status"]["fail_info"].native, failure
        assert len(reply.contents) < 200  # status only, no token
    garbage = TimeStampResponse.load(authority.respond(b"\x30\x03junk"))
    assert garbage["status"]["status"].native == "rejection"


def test_only_enrolled_gateways_get_tokens_but_anyone_gets_the_crl(tmp_path: Path) -> None:
    with trust_platform(tmp_path / "platform") as platform:
        gateway = enrolled_gateway(tmp_path / "gw", platform)
        query = _request("sha256", bytes(32))
        status, body, _ = https(platform, "POST", "/tsa", query, QUERY_TYPE)
        assert status == 403 and b"client certificate" in body
        assert https(platform, "POST", "/tsa", query, "application/octet-stream", gateway)[0] == 400
        status, crl_der, content_type = https(platform, "GET", "/crl")
        assert status == 200 and content_type == "application/pkix-crl"
        crl = x509.load_der_x509_crl(crl_der)
        assert crl.is_signature_valid(platform.pki.ca_cert.public_key())  # type: ignore[arg-type]
        assert https(platform, "GET", "/nothing", identity=gateway)[0] == 404


def _custody_with_heads(data_dir: Path, identity: Identity, heads: int) -> State:
    state = State(data_dir)
    log = CustodyLog(state, identity)
    for i in range(heads):
        with state.transaction() as db:
            log.append(db, "note", None, {"n": i})
        log.sign_tree_head()
    return state


def test_signed_tree_heads_are_time_stamped_once_and_the_tokens_verify_with_openssl(tmp_path: Path) -> None:
    with trust_platform(tmp_path / "platform") as platform:
        gateway = enrolled_gateway(tmp_path / "gw", platform)
        state = _custody_with_heads(tmp_path / "gw", gateway, heads=2)

        async def stamp() -> tuple[int, int]:
            async with SealService(platform.url, gateway) as service:
                return await stamp_tree_heads(state, service), await stamp_tree_heads(state, service)

        first, again = asyncio.run(stamp())
        ca_pem, tsa_pem = pem(platform.pki.ca_cert), pem(platform.services.roles.tsa.certificate)
    assert (first, again) == (2, 0)
    with state.lock:
        stamped = tree_head_stamps.stamped_heads(state.db)
    assert [s.tree_size for s in stamped] == [1, 2] and all("time-stamping authority" in s.tsa for s in stamped)
    head = tmp_path / "head.dsse"
    head.write_bytes(stamped[1].envelope)
    (tmp_path / "token.der").write_bytes(stamped[1].token)
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "tsa.pem").write_bytes(tsa_pem)
    verified = subprocess.run(["openssl", "ts", "-verify", "-token_in", "-in", str(tmp_path / "token.der"), "-data", str(head),
                               "-CAfile", str(tmp_path / "ca.pem"), "-untrusted", str(tmp_path / "tsa.pem")],
                              capture_output=True, text=True)
    assert verified.returncode == 0 and "Verification: OK" in verified.stdout, verified.stdout + verified.stderr
    anchors = [x509.load_pem_x509_certificate(ca_pem)]
    assert check_token_sync(stamped[1].token, stamped[1].envelope, anchors).gen_time == stamped[1].gen_time
    with pytest.raises(VerificationError, match="not over these bytes"):
        check_token_sync(stamped[1].token, stamped[0].envelope, anchors)  # the token of head 2 says nothing about head 1


def test_a_tree_head_token_from_a_foreign_tsa_is_refused(tmp_path: Path) -> None:
    data = b'{"tree_size": 1}'
    foreign_pki = PlatformPKI.load_or_create(tmp_path / "foreign")
    foreign = load_or_issue(foreign_pki, tmp_path / "foreign", "https://127.0.0.1:9/crl", "999", "冒名单位")
    reply = TimeStampResponse.load(TimeStampAuthority(foreign.tsa, foreign_pki.ca_cert).respond(
        _request("sha256", hashlib.sha256(data).digest())))
    token = reply["time_stamp_token"].dump()
    ours = PlatformPKI.load_or_create(tmp_path / "ours")
    with pytest.raises(VerificationError, match="does not chain to the trust anchors"):
        check_token_sync(token, data, [ours.ca_cert])
    assert "time-stamping authority" in check_token_sync(token, data, [foreign_pki.ca_cert]).tsa  # fine for its own CA

    # a certificate from the right CA but without the time-stamping role cannot make tokens either
    imposter = load_or_issue(ours, tmp_path / "ours", "https://127.0.0.1:9/crl", "1", "单位").seal
    forged = TimeStampResponse.load(TimeStampAuthority(imposter, ours.ca_cert).respond(
        _request("sha256", hashlib.sha256(data).digest())))["time_stamp_token"].dump()
    with pytest.raises(VerificationError, match="not from a time-stamping authority"):
        check_token_sync(forged, data, [ours.ca_cert])


def test_egw_simulate_platform_runs_the_trust_services_when_given_an_agency_unit(tmp_path: Path) -> None:
    proc = spawn_egw("simulate", "platform", "--data", str(tmp_path), "--agency-unit", "110105000000", "--agency-name", "测试分局")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert lines[2].startswith("trust https://127.0.0.1:"), lines
        host, port = lines[2].removeprefix("trust https://").rsplit(":", 1)
        context = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.pem"))
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        connection.request("GET", "/crl")
        response = connection.getresponse()
        assert response.status == 200
        ca = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.pem").read_bytes())
        assert x509.load_der_x509_crl(response.read()).is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        connection.close()
        seal_cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "agency-seal.pem").read_bytes())
        assert "测试分局" in seal_cert.subject.rfc4514_string()
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0
