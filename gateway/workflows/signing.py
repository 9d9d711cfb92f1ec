"""The signing session: a party signs an on-site record on a pad and presses a finger;
the gateway binds both to the document's hash and signs the record as evidence.

Order and atomicity: the document is hashed first (so the pad can show what
is being signed), then the pad capture, then the fingerprint. Nothing is
stored until both captures succeed: a pad unplugged mid-signature, a
cancel or a timeout ends the session with a clear error and no record.

Evidence written for one session:
  * the signature image (PNG), the pen time series (CSV: t_ms, x, y, pressure)
    and the ISO/IEC 19794-7 record, the fingerprint image (PNG) and its
    ISO/IEC 19794-4 record — each an evidence item of its own;
  * the signing record (JSON, kind ``signature``) naming the document digest
    and name, signer and role, place and time, every item above by digest
    and evidence id, fingerprint quality and device identities. Its manifest
    carries ``extra.document.sha256`` so ``egw verify DIR --document FILE``
    can tell whether a file is the document that was signed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import DeviceError, GatewayError, SourceError
from gateway.evidence.evidence_service import EvidenceService, path_as_data
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.store import sha256_file

__all__ = ["SigningSession", "SigningRecord", "ROLES", "RECORD_MEDIA_TYPE"]

log = logging.getLogger("egw.signing")
ROLES = ("party", "witness", "officer")
RECORD_MEDIA_TYPE = "application/vnd.egw.signing-record+json"


@dataclass(frozen=True)
class SigningRecord:
    evidence_id: str
    record: dict[str, Any]
    items: dict[str, str]  # artefact name -> evidence id


def _document_digest(path: Path) -> tuple[str, int]:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise SourceError(f"cannot read the document {path_as_data(path)}: {exc.strerror}") from exc


def pen_csv(samples: np.ndarray) -> bytes:
    out = io.StringIO()
    out.write("t_ms,x,y,pressure\n")
    for row in samples:
        out.write(f"{float(row['t_ms']):.3f},{int(row['x'])},{int(row['y'])},{int(row['pressure'])}\n")
    return out.getvalue().encode("ascii")


Prompt = Callable[[str], None]


class SigningSession:
    def __init__(self, service: EvidenceService, *, place: str | None = None, officer_id: str | None = None,
                 prompt: Prompt | None = None, fingerprint_attempts: int = 3) -> None:
        self.service = service
        self.place = place
        self.officer_id = officer_id
        self.prompt = prompt or (lambda text: log.info(text))
        self.fingerprint_attempts = fingerprint_attempts

    def run(self, document: Path, signer: str, role: str, *, signpad_url: str | None, fingerprint_url: str | None,
            pad_timeout: float = 120.0, finger_timeout: float = 30.0) -> SigningRecord:
        if role not in ROLES:
            raise GatewayError(f"unknown role {role!r}", "use party, witness or officer")
        if not signpad_url and not fingerprint_url:
            raise GatewayError("a signing session needs a signature pad, a fingerprint reader, or both",
                               "pass --signpad URL and/or --fingerprint URL")
        doc_sha, doc_size = _document_digest(document)
        started = datetime.now(UTC)
        pad = self._capture_signature(signpad_url, document.name, signer, pad_timeout) if signpad_url else None
        finger = self._capture_finger(fingerprint_url, finger_timeout) if fingerprint_url else None
        return self._record(document, doc_sha, doc_size, signer, role, started, pad, finger)

    # ---- captures (nothing is stored until both succeed) ---------------------------
    def _capture_signature(self, url: str, title: str, signer: str, timeout: float) -> Any:
        from drivers.signpad import SignaturePad, SignPadError

        self.prompt(f"{signer}: please sign on the pad (document {title})")
        try:
            with SignaturePad.open(url) as pad:
                return pad.capture(timeout, title=title, signer=signer)
        except SignPadError as exc:
            raise DeviceError(f"signature pad at {url}: {exc}; no signing record was made",
                              "plug the pad back in (or ask the signer again) and restart the session") from exc

    def _capture_finger(self, url: str, timeout: float) -> Any:
        from drivers.fingerprint import FingerprintError, FingerprintReader, PoorQualityError

        try:
            with FingerprintReader(url) as reader:
                for attempt in range(1, self.fingerprint_attempts + 1):
                    self.prompt("place a finger on the reader")
                    try:
                        return reader.capture(timeout)
                    except PoorQualityError as exc:
                        prompt = exc.capture.retry_prompt or str(exc)
                        if attempt == self.fingerprint_attempts:
                            raise DeviceError(f"fingerprint quality stayed too low after {attempt} attempts: {prompt}",
                                              "clean the sensor and the finger, then restart the session") from exc
                        self.prompt(prompt)
        except FingerprintError as exc:
            raise DeviceError(f"fingerprint reader at {url}: {exc}; no signing record was made") from exc
        raise AssertionError("unreachable")

    # ---- evidence -------------------------------------------------------------------
    def _store(self, name: str, data: bytes, media_type: str, kind: str, session_id: str, device_id: str | None) -> tuple[str, str]:
        result = self.service.ingest_bytes(data, ManifestInput(
            source_path=f"signing/{session_id}/{name}", kind=kind, media_type=media_type, device_id=device_id,
            officer_id=self.officer_id, extra={"signing_session": session_id}), priority=2)
        return result.evidence_id, result.sha256

    def _record(self, document: Path, doc_sha: str, doc_size: int, signer: str, role: str, started: datetime,
                pad: Any, finger: Any) -> SigningRecord:
        session_id = hashlib.sha256(f"{doc_sha}|{signer}|{started.isoformat()}".encode()).hexdigest()[:16]
        items: dict[str, str] = {}
        digests: dict[str, str] = {}
        record: dict[str, Any] = {
            "v": "egw.signing-record/1",
            "session_id": session_id,
            "document": {"name": path_as_data(document.name), "sha256": doc_sha, "size": doc_size},
            "signer": {"name": signer, "role": role},
            "place": self.place,
            "started_at": started.isoformat(),
            "officer_id": self.officer_id,
        }
        if pad is not None:
            pad_id = f"signpad-{pad.identity.serial_number or pad.identity.uid2 or 'unknown'}"
            for name, data, media in (("signature.png", pad.png, "image/png"),
                                      ("pen.csv", pen_csv(pad.samples), "text/csv"),
                                      ("signature.iso19794-7", pad.iso_record, "application/octet-stream")):
                items[name], digests[name] = self._store(name, data, media, "signature" if name != "signature.png" else "photo", session_id, pad_id)
            record["signature"] = {**pad.metadata(), "image_sha256": digests["signature.png"],
                                   "pen_series_sha256": digests["pen.csv"], "iso_19794_7_sha256": digests["signature.iso19794-7"]}
        if finger is not None:
            for name, data, media in (("fingerprint.png", finger.png(), "image/png"),
                                      ("fingerprint.iso19794-4", finger.iso_record(), "application/octet-stream")):
                items[name], digests[name] = self._store(name, data, media, "photo" if name.endswith(".png") else "signature", session_id, "fingerprint-reader")
            record["fingerprint"] = {"image_sha256": digests["fingerprint.png"], "iso_19794_4_sha256": digests["fingerprint.iso19794-4"],
                                     "quality": finger.quality, "quality_threshold": finger.threshold,
                                     "quality_measure": "egw ridge coherence × contrast (0–100; not NFIQ 2)",
                                     "captured_at": finger.captured_at.isoformat()}
        record["items"] = {name: {"evidence_id": items[name], "sha256": digests[name]} for name in items}
        record["finished_at"] = datetime.now(UTC).isoformat()
        body = json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
        result = self.service.ingest_bytes(body, ManifestInput(
            source_path=f"signing/{session_id}/record.json", kind="signature", media_type=RECORD_MEDIA_TYPE,
            officer_id=self.officer_id, extra={"document": record["document"], "signer": record["signer"], "place": self.place,
                                               "signing_session": session_id}), priority=2)
        self.service.sign_tree_head()
        return SigningRecord(result.evidence_id, record, items)
