"""The uploader against a real platform on loopback (real TLS): receipts, resume, faults, ordering."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from gateway.evidence.manifest import ManifestInput
from gateway.evidence.receipt import verify_receipt
from gateway.evidence import dsse
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.state import EvidenceRow
from gateway.uplink.uploader import CHUNK_SIZE, TokenBucket, Uploader, UploadSettings, parse_rate
from simulators.platform.cli import list_received
from tests.conftest import run_egw, spawn_egw
from tests.uplink_support import ingest_random, make_gateway, platform_server, spawn_platform, stop_process

pytestmark = pytest.mark.timeout(60)


def _run(gw_dir: Path, **settings: object) -> list:  # type: ignore[type-arg]
    uploader = Uploader(gw_dir, UploadSettings(**settings))  # type: ignore[arg-type]
    return asyncio.run(uploader.run_once())


def _row(gw_dir: Path, evidence_id: str) -> EvidenceRow:
    with EvidenceService(gw_dir) as svc:
        return svc.state.get(evidence_id)


def test_upload_is_receipted_verified_and_idempotent(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        big = ingest_random(gw, 3 * CHUNK_SIZE + 12345, "video.mp4")
        small = ingest_random(gw, 0, "empty.txt", data=b"")
        outcomes = _run(gw.data_dir)
        assert {o.evidence_id: o.status for o in outcomes} == {big.evidence_id: "receipted", small.evidence_id: "receipted"}
        row = _row(gw.data_dir, big.evidence_id)
        assert row.state == "receipted" and row.receipt and row.last_error is None
        receipt = verify_receipt(dsse.Envelope.from_bytes(row.receipt), gw.link.platform_certificate,
                                 gw.link.identity.ca_certificates, evidence_id=big.evidence_id, sha256=big.sha256, size=big.size,
                                 gateway_id=gw.link.identity.gateway_id)
        assert receipt.platform_id == server.pki.platform_id and receipt.gateway_id == gw.link.identity.gateway_id
        with EvidenceService(gw.data_dir) as svc:
            events = svc.custody.events_for(big.evidence_id)
        assert [e["event"] for e in events][-1] == "receipted"
        assert events[-1]["receipt_id"] == receipt.receipt_id
        stored = tmp_path / "p" / "blobs" / "sha256" / big.sha256[:2] / big.sha256[2:]
        assert stored.read_bytes() == (tmp_path / "src-g-video.mp4").read_bytes()
        # the same item offered again: the original receipt, nothing new stored
        with EvidenceService(gw.data_dir) as svc:
            svc.state.db.execute("UPDATE evidence SET state = 'queued', receipt = NULL WHERE id = ?", (big.evidence_id,))
        again = _run(gw.data_dir)
        assert [o.receipt_id for o in again] == [receipt.receipt_id] and again[0].bytes_sent == 0
        assert len(list_received(tmp_path / "p")) == 2
        assert _run(gw.data_dir) == []


def test_same_file_from_two_gateways_is_stored_once_with_two_receipts(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        data = bytes(range(256)) * 4096
        gws = [make_gateway(tmp_path, name, tmp_path / "p", server.address) for name in ("a", "b")]
        items = [ingest_random(gw, 0, "same.bin", data=data) for gw in gws]
        for gw in gws:
            assert [o.status for o in _run(gw.data_dir)] == ["receipted"]
        received = list_received(tmp_path / "p")
        assert len(received) == 2 and len({r["receipt_id"] for r in received}) == 2
        assert {r["gateway_id"] for r in received} == {gw.link.identity.gateway_id for gw in gws}
        assert {r["evidence_id"] for r in received} == {i.evidence_id for i in items}
        blobs = [p for p in (tmp_path / "p" / "blobs" / "sha256").glob("*/*")]
        assert len(blobs) == 1 and blobs[0].read_bytes() == data


@pytest.mark.parametrize("fault", ["wrong-key", "alter"])
def test_forged_or_altered_receipt_is_not_accepted(tmp_path: Path, fault: str) -> None:
    with platform_server(tmp_path / "p", receipt_fault=fault) as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 50_000, "r.json")
        outcomes = _run(gw.data_dir)
        assert [o.status for o in outcomes] == ["failed"]
        assert outcomes[0].attempts == 1  # a bad receipt is not retried blindly
        row = _row(gw.data_dir, item.evidence_id)
        assert row.state == "queued" and row.receipt is None
        assert row.last_error and "receipt rejected" in row.last_error
        with EvidenceService(gw.data_dir) as svc:
            assert "receipted" not in [e["event"] for e in svc.custody.events_for(item.evidence_id)]


def test_corrupted_chunk_is_rejected_resent_and_ends_verified(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 2 * CHUNK_SIZE + 777, "v.mp4")
        flipped: list[int] = []

        def corrupt_once(row: EvidenceRow, offset: int, data: bytes) -> bytes:
            if offset == CHUNK_SIZE and not flipped:
                flipped.append(offset)
                return data[:10] + bytes([data[10] ^ 0x01]) + data[11:]
            return data

        uploader = Uploader(gw.data_dir, UploadSettings(backoff_base_s=0.01), chunk_filter=corrupt_once)
        outcomes = asyncio.run(uploader.run_once())
        assert flipped == [CHUNK_SIZE]
        assert [o.status for o in outcomes] == ["receipted"] and outcomes[0].attempts == 2
        row = _row(gw.data_dir, item.evidence_id)
        assert row.state == "receipted"
        stored = tmp_path / "p" / "blobs" / "sha256" / item.sha256[:2] / item.sha256[2:]
        assert stored.read_bytes() == (tmp_path / "src-g-v.mp4").read_bytes()


def test_platform_killed_mid_upload_resumes_at_committed_offset(tmp_path: Path) -> None:
    pdata = tmp_path / "p"
    proc, address, _ = spawn_platform(pdata)
    try:
        gw = make_gateway(tmp_path, "g", pdata, address)
        size = 24 * CHUNK_SIZE + 4321
        item = ingest_random(gw, size, "long.mp4")
        rate = 8 * CHUNK_SIZE  # bytes/s: the kill lands mid-upload
        uploader = Uploader(gw.data_dir, UploadSettings(bandwidth=rate, backoff_base_s=0.2, backoff_max_s=0.5, max_attempts=40))
        result: list = []  # type: ignore[type-arg]
        thread = threading.Thread(target=lambda: result.extend(asyncio.run(uploader.run_once())))
        thread.start()
        time.sleep(1.2)
        stop_process(proc, signal.SIGKILL)
        time.sleep(0.3)
        proc, address2, _ = spawn_platform(pdata, listen=address)
        assert address2 == address
        thread.join(45)
        assert not thread.is_alive()
        (outcome,) = result
        assert outcome.status == "receipted", outcome.error
        resumed = [o for o in outcome.resumed_from if o > 0]
        assert resumed, f"never resumed: {outcome.resumed_from}"
        assert outcome.resumed_from[0] == 0 and 0 < resumed[0] < size
        resent = outcome.bytes_sent - size
        print(f"resumed_from={outcome.resumed_from} re-sent={resent} bytes")
        in_flight_window = 4 * CHUNK_SIZE  # HTTP/2 flow-control window + socket buffers at this rate
        assert 0 <= resent < CHUNK_SIZE + in_flight_window, (resent, outcome.resumed_from)
        row = _row(gw.data_dir, item.evidence_id)
        assert row.state == "receipted"
        stored = pdata / "blobs" / "sha256" / item.sha256[:2] / item.sha256[2:]
        assert stored.read_bytes() == (tmp_path / "src-g-long.mp4").read_bytes()
    finally:
        stop_process(proc)


def test_small_items_overtake_a_large_upload_in_progress(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        # 12 s at the cap: a stand-in for 1 GiB at a real uplink rate (200 small items take ~3 s quiet, 6+ under load)
        large = ingest_random(gw, 192 * CHUNK_SIZE, "shift.mp4")
        # one general slot (busy with the video all along) + the reserved express slots
        uploader = Uploader(gw.data_dir, UploadSettings(concurrency=1, express_slots=2, bandwidth=16 * CHUNK_SIZE))
        result: list = []  # type: ignore[type-arg]
        thread = threading.Thread(target=lambda: result.extend(asyncio.run(uploader.run_once())))
        thread.start()
        deadline = time.monotonic() + 10
        while _row(gw.data_dir, large.evidence_id).state != "uploading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        smalls = set()
        with EvidenceService(gw.data_dir) as svc:  # queued while every general slot is busy
            for i in range(200):
                smalls.add(svc.ingest_bytes(f'{{"sample": {i}, "result": "negative"}}'.encode(),
                                            ManifestInput(source_path=f"results/{i}.json")).evidence_id)
        thread.join(50)
        assert not thread.is_alive()
        finished = {o.evidence_id: o.finished_at for o in result}
        assert all(o.status == "receipted" for o in result) and set(finished) == smalls | {large.evidence_id}
        last_small = max(finished[s] for s in smalls)
        print(f"200 small items done {finished[large.evidence_id] - last_small:.1f} s before the large one")
        assert last_small < finished[large.evidence_id]


def test_flagged_and_small_items_go_first(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        big = ingest_random(gw, 2 * CHUNK_SIZE, "old-big.mp4")
        mid = ingest_random(gw, 200_000, "photo.jpg")
        flagged = ingest_random(gw, 3 * CHUNK_SIZE, "flagged.mp4", priority=1)
        tiny = ingest_random(gw, 100, "result.json")
        outcomes = _run(gw.data_dir, concurrency=1, express_slots=0)
        assert [o.evidence_id for o in outcomes] == [flagged.evidence_id, tiny.evidence_id, mid.evidence_id, big.evidence_id]


def test_sync_cli_reports_per_item_and_fails_when_undelivered(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 5000, "a.bin")
        ok = run_egw("sync", "--once", "--data-dir", str(gw.data_dir), "--json", timeout=60)
        assert ok.returncode == 0, ok.stderr
        report = json.loads(ok.stdout)
        assert [o["status"] for o in report["outcomes"]] == ["receipted"] and report["undelivered"] == []
        ingest_random(gw, 5000, "b.bin")
    # platform gone: the item stays queued, exit status says so
    down = run_egw("sync", "--once", "--data-dir", str(gw.data_dir), "--max-attempts", "2", timeout=60)
    assert down.returncode == 1
    assert "FAILED" in down.stdout and "UNAVAILABLE" in down.stdout and "1 left undelivered" in down.stdout
    assert _row(gw.data_dir, item.evidence_id).state == "receipted"


def test_token_bucket_and_rate_parsing() -> None:
    assert parse_rate("8M") == 8_000_000 and parse_rate("1MiB/s") == 1 << 20 and parse_rate("500k") == 500_000
    with pytest.raises(ValueError):
        parse_rate("fast")

    async def measure() -> float:
        bucket = TokenBucket(4_000_000, burst=100_000)
        start = time.monotonic()
        for _ in range(20):
            await bucket.take(100_000)
        return time.monotonic() - start

    elapsed = asyncio.run(measure())
    assert 0.4 < elapsed < 0.8  # 2 MB at 4 MB/s after a 100 kB burst


def test_gateway_killed_mid_upload_resumes_on_next_sync(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        size = 16 * CHUNK_SIZE
        item = ingest_random(gw, size, "cam.mp4")
        proc = spawn_egw("sync", "--once", "--data-dir", str(gw.data_dir), "--bandwidth", str(8 * CHUNK_SIZE))
        partial = tmp_path / "p" / "partial" / gw.link.identity.gateway_id / item.sha256
        try:
            deadline = time.monotonic() + 20
            while not (partial.exists() and partial.stat().st_size >= 4 * CHUNK_SIZE):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
        finally:
            stop_process(proc, signal.SIGKILL)
        assert _row(gw.data_dir, item.evidence_id).state == "uploading"  # what a kill -9 leaves behind
        (outcome,) = _run(gw.data_dir)
        assert outcome.status == "receipted"
        assert outcome.resumed_from[0] >= 4 * CHUNK_SIZE  # never from zero after a break
        assert outcome.bytes_sent == size - outcome.resumed_from[0]
        assert _row(gw.data_dir, item.evidence_id).state == "receipted"


def test_continuous_mode_delivers_new_items_and_stops_promptly(tmp_path: Path) -> None:
    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        big = ingest_random(gw, 64 * CHUNK_SIZE, "long.mp4")
        delivered: list[str] = []

        async def scenario() -> float:
            stop = asyncio.Event()
            uploader = Uploader(gw.data_dir, UploadSettings(bandwidth=8 * CHUNK_SIZE),
                                on_outcome=lambda o: delivered.append(o.evidence_id))
            task = asyncio.ensure_future(uploader.run(stop, idle_poll_s=0.05))
            await asyncio.sleep(0.3)
            item = await asyncio.to_thread(ingest_random, gw, 500, "late.json")
            for _ in range(200):
                if item.evidence_id in delivered:
                    break
                await asyncio.sleep(0.05)
            assert delivered == [item.evidence_id]  # the big one is still uploading at 8 MiB/s
            stop.set()
            started = time.monotonic()
            await asyncio.wait_for(task, 10)
            return time.monotonic() - started

        assert asyncio.run(scenario()) < 2.0
        row = _row(gw.data_dir, big.evidence_id)
        assert row.state == "queued" and "stopped" in (row.last_error or "")
        (outcome,) = _run(gw.data_dir)  # and it resumes where the platform committed
        assert outcome.status == "receipted" and outcome.resumed_from[0] > 0


def test_platform_with_another_ca_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    from gateway.uplink.link import load_link

    with platform_server(tmp_path / "p") as server, platform_server(tmp_path / "other") as other:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 1000, "a.bin")
        uploader = Uploader(gw.data_dir, UploadSettings(max_attempts=1), link=load_link(gw.data_dir, other.address))
        (outcome,) = asyncio.run(uploader.run_once())
        assert outcome.status == "failed" and outcome.error and outcome.error.startswith("UNAVAILABLE")
        assert "handshake" in outcome.error.lower()
        assert _row(gw.data_dir, item.evidence_id).state == "queued"
        assert list_received(tmp_path / "other") == []


def test_a_gateway_clock_an_hour_early_is_named_as_the_cause_and_delivery_resumes_once_it_is_right(tmp_path: Path) -> None:
    """Issue 9's clock fault, for real: ``egw sync`` under libfaketime with its wall clock an hour early. To it the
    platform's certificate, issued minutes ago, is not yet valid: the TLS handshake fails. The error must name the
    clock (it said "re-enrol with egw enroll", which would not help), the item must stay queued, nothing may reach
    the platform, and the next run with the clock right delivers it."""
    from bench.faults import faketime_env
    from tests.conftest import egw_env

    with platform_server(tmp_path / "p") as server:
        gw = make_gateway(tmp_path, "g", tmp_path / "p", server.address)
        item = ingest_random(gw, 5000, "a.bin")
        early = egw_env(**faketime_env(offset="-1h"))
        down = run_egw("sync", "--once", "--max-attempts", "1", "--data-dir", str(gw.data_dir), "--json", env=early, timeout=60)
        assert down.returncode == 1, down.stderr
        (outcome,) = json.loads(down.stdout)["outcomes"]
        assert outcome["status"] == "failed" and "not yet valid" in outcome["error"], outcome
        assert "clock" in outcome["error"] and "re-enrol" not in outcome["error"], outcome["error"]
        assert _row(gw.data_dir, item.evidence_id).state == "queued" and list_received(tmp_path / "p") == []
        ok = run_egw("sync", "--once", "--data-dir", str(gw.data_dir), "--json", timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert _row(gw.data_dir, item.evidence_id).state == "receipted"


def test_a_certificate_outside_its_validity_by_our_clock_is_refused_naming_the_clock() -> None:
    """The other half of a -1 h jump: an upload already connected gets its receipt, and the receipt signer's
    certificate is checked at the gateway's (wrong) time. A certificate that starts an hour from now is what a
    fresh one looks like to a clock an hour early: refused, saying when it is valid and that the clock may be wrong."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from gateway.errors import VerificationError
    from gateway.evidence.identity import verify_certificate_chain

    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "platform")])

    def cert(start: dt.datetime, end: dt.datetime) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                .sign(key, hashes.SHA256()))

    with pytest.raises(VerificationError, match=r"not yet valid .*valid from .*clock is wrong"):
        verify_certificate_chain(cert(now + dt.timedelta(hours=1), now + dt.timedelta(days=1)), [], [])
    with pytest.raises(VerificationError, match=r"has expired .*valid until .*clock is wrong"):
        verify_certificate_chain(cert(now - dt.timedelta(days=2), now - dt.timedelta(hours=1)), [], [])
    assert "self-signed" in verify_certificate_chain(cert(now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)), [], [])


