"""Uploads from terminals with tus 1.0 (#19, item 2), sent by tuspy, a stock client, over mutual TLS.

The big test: a 200 MB file (generated, streamed, never held in memory) sent in pieces cut at random
offsets, one PATCH cut off mid-body by the client, and the gateway SIGKILLed once mid-way; resumed each
time from the station's HEAD offset; in the end stored exactly once with the right digest, with the
terminal as the device and its officer as the officer."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from simulators.terminal.client import TerminalClient
from tests.terminal_support import custody_entries, init_data, paired_terminal, station, write_config

BIG = 200 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tus(client: TerminalClient) -> TusClient:
    return TusClient(client.api_url + "files", client_cert=(str(client.cert_path), str(client.key_path)))


def _evidence(data: Path, sha256: str) -> list:
    from gateway.evidence.evidence_service import EvidenceService

    with EvidenceService(data, read_only=True) as service:
        return [row for row in service.state.all_evidence() if row.sha256 == sha256]


def _write_random(path: Path, size: int, seed: int) -> str:
    """A file of ``size`` pseudo-random bytes, written 1 MiB at a time; returns its SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1 << 20))
            fh.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


@pytest.fixture
def ca_bundle(monkeypatch):
    """tuspy verifies the server with requests' default store: point it at the station's terminal CA."""
    def use(client: TerminalClient) -> None:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(client.ca_path))
    return use


def test_a_photo_from_tuspy_becomes_evidence_of_the_terminal_and_its_officer(tmp_path, ca_bundle):
    data = init_data(tmp_path)
    with station(write_config(tmp_path, data)) as (_, ready):
        client = paired_terminal(tmp_path, data, ready, officer="200001")
        ca_bundle(client)
        photo = tmp_path / "scene.jpg"
        digest = _write_random(photo, 3_000_000, seed=1)
        uploader = _tus(client).uploader(str(photo), chunk_size=1 << 20, metadata={"filename": "scene.jpg", "filetype": "image/jpeg"},
                                         store_url=False)
        uploader.upload()
        status, headers, _ = client.request("HEAD", uploader.url.split(client.api_url.rstrip("/"))[1], headers={"Tus-Resumable": "1.0.0"})
        assert status == 200 and headers["upload-offset"] == str(3_000_000) and headers["egw-sha256"] == digest
        evidence_id = headers["egw-evidence-id"]
        [row] = _evidence(data, digest)
        assert (row.id, row.kind, row.media_type, row.device_id, row.officer_id) == (
            evidence_id, "photo", "image/jpeg", client.paired["terminal_id"], "200001")
        events = [e for e in custody_entries(data) if e.get("evidence_id") == evidence_id]
        assert {"ingested", "terminal-request"} <= {e["event"] for e in events}
        assert any(e.get("action") == "upload_completed" and e["officer_id"] == "200001" for e in events)


def test_tus_refusals(tmp_path, ca_bundle):
    data = init_data(tmp_path)
    with station(write_config(tmp_path, data)) as (_, ready):
        client = paired_terminal(tmp_path, data, ready, officer="200002")
        other = paired_terminal(tmp_path, data, ready, officer="200003", name="t2")
        status, headers, _ = client.request("OPTIONS", "/files")
        assert status == 204 and headers["tus-version"] == "1.0.0" and "creation" in headers["tus-extension"]
        assert client.request("POST", "/files", headers={"Upload-Length": "10"})[0] == 412  # no Tus-Resumable
        status, headers, _ = client.request("POST", "/files", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
        assert status == 201
        path = "/files/" + headers["location"].rsplit("/", 1)[1]
        patch = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}
        assert client.request("PATCH", path, b"abc", {**patch, "Upload-Offset": "5"})[0] == 409  # not where it stands
        assert client.request("PATCH", path, b"x" * 11, {**patch, "Upload-Offset": "0"})[0] == 413  # past the length
        assert other.request("HEAD", path, headers={"Tus-Resumable": "1.0.0"})[0] == 404  # another terminal's upload
        assert other.request("PATCH", path, b"abc", {**patch, "Upload-Offset": "0"})[0] == 404
        assert client.request("DELETE", path, headers={"Tus-Resumable": "1.0.0"})[0] == 204
        assert client.request("HEAD", path, headers={"Tus-Resumable": "1.0.0"})[0] == 404


