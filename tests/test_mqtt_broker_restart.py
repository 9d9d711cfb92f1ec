"""Our own broker, SIGKILLed and restarted mid-stream: every committed message arrives, in order per topic.

A TCP gate between the gateway and the broker lets the test (1) freeze the
gateway's traffic just before the kill, so the broker dies with PUBLISHes in
flight that it never acknowledged, and (2) hold the gateway off until the
test's subscriber is back, so nothing is delivered to an empty broker (the
broker runs without persistence: what it acknowledged while nobody listened
would be gone, and that is the broker's contract, not ours).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from gateway.evidence.identity import init_identity
from gateway.uplink.mqtt_config import LinkConfig
from gateway.uplink.mqtt_link import MqttLink, link_status
from protos.egw.v1 import events_pb2
from tests.mqtt_support import Gate, Mosquitto, Subscriber, wait_for

N = 1500


def _wait_quiet(sub: Subscriber, quiet_s: float = 0.3, timeout: float = 15.0) -> None:
    """Until nothing new arrived for ``quiet_s``: the broker has delivered everything it took."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        now_seen = len(sub.snapshot())
        if now_seen == seen:
            return
        seen = now_seen
        time.sleep(quiet_s)
    raise AssertionError(f"the subscriber was still receiving after {timeout} s")


def test_broker_killed_and_restarted_mid_stream_loses_nothing(tmp_path: Path):
    data_dir = tmp_path / "gw"
    gid = init_identity(data_dir).gateway_id
    # max_queued_messages 0: the broker never drops what it owes a subscriber that falls behind
    broker = Mosquitto(tmp_path, extra="allow_anonymous true\nmax_queued_messages 0\n").start()
    gate = Gate(broker.port)
    sub = Subscriber(broker.port, f"egw/v1/{gid}/#")
    link = MqttLink(data_dir, LinkConfig(f"mqtt://127.0.0.1:{gate.port}", backoff_min_s=0.05, backoff_max_s=0.3,
                                         handle_commands=False))
    produced = threading.Event()

    def produce() -> None:
        for i in range(N):
            link.put_result(events_pb2.RapidTestResult(message_id=f"r{i}"))
            if i % 3 == 0:  # a second and third topic, each with its own sequence
                link.publish("evidence", f"evidence/e{i % 2}", json.dumps({"messageId": f"e{i % 2}-{i}"}).encode())
            if i % 50 == 0:
                time.sleep(0.01)
        produced.set()

    producer = threading.Thread(target=produce)
    try:
        sub.start()
        link.start()
        assert link.wait_connected(10)
        producer.start()
        wait_for(lambda: len(sub.json_on("rapidtest")) >= N // 4, 10, "a quarter of the stream")
        gate.flowing.clear()          # stall the gateway's connection: PUBLISHes pile up un-acked
        # Kill only once the broker delivered all it acknowledged (a fixed 0.2 s was too short once
        # the gateway outran this subscriber, which shares its process: #18 made the link faster).
        _wait_quiet(sub)
        in_flight_at_kill = len(link._inflight)
        broker.kill()
        gate.open.clear()
        gate.drop_all()
        seen_before = len(sub.json_on("rapidtest"))
        time.sleep(0.5)               # the gateway keeps queueing and retrying against a dead broker
        assert link_status(data_dir)["link"]["state"] != "connected"
        subscribed = sub.resubscribed()
        broker.start()
        assert subscribed.wait(10), "subscriber did not come back"
        gate.open.set()
        assert produced.wait(30)
        assert link.wait_drained(30)
        wait_for(lambda: {f"r{N - 1}"} <= {m["messageId"] for m in sub.json_on("rapidtest")}, 10, "the last result")
    finally:
        if producer.is_alive():
            producer.join(30)
        link.stop()
        sub.stop()
        gate.close()
        broker.kill()
    assert in_flight_at_kill > 0 and seen_before < N
    for suffix, expected in (
        ("rapidtest", [f"r{i}" for i in range(N)]),
        ("evidence/e0", [f"e0-{i}" for i in range(N) if i % 3 == 0 and i % 2 == 0]),
        ("evidence/e1", [f"e1-{i}" for i in range(N) if i % 3 == 0 and i % 2 == 1]),
    ):
        got = [m["messageId"] for m in sub.json_on(suffix)]
        firsts = list(dict.fromkeys(got))
        assert firsts == expected, f"{suffix}: lost or out of order"
    assert link.stats.connects >= 2 and link.stats.resent >= 1