def test_retry_schedule_backs_off_per_item_and_wakes_what_waited_for_the_platform() -> None:
    import random

    from gateway.uplink.uploader import RetrySchedule

    schedule = RetrySchedule(first_s=2.0, max_s=60.0, rng=random.Random(1))
    delays = [schedule.failed("a", 0.0, unreachable=True) for _ in range(8)]
    for n, delay in enumerate(delays):  # 2, 4, 8, … capped at 60, each jittered down to half at most
        nominal = min(60.0, 2.0 * 2 ** n)
        assert nominal / 2 <= delay <= nominal, (n, delays)
    assert schedule.release_due(1000.0) == ["a"] and "a" not in schedule

    schedule.failed("unreachable", 0.0, unreachable=True)
    schedule.failed("refused", 0.0, unreachable=False)  # e.g. the platform rejected this item's digest
    assert schedule.release_due(0.5) == []
    schedule.succeeded("other")  # some upload was receipted: the platform is back
    assert schedule.release_due(0.5) == ["unreachable"]
    assert "refused" in schedule  # a bad item keeps its back-off: no spinning on it


@pytest.mark.timeout(150)  # ~15-20 s alone: up to 60 quick tries while the platform is down, two platform starts
def test_item_that_failed_while_the_platform_was_down_goes_as_soon_as_the_platform_is_back(tmp_path: Path) -> None:
    """A platform restart used to park failed items for a fixed 60 s after it was back (bench/faults.py saw a
    77 s settle after a 10 s outage). The retry wait is set far beyond this test's timeout, so only the
    "platform reachable again" wake-up can deliver the first item."""
    pdata = tmp_path / "p"
    proc, address, _ = spawn_platform(pdata)
    gw = make_gateway(tmp_path, "g", pdata, address)
    first = ingest_random(gw, 3000, "before-outage.json")
    stop_process(proc, signal.SIGKILL)
    outcomes: list = []  # type: ignore[type-arg]

    async def scenario() -> None:
        stop = asyncio.Event()
        # Quick tries within one delivery: the second item must outlast the channel's reconnect back-off
        # (up to 4 s + jitter, gateway.uplink.link). 20 tries with full jitter capped at 0.5 s spanned only
        # ~5 s: when they all failed first, both items were parked for the 600 s retry (a rare CI hang).
        uploader = Uploader(gw.data_dir, UploadSettings(max_attempts=60, backoff_base_s=0.2, backoff_max_s=0.5),
                            on_outcome=outcomes.append)
        task = asyncio.ensure_future(uploader.run(stop, idle_poll_s=0.05, first_retry_s=600, retry_after_s=600))
        try:
            while not outcomes:
                await asyncio.sleep(0.05)
            assert outcomes[0].status == "failed" and outcomes[0].unreachable, outcomes[0]
            restarted, again, _ = await asyncio.to_thread(spawn_platform, pdata, listen=address)
            assert again == address
            try:
                second = await asyncio.to_thread(ingest_random, gw, 2000, "after-outage.json")
                while {first.evidence_id, second.evidence_id} - {o.evidence_id for o in outcomes if o.status == "receipted"}:
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
                await asyncio.to_thread(stop_process, restarted)
        finally:
            stop.set()

    asyncio.run(scenario())
    assert _row(gw.data_dir, first.evidence_id).state == "receipted"
    assert [o.status for o in outcomes if o.evidence_id == first.evidence_id] == ["failed", "receipted"]
