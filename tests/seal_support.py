"""A platform with its trust services on loopback (real HTTPS, mutual TLS) and an enrolled gateway, for the seal/TSA tests."""

from __future__ import annotations

import asyncio
import http.client
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from fpdf import FPDF

from gateway.documents.seal import SealResult, SealService, seal_pdf
from gateway.evidence.identity import Identity, init_identity, load_identity, store_enrolled_chain
from simulators.platform.pki import PlatformPKI, pem
from simulators.platform.trust_services import TrustServices

UNIT_CODE = "110105000000"
UNIT_NAME = "北京市公安局朝阳分局"


@dataclass
class Platform:
    directory: Path
    pki: PlatformPKI
    services: TrustServices

    @property
    def url(self) -> str:
        return self.services.base_url

    def ca_file(self) -> Path:
        path = self.directory / "ca-export.pem"
        path.write_bytes(pem(self.pki.ca_cert))
        return path


@contextmanager
def trust_platform(directory: Path, unit_code: str = UNIT_CODE, unit_name: str = UNIT_NAME) -> Iterator[Platform]:
    pki = PlatformPKI.load_or_create(directory)
    services = TrustServices(directory, pki, unit_code, unit_name)
    services.start()
    try:
        yield Platform(directory, pki, services)
    finally:
        services.stop()


def enrolled_gateway(data_dir: Path, platform: Platform, gateway_id: str = "gw-seal-1") -> Identity:
    """A gateway identity whose certificate the platform CA issued (what `egw enroll` leaves behind)."""
    identity = init_identity(data_dir, gateway_id)
    certificate = platform.pki.issue_for_key(identity.private_key.public_key(), gateway_id)
    store_enrolled_chain(identity, certificate, [platform.pki.ca_cert], platform.pki.platform_id)
    return load_identity(data_dir)


def record_pdf(path: Path, text: str = "On-site record / 现场笔录 0001") -> Path:
    """A small one-page PDF standing in for the on-site record (the renderer makes the real one)."""
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=14)
    pdf.cell(text=text.encode("ascii", "replace").decode())
    pdf.output(str(path))
    return path


def seal(source: Path, target: Path, platform: Platform, identity: Identity) -> SealResult:
    async def run() -> SealResult:
        async with SealService(platform.url, identity) as service:
            return await seal_pdf(source, target, service)

    return asyncio.run(run())


def https(platform: Platform, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
          identity: Identity | None = None) -> tuple[int, bytes, str]:
    """One request to the trust services, with the gateway's client certificate when ``identity`` is given."""
    context = ssl.create_default_context(cadata=pem(platform.pki.ca_cert).decode())
    if identity is not None:
        context.load_cert_chain(str(identity.directory / "gateway.crt"), str(identity.directory / "gateway.key"))
    host, port = platform.url.removeprefix("https://").rsplit(":", 1)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "")
    finally:
        connection.close()


def key_pem(identity: Identity) -> bytes:
    return identity.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
