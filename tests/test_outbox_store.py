"""The durable outbox table: lanes, latest-only, quota that refuses captures, group commit, parking."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.evidence.identity import init_identity
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.evidence_service import EvidenceService
from gateway.evidence.state import MIGRATIONS, State
from gateway.uplink import outbox as ob
from protos.egw.v1 import events_pb2


@pytest.fixture
def gw(tmp_path: Path) -> tuple[Path, str]:
    ident = init_identity(tmp_path / "gw")
    return tmp_path / "gw", ident.gateway_id


def test_schema_has_the_mqtt_migration(gw):
    data_dir, _ = gw
    with State(data_dir) as state:
        assert state.schema_version == len(MIGRATIONS) >= 2
        cols = {r[1] for r in state.db.execute("PRAGMA table_info(outbox)")}
        assert {"parked_reason", "parked_at"} <= cols
        tables = {r[0] for r in state.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"link_status", "command_nonces"} <= tables


def test_messages_keep_their_order_and_device_state_keeps_only_the_latest(gw):
    data_dir, gid = gw
    with ob.Outbox(data_dir, gid) as box:
        for i in range(5):
            box.put_result(events_pb2.RapidTestResult(message_id=f"r{i}"))
        first = box.put_device_state(events_pb2.DeviceState(device_id="cam1", state="docked"))
        box.put_device_state(events_pb2.DeviceState(device_id="cam2", state="docked"))
        latest = box.put_device_state(events_pb2.DeviceState(device_id="cam1", state="offloading", files_done=3))
        pending = box.pending()
    results = [m for m in pending if m.lane == "results"]
    assert [m.payload for m in results] == [ob.to_json_bytes(events_pb2.RapidTestResult(message_id=f"r{i}")) for i in range(5)]
    devices = {m.topic: m for m in pending if m.lane == "device"}
    assert set(devices) == {f"egw/v1/{gid}/devices/cam1/state", f"egw/v1/{gid}/devices/cam2/state"}
    cam1 = devices[f"egw/v1/{gid}/devices/cam1/state"]
    assert cam1.id == latest > first and b"offloading" in cam1.payload and cam1.retain


@pytest.mark.parametrize("topic_suffix, payload, why", [
    (None, b"x", "outside"),
    ("results/+", b"x", "wildcard"),
    ("results//x", b"x", "empty level"),
    ("results/rapidtest", b"x" * (ob.MAX_PAYLOAD_BYTES + 1), "bytes, more than"),
])
def test_bad_topics_and_oversized_payloads_are_refused_with_a_reason(gw, topic_suffix, payload, why):
    data_dir, gid = gw
    with State(data_dir) as state, pytest.raises(ob.OutboxError, match=why):
        with state.transaction() as db:
            topic = "egw/v1/someone-else/results/rapidtest" if topic_suffix is None else f"egw/v1/{gid}/{topic_suffix}"
            ob.enqueue(db, ob.topic_root(gid), "results", topic, payload)
    with State(data_dir) as state:
        assert ob.usage(state.db).count == 0


def test_evidence_messages_commit_with_the_state_change_or_not_at_all(gw):
    data_dir, gid = gw
    with EvidenceService(data_dir) as service:
        ob.attach_to_service(service)
        result = service.ingest_bytes(b"evidence one", ManifestInput(source_path="a.jpg", device_id="cam1"))
        with State(data_dir) as state:
            rows = state.db.execute("SELECT topic, payload FROM outbox WHERE lane='evidence'").fetchall()
        assert len(rows) == 1 and rows[0][0] == f"egw/v1/{gid}/evidence/{result.evidence_id}"
        assert b'"state":"queued"' in rows[0][1] and b'"sha256":"' in rows[0][1]

        def boom(db, row, details):
            raise RuntimeError("crash inside the transaction")

        service.transition_hooks.append(boom)
        with pytest.raises(RuntimeError):
            service.transition(result.evidence_id, "uploading")
        service.transition_hooks.remove(boom)
        assert service.state.get(result.evidence_id).state == "queued"
        with State(data_dir) as state:
            assert ob.usage(state.db).by_lane["evidence"] == 1  # no message for the change that rolled back
        service.transition(result.evidence_id, "uploading")
        with State(data_dir) as state:
            states = [p for (p,) in state.db.execute("SELECT payload FROM outbox WHERE lane='evidence' ORDER BY id")]
        assert [b'"state":"queued"' in states[0], b'"state":"uploading"' in states[1]] == [True, True]


def test_a_full_outbox_refuses_new_captures_never_drops_and_raises_an_alarm(gw):
    data_dir, gid = gw
    with ob.Outbox(data_dir, gid) as box:
        for i in range(20):
            box.put_result(events_pb2.RapidTestResult(message_id=f"r{i}", value="x" * 200))
        quota = box.usage().bytes  # exactly full
    with EvidenceService(data_dir) as service:
        ob.attach_to_service(service, quota_bytes=quota)
        assert ob.outbox_full(data_dir, quota)
        with pytest.raises(ob.OutboxFullError, match="outbox is full"):
            service.ingest_bytes(b"new capture", ManifestInput(source_path="new.jpg"))
        assert service.state.all_evidence() == []  # refused, rolled back: the device keeps the file
    status = ob.mqtt_status(data_dir, quota)
    assert status["outbox"]["full"] and status["outbox"]["count"] == 20
    assert any("outbox full" in a for a in status["alarms"])
    with ob.Outbox(data_dir, gid, quota_bytes=quota) as box:  # results still queue: never dropped
        box.put_result(events_pb2.RapidTestResult(message_id="late"))
        assert box.usage().count == 21


def test_group_commit_writer_commits_everything_in_order_before_resolving(gw):
    data_dir, gid = gw
    commits = []
    writer = ob.OutboxWriter(data_dir, gid, on_commit=lambda lanes: commits.append(lanes))
    futures = [writer.submit("results", "results/rapidtest", f"m{i}".encode()) for i in range(3000)]
    ids = [f.result(10) for f in futures]
    writer.close()
    assert ids == sorted(ids) and len(set(ids)) == 3000
    assert 1 <= len(commits) < 3000  # batched: fewer fsyncs than messages
    with State(data_dir) as state:
        rows = state.db.execute("SELECT id, payload FROM outbox ORDER BY id").fetchall()
    assert [p for _, p in rows] == [f"m{i}".encode() for i in range(3000)]
    assert [i for i, _ in rows] == ids  # each ticket names its own row


def test_group_commit_keeps_order_and_latest_only_across_mixed_lanes(gw):
    data_dir, gid = gw
    writer = ob.OutboxWriter(data_dir, gid)
    tickets = []
    for i in range(30):
        tickets.append(writer.submit("results", "results/rapidtest", f"r{i}".encode()))
        tickets.append(writer.submit("device", f"devices/cam{i % 2}/state", f"d{i}".encode(), retain=True))
    ids = [t.result(10) for t in tickets]
    writer.close()
    with State(data_dir) as state:
        rows = dict(state.db.execute("SELECT id, payload FROM outbox").fetchall())
    assert [rows[i] for i in ids[0::2]] == [f"r{i}".encode() for i in range(30)]
    assert sorted(rows[i] for i in ids[1::2] if i in rows) == [b"d28", b"d29"]  # only the latest per device
    assert len(rows) == 32
    other = ob.OutboxWriter(data_dir, gid)
    with pytest.raises(ob.OutboxError, match="wildcard"):
        other.submit("results", "results/#", b"")
    other.close()


def test_parked_messages_are_kept_counted_and_requeued(gw):
    data_dir, gid = gw
    with ob.Outbox(data_dir, gid) as box:
        a = box.put_result(events_pb2.RapidTestResult(message_id="a"))
        box.put_result(events_pb2.RapidTestResult(message_id="b"))
        with box.state.transaction() as db:
            ob.park(db, a, "broker refused: Not authorized")
        assert [m.payload for m in ob.fetch(box.state.db, "results", 0, 10)] == [ob.to_json_bytes(events_pb2.RapidTestResult(message_id="b"))]
        assert box.usage().parked == 1 and box.usage().count == 2
        with box.state.transaction() as db:
            assert ob.requeue_parked(db) == 1
        assert len(ob.fetch(box.state.db, "results", 0, 10)) == 2


@given(seq=st.integers(min_value=1, max_value=2**63 - 1))
def test_the_prepacked_sequence_property_is_what_paho_packs(seq):
    """The outbox packs egw-seq by hand for speed; the bytes must be paho's own, for every id."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from gateway.uplink.mqtt_client import SeqProperties

    reference = Properties(PacketTypes.PUBLISH)
    reference.UserProperty = ("egw-seq", str(seq))
    assert SeqProperties(seq).pack() == reference.pack()
    decoded = Properties(PacketTypes.PUBLISH)
    decoded.unpack(SeqProperties(seq).pack())
    assert decoded.UserProperty == [("egw-seq", str(seq))]


