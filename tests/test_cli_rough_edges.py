"""Issue 17: the CLI's rough edges, each as the operator met it.

- ``egw ingest EMPTY_DIR`` exited 0 and said nothing;
- ingesting a stored file again with another ``--kind`` silently printed the old id;
- ``egw mqtt publish-test`` left a retained fake device on the broker for every later subscriber;
- ``egw dock`` without ``--volumes`` waited 30 s, then printed a Python repr and "see the rows marked NO
  above" with no rows.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import egw_env, run_egw
from tests.mqtt_support import Mosquitto


def _gateway(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    return data


def test_ingest_of_an_empty_directory_says_so_and_exits_2(tmp_path: Path) -> None:
    data = _gateway(tmp_path)
    (tmp_path / "card" / "DCIM").mkdir(parents=True)
    proc = run_egw("ingest", str(tmp_path / "card"), "--data-dir", str(data))
    assert proc.returncode == 2, proc.stderr
    assert "no files to ingest" in proc.stderr and str(tmp_path / "card") in proc.stderr and "hint:" in proc.stderr
    assert proc.stdout == ""


def test_reingesting_with_another_kind_says_what_it_already_is(tmp_path: Path) -> None:
    data = _gateway(tmp_path)
    photo = tmp_path / "scene.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + b"jpeg" * 100)
    first = run_egw("ingest", str(photo), "--kind", "photo", "--data-dir", str(data), check=True).stdout.strip()
    again = run_egw("ingest", str(photo), "--kind", "photo", "--data-dir", str(data), check=True).stdout.strip()
    assert again == first  # the same file with the same kind: the same evidence, exit 0
    other = run_egw("ingest", str(photo), "--kind", "video", "--data-dir", str(data))
    assert other.returncode == 1, other.stderr
    assert f"already evidence as photo with id {first}" in other.stderr and "not stored again as video" in other.stderr
    assert "hint:" in other.stderr
    as_json = run_egw("ingest", str(photo), "--kind", "video", "--data-dir", str(data), "--json")
    report = json.loads(as_json.stdout)
    assert report["failed"] == 1 and "already evidence as photo" in report["items"][0]["error"]


def _retained(port: int, topic_filter: str) -> list[tuple[str, bytes]]:
    """What a new subscriber is handed as retained. A marker published after the SUBACK comes back after every
    retained message the broker sends for that subscription, so the answer does not depend on waiting."""
    got: list[tuple[str, bytes]] = []
    marker_seen, subscribed = threading.Event(), threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)

    def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == "test/marker":
            marker_seen.set()
        elif message.retain:
            got.append((message.topic, bytes(message.payload)))

    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe([(topic_filter, 1), ("test/marker", 1)])
        assert subscribed.wait(10), "no SUBACK"
        client.publish("test/marker", b"m", qos=1)
        assert marker_seen.wait(10), "the marker did not come back"
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_mqtt_publish_test_leaves_no_retained_fake_device(tmp_path: Path) -> None:
    data = _gateway(tmp_path)
    broker = Mosquitto(tmp_path).start()
    try:
        proc = run_egw("mqtt", "publish-test", "--mqtt", broker.url, "--data-dir", str(data), "--timeout", "20",
                       env=egw_env())
        assert proc.returncode == 0 and "sent and cleared" in proc.stdout, proc.stdout + proc.stderr
        devices = [(t, p) for t, p in _retained(broker.port, "egw/v1/#") if "/devices/" in t]
        assert devices == [], f"publish-test left retained device states: {devices}"
    finally:
        broker.kill()


def test_dock_without_a_volumes_directory_says_at_once_what_it_looked_for(tmp_path: Path) -> None:
    data = _gateway(tmp_path)
    template = str(tmp_path / "no-such-mounts" / "{serial}")
    # No recorder needs to answer: the check comes before any recorder is touched.
    for lang, words in (("en", "does not exist"), ("zh_CN", "不存在")):
        proc = run_egw("dock", "--usbip", "usbip://127.0.0.1:9", "--volumes", template, "--data-dir", str(data),
                       env=egw_env(EGW_LANG=lang), timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and str(tmp_path / "no-such-mounts") in proc.stderr and "--volumes" in proc.stderr
        assert "Locator(" not in proc.stderr and "Traceback" not in proc.stderr and "rows marked" not in proc.stderr
    no_serial = run_egw("dock", "--usbip", "usbip://127.0.0.1:9", "--volumes", str(tmp_path), "--data-dir", str(data),
                        env=egw_env(EGW_LANG="en"), timeout=60)
    assert no_serial.returncode == 2 and "{serial}" in no_serial.stderr, no_serial.stderr
