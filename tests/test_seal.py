"""The agency's seal on a PDF (PAdES B-LTA via the platform's sealing service) and `egw verify FILE.pdf`.

Real pieces only: the platform's trust services on loopback HTTPS with mutual
TLS, an enrolled gateway's certificate, pyHanko signing, `egw verify` as a
subprocess, poppler's `pdfsig` as the independent validator.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields
from pyhanko.sign.signers import PdfTimeStamper

from gateway.documents.seal import AGENCY_SEAL_FIELD, SealService, seal_pdf, seal_provisionally
from gateway.documents.verify_pdf import verify_pdf
from gateway.errors import SealingError
from gateway.evidence.identity import load_pem_certificates
from simulators.platform.pki import PlatformPKI
from simulators.platform.role_certs import load_or_issue
from simulators.platform.tsa import LocalTimeStamper, TimeStampAuthority
from tests.conftest import run_egw
from tests.seal_support import UNIT_CODE, UNIT_NAME, Platform, enrolled_gateway, https, record_pdf, seal, trust_platform

pytestmark = pytest.mark.timeout(120)


def _egw_verify(pdf: Path, *extra: str) -> tuple[int, str]:
    """The real command (its exit code is the contract); a few tests only: each run imports pyHanko afresh."""
    proc = run_egw("verify", str(pdf), *extra)
    return proc.returncode, proc.stdout + proc.stderr


def _verify(pdf: Path, *extra: str) -> tuple[int, str]:
    """What `egw verify PDF [--trust CA]` decides, computed in this process (the same function the command calls)."""
    anchors = load_pem_certificates(Path(extra[1]).read_bytes()) if extra else []
    report = verify_pdf(pdf, anchors)
    lines = [f.line() for f in report.findings] + [f"FAILED: {p}" for p in report.problems] + [report.verdict]
    return report.exit_code, "\n".join(lines)


def _pdfsig(pdf: Path) -> str:
    return subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One platform, one gateway: an agency-sealed record, a provisional one and a counter-sealed one."""
    root = tmp_path_factory.mktemp("seal")
    with trust_platform(root / "platform") as platform:
        gateway = enrolled_gateway(root / "gw", platform)
        record = record_pdf(root / "record.pdf")
        seal(record, root / "sealed.pdf", platform, gateway)
        asyncio.run(seal_provisionally(record, root / "provisional.pdf", gateway))
        seal(root / "provisional.pdf", root / "countersealed.pdf", platform, gateway)
        return {"root": root, "record": record, "ca": platform.ca_file(), "sealed": root / "sealed.pdf",
                "provisional": root / "provisional.pdf", "countersealed": root / "countersealed.pdf"}


def test_a_sealed_record_verifies_and_names_the_agency_and_the_time_source(sealed: dict[str, Path]) -> None:
    code, output = _egw_verify(sealed["sealed"], "--trust", str(sealed["ca"]))
    assert code == 0, output
    assert output.strip().endswith("VERIFIED")
    assert f"agency seal urn:egw:agency:{UNIT_CODE} ({UNIT_NAME})" in output
    assert "per time-stamp by O=egw,CN=platform-" in output and "time-stamping authority" in output
    assert "document time-stamp" in output  # PAdES B-LTA: the archive time-stamp is there and checked

    report = json.loads(run_egw("verify", str(sealed["sealed"]), "--trust", str(sealed["ca"]), "--json").stdout)
    assert report["verdict"] == "VERIFIED" and [s["kind"] for s in report["signatures"]] == ["agency seal", "document time-stamp"]


def test_pdfsig_finds_the_seal_valid_and_the_stamp_is_drawn(sealed: dict[str, Path]) -> None:
    output = _pdfsig(sealed["sealed"])
    assert "Signature Field Name: AgencySeal" in output and f"CN={UNIT_NAME}" in output
    first = output.split("Signature #2")[0]
    assert "Signature Validation: Signature is Valid." in first and "ETSI.CAdES.detached" in first
    images = subprocess.run(["pdfimages", "-list", str(sealed["sealed"])], capture_output=True, text=True).stdout
    assert "smask" in images  # the round stamp is an image with transparency, not a drawn box


