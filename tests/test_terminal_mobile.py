"""The mobile web page for terminals without the app (#19, item 5), in headless Chromium at 390x844 with
touch emulation: Simplified Chinese by default, English selectable, nothing wider than the screen; a
photo taken through the page is uploaded (tus, from the page's own script) and stored as evidence of the
terminal's officer; a case shows it after "add my uploads". Screenshots are left in the test's tmp dir.

Chromium cannot be given a client certificate without changing the machine's policies, so the test puts
a small forwarder in front of the station that does the mutual TLS with the paired terminal's
certificate (what an installed certificate does in the handset's browser); the page, its script and the
API calls are the real ones."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

from simulators.terminal.client import TerminalClient
from tests.chromium import Chromium
from tests.terminal_support import init_data, paired_terminal, station, write_config

WIDTH, HEIGHT = 390, 844
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


async def _forwarder(upstream: str, context: ssl.SSLContext) -> tuple[web.AppRunner, str]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with session.request(request.method, upstream.rstrip("/") + request.rel_url.path_qs, headers=headers,
                                   data=await request.read(), allow_redirects=False) as answer:
            response = web.StreamResponse(status=answer.status,
                                          headers={k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            return response

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(lambda _: session.close())
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def _scenario(client: TerminalClient, photo: Path, shots: Path) -> dict[str, object]:
    runner, base = await _forwarder(client.api_url, client.ssl_context())
    browser = Chromium()
    try:
        await browser.open()
        await browser.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=2, mobile=True)
        await browser.call("Emulation.setTouchEmulationEnabled", enabled=True, maxTouchPoints=5)
        await browser.load(base + "/m/")
        chinese = await browser.wait_for_text(lambda text: "移动执法终端" in text and "300009" in text, 10, "the page in Chinese")
        overflow = await browser.evaluate("document.documentElement.scrollWidth")
        document = await browser.call("DOM.getDocument")
        node = await browser.call("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#file")
        await browser.call("DOM.setFileInputFiles", files=[str(photo)], nodeId=node["nodeId"])
        evidence_id = ""
        for _ in range(100):
            evidence_id = await browser.evaluate("(document.querySelector('li[data-evidence-id]') || {}).dataset?.evidenceId || ''")
            if evidence_id:
                break
            await asyncio.sleep(0.2)
        assert evidence_id, await browser.text()
        await browser.evaluate("document.getElementById('case-no').value = 'A-2026-17'; document.getElementById('case-add').click()")
        shown = ""
        for _ in range(50):
            shown = await browser.evaluate("document.getElementById('case').innerText")
            if evidence_id in shown:
                break
            await asyncio.sleep(0.2)
        assert evidence_id in shown, f"the case list shows {shown!r}"
        await browser.screenshot(shots / "mobile-zh_CN.png", full_page=True)
        await browser.load(base + "/m/?lang=en")
        english = await browser.wait_for_text(lambda text: "Mobile terminal" in text, 10, "the page in English")
        await browser.screenshot(shots / "mobile-en.png", full_page=True)
        return {"chinese": chinese, "english": english, "overflow": overflow, "evidence_id": evidence_id}
    finally:
        await browser.close()
        await runner.cleanup()


def test_mobile_page_at_390_px_uploads_a_photo_and_fills_a_case(tmp_path):
    data = init_data(tmp_path)
    photo = tmp_path / "现场.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2000 + b"\xff\xd9")
    with station(write_config(tmp_path, data)) as (_, ready):
        client = paired_terminal(tmp_path, data, ready, officer="300009")
        seen = asyncio.run(_scenario(client, photo, tmp_path))
        status, _, body = client.request("GET", "/api/v1/cases/A-2026-17")
    assert "拍照" in str(seen["chinese"]) and "Take a photo" in str(seen["english"])
    assert int(str(seen["overflow"])) <= WIDTH  # nothing sideways on a 390 px screen
    import json

    case = json.loads(body)
    assert status == 200 and [item["evidence_id"] for item in case["items"]] == [seen["evidence_id"]]
    from gateway.evidence.evidence_service import EvidenceService

    with EvidenceService(data, read_only=True) as service:
        row = service.state.get(str(seen["evidence_id"]))
    assert (row.officer_id, row.device_id, row.size, row.kind) == ("300009", client.paired["terminal_id"], photo.stat().st_size, "photo")
    assert row.source_path.endswith("现场.jpg")
    assert (tmp_path / "mobile-zh_CN.png").stat().st_size > 10_000 and (tmp_path / "mobile-en.png").exists()
