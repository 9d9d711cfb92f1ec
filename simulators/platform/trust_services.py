"""The platform's trust services over HTTPS: RFC 3161 time-stamps, the agency seal, the CA's CRL.

One TLS port, the platform's TLS certificate. A client certificate is asked
for; the gateway-facing services require one that chains to the platform CA,
is not on the CA's CRL and allows ``clientAuth`` (a gateway's):

* ``POST /tsa``: ``application/timestamp-query`` → ``application/timestamp-reply``
  (RFC 3161 §3.4);
* ``GET /seal/profile``: JSON ``{unit_code, unit_name, certificate, chain, crl}``
  (PEM): what a gateway needs to prepare a seal;
* ``POST /seal``: JSON ``{document_digest, digest_algorithm}`` → the DER CMS
  signature (``application/pkcs7-signature``), see ``sealing.py``;

and, open to anyone (a verifier fetching revocation data has no certificate):

* ``GET /crl``: the CA's current CRL, DER (``application/pkix-crl``): the
  distribution point named in the TSA and seal certificates.

Refusals are JSON ``{"error": ...}`` with 400 (bad request), 403 (no or
unacceptable client certificate) or 404.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protos.pki_roles import Role, RoleError, certificate_identity
from simulators.platform.pki import PlatformPKI, pem
from simulators.platform.role_certs import RoleCertificates, current_crl, load_or_issue
from simulators.platform.sealing import SealingService, SealRequestError
from simulators.platform.tsa import QUERY_TYPE, REPLY_TYPE, TimeStampAuthority

__all__ = ["TrustServices", "MAX_BODY"]

MAX_BODY = 64 * 1024
HANDSHAKE_TIMEOUT_S = 10.0


class _Refusal(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class TrustServices:
    """The HTTPS server; ``start()`` returns its base URL, ``stop()`` closes it."""

    def __init__(self, data_dir: Path, pki: PlatformPKI, unit_code: str, unit_name: str, listen: str = "127.0.0.1:0") -> None:
        self.data_dir = data_dir
        self.pki = pki
        host, _, port = listen.rpartition(":")
        self._httpd = _Server((host or "127.0.0.1", int(port)), _Handler)
        self._httpd.services = self
        bound_host, bound_port = self._httpd.server_address[:2]
        self.base_url = f"https://{bound_host}:{bound_port}"
        self.roles: RoleCertificates = load_or_issue(pki, data_dir, f"{self.base_url}/crl", unit_code, unit_name)
        self.tsa = TimeStampAuthority(self.roles.tsa, pki.ca_cert)
        self.sealing = SealingService(data_dir, self.roles, self.tsa, pki.ca_pem())
        self._crl: x509.CertificateRevocationList | None = None
        self._crl_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        self._httpd.socket = self._tls_context().wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="trust-services", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def crl(self) -> x509.CertificateRevocationList:
        with self._crl_lock:
            self._crl = current_crl(self.pki, self.data_dir, self._crl)
            return self._crl

    def profile(self) -> dict[str, Any]:
        return {"unit_code": self.roles.unit_code, "unit_name": self.roles.unit_name,
                "certificate": pem(self.roles.seal.certificate).decode(), "chain": [self.pki.ca_pem().decode()],
                "tsa_certificate": pem(self.roles.tsa.certificate).decode(),
                "crl": self.crl().public_bytes(serialization.Encoding.PEM).decode()}

    def authorise(self, der: bytes | None) -> str:
        """The gateway id of an acceptable client certificate; _Refusal otherwise."""
        if not der:
            raise _Refusal(HTTPStatus.FORBIDDEN, "a client certificate issued by the platform CA is required (enrol the gateway first)")
        cert = x509.load_der_x509_certificate(der)
        if self.crl().get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise _Refusal(HTTPStatus.FORBIDDEN, "this certificate has been revoked; re-enrol the gateway")
        try:
            purposes = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            purposes = []
        if ExtendedKeyUsageOID.CLIENT_AUTH not in purposes:
            raise _Refusal(HTTPStatus.FORBIDDEN, "the client certificate is not a gateway's (clientAuth missing)")
        try:
            return certificate_identity(cert, Role.GATEWAY)
        except RoleError:
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            return str(names[0].value) if names else cert.subject.rfc4514_string()

    def _tls_context(self) -> ssl.SSLContext:
        material = self.data_dir / "pki" / "trust-services-tls.pem"  # ssl loads a key only from a file: mode 0600 from the start
        fd = os.open(material, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.pki.server_chain_pem() + self.pki.server_key_pem())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(material))
        context.load_verify_locations(cadata=self.pki.ca_pem().decode())
        context.verify_mode = ssl.CERT_OPTIONAL  # required per path: /crl is open to verifiers
        return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    services: TrustServices

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that fails the TLS handshake or hangs up is its own problem; nothing to log


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.request.settimeout(HANDSHAKE_TIMEOUT_S)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch({"/crl": self._crl, "/seal/profile": self._profile})

    def do_POST(self) -> None:
        self._dispatch({"/tsa": self._timestamp, "/seal": self._seal})

    def _dispatch(self, routes: dict[str, Any]) -> None:
        handler = routes.get(self.path.split("?", 1)[0])
        try:
            if handler is None:
                raise _Refusal(HTTPStatus.NOT_FOUND, f"no such service: {self.path}")
            content_type, body = handler()
        except _Refusal as refusal:
            self._send(refusal.status, "application/json", json.dumps({"error": str(refusal)}).encode())
            return
        self._send(HTTPStatus.OK, content_type, body)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _gateway(self) -> str:
        return self.server.services.authorise(self.request.getpeercert(binary_form=True))

    def _body(self, expected_type: str) -> bytes:
        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if content_type != expected_type:
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"Content-Type must be {expected_type}, not {content_type or 'missing'}")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"the body must be 1..{MAX_BODY} bytes with a Content-Length")
        return self.rfile.read(length)

    def _crl(self) -> tuple[str, bytes]:
        return "application/pkix-crl", self.server.services.crl().public_bytes(serialization.Encoding.DER)

    def _profile(self) -> tuple[str, bytes]:
        self._gateway()
        return "application/json", json.dumps(self.server.services.profile(), ensure_ascii=False).encode()

    def _timestamp(self) -> tuple[str, bytes]:
        self._gateway()
        return REPLY_TYPE, self.server.services.tsa.respond(self._body(QUERY_TYPE))

    def _seal(self) -> tuple[str, bytes]:
        gateway_id = self._gateway()
        try:
            request = json.loads(self._body("application/json"))
            digest, algorithm = str(request["document_digest"]), str(request.get("digest_algorithm", "sha256"))
            return "application/pkcs7-signature", self.server.services.sealing.seal_digest(digest, algorithm, gateway_id)
        except (ValueError, KeyError, TypeError, SealRequestError) as exc:
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"bad seal request: {exc}") from exc

