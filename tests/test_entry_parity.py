"""One behaviour from every entry point: a standalone command followed by ``egw sync --once --mqtt URL``
announces, records and delivers exactly what ``egw run`` does with the same device.

For each entry point (ingest, dock over USB/IP, sign with pad and fingerprint reader, rapid test over
ASTM) the same capture is made twice, by a fresh enrolled gateway each time:

  (a) the standalone command (``egw ingest``, ``egw dock``, ``egw sign``, ``egw rapidtest``), then
      ``egw sync --once --mqtt URL``;
  (b) ``egw run`` with the broker and the device configured (``egw ingest`` and ``egw sign`` run
      against its data directory while it runs: the service has no device workflow for them).

A subscriber on ``egw/v1/<gateway_id>/#`` records both. Compared after normalising ids, timestamps
and message ids: the kinds of topic, each item's sequence of states, the results messages, the
custody events and what the reference platform (mutual TLS) stored. Real processes throughout: one
platform and one Mosquitto of our own for the whole module, simulators per entry point.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, egw_env, run_egw, spawn_egw
from tests.mqtt_support import Mosquitto, Subscriber, wait_for
from tests.uplink_support import spawn_platform, stop_process

# what every path must end in, per entry point
FINAL_STATE = {"ingest": "receipted", "dock": "released", "sign": "receipted", "rapidtest": "receipted", "strip": "receipted"}
EXPECTED_ITEMS = {"ingest": 3, "dock": 2, "sign": 6, "rapidtest": 4, "strip": 4}  # strip: two photos, two readings
# topics only `egw run` has: the device cards of its watchers (a standalone command has no watcher)
SERVICE_ONLY_KINDS = {"devices"}
BARRIER = "test-barrier"


@dataclass
class Shared:
    tmp: Path
    platform_data: Path
    address: str
    broker: Mosquitto


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    tmp = tmp_path_factory.mktemp("parity")
    platform, address, _ = spawn_platform(tmp / "platform")
    broker = Mosquitto(tmp).start()
    try:
        yield Shared(tmp, tmp / "platform", address, broker)
    finally:
        broker.kill()
        stop_process(platform)


@dataclass
class Observed:
    """What one path produced, normalised so two gateways' runs compare equal."""

    topic_kinds: set[str]
    state_sequences: list[tuple[str, str, tuple[str, ...]]]  # (kind, media type, states), sorted
    results: list[dict[str, Any]]
    custody: Counter[tuple[str, str]]  # (event, kind of the item or "-") -> count
    custody_ok: bool
    sth_matches_custody: bool
    platform: Counter[tuple[str, str, str]]  # (kind, media type, state on the gateway)
    final_states: Counter[str]


def new_gateway(shared: Shared, name: str) -> tuple[Path, str]:
    gateway_id = f"gw-{name}-{uuid.uuid4().hex[:8]}"  # fresh: no retained message of an earlier run
    data = shared.tmp / gateway_id
    run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", gateway_id, check=True)
    token = json.loads(run_egw("platform", "token", "--data", str(shared.platform_data), "--gateway-id", gateway_id, "--json", check=True).stdout)["token"]
    run_egw("enroll", "--platform", shared.address, "--token", token, "--data-dir", str(data), check=True)
    return data, gateway_id


def subscribe(shared: Shared, gateway_id: str) -> Subscriber:
    return Subscriber(shared.broker.port, f"egw/v1/{gateway_id}/#", client_id=f"parity-{uuid.uuid4().hex[:8]}").start()


def barrier(sub: Subscriber, gateway_id: str) -> list[tuple[str, bytes, bool]]:
    """Everything the broker had accepted from the gateway, as the subscriber received it.

    Called once the gateway's outbox is empty (each message PUBACKed): a marker published now is
    queued to the subscriber after all of them, so when it arrives the earlier ones have too.
    """
    marker = f"egw/v1/{gateway_id}/{BARRIER}/{uuid.uuid4().hex}"
    sub.client.publish(marker, b"{}", qos=1)
    wait_for(lambda: any(t == marker for t, _, _ in sub.snapshot()), 15, "the subscriber to receive the barrier")
    return [m for m in sub.snapshot() if f"/{BARRIER}/" not in m[0]]