def test_pdfsig_trusts_the_seal_once_the_platform_ca_is_in_its_nss_database(sealed: dict[str, Path], tmp_path: Path) -> None:
    nss = f"sql:{tmp_path}"
    subprocess.run(["certutil", "-N", "-d", nss, "--empty-password"], check=True, capture_output=True)
    subprocess.run(["certutil", "-A", "-d", nss, "-n", "egw platform CA", "-t", "C,C,C", "-i", str(sealed["ca"])],
                   check=True, capture_output=True)
    output = subprocess.run(["pdfsig", "-nssdir", nss, "-no-ocsp", str(sealed["sealed"])], capture_output=True, text=True).stdout
    seal_part = output.split("Signature #2")[0]
    assert "Signature is Valid." in seal_part and "Certificate is Trusted." in seal_part, output


def test_without_a_trust_anchor_the_seal_is_consistent_but_untrusted(sealed: dict[str, Path]) -> None:
    code, output = _egw_verify(sealed["sealed"])
    assert code == 3, output
    assert "CONSISTENT, UNTRUSTED" in output


def test_a_one_byte_change_anywhere_fails(sealed: dict[str, Path], tmp_path: Path) -> None:
    original = sealed["sealed"].read_bytes()
    size = len(sealed["record"].read_bytes())
    # in the original document, in the seal's own revision, in the DSS/time-stamp revision, and the very last byte
    for offset in (size // 3, size + 200, len(original) - 3000, len(original) - 1):
        tampered = bytearray(original)
        tampered[offset] ^= 0x01
        target = tmp_path / f"tampered-{offset}.pdf"
        target.write_bytes(tampered)
        code, output = _verify(target, "--trust", str(sealed["ca"]))
        assert code == 1, f"byte {offset} changed yet: {output}"
        assert "FAILED" in output
    appended = tmp_path / "appended.pdf"
    appended.write_bytes(original + b"\n% one more line\n")
    code, output = _verify(appended, "--trust", str(sealed["ca"]))
    assert code == 1 and "covered by nothing" in output
    code, output = _egw_verify(tmp_path / f"tampered-{size // 3}.pdf", "--trust", str(sealed["ca"]))
    assert code == 1 and output.strip().endswith("FAILED"), output


def test_a_gateway_signature_is_not_the_agency_seal(sealed: dict[str, Path]) -> None:
    code, output = _verify(sealed["provisional"], "--trust", str(sealed["ca"]))
    assert code == 1, output
    assert "provisional gateway signature" in output and "no agency seal" in output


def test_a_provisional_signature_counter_sealed_later_verifies_with_both(sealed: dict[str, Path]) -> None:
    code, output = _verify(sealed["countersealed"], "--trust", str(sealed["ca"]))
    assert code == 0, output
    assert output.index("[GatewaySeal] provisional gateway signature") < output.index("[AgencySeal] agency seal")
    assert "signing time unproven" in output  # the provisional signature had no time-stamp, and says so
    sigs = _pdfsig(sealed["countersealed"])
    assert sigs.count("Signature Validation: Signature is Valid.") == 2


def test_a_seal_trusted_by_another_ca_fails(sealed: dict[str, Path], tmp_path: Path) -> None:
    foreign = PlatformPKI.load_or_create(tmp_path / "foreign")
    (tmp_path / "foreign-ca.pem").write_bytes(foreign.ca_pem())
    code, output = _verify(sealed["sealed"], "--trust", str(tmp_path / "foreign-ca.pem"))
    assert code == 1, output
    assert "does not chain to the trust anchors" in output


def test_a_document_time_stamp_from_a_foreign_tsa_fails(sealed: dict[str, Path], tmp_path: Path) -> None:
    foreign_pki = PlatformPKI.load_or_create(tmp_path / "foreign")
    roles = load_or_issue(foreign_pki, tmp_path / "foreign", "https://127.0.0.1:9/crl", "999", "冒名单位")
    stamper = PdfTimeStamper(LocalTimeStamper(TimeStampAuthority(roles.tsa, foreign_pki.ca_cert)))
    target = tmp_path / "foreign-timestamp.pdf"
    with open(sealed["sealed"], "rb") as source, open(target, "wb") as out:
        asyncio.run(stamper.async_timestamp_pdf(IncrementalPdfFileWriter(source), "sha256", output=out))
    code, output = _verify(target, "--trust", str(sealed["ca"]))
    assert code == 1, output
    assert "from a TSA no trust anchor vouches for" in output


def _publish_crl_revoking(platform: Platform, serial: int) -> None:
    """What the platform does on `egw platform revoke`: a CA-signed CRL in pki/crl.pem listing ``serial``."""
    now = dt.datetime.now(dt.UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(platform.pki.ca_cert.subject)
           .last_update(now - dt.timedelta(minutes=1)).next_update(now + dt.timedelta(days=7))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                    .revocation_date(now - dt.timedelta(minutes=1)).build())
           .add_extension(x509.CRLNumber(7), critical=False)
           .sign(platform.pki.ca_key, hashes.SHA256()))
    (platform.directory / "pki" / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def test_a_revoked_seal_certificate_is_not_used(tmp_path: Path) -> None:
    with trust_platform(tmp_path / "platform") as platform:
        gateway = enrolled_gateway(tmp_path / "gw", platform)
        _publish_crl_revoking(platform, platform.services.roles.seal.certificate.serial_number)
        with pytest.raises(SealingError, match="revoked or expired"):
            seal(record_pdf(tmp_path / "record.pdf"), tmp_path / "out.pdf", platform, gateway)
        assert not (tmp_path / "out.pdf").exists()


def test_the_sealing_service_refuses_revoked_and_unenrolled_gateways(tmp_path: Path) -> None:
    with trust_platform(tmp_path / "platform") as platform:
        gateway = enrolled_gateway(tmp_path / "gw", platform)
        record = record_pdf(tmp_path / "record.pdf")
        _publish_crl_revoking(platform, gateway.certificate.serial_number)
        with pytest.raises(SealingError, match="revoked"):
            seal(record, tmp_path / "out.pdf", platform, gateway)
        assert not (tmp_path / "out.pdf").exists()

        from gateway.evidence.identity import init_identity

        stranger = init_identity(tmp_path / "stranger", "gw-stranger")
        with pytest.raises(SealingError, match="not enrolled"):
            SealService(platform.url, stranger)
        sealed_log = (platform.directory / "seals.jsonl").read_text() if (platform.directory / "seals.jsonl").exists() else ""
        assert sealed_log == ""  # nothing was sealed for either


def test_an_unreachable_platform_is_a_sealing_error_and_the_provisional_seal_still_works(tmp_path: Path) -> None:
    with trust_platform(tmp_path / "platform") as platform:
        gateway = enrolled_gateway(tmp_path / "gw", platform)
        url = platform.url
    record = record_pdf(tmp_path / "record.pdf")

    async def attempt() -> None:
        async with SealService(url, gateway) as service:
            await seal_pdf(record, tmp_path / "out.pdf", service)

    with pytest.raises(SealingError, match="cannot be reached"):
        asyncio.run(attempt())
    result = asyncio.run(seal_provisionally(record, tmp_path / "provisional.pdf", gateway))
    assert result.field == "GatewaySeal" and "Signature is Valid." in _pdfsig(tmp_path / "provisional.pdf")


def test_a_place_the_renderer_reserved_for_the_seal_is_used(tmp_path: Path) -> None:
    record = record_pdf(tmp_path / "record.pdf")
    reserved = tmp_path / "reserved.pdf"
    with open(record, "rb") as source:
        writer = IncrementalPdfFileWriter(source)
        fields.append_signature_field(writer, fields.SigFieldSpec(AGENCY_SEAL_FIELD, on_page=0, box=(60, 500, 190, 630)))
        with open(reserved, "wb") as out:
            writer.write(out)
    with trust_platform(tmp_path / "platform") as platform:
        gateway = enrolled_gateway(tmp_path / "gw", platform)
        seal(reserved, tmp_path / "sealed.pdf", platform, gateway)
        code, output = _verify(tmp_path / "sealed.pdf", "--trust", str(platform.ca_file()))
    assert code == 0, output
    with open(tmp_path / "sealed.pdf", "rb") as handle:
        sigs = PdfFileReader(handle).embedded_signatures
        assert [s.field_name for s in sigs][0] == AGENCY_SEAL_FIELD
        assert [round(float(v)) for v in sigs[0].sig_field["/Rect"]] == [60, 500, 190, 630]  # the reserved place


def test_an_unsigned_or_broken_pdf_fails_and_a_missing_one_is_a_usage_error(sealed: dict[str, Path], tmp_path: Path) -> None:
    code, output = _verify(sealed["record"], "--trust", str(sealed["ca"]))
    assert code == 1 and "no signature at all" in output
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"%PDF-1.7\nthis is not a pdf body\n%%EOF\n")
    code, output = _verify(garbage, "--trust", str(sealed["ca"]))
    assert code == 1 and "FAILED" in output
    code, output = _egw_verify(tmp_path / "missing.pdf", "--trust", str(sealed["ca"]))
    assert code == 2 and "error:" in output and "Traceback" not in output


