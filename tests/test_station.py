"""The station screen of ``egw run`` in headless Chromium, with real simulators, in both languages.

One scripted shift: two recorders dock while the platform is down, three rapid tests arrive, an
``egw sign`` session runs in its own process, a recorder is unplugged and docked again, the platform
comes back. At each step the test reads what the page shows (each card's one sentence, the rows with
their delivery state, the signing session) without reloading it, keeps screenshots under
``test-artifacts/``, and loads the page 20 times in a row to check the first render is never blank.
"""

import asyncio
import json
import re
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
CARDS = "Array.from(document.querySelectorAll('#cards .card')).map(c => c.querySelector('.sentence').textContent)"
ROWS = ("Array.from(document.querySelectorAll('#{table} tbody tr[data-evidence]'))"
        ".map(r => [r.dataset.state, r.lastElementChild.textContent, r.textContent])")
COPIED = ("Array.from(document.querySelectorAll('#cards .card[data-device] progress'))"
          ".map(p => [Number(p.value), Number(p.max)])")


NOT_YET = {"queued": "已签名，等待上传", "uploading": "正在上传"}  # the platform is down: never "receipted"


def state(screen: str) -> dict:
    with urllib.request.urlopen(screen + "api/state", timeout=5) as response:
        return json.loads(response.read())


def fetch(url: str) -> tuple[dict, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(response.headers), response.read().decode("utf-8")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def wait_page(browser: Chromium, expression: str, predicate, timeout: float, what: str):
    """Poll the live page (no reload) until ``predicate(value of expression)`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    value = None
    while asyncio.get_running_loop().time() < deadline:
        value = await browser.evaluate(expression)
        if value is not None and predicate(value):
            return value
        await asyncio.sleep(0.3)
    raise AssertionError(f"the page never showed {what}; it shows {value!r}\n{await browser.text()}")


def _config(tmp_path: Path, data: Path, usbip: str, volumes: Path, analyzer: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
data_dir = "{data}"
[platform]
parallel_uploads = 2
[screen]
listen = "127.0.0.1:0"
[metrics]
listen = ""
[defaults]
inspector_id = "inspector-7"
[[devices]]
kind = "bodycam"
name = "dock"
usbip = "{usbip}"
volumes = "{volumes}/{{serial}}"
[[devices]]
kind = "rapidtest"
name = "analyzer"
port = "{analyzer}"
""")
    return config


async def first_renders_are_never_blank(browser: Chromium, screen: str, cards: int, loads: int = 20) -> None:
    """Each load, at its load event (before any live update could fill it in), already shows the recorders."""
    started = time.monotonic()
    for n in range(loads):
        await browser.load(screen)
        shown = await browser.evaluate(CARDS)
        text = await browser.text()
        assert shown.count("请勿拔出：等待平台回执 0/3") == cards and "没有已接入的设备" not in text and "connecting" not in text, (n, shown, text)
    print(f"{loads} page loads in {time.monotonic() - started:.2f} s")  # a measurement for the log, not an assertion


async def script_free_render_shows_the_station(browser: Chromium, screen: str, cards: int) -> None:
    """With scripts disabled the server's HTML alone shows every card: nothing waits for the event stream."""
    await browser.call("Emulation.setScriptExecutionDisabled", value=True)
    try:
        await browser.load(screen)
        assert (await browser.evaluate(CARDS)).count("请勿拔出：等待平台回执 0/3") == cards
    finally:
        await browser.call("Emulation.setScriptExecutionDisabled", value=False)
        await browser.load(screen)  # the script-free document stays static: load a live one