def db_rows(data: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(data / "state.db", timeout=10)) as db:
        return db.execute(query, params).fetchall()


def observe(data: Path, gateway_id: str, shared: Shared, messages: list[tuple[str, bytes, bool]]) -> Observed:
    root = f"egw/v1/{gateway_id}/"
    kinds: set[str] = set()
    per_item: dict[str, list[dict[str, Any]]] = {}
    results: list[dict[str, Any]] = []
    sth_sizes: list[int] = []
    for topic, payload, _retained in messages:
        assert topic.startswith(root), topic
        rest = topic[len(root):]
        kind = rest.split("/")[0] if rest.split("/")[0] in ("evidence", "devices") else rest
        kinds.add(kind)
        body = json.loads(payload)
        if kind == "evidence":
            per_item.setdefault(rest.split("/", 1)[1], []).append(body)
        elif kind == "results/rapidtest":
            results.append({k: v for k, v in body.items() if k not in ("messageId", "evidenceId", "signedResult")})
            assert body["signedResult"]["payloadType"] == "application/vnd.egw.manifest.v1+json"
        elif kind == "custody/sth":
            sth_sizes.append(int(body["treeSize"]))
    sequences = sorted((m[0]["summary"]["kind"], m[0]["summary"]["mediaType"], tuple(x["state"] for x in m))
                       for m in per_item.values())
    items = {eid: (kind, media, state) for eid, kind, media, state in
             db_rows(data, "SELECT id, kind, media_type, state FROM evidence")}
    assert not per_item or set(per_item) == set(items), "every item announced, and only the gateway's own"
    custody = Counter((event, items[eid][0] if eid in items else "-") for eid, event in
                      db_rows(data, "SELECT evidence_id, event FROM custody"))
    verify = json.loads(run_egw("custody", "verify", "--data-dir", str(data), "--json").stdout)
    arrived = json.loads(run_egw("platform", "ls", "--data", str(shared.platform_data), "--json", check=True).stdout)
    mine = [a for a in arrived if a["gateway_id"] == gateway_id]
    assert all(a["evidence_id"] in items for a in mine)
    return Observed(
        topic_kinds=kinds - SERVICE_ONLY_KINDS, state_sequences=sequences, results=sorted(results, key=json.dumps),
        custody=custody, custody_ok=bool(verify["ok"]), sth_matches_custody=bool(sth_sizes) and sth_sizes[-1] == verify["entries"],
        platform=Counter(items[a["evidence_id"]] for a in mine), final_states=Counter(s for _, _, s in items.values()),
    )


def outbox_left(data: Path) -> int:
    return int(db_rows(data, "SELECT COUNT(*) FROM outbox")[0][0])


def settled(data: Path, entry: str) -> bool:
    states = [s for (s,) in db_rows(data, "SELECT state FROM evidence")]
    return len(states) == EXPECTED_ITEMS[entry] and all(s == FINAL_STATE[entry] for s in states)


# ---- the two paths ----------------------------------------------------------------------------

def standalone(shared: Shared, entry: str, command: Callable[[Path], None]) -> Observed:
    data, gateway_id = new_gateway(shared, f"{entry}-cmd")
    sub = subscribe(shared, gateway_id)
    try:
        command(data)
        sync = run_egw("sync", "--once", "--mqtt", shared.broker.url, "--data-dir", str(data), "--json", timeout=120)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        drained = json.loads(sync.stdout)["mqtt"]
        assert drained["ok"] and outbox_left(data) == 0, drained
        assert settled(data, entry), db_rows(data, "SELECT kind, state, last_error FROM evidence")
        messages = barrier(sub, gateway_id)
        assert len(messages) >= drained["delivered"]
        return observe(data, gateway_id, shared, messages)
    finally:
        sub.stop()