def _settle_puback(client_class: type, protocol: object, packet: bytes) -> tuple[object, ...]:
    """What ``on_publish`` hears when ``packet`` (a PUBACK's body) arrives for the one message in flight,
    and what paho's state is afterwards."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = client_class(CallbackAPIVersion.VERSION2, protocol=protocol)
    heard: list[tuple[int, int, str, bool, bytes]] = []
    client.on_publish = lambda _c, _u, mid, rc, props: heard.append(
        (mid, int(rc.value), str(rc), rc.is_failure, props.pack() if protocol == mqtt.MQTTv5 else b""))
    info = client.publish("egw/v1/x/results/rapidtest", b"{}", qos=1)  # not connected: kept in paho's queue
    assert info.mid == 1
    client._in_packet = {"command": 0x40, "packet": bytearray(packet)}
    rc = client._handle_pubackcomp("PUBACK")
    return heard, rc, info._published, len(client._out_messages), client._inflight_messages


@pytest.mark.parametrize(("protocol", "packet"), [
    ("5", b"\x00\x01"), ("5", b"\x00\x01\x00"), ("5", b"\x00\x01\x10"), ("5", b"\x00\x01\x10\x00"),
    ("5", b"\x00\x01\x00\x00"), ("5", b"\x00\x01\x87"), ("5", b"\x00\x01\x80\x00"),
    ("5", b"\x00\x01\x87\x05\x1f\x00\x02no"),  # a refusal with a reason string
    ("5", b"\x00\x01\x00\x05\x1f\x00\x02ok"),  # accepted, with a property: paho's path
    ("5", b"\x00\x02"),                         # an id nothing waits for: nobody is told
    ("3.1.1", b"\x00\x01"),
])
def test_the_fast_puback_path_tells_on_publish_what_paho_would(protocol, packet):
    """FastAckClient settles plain PUBACKs itself for speed; on_publish must hear exactly paho's values."""
    import paho.mqtt.client as mqtt

    from gateway.uplink.mqtt_client import FastAckClient

    proto = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
    expected = _settle_puback(mqtt.Client, proto, packet)
    assert _settle_puback(FastAckClient, proto, packet) == expected
    assert len(expected[0]) == (0 if packet[:2] == b"\x00\x02" else 1)


