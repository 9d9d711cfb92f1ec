"""``egw run`` as a process: ready line, screen, metrics, signals."""

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterable

import pytest

from gateway.config import parse_config
from gateway.station.runtime import Runtime
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


def _tasks_waiting_on(event: asyncio.Event, tasks: Iterable[asyncio.Task]) -> list[asyncio.Task]:
    """The tasks parked in ``event.wait()`` (each holds a waiter future on the event until it is set)."""
    def waits_on_event(task: asyncio.Task) -> bool:
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        return getattr(coro, "__qualname__", "") == "Event.wait" and frame is not None and frame.f_locals.get("self") is event

    return [task for task in tasks if waits_on_event(task)]


def test_the_service_loop_keeps_one_task_waiting_for_the_stop_signal(tmp_path) -> None:
    """Issue 13's soak: ``egw run``'s memory crept because every half-second wake-up of the main loop
    left a new task parked on the stop event, for good. After many wake-ups (each SIGHUP is seen by the
    next one) one task still waits for the stop signal, and SIGTERM still stops the service cleanly."""
    data = tmp_path / "data"
    run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-loop", check=True)
    wake_ups = 12

    async def scenario() -> tuple[int, int]:
        runtime = Runtime(parse_config({"data_dir": str(data)}))
        ready = asyncio.Event()
        service = asyncio.create_task(runtime.run(lambda _info: ready.set()))
        await asyncio.wait_for(ready.wait(), 30)
        for _ in range(wake_ups):
            os.kill(os.getpid(), signal.SIGHUP)  # the loop clears the request at its next wake-up
            while not runtime._reload_requested:
                await asyncio.sleep(0.01)
            while runtime._reload_requested:
                await asyncio.sleep(0.05)
        waiting = _tasks_waiting_on(runtime.stopping, asyncio.all_tasks())
        os.kill(os.getpid(), signal.SIGTERM)
        return len(waiting), await asyncio.wait_for(service, 30)

    waiting, exit_code = asyncio.run(scenario())
    assert waiting == 1, f"{waiting} tasks wait for the stop signal after {wake_ups} wake-ups"
    assert exit_code == 0
