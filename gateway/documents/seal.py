"""Sealing a PDF with the agency's electronic seal (PAdES B-LTA), or provisionally with the gateway's own key.

The seal key never leaves the platform. The gateway prepares the document
(pyHanko's interrupted signing): it adds the signature field with the visible
stamp and the ``/ByteRange`` placeholder, digests the byte ranges, and sends
only that digest to the platform's sealing service over mutual TLS. The
platform answers with a complete CMS signature (seal certificate, signed
attributes, an RFC 3161 signature time-stamp from its TSA). The gateway embeds
it, then adds the validation data (DSS: certificates and the CA's CRL) and a
document time-stamp from the same TSA: PAdES B-LTA, verifiable offline for as
long as the time-stamp's algorithms hold.

When the platform cannot be reached, ``seal_provisionally`` signs with the
gateway's own certificate (grey stamp marked 临时): integrity and origin
(which station) are proven, but it is not the agency's seal and ``egw verify``
says so. ``seal_pdf`` on that file later adds the agency seal as a second
signature in an incremental update (the counter-seal): the provisional
signature stays intact and covered.

See docs/documents-sealing.md.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyhanko.pdf_utils.images import PdfImage
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError
from pyhanko.sign.signers.pdf_signer import DSSContentSettings, PdfTBSDocument, TimestampDSSContentSettings
from pyhanko.sign.timestamps.aiohttp_client import HTTPTimeStamper
from pyhanko.stamp import StaticStampStyle
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.registry import SimpleCertificateStore

from gateway.documents.stamp import draw_stamp
from gateway.errors import SealingError
from gateway.evidence.identity import PASSPHRASE_ENV, Identity

__all__ = ["SealService", "SealProfile", "SealResult", "seal_pdf", "seal_provisionally",
           "AGENCY_SEAL_FIELD", "PROVISIONAL_FIELD", "SEAL_BOX", "RESERVED_HEX"]

AGENCY_SEAL_FIELD = "AgencySeal"
PROVISIONAL_FIELD = "GatewaySeal"
SEAL_BOX = (400, 40, 530, 170)
"""Where the stamp goes on the last page (PDF points, lower-left origin): bottom right of an A4 page."""
PROVISIONAL_BOX = (260, 40, 390, 170)
RESERVED_HEX = 10 * 1024
"""Room for the CMS signature in hex digits: the seal's CMS with its time-stamp is about 2.8 KB DER (5 KB fit)."""
REQUEST_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class SealProfile:
    """What the platform seals with, as ``GET /seal/profile`` returns it."""

    unit_code: str
    unit_name: str
    certificate: x509.Certificate
    chain: list[x509.Certificate]
    crl: x509.CertificateRevocationList


@dataclass(frozen=True)
class SealResult:
    path: Path
    field: str
    signer: str
    added_bytes: int


def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _asn1_crl(crl: x509.CertificateRevocationList) -> Any:
    from asn1crypto import crl as asn1_crl

    return asn1_crl.CertificateList.load(crl.public_bytes(serialization.Encoding.DER))