def in_service(shared: Shared, entry: str, devices: str, trigger: Callable[[Path], None] | None = None) -> Observed:
    data, gateway_id = new_gateway(shared, f"{entry}-run")
    config = shared.tmp / f"{gateway_id}.toml"
    config.write_text(f'data_dir = "{data}"\n[mqtt]\nurl = "{shared.broker.url}"\n[screen]\nlisten = ""\n'
                      f'[metrics]\nlisten = ""\n{devices}')
    sub = subscribe(shared, gateway_id)
    log = shared.tmp / f"{gateway_id}.log"
    with open(log, "wb") as log_file:  # a file, not a pipe: nobody reads the log while it runs
        gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)], cwd=REPO, env=egw_env(),
                                   stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        assert gateway.stdout is not None
        assert gateway.stdout.readline(), log.read_text(errors="replace")[-3000:]
        if trigger is not None:
            trigger(data)
        wait_for(lambda: settled(data, entry), 60, f"egw run to finish the {entry} items")

        def all_out() -> bool:
            seen = sub.snapshot()
            sizes = [json.loads(p)["treeSize"] for t, p, _ in seen if t.endswith("/custody/sth")]
            entries = db_rows(data, "SELECT COUNT(*) FROM custody")[0][0]
            return outbox_left(data) == 0 and bool(sizes) and int(sizes[-1]) == entries
        wait_for(all_out, 30, "egw run to deliver its outbox and the latest tree head")
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(20) == 0
        return observe(data, gateway_id, shared, barrier(sub, gateway_id))
    finally:
        sub.stop()
        stop_process(gateway)


def assert_same(entry: str, alone: Observed, served: Observed) -> None:
    # the bug this guards against: a standalone command announced nothing at all
    assert {"evidence", "custody/sth", "state"} <= alone.topic_kinds, (entry, alone.topic_kinds)
    assert alone.topic_kinds == served.topic_kinds, entry
    assert alone.state_sequences == served.state_sequences, entry
    assert alone.results == served.results, entry
    assert alone.custody == served.custody, entry
    assert alone.custody_ok and served.custody_ok
    assert alone.sth_matches_custody and served.sth_matches_custody, entry
    assert alone.platform == served.platform and sum(alone.platform.values()) == EXPECTED_ITEMS[entry], entry
    assert alone.final_states == served.final_states == Counter({FINAL_STATE[entry]: EXPECTED_ITEMS[entry]})


# ---- the entry points -----------------------------------------------------------------------------
# Each runs its two paths side by side (two gateways, a simulator each): the wall time is mostly waiting
# (pen strokes at real speed, poll intervals), so this keeps the module well under a minute and a half.

def side_by_side(alone: Callable[[], Observed], served: Callable[[], Observed]) -> tuple[Observed, Observed]:
    with ThreadPoolExecutor(2, thread_name_prefix="parity") as pool:
        first, second = pool.submit(alone), pool.submit(served)
        return first.result(), second.result()


def test_ingest(shared: Shared) -> None:
    sources = shared.tmp / "sources"
    sources.mkdir(exist_ok=True)
    for i, (name, body) in enumerate((("note.txt", b"field note\n"), ("photo.jpg", b"\xff\xd8\xff\xe0" + bytes(200)),
                                      ("clip.bin", bytes(range(256)) * 8))):
        (sources / name).write_bytes(body + bytes([i]))

    def ingest(data: Path) -> None:
        proc = run_egw("ingest", str(sources), "--device-id", "cam-7", "--officer-id", "o-1", "--data-dir", str(data))
        assert proc.returncode == 0, proc.stderr

    alone, served = side_by_side(lambda: standalone(shared, "ingest", ingest),
                                 lambda: in_service(shared, "ingest", "", trigger=ingest))
    assert_same("ingest", alone, served)
    assert {seq for _, _, seq in alone.state_sequences} == {("queued", "uploading", "receipted")}


