"""The terminal's side of docs/terminal.md, written from the contract (it imports nothing of ``gateway``).

Pairing: the QR payload ``egw-pair:?url=…&code=…&sha256=…&gw=…`` names the pairing address, a one-time
code and the SHA-256 of the station's TLS certificate. The terminal connects, compares the certificate it
got with that digest *before* sending anything, then POSTs its CSR with the code. It keeps its key, its
certificate and the station's terminal CA in a directory (key 0600); every later call is mutual TLS.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["PairingOffer", "TerminalClient", "parse_offer", "PairingFailed", "SigningFailed", "start_signing", "follow_signing"]


class PairingFailed(Exception):
    """The station refused the pairing, or is not the station the QR code named."""


@dataclass(frozen=True)
class PairingOffer:
    url: str
    code: str
    station_sha256: str
    gateway_id: str


def parse_offer(uri: str) -> PairingOffer:
    query = parse_qs(urlsplit(uri).query)
    try:
        return PairingOffer(query["url"][0], query["code"][0], query["sha256"][0].lower(), query.get("gw", [""])[0])
    except (KeyError, IndexError) as exc:
        raise PairingFailed(f"not an egw pairing code: {uri!r}") from exc


def _connection(url: str, context: ssl.SSLContext, timeout: float) -> http.client.HTTPSConnection:
    parts = urlsplit(url)
    return http.client.HTTPSConnection(parts.hostname or "127.0.0.1", parts.port or 443, context=context, timeout=timeout)


class TerminalClient:
    """One terminal's identity (in ``directory``) and its calls to the station."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def key_path(self) -> Path:
        return self.directory / "terminal.key"

    @property
    def cert_path(self) -> Path:
        return self.directory / "terminal.pem"

    @property
    def ca_path(self) -> Path:
        return self.directory / "station-ca.pem"

    @property
    def paired(self) -> dict[str, Any]:
        return dict(json.loads((self.directory / "pairing.json").read_text()))

    @property
    def api_url(self) -> str:
        return str(self.paired["api_url"])

    def _key(self) -> ec.EllipticCurvePrivateKey:
        if self.key_path.exists():
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key
        key = ec.generate_private_key(ec.SECP256R1())
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return key

    def csr_pem(self) -> str:
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egw terminal")]))
               .sign(self._key(), hashes.SHA256()))
        return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def pair(self, offer: PairingOffer, *, officer_id: str | None, label: str = "simulated terminal", timeout: float = 15) -> dict[str, Any]:
        pinned = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        pinned.check_hostname = False
        pinned.verify_mode = ssl.CERT_NONE  # trust comes from the digest in the QR code, checked below
        conn = _connection(offer.url, pinned, timeout)
        try:
            conn.connect()
            assert conn.sock is not None
            der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            if der is None or hashlib.sha256(der).hexdigest() != offer.station_sha256:
                raise PairingFailed("the station's certificate is not the one in the QR code: not sending the code")
            body = {"code": offer.code, "csr": self.csr_pem(), "label": label}
            if officer_id is not None:
                body["officer_id"] = officer_id
            conn.request("POST", "/pair", body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read() or b"{}")
        finally:
            conn.close()
        if response.status != 201:
            raise PairingFailed(f"pairing refused ({response.status}): {answer.get('error')}")
        self.cert_path.write_text(answer["certificate"])
        self.ca_path.write_text(answer["ca"])
        (self.directory / "pairing.json").write_text(json.dumps({k: answer[k] for k in ("terminal_id", "officer_id", "api_url")}))
        return dict(answer)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        conn = _connection(self.api_url, self.ssl_context(), timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return json.loads(body)


class UploadFailed(Exception):
    """The station refused or kept failing an upload; the message says what it answered."""


def tus_upload(client: TerminalClient, path: Path, *, media_type: str, chunk_size: int = 8 << 20, attempts: int = 5,
               timeout: float = 60) -> dict[str, Any]:
    """Upload ``path`` with tus 1.0 (creation, HEAD, PATCH), resuming from the station's offset after a
    failure; memory stays at one socket buffer whatever the size. Returns the station's answer headers."""
    import base64

    size = path.stat().st_size
    meta = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in (("filename", path.name), ("filetype", media_type)))
    status, headers, body = client.request("POST", "/files", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size),
                                                                       "Upload-Metadata": meta})
    if status != 201:
        raise UploadFailed(f"creating the upload was refused ({status}): {body[:300]!r}")
    location = "/" + headers["location"].split("/", 3)[3]
    offset, failures, answer = 0, 0, headers
    while offset < size or "egw-evidence-id" not in answer:
        try:
            answer = _patch(client, location, path, offset, min(chunk_size, size - offset), timeout)
            offset = int(answer["upload-offset"])
            failures = 0
        except (OSError, http.client.HTTPException, UploadFailed):
            failures += 1
            if failures >= attempts:
                raise
            status, answer, _ = client.request("HEAD", location, headers={"Tus-Resumable": "1.0.0"})
            if status != 200:
                raise UploadFailed(f"the station lost the upload ({status})") from None
            offset = int(answer["upload-offset"])
    return {"evidence_id": answer["egw-evidence-id"], "sha256": answer.get("egw-sha256"), "size": size, "upload": location}


def _patch(client: TerminalClient, location: str, path: Path, offset: int, length: int, timeout: float) -> dict[str, str]:
    conn = _connection(client.api_url, client.ssl_context(), timeout)
    try:
        conn.putrequest("PATCH", location)
        for name, value in {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream",
                            "Upload-Offset": str(offset), "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        with open(path, "rb") as fh:
            fh.seek(offset)
            left = length
            while left:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    raise UploadFailed(f"{path} shrank while it was uploaded")
                conn.send(chunk)
                left -= len(chunk)
        response = conn.getresponse()
        response.read()
        if response.status != 204:
            raise UploadFailed(f"PATCH at {offset} refused ({response.status})")
        return {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


class SigningFailed(Exception):
    """The station refused to start the signing session, or the session ended without a sealed document."""


def start_signing(client: TerminalClient, request: dict[str, Any]) -> dict[str, Any]:
    """``POST /api/v1/signing-sessions``: the session as started (202), else SigningFailed with the station's words."""
    status, _, body = client.request("POST", "/api/v1/signing-sessions", json.dumps(request, ensure_ascii=False).encode("utf-8"),
                                     {"Content-Type": "application/json"})
    answer = json.loads(body) if body.startswith(b"{") else {"error": body[:200].decode("utf-8", "replace"), "hint": ""}
    if status != 202:
        raise SigningFailed(f"the station answered {status}: {answer.get('error')} ({answer.get('hint')})")
    return dict(answer)


def follow_signing(client: TerminalClient, session_id: str, timeout: float = 300) -> Iterator[dict[str, Any]]:
    """Each state of the session from its event stream, until it is finished (the last one yielded)."""
    conn = _connection(client.api_url, client.ssl_context(), timeout)
    try:
        conn.request("GET", f"/api/v1/signing-sessions/{session_id}/events")
        response = conn.getresponse()
        if response.status != 200:
            raise SigningFailed(f"cannot follow signing session {session_id}: {response.status} {response.read()[:200]!r}")
        event = ""
        while True:
            line = response.readline().decode("utf-8")
            if not line:
                raise SigningFailed(f"the station closed the event stream of signing session {session_id} before it finished")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "session":
                session = json.loads(line[6:])
                yield session
                if session["finished"]:
                    return
    finally:
        conn.close()
