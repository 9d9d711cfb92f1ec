"""``egw verify FILE.pdf``: every signature in a sealed document, checked offline (docs/documents-sealing.md).

Each signature field is validated with pyHanko's AdES validation (ETSI EN 319
102-1; PAdES B-LTA: the signature time-stamp, the DSS validation data and the
chain of document time-stamps), never fetching anything: the trust anchors are
the ones the person verifying chose (``--trust``), revocation data is what the
document carries plus any ``--crl``. Document time-stamps are validated on
their own too. On top of the cryptography, the roles of docs/trust.md:

* the document counts as sealed only by a signature whose certificate holds
  the agency-seal role (``urn:egw:agency:<unit code>``); a gateway's own
  signature is reported as provisional and does not make a document VERIFIED;
* every time-stamp must come from a certificate with the time-stamping role;
* the last signature or time-stamp must cover the whole file, and nothing
  added after an earlier signature may be more than LTA updates (validation
  data, time-stamps) or the filling of a further signature field.
* an approval signature (the party's or the officer's, made by a station:
  gateway/documents/approvals.py) is reported with what it binds, and nothing
  but time-stamps and further agency seals may be signed after the agency seal;
* what the document embeds is checked against itself and the approvals
  (``verify_embedded``): the signing record, its items, the declared approvals.

Exit codes as in docs/trust.md: 0 VERIFIED, 1 FAILED, 3 CONSISTENT, UNTRUSTED.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.validation import SignatureCoverageLevel, ades, async_validate_pdf_timestamp
from pyhanko.sign.validation.policy_decl import (
    LocalKnowledge,
    PdfSignatureValidationSpec,
    RevinfoOnlineFetchingRule,
    RevocationInfoGatheringSpec,
    SignatureValidationSpec,
)
from pyhanko.sign.validation.settings import KeyUsageConstraints
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.context import CertValidationPolicySpec
from pyhanko_certvalidator.policy_decl import CertRevTrustPolicy, RevocationCheckingPolicy
from pyhanko_certvalidator.registry import SimpleTrustManager
from pyhanko_certvalidator.revinfo.archival import CRLContainer

from gateway.documents.approvals import binding_of
from gateway.documents.verify_embedded import BoundSignature, check_document, describe_binding, embedded_files
from protos.pki_roles import Role, RoleError, require_role

__all__ = ["PdfFinding", "PdfReport", "verify_pdf", "EXIT_VERIFIED", "EXIT_FAILED", "EXIT_UNTRUSTED"]

EXIT_VERIFIED, EXIT_FAILED, EXIT_UNTRUSTED = 0, 1, 3
_LATER_CHANGES_ALLOWED = ModificationLevel.FORM_FILLING


@dataclass
class PdfFinding:
    """One signature or document time-stamp and what was found about it."""

    field: str
    kind: str
    signer: str
    signed_at: str | None
    time_source: str | None
    intact: bool
    trusted: bool
    problems: list[str] = dataclasses.field(default_factory=list)
    existed_by: str | None = None
    binding: dict[str, Any] | None = None  # an approval signature's binding (gateway/documents/approvals.py)
    """For a signature without its own time-stamp: when a later time-stamp proves it existed."""

    @property
    def ok(self) -> bool:
        return self.intact and not self.problems

    def line(self) -> str:
        when = f"at {self.signed_at} per time-stamp by {self.time_source}" if self.signed_at else "signing time unproven (no time-stamp)"
        if self.existed_by:
            when += f", existed by {self.existed_by} (a later time-stamp covers it)"
        state = "ok" if self.ok else "FAILED: " + "; ".join(self.problems)
        trust = "" if self.trusted else " (no trust anchor vouches for it)"
        binds = f", binds {describe_binding(self.binding)}" if self.binding is not None else ""
        return f"[{self.field}] {self.kind} {self.signer}{binds}, {when}: {state}{trust}"


@dataclass
class PdfReport:
    path: Path
    findings: list[PdfFinding]
    problems: list[str]
    anchored: bool

    @property
    def exit_code(self) -> int:
        if self.problems or any(not f.ok for f in self.findings):
            return EXIT_FAILED
        if not self.anchored or any(not f.trusted for f in self.findings):
            return EXIT_UNTRUSTED if not self.anchored else EXIT_FAILED
        return EXIT_VERIFIED

    @property
    def verdict(self) -> str:
        return {EXIT_VERIFIED: "VERIFIED", EXIT_FAILED: "FAILED", EXIT_UNTRUSTED: "CONSISTENT, UNTRUSTED"}[self.exit_code]

    def as_json(self) -> dict[str, Any]:
        return {"file": str(self.path), "verdict": self.verdict, "exit_code": self.exit_code, "problems": self.problems,
                "signatures": [{"field": f.field, "kind": f.kind, "signer": f.signer, "signed_at": f.signed_at,
                                "time_source": f.time_source, "existed_by": f.existed_by, "intact": f.intact, "trusted": f.trusted, "ok": f.ok,
                                "binding": f.binding, "problems": f.problems} for f in self.findings]}


def _asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _crypto(cert: asn1_x509.Certificate) -> x509.Certificate:
    return x509.load_der_x509_certificate(cert.dump())


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def _signer_role(cert: asn1_x509.Certificate) -> tuple[str, str, bool]:
    """(kind, identity, is the agency's seal) for a field signature's certificate."""
    crypto = _crypto(cert)
    try:
        return "agency seal", f"urn:egw:agency:{require_role(crypto, Role.AGENCY_SEAL)} ({cert.subject.native.get('common_name', '')})", True
    except RoleError:
        pass
    try:
        return "provisional gateway signature", f"urn:egw:gateway:{require_role(crypto, Role.GATEWAY)}", False
    except RoleError:
        pass
    if _is_legacy_gateway(crypto):
        return "provisional gateway signature", f"gateway {cert.subject.native.get('common_name', '')} (certificate without roles)", False
    return "signature without a document role", crypto.subject.rfc4514_string(), False


def _approval_role(sig: Any, problems: list[str]) -> tuple[str, str, dict[str, Any] | None]:
    """(kind, who, binding): an approval signature (one whose signed attributes carry a binding) is the party's
    or the officer's, made by a station; any other signature is judged by its certificate's role alone."""
    kind, signer, _ = _signer_role(sig.signer_cert)
    try:
        binding = binding_of(sig.signed_data)
    except (ValueError, KeyError, TypeError) as exc:
        problems.append(f"its signature binding cannot be read: {exc}")
        return kind, signer, None
    if binding is None:
        return kind, signer, None
    station = _station(sig.signer_cert)
    made_by = f"station urn:egw:gateway:{station}" if station else f"a certificate that is no station's ({signer})"
    if station is None:
        problems.append("an approval signature not made with a station's (gateway) certificate")
    if binding.get("role") == "party":
        return "party's handwritten signature", f"{binding.get('signer')}, handwriting captured by {made_by}", binding
    if binding.get("role") == "officer":
        return "officer's signature", f"officer {binding.get('officer_id')}, signed by {made_by} (no handwriting)", binding
    problems.append(f"a binding for an unknown role {binding.get('role')!r}")
    return "approval signature", signer, binding


def _station(cert: asn1_x509.Certificate) -> str | None:
    """The gateway id of a station's certificate, or None."""
    crypto = _crypto(cert)
    try:
        return require_role(crypto, Role.GATEWAY)
    except RoleError:
        return str(cert.subject.native.get("common_name", "")) if _is_legacy_gateway(crypto) else None


def _is_legacy_gateway(cert: x509.Certificate) -> bool:
    """A gateway certificate issued before roles existed: clientAuth only, OU "egw gateway"."""
    try:
        purposes = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return False
    units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    return purposes == [ExtendedKeyUsageOID.CLIENT_AUTH] and units == ["egw gateway"]


def _tsa_name(cert: asn1_x509.Certificate, problems: list[str]) -> str:
    try:
        return require_role(_crypto(cert), Role.TIME_STAMPING)
    except RoleError as exc:
        problems.append(f"time-stamp not from a time-stamping authority: {exc}")
        return _crypto(cert).subject.rfc4514_string()


def _signed_by(crl: x509.CertificateRevocationList, anchor: x509.Certificate) -> bool:
    """A CRL counts only if a trust anchor signed it (trust.md, Revocation)."""
    public = anchor.public_key()
    if crl.issuer != anchor.subject or not isinstance(public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        return False
    return crl.is_signature_valid(public)


class _Checker:
    def __init__(self, anchors: list[x509.Certificate], crls: list[x509.CertificateRevocationList]) -> None:
        self.anchors = [_asn1(c) for c in anchors]
        self.anchored_crls = [c for c in crls if any(_signed_by(c, a) for a in anchors)]
        self.crls = [asn1_crl.CertificateList.load(c.public_bytes(serialization.Encoding.DER)) for c in self.anchored_crls]
        policy = CertValidationPolicySpec(
            trust_manager=SimpleTrustManager.build(trust_roots=self.anchors),
            revinfo_policy=CertRevTrustPolicy(RevocationCheckingPolicy.from_legacy("hard-fail")))
        self.spec = PdfSignatureValidationSpec(SignatureValidationSpec(
            cert_validation_policy=policy,
            revinfo_gathering_policy=RevocationInfoGatheringSpec(online_fetching_rule=RevinfoOnlineFetchingRule.LOCAL_ONLY),
            local_knowledge=LocalKnowledge(known_crls=[CRLContainer(c) for c in self.crls]),
            # a gateway key signs with digitalSignature; the seal and TSA keys also hold nonRepudiation
            key_usage_settings=KeyUsageConstraints(key_usage={"digital_signature", "non_repudiation"}, match_all_key_usages=False)))

    async def signature(self, sig: Any) -> PdfFinding:
        result = await ades.ades_lta_validation(sig, self.spec)
        status = result.api_status
        problems: list[str] = []
        kind, signer, binding = _approval_role(sig, problems)
        if status is None:
            problems.append(f"the signature could not be evaluated: {result.failure_msg or result.ades_subindic}")
            return PdfFinding(sig.field_name, kind, signer, None, None, False, False, problems)
        if not (status.intact and status.valid):
            problems.append("the signature does not match the signed bytes (the document was changed)")
        ts = status.timestamp_validity
        signed_at = time_source = None
        if ts is not None:
            signed_at, time_source = _iso(ts.timestamp), _tsa_name(ts.signing_cert, problems)
            if not (ts.intact and ts.valid):
                problems.append("its signature time-stamp does not match the signature")
            elif self.anchors and not ts.trusted:
                problems.append("its time-stamp is from a TSA no trust anchor vouches for")
        elif kind == "agency seal":
            problems.append("an agency seal without a signature time-stamp")
        proven = ts.timestamp if ts is not None else getattr(result, "oldest_evidence_record_timestamp", None)
        if status.revoked:
            problems.append("the signing certificate was revoked at the signing time")
        self._check_revocation_lists(_crypto(sig.signer_cert), proven, problems)
        self._check_later_changes(status, problems)
        trusted = bool(status.trusted) and (ts is None or bool(ts.trusted))
        if self.anchors and status.intact and status.valid and not status.trusted and not status.revoked:
            problems.append(f"the signer's certificate does not chain to the trust anchors ({result.ades_subindic})")
        finding = PdfFinding(sig.field_name, kind, signer, signed_at, time_source, bool(status.intact and status.valid), trusted, problems,
                             binding=binding)
        if ts is None and proven is not None:
            finding.existed_by = _iso(proven)
        return finding

    def _check_revocation_lists(self, cert: x509.Certificate, proven: dt.datetime | None, problems: list[str]) -> None:
        """trust.md, Revocation: revoked at R fails a signature proven at or after R, and one whose time is unproven.

        pyHanko judges certificates that name a CRL distribution point; a gateway certificate names none, so
        the CRLs given with ``--crl`` (signed by a trust anchor) are applied here to every signer."""
        for crl in self.anchored_crls:
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is None or crl.issuer != cert.issuer:
                continue
            revoked_at = entry.revocation_date_utc
            if proven is None or proven >= revoked_at:
                when = "its signing time is unproven" if proven is None else f"it was signed at {_iso(proven)}"
                problems.append(f"the signing certificate was revoked at {_iso(revoked_at)} and {when}")

    async def document_timestamp(self, sig: Any) -> PdfFinding:
        context = ValidationContext(trust_roots=self.anchors, crls=self.crls, allow_fetching=False)
        status = await async_validate_pdf_timestamp(sig, validation_context=context)
        problems: list[str] = []
        tsa = _tsa_name(status.signing_cert, problems)
        if not (status.intact and status.valid):
            problems.append("the document time-stamp does not match the time-stamped bytes (the document was changed)")
        if self.anchors and not status.trusted:
            problems.append("the document time-stamp is from a TSA no trust anchor vouches for")
        self._check_later_changes(status, problems)
        return PdfFinding(sig.field_name, "document time-stamp", tsa, _iso(status.timestamp), tsa,
                          bool(status.intact and status.valid), bool(status.trusted), problems)

    @staticmethod
    def _check_later_changes(status: Any, problems: list[str]) -> None:
        level = status.modification_level
        if status.coverage not in (SignatureCoverageLevel.ENTIRE_REVISION, SignatureCoverageLevel.ENTIRE_FILE):
            problems.append("it does not cover its whole revision of the file")
        if (level is not None and level > _LATER_CHANGES_ALLOWED) or getattr(status, "docmdp_ok", None) is False:
            problems.append(f"the document was changed after it was signed ({level.name if level is not None else 'unknown'})")


def _signed_after_the_seal(signatures: list[Any], findings: list[PdfFinding]) -> list[str]:
    """A signature made after the agency seal is not covered by it: it must not pass as part of the sealed document.
    (Time-stamps and further agency seals may follow: that is how PAdES-LTA and a counter-seal work.)"""
    sealed_in: int | None = None
    problems: list[str] = []
    for sig, finding in sorted(zip(signatures, findings, strict=True), key=lambda pair: pair[0].signed_revision):
        if finding.kind in ("agency seal", "document time-stamp"):
            if finding.kind == "agency seal" and sealed_in is None:
                sealed_in = sig.signed_revision
            continue
        if sealed_in is not None:
            problems.append(f"[{finding.field}] {finding.kind} was added after the agency seal: the seal does not cover it")
    return problems


def _embedded_roots(signatures: list[Any]) -> list[x509.Certificate]:
    """Self-signed certificates the document carries: used to check consistency when no anchor was chosen, never trusted."""
    roots: dict[bytes, x509.Certificate] = {}
    for sig in signatures:
        for choice in sig.signed_data["certificates"] or []:
            cert = choice.chosen
            if isinstance(cert, asn1_x509.Certificate) and cert.self_signed:
                roots[cert.sha256] = _crypto(cert)
    return list(roots.values())


async def _verify(path: Path, anchors: list[x509.Certificate], crls: list[x509.CertificateRevocationList]) -> PdfReport:
    try:
        return await _verify_readable(path, anchors, crls)
    except (PdfError, ValueError, KeyError, TypeError) as exc:
        # a structure so broken pyHanko cannot read it: a damaged or tampered file is a failed check, never a usage error
        return PdfReport(path, [], [f"the file is not a readable signed PDF ({type(exc).__name__}: {exc})"], anchored=bool(anchors))


async def _verify_readable(path: Path, anchors: list[x509.Certificate], crls: list[x509.CertificateRevocationList]) -> PdfReport:
    findings: list[PdfFinding] = []
    problems: list[str] = []
    with open(path, "rb") as handle:
        reader = PdfFileReader(handle, strict=False)
        signatures = reader.embedded_signatures
        checker = _Checker(anchors or _embedded_roots(signatures), crls)
        if not signatures:
            problems.append("the PDF carries no signature at all")
        for sig in signatures:
            if sig.sig_object_type == "/DocTimeStamp":
                findings.append(await checker.document_timestamp(sig))
            else:
                findings.append(await checker.signature(sig))
        if signatures and signatures[-1].coverage != SignatureCoverageLevel.ENTIRE_FILE:
            problems.append("bytes were added after the last signature or time-stamp: they are covered by nothing")
        problems += _signed_after_the_seal(signatures, findings)
        files = embedded_files(reader.root, problems)
    bound = [BoundSignature(f.field, f.binding, _station(sig.signer_cert)) for sig, f in zip(signatures, findings, strict=True)
             if f.binding is not None]
    problems += check_document(files, bound)
    if signatures and not any(f.kind == "agency seal" for f in findings):
        problems.append("no agency seal: the document is signed only provisionally (or by a certificate with no document "
                        "role); it is sealed once the platform adds the agency's seal")
    if not anchors:
        for finding in findings:
            finding.trusted = False
    return PdfReport(path, findings, problems, anchored=bool(anchors))


def verify_pdf(path: Path, anchors: list[x509.Certificate], crls: list[x509.CertificateRevocationList] | None = None) -> PdfReport:
    """Check every signature and time-stamp in the PDF at ``path`` against ``anchors``, offline."""
    quiet = logging.getLogger("pyhanko")  # pyHanko logs each failed path build with a traceback; the report says it once
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_verify(path, anchors, crls or []))
    finally:
        quiet.setLevel(level)
