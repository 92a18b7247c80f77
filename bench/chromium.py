"""Debian's headless chromium driven over the Chrome DevTools Protocol: the real browser the
page and embed-kit tests use, and the browser viewer of ``bench ask --viewer browser``."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

Evaluate = Callable[[str], Awaitable[object]]


class NoChromium(RuntimeError):
    """chromium is not installed."""


def installed() -> str | None:
    """The chromium program, or None where it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def chromium(url: str, profile: Path) -> Iterator[str]:
    """A headless chromium showing ``url``; yields its DevTools address. Raises
    ``NoChromium`` where it is not installed (``make system-deps`` installs it)."""
    browser = installed()
    if browser is None:
        raise NoChromium("chromium is not installed; `make system-deps` installs it")
    proc = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio",
         "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream",  # a beeping microphone
         url],
        stderr=subprocess.PIPE, text=True)
    try:
        ws_url = None
        t0 = time.time()
        while ws_url is None and time.time() - t0 < 60:
            m = re.search(r"DevTools listening on (ws://\S+)", proc.stderr.readline())
            if m:
                ws_url = m.group(1)
        if ws_url is None:
            raise RuntimeError("chromium did not start its DevTools endpoint in 60 s")
        yield ws_url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def page(ws_url: str) -> tuple[Evaluate, Callable[[], Awaitable[None]]]:
    """``evaluate(js)`` in the browser's first page (promises awaited, values returned),
    and ``close()``."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        base = ws_url.split("/devtools/")[0].replace("ws://", "http://")
        async with http.get(f"{base}/json/list") as r:
            pages = [p for p in await r.json() if p["type"] == "page"]
    return await _cdp(pages[0]["webSocketDebuggerUrl"])


async def _cdp(ws_url: str) -> tuple[Evaluate, Callable[[], Awaitable[None]]]:
    """A minimal Chrome DevTools Protocol client: evaluate JavaScript in the page."""
    import aiohttp

    http = aiohttp.ClientSession()
    ws = await http.ws_connect(ws_url, max_msg_size=0)
    counter = iter(range(1, 10**9))

    async def call(method: str, **params) -> dict:  # noqa: ANN003
        mid = next(counter)
        await ws.send_json({"id": mid, "method": method, "params": params})
        while True:
            msg = await ws.receive_json(timeout=60)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    async def evaluate(js: str) -> object:
        res = await call("Runtime.evaluate", expression=js, awaitPromise=True,
                         returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    async def close() -> None:
        await ws.close()
        await http.close()

    return evaluate, close