def _write_all(client_class: type, packets: list[tuple[int, bytes, int]]) -> tuple[bytes, list[int]]:
    """Queue ``(command, bytes, qos)`` packets on a client whose socket is tiny, write until done;
    return what the other end read and which QoS 0 publishes ``on_publish`` heard of."""
    import socket

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = client_class(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    heard: list[int] = []
    client.on_publish = lambda _c, _u, mid, _rc, _p: heard.append(mid)
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # partial writes and a full socket, often
    ours.setblocking(False)
    theirs.setblocking(False)
    client._sock = ours
    client._thread = object()  # queue only: the test decides when to write
    for mid, (command, data, qos) in enumerate(packets, 1):
        client._packet_queue(command, bytearray(data), mid, qos, mqtt.MQTTMessageInfo(mid))
    received = bytearray()
    for _ in range(100_000):
        if not client._out_packet:
            break
        client._packet_write()
        try:
            received += theirs.recv(1 << 20)
        except BlockingIOError:
            pass
    try:
        received += theirs.recv(1 << 20)
    except BlockingIOError:
        pass
    ours.close()
    theirs.close()
    return bytes(received), heard


@given(st.lists(st.tuples(st.sampled_from([0x30, 0x32, 0x34, 0xC0]), st.integers(min_value=1, max_value=9000)),
                min_size=1, max_size=40))
def test_coalesced_writes_send_paho_s_bytes_in_paho_s_order(spec):
    """FastAckClient writes consecutive QoS 1/2 PUBLISHes in one send; the stream must be paho's,
    partial writes included, and QoS 0 publishes must still be reported once written."""
    import paho.mqtt.client as mqtt

    from gateway.uplink.mqtt_client import FastAckClient

    # each packet's bytes differ from its neighbours', so a reordering or a lost piece shows
    packets = [(command, bytes([command]) + i.to_bytes(2, "big") * (size // 2 + 1),
                (command >> 1) & 3 if command & 0xF0 == 0x30 else 0)
               for i, (command, size) in enumerate(spec)]
    expected = _write_all(mqtt.Client, packets)
    assert expected[0] == b"".join(p[1] for p in packets)
    assert _write_all(FastAckClient, packets) == expected


def test_a_batch_waiting_for_its_commit_keeps_the_writer_busy(gw):
    """The link calls itself drained when the writer is not busy and nothing is sendable in the database.
    A batch taken off the writer's queue but not yet committed is in neither place: it must count as
    busy until its commit has been announced, or a drain could report done with messages on their way."""
    data_dir, gid = gw
    busy_when_announced: list[bool] = []
    writer = ob.OutboxWriter(data_dir, gid, on_commit=lambda lanes: busy_when_announced.append(writer.busy))
    try:
        with State(data_dir) as other:
            other.db.execute("BEGIN IMMEDIATE")  # a real write lock: the writer's commit has to wait for it
            ticket = writer.submit("results", "results/rapidtest", b"on its way")
            time.sleep(0.5)  # the writer has taken the batch and waits for the lock
            assert not ticket.done() and writer.busy
            assert ob.count_sendable(other.db) == 0
            other.db.execute("COMMIT")
        assert ticket.result(10) > 0
        deadline = time.monotonic() + 5
        while writer.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not writer.busy and busy_when_announced == [True]
    finally:
        writer.close()