def test_station_screen_follows_a_shift_in_both_languages(tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    platform_data = tmp_path / "platform"
    port = free_port()
    platform, address, _ = spawn_platform(platform_data, listen=f"127.0.0.1:{port}")
    recorders, usbip, volumes = start_recorders(tmp_path, "--count", "2", "--recordings", "3")
    analyzer = spawn_egw("simulate", "rapidtest", "--tests", "3", "--tcp", "0", "--interval", "0.2",
                         "--reply-timeout", "2", "--retry-delay", "0.2")
    analyzer_url = analyzer.stdout.readline().strip()
    finger = spawn_egw("simulate", "fingerprint", "--tcp", "0", "--baud", "0", "--finger", "present", "--quality", "0.9")
    finger_url = finger.stdout.readline().strip()
    gateway = None
    try:
        data = enrolled_gateway(tmp_path, platform_data, address)
        stop_process(platform)  # the platform is down while the officers dock: nothing can be receipted
        gateway = spawn_egw("run", "-c", str(_config(tmp_path, data, usbip, volumes, analyzer_url)))
        screen = json.loads(gateway.stdout.readline())["screen"]
        cams = lambda: [d for d in state(screen)["devices"] if d["kind"] == "bodycam" and d["files_total"]]
        wait_for(lambda: len(cams()) == 2 and all(d["files_ingested"] == d["files_total"] for d in cams()), 90,
                 "both recorders copied")

        headers, html = fetch(screen)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "style-src 'self'" in csp
        assert not re.search(r"<script(?![^>]*\bsrc=)", html) and " style=" not in html and not re.search(r"\son[a-z]+=", html)

        async def shift() -> None:
            nonlocal platform
            browser = Chromium()
            try:
                await browser.open()
                await browser.load(screen)
                # Chinese by default: both recorders wait for the platform, the three results are queued.
                await wait_page(browser, CARDS, lambda s: s.count("请勿拔出：等待平台回执 0/3") == 2, 60, "two recorders waiting")
                results = await wait_page(browser, ROWS.format(table="results"), lambda r: len(r) == 3, 60, "three results")
                assert all(NOT_YET.get(row[0]) == row[1] for row in results), results
                assert "可以拔出" not in await browser.text()
                await browser.screenshot(ARTIFACTS / "station-zh-waiting.png", full_page=True)

                # A signing session in its own process (egw sign): the open page lists it without a reload.
                document = tmp_path / "inspection-record.txt"
                document.write_text("on-site inspection record, stall 17\n", encoding="utf-8")
                signed = await asyncio.to_thread(run_egw, "sign", "--document", str(document), "--signer", "Li Wei",
                                                 "--role", "party", "--fingerprint", finger_url, "--data-dir", str(data),
                                                 "--json", timeout=120)
                assert signed.returncode == 0, signed.stderr
                signings = await wait_page(browser, ROWS.format(table="signings"), lambda r: len(r) == 1, 30, "the signing session")
                assert "Li Wei" in signings[0][2] and "inspection-record.txt" in signings[0][2] and "当事人" in signings[0][2]
                assert NOT_YET.get(signings[0][0]) == signings[0][1], signings

                # The same moment in English (?lang=en), then back to Chinese.
                await browser.load(screen + "?lang=en")
                assert (await browser.evaluate(CARDS)).count("Do not undock: waiting for the platform 0/3") == 2
                rows = await browser.evaluate(ROWS.format(table="results")) + await browser.evaluate(ROWS.format(table="signings"))
                assert len(rows) == 4 and all({"queued": "signed, queued", "uploading": "uploading"}[r[0]] == r[1] for r in rows)
                assert "Li Wei" in rows[3][2] and "party" in rows[3][2]
                await browser.screenshot(ARTIFACTS / "station-en-waiting.png", full_page=True)
                await browser.load(screen + "?lang=zh_CN")

                # Unplug one recorder before it is safe, then dock it again: the page follows, counters stay sane.
                recorders.stdin.write("unplug 1-2\n")
                recorders.stdin.flush()
                await wait_page(browser, CARDS, lambda s: "请联系证据管理员" in s or "已拔出" in s, 60, "the unplugged recorder")
                await browser.screenshot(ARTIFACTS / "station-zh-unplugged.png", full_page=True)
                recorders.stdin.write("replug 1-2\n")
                recorders.stdin.flush()
                await wait_page(browser, CARDS, lambda s: s.count("请勿拔出：等待平台回执 0/3") == 2, 90, "the re-docked recorder waiting")
                bars = await browser.evaluate(COPIED)
                assert bars and all(value <= maximum for value, maximum in bars), bars
                await first_renders_are_never_blank(browser, screen, cards=2)
                await script_free_render_shows_the_station(browser, screen, cards=2)

                # An officer opened a card's details: the updates that follow keep them open.
                opened = await browser.evaluate("(() => { const d = document.querySelector('#cards details'); d.open = true; return d.dataset.key; })()")
                # The platform comes back: the same page turns both cards safe and every row receipted.
                platform, _, _ = await asyncio.to_thread(spawn_platform, platform_data, listen=f"127.0.0.1:{port}")
                await wait_page(browser, CARDS, lambda s: s.count("可以拔出") == 2, 120, "both recorders safe")
                await wait_page(browser, ROWS.format(table="results"),
                                lambda r: len(r) == 3 and all(row[0] == "receipted" and row[1] == "平台已回执" for row in r),
                                60, "the results receipted")
                await wait_page(browser, ROWS.format(table="signings"),
                                lambda r: len(r) == 1 and r[0][0] == "receipted" and r[0][1] == "平台已回执", 60,
                                "the signing session receipted")
                assert await browser.evaluate(f"document.querySelector('details[data-key=\"{opened}\"]').open") is True
                await browser.screenshot(ARTIFACTS / "station-zh-safe.png", full_page=True)

                # English on request, remembered by a cookie; details one click away, never the headline.
                await browser.load(screen + "?lang=en")
                assert (await browser.evaluate(CARDS)).count("Safe to undock") == 2
                await browser.load(screen)
                text = await browser.text()
                assert "receipted by the platform" in text and "Li Wei" in text and "可以拔出" not in text
                assert await browser.evaluate("document.querySelectorAll('#cards details:not([open])').length") >= 2
                await browser.screenshot(ARTIFACTS / "station-en-safe.png", full_page=True)
                await browser.load(screen + "?lang=zh_CN")
                assert (await browser.evaluate(CARDS)).count("可以拔出") == 2
            finally:
                await browser.close()

        asyncio.run(shift())
        for name in ("zh-waiting", "en-waiting", "zh-unplugged", "zh-safe", "en-safe"):
            assert (ARTIFACTS / f"station-{name}.png").stat().st_size > 10_000
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=12) == 0
        assert run_egw("custody", "verify", "--data-dir", str(data)).returncode == 0
    finally:
        for proc in (gateway, analyzer, finger, recorders, platform):
            if proc is not None:
                stop_process(proc)
