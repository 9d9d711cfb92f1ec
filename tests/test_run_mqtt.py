"""``egw run`` with an MQTT broker: birth, results, device states, signed commands (shared Mosquitto on 1883)."""

import json
import signal
import threading
import time
import uuid

import paho.mqtt.client as mqtt

from tests.conftest import run_egw, spawn_egw
from tests.test_dock import enrolled_gateway
from tests.uplink_support import spawn_platform, stop_process

BROKER = "mqtt://127.0.0.1:1883"


def test_station_publishes_results_and_answers_signed_commands(tmp_path):
    platform, address, _ = spawn_platform(tmp_path / "platform")
    data = enrolled_gateway(tmp_path, tmp_path / "platform", address)
    gateway_id = "gw-dock"
    # A fresh gateway id per run keeps retained messages of earlier runs out of the way.
    meta = json.loads((data / "identity" / "gateway.json").read_text())
    received: list[tuple[str, bytes, bool]] = []
    got = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    sub.on_message = lambda c, u, m: (received.append((m.topic, m.payload, m.retain)), got.set())
    sub.connect("127.0.0.1", 1883)
    sub.subscribe(f"egw/v1/{meta['gateway_id']}/#", qos=1)
    sub.loop_start()
    analyzer = spawn_egw("simulate", "rapidtest", "--tests", "2", "--tcp", "0", "--interval", "0.2",
                         "--reply-timeout", "2", "--retry-delay", "0.2")
    analyzer_url = analyzer.stdout.readline().strip()
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
data_dir = "{data}"
[mqtt]
url = "{BROKER}"
[screen]
listen = ""
[metrics]
listen = ""
[[devices]]
kind = "rapidtest"
name = "analyzer"
port = "{analyzer_url}"
""")
    gateway = spawn_egw("run", "-c", str(config))
    try:
        json.loads(gateway.stdout.readline())
        deadline = time.monotonic() + 60
        topics = lambda: {t for t, _, _ in received}
        while time.monotonic() < deadline:
            results = [p for t, p, _ in received if t.endswith("/results/rapidtest")]
            seen = topics()
            if (len(results) >= 2 and f"egw/v1/{gateway_id}/state" in seen and any("/evidence/" in t for t in seen)
                    and any(t.endswith("/state") and "/devices/" in t for t in seen)):
                break
            time.sleep(0.2)
        results = [json.loads(p) for t, p, _ in received if t.endswith("/results/rapidtest")]
        assert len(results) == 2, sorted(topics())
        assert all(r["signedResult"]["payloadType"] == "application/vnd.egw.manifest.v1+json" for r in results)
        states = [json.loads(p) for t, p, _ in received if t == f"egw/v1/{gateway_id}/state"]
        assert any(s.get("state") == "online" for s in states)
        assert any("/evidence/" in t for t in topics())  # every evidence state change is announced
        assert any(t.endswith("/state") and "/devices/" in t for t in topics())

        reply = run_egw("platform", "cmd", "--data", str(tmp_path / "platform"), "--mqtt", BROKER, gateway_id, "ping", "--json")
        assert reply.returncode == 0, reply.stdout + reply.stderr
        assert json.loads(reply.stdout)["ok"] is True
        status = run_egw("platform", "cmd", "--data", str(tmp_path / "platform"), "--mqtt", BROKER, gateway_id, "reupload",
                         "evidence_id=not-an-id", "--json")
        assert status.returncode == 1 and "not-an-id" in json.loads(status.stdout)["error"]

        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=15) == 0
        time.sleep(0.5)
        last_state = [json.loads(p) for t, p, _ in received if t == f"egw/v1/{gateway_id}/state"][-1]
        assert last_state["state"] == "offline"
    finally:
        sub.loop_stop()
        sub.disconnect()
        for proc in (gateway, analyzer, platform):
            stop_process(proc)