def _cut_patch(client: TerminalClient, path: str, source: Path, offset: int, send: int, declared: int) -> None:
    """A PATCH that declares ``declared`` bytes and sends only ``send`` of them before the terminal hangs up."""
    host, port = client.api_url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=client.ssl_context(), timeout=30)
    conn.putrequest("PATCH", path)
    for name, value in {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream",
                        "Upload-Offset": str(offset), "Content-Length": str(declared)}.items():
        conn.putheader(name, value)
    conn.endheaders()
    with open(source, "rb") as fh:
        fh.seek(offset)
        left = send
        while left:
            chunk = fh.read(min(left, 1 << 20))
            conn.send(chunk)
            left -= len(chunk)
    conn.close()


def _offset(client: TerminalClient, path: str) -> int:
    return int(client.request("HEAD", path, headers={"Tus-Resumable": "1.0.0"})[1]["upload-offset"])


@pytest.mark.slow
def test_200_mb_cut_at_random_offsets_and_a_sigkill_is_stored_exactly_once(tmp_path, ca_bundle):
    seed = int(os.environ.get("EGW_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    source = tmp_path / "patrol.mp4"
    digest = _write_random(source, BIG, seed)
    data = init_data(tmp_path)
    config = write_config(tmp_path, data, api_port=_free_port(), pairing_port=_free_port())  # the same URLs after the restart
    with station(config) as (proc, ready):
        client = paired_terminal(tmp_path, data, ready, officer="200004")
        ca_bundle(client)
        tus = _tus(client)
        first = tus.uploader(str(source), chunk_size=8 << 20, metadata={"filename": "patrol.mp4", "filetype": "video/mp4"},
                             store_url=False)
        cuts = sorted(rng.sample(range(1, BIG // 2), 3))
        first.upload(stop_at=cuts[0])
        url = first.url
        path = "/" + url.split("/", 3)[3]
        for cut in cuts[1:]:  # each time a fresh client that knows only the URL: resumes from the station's offset
            tus.uploader(str(source), url=url, chunk_size=8 << 20, store_url=False).upload(stop_at=cut)
            assert _offset(client, path) == cut, f"seed {seed}"
        at = _offset(client, path)
        _cut_patch(client, path, source, at, send=5_000_000 + rng.randrange(1 << 20), declared=BIG - at)
        deadline = time.monotonic() + 10
        while _offset(client, path) == at and time.monotonic() < deadline:  # the station keeps what arrived
            time.sleep(0.05)
        assert _offset(client, path) > at, f"seed {seed}: bytes before the cut were dropped"
        # the gateway is SIGKILLed while a PATCH is streaming
        failures: list[BaseException] = []

        def send_rest() -> None:
            try:
                tus.uploader(str(source), url=url, chunk_size=BIG, store_url=False).upload()
            except (TusCommunicationError, TusUploadFailed, OSError) as exc:
                failures.append(exc)

        sender = threading.Thread(target=send_rest)
        before_kill = _offset(client, path)
        staged = next((data / "blobs" / "tmp" / "terminal-uploads").glob("*.data"))
        sender.start()
        kill_at = before_kill + (BIG - before_kill) // 3 + rng.randrange(1 << 20)
        while staged.stat().st_size < kill_at and sender.is_alive():
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sender.join(60)
        assert failures, f"seed {seed}: the upload finished before the kill; nothing was tested"
    with station(config) as (proc, ready):
        offset = _offset(client, path)
        assert kill_at <= offset < BIG, f"seed {seed}"
        tus.uploader(str(source), url=url, chunk_size=16 << 20, store_url=False).upload()
        status, headers, _ = client.request("HEAD", path, headers={"Tus-Resumable": "1.0.0"})
        assert status == 200 and int(headers["upload-offset"]) == BIG and headers["egw-sha256"] == digest
        rows = _evidence(data, digest)
        assert [(r.id, r.size, r.device_id, r.officer_id) for r in rows] == [
            (headers["egw-evidence-id"], BIG, client.paired["terminal_id"], "200004")], f"seed {seed}"
        from gateway.evidence.store import sha256_file

        blob = data / "blobs" / "sha256" / digest[:2] / digest[2:]
        assert sha256_file(blob) == (digest, BIG)
        assert not list((data / "blobs" / "tmp" / "terminal-uploads").glob("*.data"))  # moved into the store, not copied
        ingested = [e for e in custody_entries(data) if e["event"] == "ingested" and e["evidence_id"] == rows[0].id]
        assert len(ingested) == 1 and json.dumps(ingested[0]["sha256"]) == json.dumps(digest)