@contextmanager
def simulator(*args: str, scheme: str, **popen: Any) -> Iterator[str]:
    """``egw simulate ARGS`` in a child process; yields the URL it prints first."""
    proc = spawn_egw("simulate", *args, **popen)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith(scheme), (url, proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
        yield url
    finally:
        stop_process(proc)


def recorders(shared: Shared, name: str) -> Any:
    volumes = shared.tmp / f"volumes-{name}"
    return volumes, simulator("bodycam", "--listen", "127.0.0.1:0", "--volumes", str(volumes), "--small", "--minutes",
                              "0.05", "--count", "1", "--recordings", "2", scheme="usbip://", stdin=subprocess.PIPE)


def test_dock(shared: Shared) -> None:
    volumes_a, recorders_a = recorders(shared, "cmd")
    volumes_b, recorders_b = recorders(shared, "run")
    with recorders_a as url_a, recorders_b as url_b:
        def dock(data: Path) -> None:
            proc = run_egw("dock", "--usbip", url_a, "--volumes", str(volumes_a / "{serial}"), "--data-dir", str(data),
                           "--json", timeout=180)
            assert proc.returncode == 0, proc.stderr

        station = (f'[[devices]]\nkind = "bodycam"\nname = "dock"\nusbip = "{url_b.removeprefix("usbip://")}"\n'
                   f'volumes = "{volumes_b}/{{serial}}"\n')
        alone, served = side_by_side(lambda: standalone(shared, "dock", dock), lambda: in_service(shared, "dock", station))
    assert_same("dock", alone, served)
    assert {seq for _, _, seq in alone.state_sequences} == {("queued", "uploading", "receipted", "released")}


def signing_devices() -> Any:
    return (simulator("signpad", "--listen", "127.0.0.1:0", "--signer", "Li", scheme="usbip://"),  # short: real pen speed
            simulator("fingerprint", "--tcp", "0", "--baud", "0", "--finger", "present", "--quality", "0.9", scheme="socket://"))


def test_sign(shared: Shared) -> None:
    document = shared.tmp / "record.txt"
    document.write_text("on-site inspection record, stall 17\n")

    def sign(pad_url: str, finger_url: str) -> Callable[[Path], None]:
        def run(data: Path) -> None:
            proc = run_egw("sign", "--document", str(document), "--signer", "Li Wei", "--signpad", pad_url,
                           "--fingerprint", finger_url, "--place", "Market hall 3", "--data-dir", str(data), "--json",
                           timeout=120)
            assert proc.returncode == 0, proc.stderr
        return run

    (pad_a, finger_a), (pad_b, finger_b) = signing_devices(), signing_devices()
    with pad_a as pad_url_a, finger_a as finger_url_a, pad_b as pad_url_b, finger_b as finger_url_b:
        station = (f'[[devices]]\nkind = "signpad"\nname = "pad"\nusbip = "{pad_url_b.removeprefix("usbip://").split("/")[0]}"\n'
                   f'[[devices]]\nkind = "fingerprint"\nname = "finger"\nport = "{finger_url_b}"\n')
        alone, served = side_by_side(lambda: standalone(shared, "sign", sign(pad_url_a, finger_url_a)),
                                     lambda: in_service(shared, "sign", station, trigger=sign(pad_url_b, finger_url_b)))
    assert_same("sign", alone, served)


def analyzer() -> Any:
    return simulator("rapidtest", "--tests", "2", "--tcp", "0", "--interval", "0.2", "--seed", "7", "--reply-timeout", "2",
                     "--retry-delay", "0.2", scheme="socket://")


def test_rapidtest(shared: Shared) -> None:
    with analyzer() as url_a, analyzer() as url_b:
        def record(data: Path) -> None:
            proc = run_egw("rapidtest", "--port", url_a, "--count", "2", "--timeout", "60", "--data-dir", str(data),
                           timeout=120)
            assert proc.returncode == 0, proc.stderr

        station = f'[[devices]]\nkind = "rapidtest"\nname = "analyzer"\nport = "{url_b}"\n'
        alone, served = side_by_side(lambda: standalone(shared, "rapidtest", record),
                                     lambda: in_service(shared, "rapidtest", station))
    assert_same("rapidtest", alone, served)
    assert len(alone.results) == 2 and "results/rapidtest" in alone.topic_kinds


def test_strip_read_record_announces_every_item_it_makes(shared: Shared) -> None:
    """No device of ``egw run`` reads strips: the command alone, then sync, announces the photo and the reading."""
    photos = shared.tmp / "strips"
    run_egw("simulate", "strips", "--out", str(photos), "--count", "2", "--seed", "3", check=True)

    def read(data: Path) -> None:
        proc = run_egw("strip", "read", *map(str, sorted(photos.glob("*.jpg"))), "--record", "--sample", "S9",
                       "--data-dir", str(data))
        assert proc.returncode == 0, proc.stderr

    alone = standalone(shared, "strip", read)
    assert {"evidence", "custody/sth", "state"} <= alone.topic_kinds and alone.custody_ok and alone.sth_matches_custody
    assert [(kind, seq) for kind, _, seq in alone.state_sequences] == \
        [("photo", ("queued", "uploading", "receipted"))] * 2 + [("result", ("queued", "uploading", "receipted"))] * 2
    assert sum(alone.platform.values()) == 4


# ---- the hooks themselves (in process, real SQLite) --------------------------------------------------

def _analyzer_result(sample: str) -> Any:
    import hashlib
    from datetime import datetime, timezone

    from drivers.rapidtest import Judgement, RapidTestResult

    text = f"H|\\^&|||RT-9^1.0^SN42\rO|1|{sample}\rR|1|^^^OPPEST^organophosphates|62.5|%|0^50|H||F\rL|1|N\r".encode()
    return RapidTestResult(
        instrument_id="SN42", instrument_model="RT-9", instrument_version="1.0", message_id=f"M-{sample}", sample_id=sample,
        sample_description="spinach", item_code="OPPEST", item_name="organophosphates", method="enzyme inhibition",
        standard="GB/T 5009.199-2003", value="62.5", unit="%", reference_range="0^50", cutoff="50", abnormal_flag="H",
        status="F", judgement=Judgement.POSITIVE, operator="op", started_at=None,
        tested_at=datetime(2026, 5, 1, 9, 30, tzinfo=timezone.utc), comments=(), result_index=1, results_in_message=1,
        termination_code="N", message_digest=hashlib.sha256(text).hexdigest(), message_text=text, transcript=b"\x05" + text)


def _outbox(data: Path) -> list[tuple[str, str]]:
    return [(lane, topic.split("/", 3)[3]) for lane, topic in db_rows(data, "SELECT lane, topic FROM outbox ORDER BY id")]


def test_a_result_message_exists_exactly_when_its_evidence_does(tmp_path: Path) -> None:
    """Queued in the ingest transaction: a rolled-back result leaves no message; a re-sent one adds none."""
    from gateway.evidence.identity import init_identity
    from gateway.evidence.evidence_service import EvidenceService
    from gateway.workflows.rapidtest import RESULT_MEDIA_TYPE, RapidTestPipeline

    init_identity(tmp_path / "gw")
    data = tmp_path / "gw"
    with EvidenceService(data) as service:
        pipeline = RapidTestPipeline(service)

        def crash_on_results(db: sqlite3.Connection, row: Any, details: dict[str, Any]) -> None:
            if row.media_type == RESULT_MEDIA_TYPE:
                raise RuntimeError("power cut inside the result's transaction")

        service.transition_hooks.append(crash_on_results)
        with pytest.raises(RuntimeError):
            pipeline.record(_analyzer_result("S1"))
        service.transition_hooks.remove(crash_on_results)
        assert [kind for (kind,) in db_rows(data, "SELECT kind FROM evidence")] == ["document"]  # the transcript only
        assert all(lane != "results" for lane, _ in _outbox(data))

        recorded = pipeline.record(_analyzer_result("S1"))  # the instrument sends it again
        again = RapidTestPipeline(service).record(_analyzer_result("S1"))
    assert again.duplicate and again.evidence_id == recorded.evidence_id
    results = [json.loads(p) for (p,) in db_rows(data, "SELECT payload FROM outbox WHERE lane = 'results'")]
    assert len(results) == 1 and results[0]["evidenceId"] == recorded.evidence_id and results[0]["sampleId"] == "S1"


def test_attaching_the_outbox_again_adds_no_second_message(tmp_path: Path) -> None:
    """``egw run`` and older callers still call ``attach_to_service`` on a service that attached itself."""
    from gateway.evidence.identity import init_identity
    from gateway.evidence.manifest import ManifestInput
    from gateway.evidence.evidence_service import EvidenceService
    from gateway.uplink import outbox as ob

    init_identity(tmp_path / "gw")
    with EvidenceService(tmp_path / "gw") as service:
        ob.attach_to_service(service)
        ob.attach_to_service(service, quota_bytes=1 << 20)
        item = service.ingest_bytes(b"one capture", ManifestInput(source_path="a.jpg", device_id="cam1"))
        service.transition(item.evidence_id, "uploading")
    assert _outbox(tmp_path / "gw") == [("evidence", f"evidence/{item.evidence_id}")] * 2
