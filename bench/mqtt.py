"""Benchmark: the durable outbox vs a bare paho QoS 1 loop, same broker, same run.

    python bench/mqtt.py [--n 20000] [--broker mqtt://127.0.0.1:1883]

Both sides publish the same ≈1 KB result-sized JSON payloads at QoS 1 with
paho's in-flight limit at 20. The outbox side commits every message to the
SQLite outbox (WAL, synchronous=FULL, group commit) before paho sees it,
deletes it on PUBACK, and feeds paho only as PUBACKs free slots (from
``on_publish``, on paho's network thread). The bare
side calls ``client.publish`` in a loop and lets paho queue (the ratio on
the last line); for reference a second bare run feeds paho one message per
free slot, as the outbox does, but without the disk.

Rate = messages / (last PUBACK − first publish call), measured by the
sender: for the outbox, until every row is acknowledged and deleted. A
subscriber in another process (so it does not share our GIL) timestamps
arrivals for latency = arrival − publish call (CLOCK_MONOTONIC is
system-wide). Mosquitto drops messages for a subscriber that falls behind
(max_queued_messages), so in a flood it may see fewer than were sent; the
count is printed. A flood builds a queue, so flood latencies are queueing
time; a paced run (1,000 msg/s) shows the per-message path.

The last line is ``outbox/bare_paho = R`` (target ≥ 0.7, issue #18).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: E402

from gateway.evidence.identity import init_identity  # noqa: E402
from gateway.evidence.state import State  # noqa: E402
from gateway.uplink import outbox as ob  # noqa: E402
from gateway.uplink.mqtt_config import LinkConfig, parse_broker_url  # noqa: E402
from gateway.uplink.mqtt_link import MqttLink  # noqa: E402


def payload_template() -> bytes:
    """A realistic result message: readable fields plus a signed envelope, ≈1 KB of JSON."""
    result = {"v": "egw.result/1", "instrument_id": "RT-2000-0042", "sample_id": "S-20260101-0001", "item_code": "OPI",
              "item_name": "Opiates", "value": "312.5", "unit": "ng/mL", "cutoff": "300", "judgement": "positive",
              "tested_at": "2026-11-29T10:00:00.000Z", "operator": "officer-1234", "lot": "LOT-A1B2C3"}
    payload = base64.b64encode(json.dumps(result, sort_keys=True).encode()).decode()
    doc = {
        "messageId": "@MID@", "evidenceId": "01930000-0000-7000-8000-000000000000", "instrumentId": "RT-2000-0042",
        "sampleId": "@T@", "itemCode": "OPI", "itemName": "Opiates", "value": "312.5", "unit": "ng/mL", "cutoff": "300",
        "judgement": "positive", "testedAt": "2026-11-29T10:00:00Z",
        "signedResult": {"payloadType": "application/vnd.egw.result.v1+json", "payload": payload,
                         "signatures": [{"keyid": "ab" * 32, "sig": base64.b64encode(os.urandom(71)).decode()}]},
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def make_payload(template: bytes, mid: str) -> bytes:
    return template.replace(b"@MID@", mid.encode()).replace(b"@T@", str(time.monotonic_ns()).encode())


# ---- subscriber process -----------------------------------------------------------

def subscriber_main(host: str, port: int, topic: str, conn: Any) -> None:
    arrivals: dict[str, list[int]] = {}
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        now = time.monotonic_ns()
        p = m.payload
        try:
            i = p.index(b'"messageId":"') + 13
            mid = p[i:p.index(b'"', i)].decode()
            j = p.index(b'"sampleId":"') + 12
            sent = int(p[j:p.index(b'"', j)])
        except ValueError:
            return  # birth/will and other non-bench messages
        tag = mid.split("-", 1)[0]
        with lock:
            arrivals.setdefault(tag, []).append((sent, now))  # type: ignore[arg-type]

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.on_message = on_message
    ready = threading.Event()
    client.on_subscribe = lambda *a: ready.set()
    client.connect(host, port)
    client.subscribe(topic, qos=0)  # QoS 0 to the subscriber: the broker never drops or throttles it for an online client
    client.loop_start()
    ready.wait(10)
    conn.send("ready")
    while True:
        cmd = conn.recv()
        if cmd is None:
            break
        tag, n, timeout = cmd
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                if len(arrivals.get(tag, [])) >= n:
                    break
            time.sleep(0.005)
        with lock:
            conn.send(list(arrivals.get(tag, [])))
    client.disconnect()
    client.loop_stop()


class Subscriber:
    def __init__(self, host: str, port: int, topic: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=subscriber_main, args=(host, port, topic, child), daemon=True)
        self.proc.start()
        assert self.conn.recv() == "ready"

    def collect(self, tag: str, n: int, timeout: float = 60.0) -> list[tuple[int, int]]:
        self.conn.send((tag, n, timeout))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(5)


def summarise(label: str, arrivals: list[tuple[int, int]], n: int, span_ns: tuple[int, int]) -> float:
    rate = n / ((span_ns[1] - span_ns[0]) / 1e9)
    first_seen: dict[int, int] = {}
    for sent, got in arrivals:
        first_seen.setdefault(sent, got)
    if not first_seen:
        print(f"{label}: {rate:,.0f} msg/s (all PUBACKed); the subscriber saw nothing")
        return rate
    lat = sorted((got - sent) / 1e6 for sent, got in first_seen.items())
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"{label}: {rate:,.0f} msg/s (all PUBACKed), subscriber saw {len(first_seen)}/{n}, "
          f"latency median {statistics.median(lat):.2f} ms, p99 {p99:.2f} ms")
    return rate


# ---- the two senders ---------------------------------------------------------------

def run_bare(host: str, port: int, topic: str, template: bytes, tag: str, n: int, pace_hz: float = 0,
             window: int = 0) -> tuple[int, int]:
    """``window`` > 0: wait for a free slot before each publish (paho's queue stays short)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(20)
    acked = threading.Event()
    count = [0]
    done = [0]
    slots = threading.Semaphore(window) if window else None

    def on_publish(*_a: Any) -> None:
        count[0] += 1
        if slots is not None:
            slots.release()
        if count[0] >= n:
            done[0] = time.monotonic_ns()
            acked.set()

    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    time.sleep(0.2)
    started = time.monotonic_ns()
    for i in range(n):
        if slots is not None:
            slots.acquire()
        client.publish(topic, make_payload(template, f"{tag}-{i}"), qos=1)
        if pace_hz:
            time.sleep(max(0.0, started / 1e9 + (i + 1) / pace_hz - time.monotonic()))
    acked.wait(120)
    client.disconnect()
    client.loop_stop()
    return started, done[0] or time.monotonic_ns()


def run_outbox(link: MqttLink, template: bytes, tag: str, n: int, pace_hz: float = 0) -> tuple[int, int]:
    started = time.monotonic_ns()
    futures = []
    for i in range(n):
        futures.append(link.publish("results", "results/rapidtest", make_payload(template, f"{tag}-{i}")))
        if pace_hz:
            time.sleep(max(0.0, started / 1e9 + (i + 1) / pace_hz - time.monotonic()))
    for fut in futures:
        fut.result(60)
    if not link.wait_drained(120):
        print("warning: the outbox did not drain in time", file=sys.stderr)
    return started, link.stats.last_ack_ns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--window", type=int, default=0, help="outbox messages handed to paho un-acked (0: the link's default)")
    parser.add_argument("--paced", type=int, default=1000, help="messages in the paced (1,000 msg/s) latency run; 0 to skip")
    ns = parser.parse_args()
    url = parse_broker_url(ns.broker)
    template = payload_template()
    work = Path(tempfile.mkdtemp(prefix="egw-bench-mqtt-"))
    gid = init_identity(work / "gw").gateway_id
    root = ob.topic_root(gid)
    bare_topic = f"{root}bench/bare"
    sub = Subscriber(url.host, url.port, f"{root}#")
    print(f"{ns.n} messages of {len(make_payload(template, 'x-0'))} bytes, QoS 1, paho max_inflight 20, broker {url.redacted()}")
    link = MqttLink(work / "gw", LinkConfig(ns.broker, handle_commands=False, sth_interval_s=3600, window=ns.window)).start()
    try:
        if not link.wait_connected(10):
            print(f"cannot connect to {ns.broker}", file=sys.stderr)
            return 1
        bare_started = run_bare(url.host, url.port, bare_topic, template, "bare", ns.n)
        bare_rate = summarise("bare paho   ", sub.collect("bare", ns.n), ns.n, bare_started)
        ours_started = run_outbox(link, template, "outbox", ns.n)
        ours_rate = summarise("outbox      ", sub.collect("outbox", ns.n), ns.n, ours_started)
        # for reference: paho fed one message per free slot (no outbox, nothing on disk)
        win_started = run_bare(url.host, url.port, bare_topic, template, "barewin", ns.n, window=20)
        win_rate = summarise("bare paho, fed per free slot", sub.collect("barewin", ns.n), ns.n, win_started)
        with State(work / "gw") as state:
            left = ob.usage(state.db).count
        print(f"outbox rows left after the run: {left}; published {link.stats.published}, max in flight {link.stats.max_in_flight}, "
          f"{link.stats.fed_by_supervisor} handed to paho by the supervisor (the rest from on_publish, on paho's thread)")
        if ns.paced:
            started = run_bare(url.host, url.port, bare_topic, template, "pacedbare", ns.paced, pace_hz=1000)
            summarise("bare paho   @1000/s", sub.collect("pacedbare", ns.paced), ns.paced, started)
            started = run_outbox(link, template, "pacedoutbox", ns.paced, pace_hz=1000)
            summarise("outbox      @1000/s", sub.collect("pacedoutbox", ns.paced), ns.paced, started)
    finally:
        link.stop()
        sub.close()
        shutil.rmtree(work, ignore_errors=True)  # 27 MB of outbox database a run; it used to stay in /tmp
    print(f"(reference) outbox/bare_paho_fed_per_slot = {ours_rate / win_rate if win_rate else 0:.2f}")
    print(f"outbox/bare_paho = {ours_rate / bare_rate if bare_rate else 0:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
