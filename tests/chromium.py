"""Drive Debian's headless Chromium over the DevTools protocol (aiohttp's websocket client).

Why not ``--dump-dom``: the station page keeps a server-sent-events stream
open, so a one-shot render never goes idle. Over CDP the test loads the page
once and watches its DOM change live as the service's state changes.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Chromium"]


class Chromium:
    def __init__(self) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        assert binary, "Chromium is missing: apt-get install chromium (.ci/run installs it)"
        self.profile = tempfile.mkdtemp(prefix="egw-chromium-")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={self.profile}", "--window-size=1280,900",
             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.ids = itertools.count(1)
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self, url: str | None = None) -> None:
        assert self.proc.stderr is not None
        endpoint = None
        for _ in range(200):
            line = await asyncio.to_thread(self.proc.stderr.readline)
            match = re.search(r"DevTools listening on (ws://\S+)", line)
            if match:
                endpoint = match.group(1)
                break
        assert endpoint, "Chromium did not start its DevTools endpoint"
        http = endpoint.replace("ws://", "http://").split("/devtools/")[0]
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"{http}/json/list") as response:
            pages = [t for t in await response.json() if t["type"] == "page"]
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        await self.call("Page.enable")
        if url is not None:
            await self.call("Page.navigate", url=url)

    async def load(self, url: str) -> None:
        """Navigate and return when the page's load event fired: what a visitor sees first, before any
        live update could have filled it in (``call`` would swallow that event, so this reads it itself)."""
        assert self.ws is not None
        ident = next(self.ids)
        await self.ws.send_str(json.dumps({"id": ident, "method": "Page.navigate", "params": {"url": url}}))
        navigated = loaded = False
        while not loaded:
            message = json.loads((await self.ws.receive(timeout=30)).data)
            if message.get("id") == ident:
                assert "error" not in message and "errorText" not in message.get("result", {}), message
                navigated = True
            elif navigated and message.get("method") == "Page.loadEventFired":
                loaded = True

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        ident = next(self.ids)
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive(timeout=30)).data)
            if message.get("id") == ident:
                assert "error" not in message, message
                return message.get("result", {})

    async def text(self) -> str:
        result = await self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''", returnByValue=True)
        return str(result["result"].get("value", ""))

    async def wait_for_text(self, predicate: Any, timeout: float, what: str) -> str:
        deadline = asyncio.get_running_loop().time() + timeout
        text = ""
        while asyncio.get_running_loop().time() < deadline:
            text = await self.text()
            if predicate(text):
                return text
            await asyncio.sleep(0.3)
        raise AssertionError(f"the page never showed {what}; it shows:\n{text}")

    async def screenshot(self, path: Path, full_page: bool = False) -> None:
        """A PNG of the viewport, or of the whole page (``full_page``: tables below the fold included)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = (await self.call("Page.getLayoutMetrics"))["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        result = await self.call("Page.captureScreenshot", **params)
        path.write_bytes(base64.b64decode(result["data"]))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