def _crl_revoking(pki: PlatformPKI, serial: int, revoked_at: dt.datetime) -> x509.CertificateRevocationList:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateRevocationListBuilder().issuer_name(pki.ca_cert.subject)
            .last_update(now - dt.timedelta(minutes=1)).next_update(now + dt.timedelta(days=7))
            .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at).build())
            .add_extension(x509.CRLNumber(9), critical=False).sign(pki.ca_key, hashes.SHA256()))


def test_a_revoked_gateway_signature_counts_only_if_proven_before_the_revocation(sealed: dict[str, Path]) -> None:
    pki = PlatformPKI.load_or_create(sealed["root"] / "platform")
    anchors = load_pem_certificates(sealed["ca"].read_bytes())
    gateway_cert = load_pem_certificates((sealed["root"] / "gw" / "identity" / "gateway.crt").read_bytes())[0]
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    before = verify_pdf(sealed["countersealed"], anchors, [_crl_revoking(pki, gateway_cert.serial_number, long_ago)])
    assert before.exit_code == 1
    assert any("was revoked at" in p and "it was signed at" in p for f in before.findings for p in f.problems)

    after = verify_pdf(sealed["countersealed"], anchors, [_crl_revoking(pki, gateway_cert.serial_number, later)])
    assert after.exit_code == 0, [f.line() for f in after.findings]  # the counter-seal's time-stamp proves it existed before
    assert "existed by" in after.findings[0].line()

    unproven = verify_pdf(sealed["provisional"], anchors, [_crl_revoking(pki, gateway_cert.serial_number, later)])
    assert any("signing time is unproven" in p for p in unproven.findings[0].problems)

    foreign = PlatformPKI.load_or_create(sealed["root"] / "foreign-crl-issuer")
    ignored = verify_pdf(sealed["countersealed"], anchors, [_crl_revoking(foreign, gateway_cert.serial_number, long_ago)])
    assert ignored.exit_code == 0  # a CRL no trust anchor signed counts for nothing


