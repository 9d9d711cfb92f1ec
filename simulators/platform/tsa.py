"""The reference platform's RFC 3161 time-stamping authority.

``TimeStampAuthority.respond`` turns a DER ``TimeStampReq`` into a DER
``TimeStampResp`` (RFC 3161 §2.4). The token is a CMS SignedData over a
``TSTInfo`` made with asn1crypto and signed by pyHanko's CMS signer (ECDSA
P-256, SHA-256, the ESS signing-certificate-v2 attribute of RFC 5816), with
the TSA certificate of ``role_certs`` (extended key usage ``timeStamping``,
critical and alone). Requests are refused with a ``rejection`` status and the
RFC's failure bit when the hash algorithm is unknown, the imprint has the
wrong length, or another policy is asked for.

``LocalTimeStamper`` lets the platform's own sealing service time-stamp its
signatures through the same authority without an HTTP round trip.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import threading

from asn1crypto import cms, core, keys, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyhanko.sign.signers.pdf_cms import SimpleSigner
from pyhanko.sign.timestamps.api import TimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore

from protos.pki_roles import EGW_ARC
from simulators.platform.role_certs import TrustMaterial

__all__ = ["TimeStampAuthority", "TimeStampResponse", "LocalTimeStamper", "TSA_POLICY", "QUERY_TYPE", "REPLY_TYPE"]

TSA_POLICY = EGW_ARC + ".2.1"
"""The policy every token names: the reference platform's clock, to one second (docs/documents-sealing.md)."""

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"

_IMPRINT_LENGTHS = {"sha256": 32, "sha384": 48, "sha512": 64, "sha3_256": 32, "sha3_512": 64}


def asn1_certificate(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def asn1_private_key(material: TrustMaterial) -> keys.PrivateKeyInfo:
    der = material.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    return keys.PrivateKeyInfo.load(der)


class TimeStampResponse(core.Sequence):  # type: ignore[misc]
    """TimeStampResp as RFC 3161 §2.4.2 has it: asn1crypto's schema lacks the OPTIONAL on timeStampToken."""

    _fields = [("status", tsp.PKIStatusInfo), ("time_stamp_token", cms.ContentInfo, {"optional": True})]


def _rejection(failure: str, text: str) -> bytes:
    status = tsp.PKIStatusInfo({"status": "rejection", "status_string": [text], "fail_info": tsp.PKIFailureInfo({failure})})
    return bytes(TimeStampResponse({"status": status}).dump())


class TimeStampAuthority:
    """Answers time-stamp requests with tokens signed by the TSA key; thread-safe."""

    def __init__(self, material: TrustMaterial, ca_cert: x509.Certificate) -> None:
        self.certificate = material.certificate
        self._tsa_cert = asn1_certificate(material.certificate)
        self._signer = SimpleSigner(
            signing_cert=self._tsa_cert, signing_key=asn1_private_key(material),
            cert_registry=SimpleCertificateStore.from_certs([asn1_certificate(ca_cert)]), embed_roots=False)
        self._lock = threading.Lock()
        self.issued = 0

    def respond(self, request_der: bytes) -> bytes:
        """A DER TimeStampResp for a DER TimeStampReq: a granted token, or a rejection naming the fault."""
        return asyncio.run(self.async_respond(request_der))

    async def async_respond(self, request_der: bytes) -> bytes:
        """``respond`` for a caller already inside an event loop."""
        try:
            request = tsp.TimeStampReq.load(request_der)
            imprint = request["message_imprint"]
            algorithm = imprint["hash_algorithm"]["algorithm"].native
            digest = imprint["hashed_message"].native
            policy = request["req_policy"].native
            version = request["version"].native
        except (ValueError, TypeError, KeyError) as exc:
            return _rejection("bad_data_format", f"not a DER TimeStampReq: {exc}")
        if version != "v1":
            return _rejection("bad_request", "only TimeStampReq version 1 is supported")
        if algorithm not in _IMPRINT_LENGTHS:
            return _rejection("bad_alg", f"hash algorithm {algorithm} is not accepted; use sha256, sha384 or sha512")
        if len(digest) != _IMPRINT_LENGTHS[algorithm]:
            return _rejection("bad_data_format", f"a {algorithm} imprint is {_IMPRINT_LENGTHS[algorithm]} bytes, not {len(digest)}")
        if policy is not None and policy != TSA_POLICY:
            return _rejection("unaccepted_policy", f"this TSA issues tokens under policy {TSA_POLICY} only")
        token = await self._sign(self._tst_info(request))
        if not request["cert_req"].native:
            token["content"]["certificates"] = None  # RFC 3161 §2.4.1: certificates only when asked for (unsigned field)
        status = tsp.PKIStatusInfo({"status": "granted"})
        return tsp.TimeStampResp({"status": status, "time_stamp_token": token}).dump()

    def _tst_info(self, request: tsp.TimeStampReq) -> tsp.TSTInfo:
        info = {
            "version": "v1",
            "policy": TSA_POLICY,
            "message_imprint": request["message_imprint"],
            "serial_number": secrets.randbits(127),
            "gen_time": dt.datetime.now(dt.UTC).replace(microsecond=0),
            "accuracy": tsp.Accuracy({"seconds": 1}),
            "ordering": False,
            "tsa": asn1_x509.GeneralName(name="directory_name", value=self._tsa_cert.subject),
        }
        if request["nonce"].native is not None:
            info["nonce"] = request["nonce"]
        return tsp.TSTInfo(info)

    async def _sign(self, tst_info: tsp.TSTInfo) -> cms.ContentInfo:
        content = cms.EncapsulatedContentInfo({"content_type": "tst_info", "content": cms.ParsableOctetString(tst_info.dump())})
        with self._lock:
            self.issued += 1
        return await self._signer.async_sign_general_data(content, "sha256", detached=False, use_cades=True)


class LocalTimeStamper(TimeStamper):  # type: ignore[misc]
    """pyHanko's TimeStamper answered in-process by a ``TimeStampAuthority`` (the sealing service's own tokens)."""

    def __init__(self, authority: TimeStampAuthority) -> None:
        super().__init__(include_nonce=True)
        self._authority = authority

    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        return tsp.TimeStampResp.load(await self._authority.async_respond(req.dump()))

