"""The link against the machine's shared Mosquitto: lanes, retained state, tree heads, drain, faults."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gateway.evidence.identity import init_identity, load_identity
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.state import State
from gateway.uplink import outbox as ob
from gateway.uplink.mqtt_config import LinkConfig, parse_broker_url
from gateway.uplink.mqtt_link import MqttLink, drain_outbox, link_status
from gateway.errors import ConfigError
from protos.egw.v1 import events_pb2
from simulators.platform_mqtt import PlatformMqtt
from tests.mqtt_support import SHARED_BROKER, Mosquitto, Subscriber, free_port, wait_for
from tests.test_mqtt_commands import clear_retained


@pytest.fixture
def gw(tmp_path: Path):
    ident = init_identity(tmp_path / "gw")
    yield tmp_path / "gw", ident.gateway_id
    clear_retained(ident.gateway_id)


def test_broker_urls_parse_and_bad_ones_say_what_is_wrong():
    url = parse_broker_url("mqtts://user:p%40ss@broker.example:8884")
    assert (url.tls, url.host, url.port, url.username, url.password) == (True, "broker.example", 8884, "user", "p@ss")
    assert parse_broker_url("mqtt://10.0.0.1").port == 1883 and parse_broker_url("mqtts://h").port == 8883
    assert "p@ss" not in url.redacted()
    for bad in ("http://x", "mqtt://", "mqtt://h:99999"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)


def test_everything_queued_arrives_with_retained_state_and_a_verified_tree_head(gw, tmp_path: Path):
    data_dir, gid = gw
    with EvidenceService(data_dir) as service:
        ob.attach_to_service(service)
        items = [service.ingest_bytes(f"clip {i}".encode(), ManifestInput(source_path=f"c{i}.mp4", device_id="cam1")).evidence_id
                 for i in range(3)]
    gateway_cert = load_identity(data_dir).certificate
    platform = PlatformMqtt(tmp_path / "platform", SHARED_BROKER, gateway_keys={gid: gateway_cert}).start()
    link = MqttLink(data_dir, LinkConfig(SHARED_BROKER)).start()
    try:
        assert link.wait_connected(10)
        for i in range(50):
            link.put_result(events_pb2.RapidTestResult(message_id=f"r{i}", sample_id=f"S{i}"))
        link.put_device_state(events_pb2.DeviceState(device_id="cam1", state="docked", battery_percent=80))
        assert link.wait_drained(10)
        prefix = f"egw/v1/{gid}/"
        wait_for(lambda: len(platform.records(prefix + "results/")) == 50, 5, "50 results")
        assert [r.message_id for r in platform.records(prefix + "results/")] == [f"r{i}" for i in range(50)]
        assert {r.topic.rsplit("/", 1)[1] for r in platform.records(prefix + "evidence/")} == set(items)
        sth = platform.records(prefix + "custody/sth")
        assert sth and sth[-1].verified is True and sth[-1].json()["treeSize"] == "3"
        state = platform.records(prefix + "state")
        assert state[-1].json()["state"] == "online"
        with State(data_dir) as db:
            assert ob.usage(db.db).count == 0
        assert link_status(data_dir)["link"]["state"] == "connected"
    finally:
        link.stop()
        platform.stop()
    # a late subscriber sees the retained values: offline (clean stop), the device's latest state, the tree head
    late = Subscriber(1883, f"egw/v1/{gid}/#").start()
    try:
        wait_for(lambda: len(late.snapshot()) >= 3, 5, "retained messages")
        retained = {t.rsplit("/", 2)[-2] + "/" + t.rsplit("/", 1)[-1]: json.loads(p) for t, p, r in late.snapshot() if r}
        assert retained[f"{gid}/state"]["state"] == "offline"
        assert retained["cam1/state"]["batteryPercent"] == 80
        assert "custody/sth" in retained
    finally:
        late.stop()
    assert link_status(data_dir)["link"]["state"] == "stopped"


def test_back_pressure_and_lanes_a_device_update_overtakes_a_long_evidence_backlog(gw, tmp_path):
    data_dir, gid = gw
    root = ob.topic_root(gid)
    # A broker of our own that never drops queued QoS 1 messages for a subscriber that falls behind
    # (the shared broker's default max_queued_messages of 1000 made this test depend on machine load).
    broker = Mosquitto(tmp_path, extra="allow_anonymous true\nmax_queued_messages 0\n").start()
    with State(data_dir) as state, state.transaction() as db:
        for i in range(3000):
            ob.enqueue(db, root, "evidence", f"{root}evidence/e{i}", json.dumps({"messageId": f"e{i}"}).encode())
        ob.enqueue(db, root, "device", f"{root}devices/cam9/state", b'{"deviceId":"cam9","state":"docked"}', retain=True)
    sub = Subscriber(broker.port, f"{root}#").start()
    link = MqttLink(data_dir, LinkConfig(broker.url, max_inflight=10, handle_commands=False)).start()
    try:
        assert link.wait_drained(20)
        wait_for(lambda: len([t for t, _, _ in sub.snapshot() if "/evidence/" in t]) >= 3000, 30, "all evidence")
        topics = [t for t, _, _ in sub.snapshot()]
        assert topics.index(f"{root}devices/cam9/state") < 10  # not behind 3,000 evidence messages
        evidence = [t.rsplit("/", 1)[1] for t in topics if "/evidence/" in t]
        assert evidence == [f"e{i}" for i in range(3000)]
        assert link.stats.max_in_flight == 10 and link.stats.acked == 3001  # never more than the window
    finally:
        link.stop()
        sub.stop()
        broker.kill()


def test_a_dead_network_thread_is_restarted_and_nothing_is_lost(gw):
    data_dir, gid = gw
    sub = Subscriber(1883, f"egw/v1/{gid}/results/#").start()
    link = MqttLink(data_dir, LinkConfig(SHARED_BROKER, backoff_min_s=0.05, handle_commands=False)).start()
    try:
        assert link.wait_connected(10)
        link.put_result(events_pb2.RapidTestResult(message_id="before")).result(5)
        assert link.wait_drained(5)
        client = link._client  # the one paho client of this connection

        def boom(*_a: object) -> None:
            raise RuntimeError("injected fault in paho's network thread")

        client.on_publish = boom  # the next PUBACK kills loop_forever's thread
        for i in range(20):
            link.put_result(events_pb2.RapidTestResult(message_id=f"m{i}"))
        wait_for(lambda: link.stats.network_restarts >= 1, 5, "the supervisor to notice the dead thread")
        assert link.wait_drained(10) and link.stats.connects >= 2
        wait_for(lambda: {"m19"} <= {m["messageId"] for m in sub.json_on("rapidtest")}, 5, "m19")
        got = [m["messageId"] for m in sub.json_on("rapidtest")]
        assert set(got) == {"before", *(f"m{i}" for i in range(20))}
        firsts = list(dict.fromkeys(got))
        assert firsts == ["before", *(f"m{i}" for i in range(20))]  # in order; duplicates allowed
        assert "network thread died" in (link_status(data_dir)["link"]["last_error"] or "")
    finally:
        link.stop()
        sub.stop()


def test_drain_reports_success_and_an_unreachable_broker_leaves_everything_queued(gw):
    data_dir, gid = gw
    with ob.Outbox(data_dir, gid) as box:
        for i in range(5):
            box.put_result(events_pb2.RapidTestResult(message_id=f"d{i}"))
    dead = f"mqtt://127.0.0.1:{free_port()}"
    report = drain_outbox(data_dir, dead, timeout=1.0)
    assert not report.ok and report.remaining == 5 and report.delivered == 0
    assert "cannot reach" in (report.error or "")
    status = link_status(data_dir)
    assert status["outbox"]["count"] == 5 and "cannot reach" in status["link"]["last_error"]
    report = drain_outbox(data_dir, SHARED_BROKER, timeout=10)
    assert report.ok and report.remaining == 0 and report.delivered == 5, report


def test_protocol_3_1_1_works_and_auto_starts_with_5(gw):
    data_dir, gid = gw
    for protocol, expect in (("3.1.1", "3.1.1"), ("auto", "5")):
        with ob.Outbox(data_dir, gid) as box:
            box.put_result(events_pb2.RapidTestResult(message_id=protocol))
        report = drain_outbox(data_dir, SHARED_BROKER, 10, config=LinkConfig(SHARED_BROKER, protocol=protocol, handle_commands=False))
        assert report.ok
        assert link_status(data_dir)["link"]["protocol"] == expect


def test_each_message_carries_its_outbox_id_as_egw_seq_so_a_subscriber_can_check_lane_order(gw):
    """The order promise made checkable (bench/faults.py counts out-of-order arrivals with it): payload ids (UUIDv7)
    and timestamps follow the wall clock, which a clock step moves backwards; egw-seq is the outbox id."""
    data_dir, gid = gw
    root = ob.topic_root(gid)
    with ob.Outbox(data_dir, gid) as box:
        queued = {"results": [box.put_result(events_pb2.RapidTestResult(message_id=f"r{i}")) for i in range(5)],
                  "device": [box.put_device_state(events_pb2.DeviceState(device_id="cam1", state="docked"))]}
        queued["results"].append(box.put_result(events_pb2.RapidTestResult(message_id="r5")))
    sub = Subscriber(1883, f"{root}#")
    seqs: list[tuple[str, str | None]] = []

    def on_message(_c: object, _u: object, m: object) -> None:
        props = dict(getattr(getattr(m, "properties", None), "UserProperty", None) or [])
        seqs.append((m.topic, props.get("egw-seq")))  # type: ignore[attr-defined]

    sub.client.on_message = on_message
    sub.start()
    try:
        assert drain_outbox(data_dir, SHARED_BROKER, 10, config=LinkConfig(SHARED_BROKER, handle_commands=False)).ok
        wait_for(lambda: len([t for t, _ in seqs if t.endswith("results/rapidtest")]) == 6, 5, "six results")
        assert [int(q) for t, q in seqs if t.endswith("results/rapidtest") and q] == queued["results"]
        assert [int(q) for t, q in seqs if t.endswith("cam1/state") and q] == queued["device"]
        with ob.Outbox(data_dir, gid) as box:  # MQTT 3.1.1 has no properties: no egw-seq, nothing else changes
            box.put_result(events_pb2.RapidTestResult(message_id="v311"))
        assert drain_outbox(data_dir, SHARED_BROKER, 10,
                            config=LinkConfig(SHARED_BROKER, protocol="3.1.1", handle_commands=False)).ok
        wait_for(lambda: len([t for t, _ in seqs if t.endswith("results/rapidtest")]) == 7, 5, "the 3.1.1 result")
        assert [q for t, q in seqs if t.endswith("results/rapidtest")][-1] is None
    finally:
        sub.stop()


def test_auto_falls_back_to_3_1_1_when_the_broker_refuses_mqtt_5(gw):
    from tests.mqtt_support import Mqtt311OnlyProxy

    data_dir, gid = gw
    proxy = Mqtt311OnlyProxy(1883)
    try:
        with ob.Outbox(data_dir, gid) as box:
            box.put_result(events_pb2.RapidTestResult(message_id="old-broker"))
        report = drain_outbox(data_dir, f"mqtt://127.0.0.1:{proxy.port}", 10,
                              config=LinkConfig("", protocol="auto", handle_commands=False))
        assert report.ok and report.delivered >= 1, report
        assert getattr(proxy, "refused_v5", 0) == 1
        assert link_status(data_dir)["link"]["protocol"] == "3.1.1"
    finally:
        proxy.close()


def test_backoff_grows_with_jitter_and_is_capped(gw):
    data_dir, _ = gw
    link = MqttLink(data_dir, LinkConfig(SHARED_BROKER, backoff_min_s=0.5, backoff_max_s=8.0))
    delays = []
    for failures in range(1, 10):
        link._failures = failures
        delays.append([link._backoff() for _ in range(50)])
    for failures, sample in enumerate(delays, start=1):
        step = min(8.0, 0.5 * 2 ** (failures - 1))
        assert all(step / 2 <= d <= step for d in sample)
        assert len(set(sample)) > 40  # jittered: a fleet does not reconnect in lock-step
    assert max(delays[-1]) <= 8.0


def test_signed_results_verify_at_the_platform_and_a_tampered_one_does_not(gw, tmp_path: Path):
    from protos import dsse

    data_dir, gid = gw
    ident = load_identity(data_dir)
    platform = PlatformMqtt(tmp_path / "platform", SHARED_BROKER, gateway_keys={gid: ident.certificate}).start()
    # a result is signed as its evidence manifest: this gateway's, for the evidence id the message names
    body = ('{"gateway_id":"%s","evidence_id":"e1","sample_id":"S1","judgement":"negative"}' % gid).encode()
    good = dsse.sign("application/vnd.egw.manifest.v1+json", body, ident.private_key)
    bad = dsse.Envelope(good.payload_type, body.replace(b"negative", b"positive"), good.signatures)
    try:
        with ob.Outbox(data_dir, gid) as box:
            for mid, env in (("good", good), ("bad", bad)):
                msg = events_pb2.RapidTestResult(message_id=mid, evidence_id="e1", sample_id="S1")
                msg.signed_result.payload_type = env.payload_type
                msg.signed_result.payload = env.payload
                for kid, sig in env.signatures:
                    msg.signed_result.signatures.add(keyid=kid, sig=sig)
                box.put_result(msg)
        assert drain_outbox(data_dir, SHARED_BROKER, 10).ok
        wait_for(lambda: len(platform.records(f"egw/v1/{gid}/results/")) == 2, 5, "both results")
        verdict = {r.message_id: r.verified for r in platform.records(f"egw/v1/{gid}/results/")}
        assert verdict == {"good": True, "bad": False}
    finally:
        platform.stop()


def test_a_message_queued_inside_an_evidence_transaction_goes_out_at_once_not_at_the_next_poll(gw):
    """A rapid-test result, a delivery record or an evidence state is queued inside the evidence transaction,
    not through the link: the link hears of it when that transaction commits (the commit bell), so it does
    not wait for its poll. Here the poll is a minute: without the bell the message would not arrive in time."""
    data_dir, gid = gw
    sub = Subscriber(1883, f"egw/v1/{gid}/evidence/#").start()
    link = MqttLink(data_dir, LinkConfig(SHARED_BROKER, poll_interval_s=60.0)).start()
    try:
        assert link.wait_connected(10)
        time.sleep(0.5)  # past the link's first look at the outbox, so only the bell can bring the row
        with EvidenceService(data_dir) as service:
            ob.attach_to_service(service)
            evidence_id = service.ingest_bytes(b"clip", ManifestInput(source_path="c.mp4", device_id="cam1")).evidence_id
            wait_for(lambda: any(t.endswith(evidence_id) for t, _, _ in sub.snapshot()), 10,
                     "the evidence message, long before the minute's poll")
    finally:
        link.stop()
        sub.stop()


def test_the_commit_bell_rings_for_committed_transactions_only(tmp_path: Path):
    from gateway.evidence.outbox import COMMIT_BELL, enqueue, topic_root

    heard: list[set[str]] = []
    unlisten = COMMIT_BELL.listen(heard.append)
    root = topic_root("gw-bell")
    try:
        with State(tmp_path) as state:
            with pytest.raises(RuntimeError):
                with state.transaction() as db:
                    enqueue(db, root, "results", root + "results/rapidtest", b"{}")
                    raise RuntimeError("the evidence write failed: the message must not be announced")
            with state.transaction() as db:
                db.execute("SELECT 1")
            assert heard == [], "a rolled-back row (or none at all) was announced"
            with state.transaction() as db:
                enqueue(db, root, "results", root + "results/rapidtest", b"{}")
                enqueue(db, root, "device", root + "devices/cam1/state", b"{}")
            assert heard == [{"results", "device"}]
            assert ob.usage(state.db).count == 1 + 1
    finally:
        unlisten()
    with State(tmp_path) as state, state.transaction() as db:
        enqueue(db, root, "results", root + "results/rapidtest", b"{}")
    assert heard == [{"results", "device"}], "a listener heard a ring after it stopped listening"


def test_a_failing_commit_listener_does_not_turn_a_commit_into_an_error(tmp_path: Path):
    """The bell rings after COMMIT: a listener that raises must not make the caller believe its evidence
    was not recorded (the dock would then report a release as failed that happened)."""
    from gateway.evidence.outbox import COMMIT_BELL, enqueue, topic_root

    def broken(_lanes: set[str]) -> None:
        raise RuntimeError("a listener with a bug")

    unlisten = COMMIT_BELL.listen(broken)
    root = topic_root("gw-bell")
    try:
        with State(tmp_path) as state:
            with state.transaction() as db:
                enqueue(db, root, "results", root + "results/rapidtest", b"{}")
            assert ob.usage(state.db).count == 1
    finally:
        unlisten()
