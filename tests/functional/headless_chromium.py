"""Load a page in Debian's headless Chromium over the DevTools protocol (CDP, on aiohttp's websocket):
collect console errors and uncaught exceptions, evaluate JavaScript, take a full-page screenshot.

Chromium is a system package (``apt-get install -y chromium``; ``.ci/run`` installs it when missing).
The flags are the ones that work on this kind of machine (no sandbox as root, no background
networking: the network is closed), with a fresh profile per browser.
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["INSTALL", "chromium_binary", "load_page"]

INSTALL = "apt-get install -y chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-port=0", "--window-size=1400,1000")


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"Chromium is not installed; this test renders the HTML report in it. Install it with: {INSTALL} "
                "(as root; .ci/run does it before the tests)", pytrace=False)


class _Cdp:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    async def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    async def wait_for(self, method: str, timeout_s: float) -> None:
        if any(e["method"] == method for e in self.events):
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), deadline - time.monotonic())).data)
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return
        raise TimeoutError(f"no {method} within {timeout_s}s")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("uncaught: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out


async def _session(port: int, url: str, expression: str, screenshot: Path | None, timeout_s: float) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = _Cdp(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                await cdp.call(f"{domain}.enable")
            await cdp.call("Page.navigate", url=url)
            await cdp.wait_for("Page.loadEventFired", timeout_s)
            await asyncio.sleep(0.5)  # let late scripts (chart layout) run and report errors
            value = (await cdp.call("Runtime.evaluate", expression=expression, returnByValue=True))["result"].get("value")
            if screenshot is not None:
                height = (await cdp.call("Runtime.evaluate", expression="document.documentElement.scrollHeight",
                                         returnByValue=True))["result"]["value"]
                await cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=int(height),
                               deviceScaleFactor=1, mobile=False)
                await asyncio.sleep(0.5)  # plotly resizes responsive charts
                shot = await cdp.call("Page.captureScreenshot", format="png")
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            requested = [e["params"]["request"]["url"] for e in cdp.events
                         if e["method"] == "Network.requestWillBeSent"]
            return {"value": value, "errors": cdp.errors(), "requested": requested}


def load_page(url: str, expression: str = "1", screenshot: Path | None = None, timeout_s: float = 60.0) -> dict:
    """Open ``url`` in a fresh headless Chromium; return {"value": the expression's value, "errors": console
    errors and uncaught exceptions, "requested": every URL the page requested}."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None else ""
                    pytest.fail(f"Chromium ({binary}) did not start its DevTools endpoint: {err}", pytrace=False)
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            return asyncio.run(_session(port, url, expression, screenshot, timeout_s))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