class SealService:
    """The platform's trust services (``https://HOST:PORT``) as seen by an enrolled gateway (mutual TLS)."""

    def __init__(self, base_url: str, identity: Identity) -> None:
        if not identity.enrolled:
            raise SealingError(f"gateway {identity.gateway_id} is not enrolled: the seal service admits only platform-issued "
                               "certificates", hint="enrol with `egw enroll` first, or seal provisionally")
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self._ssl = self._client_context(identity)
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def _client_context(identity: Identity) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata="".join(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in identity.ca_certificates))
        passphrase = os.environ.get(PASSPHRASE_ENV)
        context.load_cert_chain(str(identity.directory / "gateway.crt"), str(identity.directory / "gateway.key"),
                                password=passphrase.encode() if passphrase else None)
        return context

    async def __aenter__(self) -> SealService:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl),
                                              timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use SealService inside `async with`")
        return self._session

    def timestamper(self) -> HTTPTimeStamper:
        """pyHanko's RFC 3161 client, pointed at the platform TSA through this mutual-TLS session."""
        return HTTPTimeStamper(f"{self.base_url}/tsa", https=True, session=self.session, timeout=int(REQUEST_TIMEOUT_S))

    async def _call(self, method: str, path: str, **kwargs: Any) -> bytes:
        try:
            async with self.session.request(method, f"{self.base_url}{path}", **kwargs) as response:
                body = await response.read()
                if response.status != 200:
                    raise SealingError(f"the platform refused {method} {path} ({response.status}): {_error_text(body)}")
                return body
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise SealingError(f"the platform's trust services at {self.base_url} cannot be reached: {exc}") from exc

    async def profile(self) -> SealProfile:
        data = json.loads(await self._call("GET", "/seal/profile"))
        certificate = x509.load_pem_x509_certificate(data["certificate"].encode())
        chain = [x509.load_pem_x509_certificate(c.encode()) for c in data["chain"]]
        crl = x509.load_pem_x509_crl(data["crl"].encode())
        anchors = self.identity.ca_certificates
        if not any(certificate.issuer == ca.subject for ca in anchors):
            raise SealingError("the platform offered a seal certificate from another CA than the one pinned at enrolment")
        return SealProfile(str(data["unit_code"]), str(data["unit_name"]), certificate, chain, crl)

    async def sign_digest(self, digest: bytes, algorithm: str) -> bytes:
        body = json.dumps({"document_digest": digest.hex(), "digest_algorithm": algorithm})
        return await self._call("POST", "/seal", data=body, headers={"Content-Type": "application/json"})


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


def _store(certs: list[x509.Certificate]) -> SimpleCertificateStore:
    store = SimpleCertificateStore()
    for cert in certs:
        store.register(_asn1_cert(cert))
    return store


def _validation_context(anchors: list[x509.Certificate], others: list[x509.Certificate],
                        crl: x509.CertificateRevocationList | None) -> ValidationContext:
    """Offline context for embedding validation data: everything it needs is handed over, nothing fetched."""
    return ValidationContext(trust_roots=[_asn1_cert(c) for c in anchors], other_certs=[_asn1_cert(c) for c in others],
                             crls=[_asn1_crl(crl)] if crl is not None else [], allow_fetching=False,
                             revocation_mode="hard-fail")


def _field_spec(name: str, box: tuple[int, int, int, int], lock: bool = False) -> fields.SigFieldSpec:
    """A signature field on the last page. ``lock`` (the agency seal): once it is signed, no form field may change
    and nothing may be added but validation data and time-stamps (a /Lock with /P 1, ISO 32000-2 12.7.5.5): a
    signature made after the seal breaks it in any validator that honours locks, not only in ``egw verify``."""
    if not lock:
        return fields.SigFieldSpec(sig_field_name=name, on_page=-1, box=box)
    return fields.SigFieldSpec(sig_field_name=name, on_page=-1, box=box, field_mdp_spec=fields.FieldMDPSpec(fields.FieldMDPAction.ALL),
                               doc_mdp_update_value=fields.MDPPerm.NO_CHANGES)


def _has_empty_field(writer: IncrementalPdfFileWriter, name: str) -> bool:
    """True when the document already carries an empty signature field ``name`` (a place reserved for the seal)."""
    return any(True for _ in fields.enumerate_sig_fields(writer, filled_status=False, with_name=name))


def _write_atomically(target: Path, data: IO[bytes]) -> None:
    tmp = target.with_name(target.name + ".tmp")
    data.seek(0)
    with open(tmp, "wb") as out:
        shutil.copyfileobj(data, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)


def _agency_signer(profile: SealProfile, context: ValidationContext, service: SealService, reserved: bool,
                   reason: str) -> signers.PdfSigner:
    """The pyHanko signer that prepares the document for the platform's signature (it holds no key)."""
    placeholder = signers.ExternalSigner(signing_cert=_asn1_cert(profile.certificate), signature_value=bytes(72),
                                         cert_registry=_store(profile.chain))
    meta = signers.PdfSignatureMetadata(
        field_name=AGENCY_SEAL_FIELD, md_algorithm="sha256", subfilter=fields.SigSeedSubFilter.PADES,
        reason=reason, name=profile.unit_name, embed_validation_info=True, use_pades_lta=True, validation_context=context,
        # the TSA's validation data goes in *before* the document time-stamp, so that time-stamp covers the whole file
        dss_settings=DSSContentSettings(include_vri=False, next_ts_settings=TimestampDSSContentSettings(
            include_vri=False, update_before_ts=True)))
    return signers.PdfSigner(meta, signer=placeholder, timestamper=service.timestamper(),
                             stamp_style=StaticStampStyle(background=PdfImage(draw_stamp(profile.unit_name))),
                             # a field the renderer reserved for the seal is used as it is; otherwise one is added
                             new_field_spec=None if reserved else _field_spec(AGENCY_SEAL_FIELD, SEAL_BOX, lock=True))


