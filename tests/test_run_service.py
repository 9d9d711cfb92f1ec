"""``egw run`` as a process: ready line, screen, metrics, signals."""

import json
import signal
import time
import urllib.request

import pytest

from tests.conftest import run_egw, spawn_egw


@pytest.fixture
def station(tmp_path):
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-run", check=True)
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n[screen]\nlisten = "127.0.0.1:0"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    proc = spawn_egw("run", "-c", str(config))
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    ready = json.loads(line)
    yield proc, ready, config
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def test_ready_screen_metrics_and_clean_sigterm(station):
    proc, ready, _ = station
    assert ready["event"] == "ready" and ready["gateway_id"] == "gw-run"
    status, page = get(ready["screen"])
    assert status == 200 and "证据采集站" in page  # the officers' language by default
    status, page = get(ready["screen"] + "?lang=en")
    assert status == 200 and "Evidence station" in page
    status, body = get(ready["screen"] + "api/state")
    assert json.loads(body)["gateway_id"] == "gw-run"
    time.sleep(1.2)  # one refresh of the counters
    status, metrics = get(ready["metrics"])
    assert 'egw_evidence_items{state="queued"} 0.0' in metrics and "egw_upload_queue_items" in metrics
    proc.send_signal(signal.SIGHUP)  # reload with no devices: must not disturb anything
    time.sleep(0.5)
    assert proc.poll() is None
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 10
