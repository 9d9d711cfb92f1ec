"""Helpers for the platform/uplink tests: a real platform (in-process or a child
process) on loopback with real TLS, and enrolled gateways with evidence."""

from __future__ import annotations

import os
import select
import subprocess
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import grpc

from gateway.evidence.identity import init_identity
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.evidence_service import EvidenceService, IngestResult
from gateway.uplink.enroll import enroll
from gateway.uplink.link import PlatformLink, load_link
from protos.egw.v1 import ingest_pb2_grpc
from simulators.platform.cli import issue_token
from simulators.platform.server import PlatformServer
from tests.conftest import spawn_egw

__all__ = ["platform_server", "spawn_platform", "stop_process", "make_gateway", "ingest_random", "stub_for", "LinkedGateway"]


@contextmanager
def platform_server(data: Path, **kwargs: object) -> Iterator[PlatformServer]:
    server = PlatformServer(data, **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop(0.5)


def spawn_platform(data: Path, *extra: str, listen: str = "127.0.0.1:0") -> tuple[subprocess.Popen[str], str, str]:
    proc = spawn_egw("simulate", "platform", "--data", str(data), "--listen", listen, *extra)
    buffered = b""
    deadline = time.monotonic() + 20
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # raw reads: a buffered readline could hide the second line from select()
    while buffered.count(b"\n") < 2:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            stop_process(proc)
            raise AssertionError("platform did not print its addresses within 20 s")
        data = os.read(fd, 4096)
        if not data:
            raise AssertionError(f"platform exited: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")
        buffered += data
    lines = buffered.decode().splitlines()
    assert lines[1].startswith("enroll ")
    return proc, lines[0], lines[1].split()[1]


def stop_process(proc: subprocess.Popen[str], sig: int | None = None) -> None:
    if proc.poll() is None:
        if sig is None:
            proc.terminate()
        else:
            os.kill(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


class LinkedGateway:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    def link(self) -> PlatformLink:
        return load_link(self.data_dir)

    def service(self) -> EvidenceService:
        return EvidenceService(self.data_dir)


def make_gateway(root: Path, name: str, platform_data: Path, address: str) -> LinkedGateway:
    data_dir = root / name
    identity = init_identity(data_dir)
    token = issue_token(platform_data, gateway_id=identity.gateway_id)["token"]
    enroll(data_dir, address, token)
    return LinkedGateway(data_dir)


def ingest_random(gw: LinkedGateway, size: int, name: str, *, priority: int = 0, data: bytes | None = None) -> IngestResult:
    payload = data if data is not None else os.urandom(size)
    src = gw.data_dir.parent / f"src-{gw.data_dir.name}-{name}"
    src.write_bytes(payload)
    with gw.service() as svc:
        return svc.ingest_file(src, ManifestInput(source_path=name), priority=priority)


@contextmanager
def stub_for(link: PlatformLink, address: str | None = None, credentials: grpc.ChannelCredentials | None = None) -> Iterator[ingest_pb2_grpc.EvidenceIngestStub]:
    channel = grpc.secure_channel(address or link.address, credentials or link.credentials())
    try:
        yield ingest_pb2_grpc.EvidenceIngestStub(channel)
    finally:
        channel.close()
