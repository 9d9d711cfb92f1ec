"""``egw run`` with real simulators: docking, receipts, "safe to undock" on the station page (Chromium)."""

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path

from tests.chromium import Chromium
from tests.conftest import REPO, run_egw, spawn_egw
from tests.test_dock import enrolled_gateway, start_recorders
from tests.mqtt_support import free_port
from tests.uplink_support import spawn_platform, stop_process

ARTIFACTS = REPO / "test-artifacts"


def state(screen: str) -> dict:
    with urllib.request.urlopen(screen + "api/state", timeout=5) as response:
        return json.loads(response.read())


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def test_station_shows_safe_to_undock_only_after_receipts(tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    platform_data = tmp_path / "platform"
    port = free_port()
    platform, address, _ = spawn_platform(platform_data, listen=f"127.0.0.1:{port}")
    recorders, url, volumes = start_recorders(tmp_path, "--count", "2", "--recordings", "3")
    analyzer = spawn_egw("simulate", "rapidtest", "--tests", "3", "--tcp", "0", "--interval", "0.2",
                         "--reply-timeout", "2", "--retry-delay", "0.2")
    analyzer_url = analyzer.stdout.readline().strip()
    gateway = None
    try:
        data = enrolled_gateway(tmp_path, platform_data, address)
        stop_process(platform)  # the platform is down while the officers dock
        config = tmp_path / "gateway.toml"
        hostport = url.removeprefix("usbip://")
        config.write_text(f"""
data_dir = "{data}"
[platform]
parallel_uploads = 2
[screen]
listen = "127.0.0.1:0"
[metrics]
listen = "127.0.0.1:0"
[defaults]
inspector_id = "inspector-7"
[[devices]]
kind = "bodycam"
name = "dock"
usbip = "{hostport}"
volumes = "{volumes}/{{serial}}"
[[devices]]
kind = "rapidtest"
name = "analyzer"
port = "{analyzer_url}"
""")
        gateway = spawn_egw("run", "-c", str(config))
        ready = json.loads(gateway.stdout.readline())
        screen = ready["screen"]
        cams = lambda: [d for d in state(screen)["devices"] if d["kind"] == "bodycam" and d["files_total"]]
        wait_for(lambda: len(cams()) == 2 and all(d["files_ingested"] == d["files_total"] for d in cams()), 60, "both recorders ingested")
        time.sleep(1.5)
        assert not any(d["safe_to_undock"] for d in cams()), "safe to undock before any receipt"

        async def watch_the_page() -> None:
            nonlocal platform
            browser = Chromium()
            try:
                await browser.open(screen)
                waiting = await browser.wait_for_text(lambda t: t.count("Do not undock") == 2, 30, "two recorders waiting")
                assert "SAFE TO UNDOCK" not in waiting
                await browser.screenshot(ARTIFACTS / "station-waiting.png")
                # The platform comes back: the same page, without reloading, must turn both cards safe.
                platform, _, _ = await asyncio.to_thread(spawn_platform, platform_data, listen=f"127.0.0.1:{port}")
                text = await browser.wait_for_text(lambda t: t.count("SAFE TO UNDOCK") == 2, 120, "both recorders safe")
                assert "Do not undock" not in text
                await browser.wait_for_text(lambda t: t.count("%") >= 3 or "invalid" in t, 30, "the rapid-test results")
                await browser.screenshot(ARTIFACTS / "station-safe.png")
            finally:
                await browser.close()

        asyncio.run(watch_the_page())
        assert all(d["files_receipted"] == d["files_total"] for d in cams())
        assert len(state(screen)["results"]) == 3
        assert (ARTIFACTS / "station-safe.png").stat().st_size > 10_000

        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=12) == 0
        assert run_egw("custody", "verify", "--data-dir", str(data)).returncode == 0
    finally:
        for proc in (gateway, analyzer, recorders, platform):
            if proc is not None:
                stop_process(proc)