def test_the_platform_signs_only_well_formed_digests_for_gateways_and_records_each_seal(tmp_path: Path) -> None:
    with trust_platform(tmp_path / "platform") as platform:
        gateway = enrolled_gateway(tmp_path / "gw", platform, "gw-audit-7")
        good = json.dumps({"document_digest": "ab" * 32, "digest_algorithm": "sha256"}).encode()
        assert https(platform, "POST", "/seal", good, "application/json")[0] == 403  # no client certificate
        for body in (b"{}", b"not json", json.dumps({"document_digest": "ab" * 31}).encode(),
                     json.dumps({"document_digest": "ab" * 32, "digest_algorithm": "md5"}).encode()):
            status, answer, _ = https(platform, "POST", "/seal", body, "application/json", gateway)
            assert status == 400 and b"bad seal request" in answer, (body, answer)
        status, signature, content_type = https(platform, "POST", "/seal", good, "application/json", gateway)
        assert status == 200 and content_type == "application/pkcs7-signature" and signature[:1] == b"\x30"
        records = [json.loads(line) for line in (platform.directory / "seals.jsonl").read_text().splitlines()]
    assert [(r["gateway_id"], r["document_digest"], r["unit_code"]) for r in records] == [("gw-audit-7", "ab" * 32, UNIT_CODE)]