async def seal_pdf(source: Path, target: Path, service: SealService, reason: str = "电子印章") -> SealResult:
    """The agency seal on ``source`` (PAdES B-LTA), written to ``target``; SealingError if the platform cannot seal."""
    profile = await service.profile()
    context = _validation_context(service.identity.ca_certificates, [profile.certificate, *profile.chain], profile.crl)
    original = source.stat().st_size
    with open(source, "rb") as infile:
        writer = IncrementalPdfFileWriter(infile, strict=False)
        pdf_signer = _agency_signer(profile, context, service, _has_empty_field(writer, AGENCY_SEAL_FIELD), reason)
        try:
            prepared, tbs, output = await pdf_signer.async_digest_doc_for_signing(writer, bytes_reserved=RESERVED_HEX)
        except SigningError as exc:
            raise SealingError(f"the platform's seal certificate does not validate against the pinned CA and its CRL "
                               f"(revoked or expired?): {exc}", hint="the platform must issue a new seal certificate; "
                               "seal provisionally meanwhile") from exc
        signature = await service.sign_digest(prepared.document_digest, "sha256")
        _check_signer(signature, profile.certificate)
        await PdfTBSDocument.async_finish_signing(output, prepared, signature, post_sign_instr=tbs.post_sign_instructions,
                                                  validation_context=context)
    _write_atomically(target, output)
    return SealResult(target, AGENCY_SEAL_FIELD, f"urn:egw:agency:{profile.unit_code}", target.stat().st_size - original)


def _check_signer(signature: bytes, expected: x509.Certificate) -> None:
    """Refuse a CMS from the service that is not signed by the seal certificate it announced."""
    from asn1crypto import cms

    try:
        signed_data = cms.ContentInfo.load(signature)["content"]
        sid = signed_data["signer_infos"][0]["sid"].chosen
        serial = sid["serial_number"].native
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise SealingError(f"the platform's seal answer is not a CMS signature: {exc}") from exc
    if serial != expected.serial_number:
        raise SealingError("the platform's seal answer is signed by another certificate than the seal it announced")


async def seal_provisionally(source: Path, target: Path, identity: Identity) -> SealResult:
    """Sign ``source`` with the gateway's own key (no platform needed); the agency seal is added later by ``seal_pdf``."""
    key_der = identity.private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
    signer = signers.SimpleSigner(
        signing_cert=_asn1_cert(identity.certificate), signing_key=asn1_keys.PrivateKeyInfo.load(key_der),
        cert_registry=_store(identity.ca_certificates))
    meta = signers.PdfSignatureMetadata(field_name=PROVISIONAL_FIELD, md_algorithm="sha256",
                                        subfilter=fields.SigSeedSubFilter.PADES, reason="临时签章：待机构电子印章",
                                        name=identity.gateway_id)
    stamp = StaticStampStyle(background=PdfImage(draw_stamp(identity.gateway_id, purpose="签章", provisional=True)))
    pdf_signer = signers.PdfSigner(meta, signer=signer, stamp_style=stamp,
                                   new_field_spec=_field_spec(PROVISIONAL_FIELD, PROVISIONAL_BOX))
    original = source.stat().st_size
    with open(source, "rb") as infile:
        writer = IncrementalPdfFileWriter(infile, strict=False)
        output = await pdf_signer.async_sign_pdf(writer, output=io.BytesIO())
    _write_atomically(target, output)
    return SealResult(target, PROVISIONAL_FIELD, f"urn:egw:gateway:{identity.gateway_id}", target.stat().st_size - original)
