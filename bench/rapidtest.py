"""Rapid-test latency and throughput: analyzer → driver → signed evidence → MQTT outbox → platform.

    python bench/rapidtest.py [--tests 200] [--broker mqtt://127.0.0.1:1883]

The simulated analyzer (TCP, unpaced) sends N tests; the gateway's driver
receives each message, the rapid-test pipeline stores transcript and result
as evidence with a DSSE-signed manifest, and the MQTT link publishes the
signed envelope through the durable outbox (committed before it is sent). A
subscriber stands in for the platform and counts a result as *arrived* only
once the envelope's signature verifies with the gateway's certificate.

Latency per result = platform has the verified result − the driver holds the
complete message (i.e. the instrument's last frame has arrived; on loopback
that is microseconds after it was sent). Last line: ``rapidtest_p50_ms = X``
(target < 50 ms). The reference in the same run is a bare paho QoS 1 publish
of the same envelope bytes, printed for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    args = parser.parse_args()

    import paho.mqtt.client as mqtt

    from bench._common import load_average, peak_rss_mb_self
    from drivers.rapidtest import RapidTestAnalyzer
    from gateway.evidence import dsse
    from gateway.evidence.identity import init_identity
    from gateway.evidence.evidence_service import EvidenceService
    from gateway.uplink.mqtt_config import LinkConfig
    from gateway.uplink.mqtt_link import MqttLink
    from gateway.workflows.rapidtest import RapidTestPipeline
    from simulators.rapidtest.simulator import RapidTestSimulator

    host, port = args.broker.removeprefix("mqtt://").split(":")
    data = Path(tempfile.mkdtemp(prefix="egw-bench-rt-")) / "gw"
    gateway_id = f"gw-bench-{uuid.uuid4().hex[:6]}"
    identity = init_identity(data, gateway_id=gateway_id)
    public_key = identity.certificate.public_key()
    load_before = load_average()

    ready_at: dict[str, float] = {}  # evidence id -> when the driver held the message
    arrived: dict[str, float] = {}
    done = threading.Event()

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        env = body["signedResult"]
        envelope = dsse.Envelope.from_json({"payloadType": env["payloadType"], "payload": env["payload"],
                                            "signatures": [{"keyid": s.get("keyid", ""), "sig": s["sig"]} for s in env["signatures"]]})
        dsse.verify(envelope, public_key)  # the platform believes only a verified result
        arrived.setdefault(body["evidenceId"], time.perf_counter())
        if len(arrived) >= args.tests:
            done.set()

    platform = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-platform-{uuid.uuid4().hex[:6]}")
    platform.on_message = on_message
    platform.connect(host, int(port))
    platform.subscribe(f"egw/v1/{gateway_id}/results/rapidtest", qos=1)
    platform.loop_start()

    service = EvidenceService(data)
    link = MqttLink(data, LinkConfig(args.broker, max_inflight=20))
    link.start()
    link.wait_connected(10)
    pipeline = RapidTestPipeline(service, inspector_id="bench")  # the pipeline queues results/rapidtest itself
    simulator = RapidTestSimulator("pesticide", tests=args.tests, interval=0.0, reply_timeout=2, retry_delay=0.2, seed=1)
    url = simulator.serve_tcp()
    started = time.perf_counter()
    with RapidTestAnalyzer(url) as analyzer:
        for result in analyzer.results(timeout=30):
            t0 = time.perf_counter()
            recorded = pipeline.record(result)
            ready_at[recorded.evidence_id] = t0
            if len(ready_at) >= args.tests:
                analyzer.acknowledge()
                break
    done.wait(60)
    elapsed = time.perf_counter() - started
    simulator.stop()
    link.stop()
    service.close()

    latencies = sorted((arrived[e] - t) * 1000 for e, t in ready_at.items() if e in arrived)
    # Reference: the same envelope bytes published bare at QoS 1 (no evidence, no outbox), one at a time.
    bare = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{uuid.uuid4().hex[:6]}")
    bare.connect(host, int(port))
    bare.loop_start()
    payload = b"x" * 1200
    bare_latencies = []
    for _ in range(min(args.tests, 200)):
        t = time.perf_counter()
        bare.publish(f"egw/v1/{gateway_id}/bench/bare", payload, qos=1).wait_for_publish(5)
        bare_latencies.append((time.perf_counter() - t) * 1000)
    bare.loop_stop()
    platform.loop_stop()
    if len(latencies) < args.tests:
        print(f"FAILED: only {len(latencies)} of {args.tests} results reached the platform verified")
        return 1
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
    print(f"results: {args.tests} in {elapsed:.2f} s = {args.tests / elapsed:.0f} results/s (signed, stored, outbox, verified at the platform)")
    print(f"latency last frame → platform has the verified result: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"reference, bare paho QoS 1 publish → PUBACK in the same run: p50 {statistics.median(bare_latencies):.2f} ms")
    print(f"load average: {load_before} → {load_average()}; peak RSS {peak_rss_mb_self():.0f} MB")
    print(f"rapidtest_p50_ms = {p50:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
