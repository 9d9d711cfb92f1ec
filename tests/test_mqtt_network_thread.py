"""The outbox published from paho's network thread (#18): one message per PUBACK, from on_publish.

What must hold however the connection ends: a message is sent only once committed, leaves the table
only on its PUBACK, and every committed message arrives, first arrivals in order per topic
(duplicates allowed, detectable by message id). Real Mosquitto of our own on a free port, a TCP gate
the test cuts, a real subscriber.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.evidence.identity import init_identity
from gateway.evidence.state import State
from gateway.uplink import outbox as ob
from gateway.uplink.mqtt_config import LinkConfig
from gateway.uplink.mqtt_link import MqttLink
from tests.mqtt_support import Gate, MiniCA, Mosquitto, Subscriber, enrol_for_tls, wait_for, write_cert, write_key

N = 3000
WINDOW = 20
# The broker keeps every queued QoS 1 message for a subscriber that falls behind (its default of
# 1,000 would drop some in a flood and make the test depend on machine load).
NO_DROPS = "allow_anonymous true\nmax_queued_messages 0\n"


@pytest.fixture
def gw(tmp_path: Path) -> tuple[Path, str]:
    data_dir = tmp_path / "gw"
    return data_dir, init_identity(data_dir).gateway_id


def _backlog(data_dir: Path, gid: str, n: int) -> str:
    """Commit ``n`` results and n/3 evidence messages (two topics) before any link runs."""
    root = ob.topic_root(gid)
    with State(data_dir) as state, state.transaction() as db:
        for i in range(n):
            ob.enqueue(db, root, "results", f"{root}results/rapidtest", json.dumps({"messageId": f"r{i}"}).encode())
            if i % 3 == 0:
                ob.enqueue(db, root, "evidence", f"{root}evidence/e{i % 2}", json.dumps({"messageId": f"e{i % 2}-{i}"}).encode())
    return root


def _assert_all_arrived_in_order(sub: Subscriber, n: int) -> None:
    wait_for(lambda: f"r{n - 1}" in {m["messageId"] for m in sub.json_on("rapidtest")}, 30, "the last result")
    for suffix, expected in (
        ("rapidtest", [f"r{i}" for i in range(n)]),
        ("evidence/e0", [f"e0-{i}" for i in range(n) if i % 3 == 0 and i % 2 == 0]),
        ("evidence/e1", [f"e1-{i}" for i in range(n) if i % 3 == 0 and i % 2 == 1]),
    ):
        wait_for(lambda s=suffix, e=expected: set(e) <= {m["messageId"] for m in sub.json_on(s)}, 30, f"all of {suffix}")
        firsts = list(dict.fromkeys(m["messageId"] for m in sub.json_on(suffix)))
        assert firsts == expected, f"{suffix}: lost or out of order"


def _rows_left(data_dir: Path) -> int:
    with State(data_dir) as state:
        return ob.usage(state.db).count


def _drain_then_stop(link: MqttLink, sub: Subscriber, broker: Mosquitto) -> None:
    """Every row acknowledged and seen once, in order, by the subscriber; then everything stopped."""
    try:
        assert link.wait_drained(60)
        _assert_all_arrived_in_order(sub, N)
    finally:
        link.stop()
        sub.stop()
        broker.kill()


def _flood_setup(data_dir: Path, gid: str, tmp_path: Path) -> tuple[int, Mosquitto, Subscriber]:
    """A backlog of N messages (plus every third one's result) in the outbox, our own broker that drops
    nothing, and a subscriber on the gateway's topics: (messages expected, broker, subscriber)."""
    root = _backlog(data_dir, gid, N)
    broker = Mosquitto(tmp_path, extra=NO_DROPS).start()
    return N + len(range(0, N, 3)), broker, Subscriber(broker.port, f"{root}#").start()


def test_a_backlog_goes_out_from_the_network_thread_within_the_window(gw, tmp_path):
    """The supervisor fills the window when it reads rows; every other message is published on a PUBACK."""
    data_dir, gid = gw
    total, broker, sub = _flood_setup(data_dir, gid, tmp_path)
    link = MqttLink(data_dir, LinkConfig(broker.url, max_inflight=WINDOW, handle_commands=False)).start()
    _drain_then_stop(link, sub, broker)
    assert link.stats.acked == total and link.stats.max_in_flight == WINDOW
    assert _rows_left(data_dir) == 0
    # The window at the start (20 of 4,000 here); the buffers are read ahead, so later reads find it full.
    assert 0 < link.stats.fed_by_supervisor <= total // 10, link.stats


def test_a_backlog_over_mutual_tls_arrives_whole_and_in_order(gw, tmp_path):
    """Many PUBLISHes in one TLS write, partial writes and retries included: the stream stays whole."""
    data_dir, gid = gw
    root = _backlog(data_dir, gid, N)
    ca = MiniCA.create()
    server_key = ec.generate_private_key(ec.SECP256R1())
    write_key(tmp_path / "server.key", server_key)
    write_cert(tmp_path / "server.crt", ca.issue("localhost", server_key.public_key(), server=True))
    write_cert(tmp_path / "ca.crt", ca.cert)
    broker = Mosquitto(tmp_path, extra=(
        f"user root\n{NO_DROPS}cafile {tmp_path / 'ca.crt'}\ncertfile {tmp_path / 'server.crt'}\n"
        f"keyfile {tmp_path / 'server.key'}\nrequire_certificate true\n")).start()
    enrol_for_tls(data_dir, ca)
    sub = Subscriber(broker.port, f"{root}#", tls=ca.client_files(tmp_path, "platform")).start()
    link = MqttLink(data_dir, LinkConfig(f"mqtts://127.0.0.1:{broker.port}", max_inflight=WINDOW,
                                         handle_commands=False)).start()
    _drain_then_stop(link, sub, broker)
    assert _rows_left(data_dir) == 0 and link.stats.connects == 1


def test_connections_cut_mid_flood_lose_nothing_and_keep_the_order(gw, tmp_path):
    """Cut while paho's thread is publishing from on_publish: what was in flight goes out again."""
    data_dir, gid = gw
    root = _backlog(data_dir, gid, N)
    broker = Mosquitto(tmp_path, extra=NO_DROPS).start()
    gate = Gate(broker.port)
    sub = Subscriber(broker.port, f"{root}#").start()  # straight to the broker: it sees every message the broker took
    link = MqttLink(data_dir, LinkConfig(f"mqtt://127.0.0.1:{gate.port}", max_inflight=WINDOW, backoff_min_s=0.05,
                                         backoff_max_s=0.2, handle_commands=False)).start()
    try:
        for cut in range(1, 4):
            wait_for(lambda c=cut: link.stats.acked >= c * N // 5, 30, f"flood before cut {cut}")
            gate.drop_all()  # mid-flood: PUBLISHes written and PUBACKs on the way are lost with the socket
            wait_for(lambda c=cut: link.stats.connects > c, 10, f"reconnect after cut {cut}")
        assert link.wait_drained(60)
        _assert_all_arrived_in_order(sub, N)
    finally:
        link.stop()
        sub.stop()
        gate.close()
        broker.kill()
    assert link.stats.connects >= 4 and link.stats.resent >= 1
    assert _rows_left(data_dir) == 0


def test_stopping_mid_flood_keeps_the_rest_for_the_next_start(gw, tmp_path):
    """``stop`` waits for what is in flight, publishes nothing new; the next link sends the rest."""
    data_dir, gid = gw
    total, broker, sub = _flood_setup(data_dir, gid, tmp_path)
    first = MqttLink(data_dir, LinkConfig(broker.url, max_inflight=WINDOW, handle_commands=False)).start()
    second = None
    try:
        wait_for(lambda: first.stats.acked >= N // 4, 30, "a quarter of the flood")
        started, acked_before = time.monotonic(), first.stats.acked
        first.stop()
        assert time.monotonic() - started < 5
        # what was in flight (a window), and what paho's thread sent while stop() was being called;
        # not the hundreds still in the lane buffers
        assert first.stats.acked - acked_before <= 5 * WINDOW
        assert first.stats.published - first.stats.acked == 0  # everything in flight was settled
        left = _rows_left(data_dir)
        assert 0 < left == total - first.stats.acked  # deleted exactly what the broker acknowledged
        second = MqttLink(data_dir, LinkConfig(broker.url, max_inflight=WINDOW, handle_commands=False)).start()
        assert second.wait_drained(60)
        assert second.stats.acked == left
        _assert_all_arrived_in_order(sub, N)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        sub.stop()
        broker.kill()
    assert _rows_left(data_dir) == 0


def test_only_the_loop_thread_writes_to_the_socket_once_it_runs(tmp_path):
    """paho under loop_forever writes another thread's publish on that thread, beside its own writes;
    FastAckClient.run_loop queues it and wakes the loop instead, which writes it."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from gateway.uplink.mqtt_client import FastAckClient

    class Recording(FastAckClient):
        writers: set[int]

        def _sock_send(self, buf: bytes | bytearray) -> int:
            self.writers.add(threading.get_ident())
            return super()._sock_send(buf)

    broker = Mosquitto(tmp_path, extra=NO_DROPS).start()
    client = Recording(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.writers = set()
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", broker.port)  # CONNECT written here, before the loop runs: paho's way
    loop = threading.Thread(target=client.run_loop, daemon=True)
    try:
        loop.start()
        assert connected.wait(10)
        client.writers.clear()
        infos = [client.publish("egw/v1/t/results/rapidtest", b"x" * 900, qos=1) for _ in range(200)]
        for info in infos:
            info.wait_for_publish(10)  # acknowledged: written, and the loop woke up for it
        assert all(info.is_published() for info in infos)
        assert client.writers == {loop.ident}
    finally:
        client.disconnect()  # queued too: the loop writes DISCONNECT and ends
        loop.join(5)
        broker.kill()
    assert not loop.is_alive()
