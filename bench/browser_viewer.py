"""A timed browser viewer for ``bench ask --viewer browser``: Debian's headless chromium
opens the server's page, connects with the embed kit (``/embed/twincast.js``) as any page
would, and notes every video frame it shows and every data-channel event it gets.

The aiortc viewer (``bench.viewer.TimedViewer``) hands a video frame over only once the
next frame's first packet has come, a frame interval late; a browser does not. Here each
frame is timed by chromium's own ``requestVideoFrameCallback`` metadata: ``receiveTime``
(its last packet in, what ``packets=True`` reads) and ``expectedDisplayTime`` (when the
compositor puts it on screen: decoded, through the browser's jitter buffer, painted),
with its ``rtpTimestamp`` saying which stream-clock frame it is, so the frame that paints
a sentence's first word is found as ``TimedViewer.word_frames`` finds it. A frame the
browser did not show (dropped under load) is not counted: the first word is then timed at
the next frame shown, later, as the viewer saw it.

Sound is timed as chromium plays it out: every 20 ms the page reads its WebRTC statistics,
whose ``totalAudioEnergy`` grows by each played sample's square, so each interval's growth
over its ``totalSamplesDuration`` is the mean square of what was played in it; an
interval's sound is timed at its end (up to 20 ms late). There is no packet time for sound.

Browser times are on the page's ``performance.now()`` clock; they are put on this
process's ``time.perf_counter()`` clock by the offset of the quickest of a few round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.viewer import TimedViewer

log = logging.getLogger(__name__)

# Installed in the page: the embed client's events and each shown frame's metadata, kept
# until the bench takes them (``__twincastTake``).
_HOOK = """(() => {
  let frames = [], events = [], sound = [];
  window.__twincastHook = (client, video) => {
    client.on("*", (ev) => events.push([performance.now(), ev]));
    const shown = (now, md) => {
      frames.push([md.rtpTimestamp ?? null, md.receiveTime ?? null,
                   md.expectedDisplayTime]);
      video.requestVideoFrameCallback(shown);
    };
    video.requestVideoFrameCallback(shown);
  };
  window.__twincastListen = (pc) => window.__twincastTimer = setInterval(async () => {
    const stats = await pc.getStats();
    stats.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio" && r.totalSamplesDuration)
        sound.push([performance.now(), r.totalAudioEnergy, r.totalSamplesDuration]);
    });
  }, 20);
  window.__twincastTake = () => {
    const out = { frames, events, sound };
    frames = []; events = []; sound = [];
    return out;
  };
  return typeof Twincast;
})()"""

_CONNECT = """(async () => {
  const video = document.getElementById("video");
  window.__twincast = new Twincast({ token: %s, video, reconnect: false });
  __twincastHook(window.__twincast, video);
  const session = await window.__twincast.connect();
  __twincastListen(window.__twincast.pc);
  return session;
})()"""

_STATS = """__twincast.pc.getStats().then((s) => { let v = {}; s.forEach((r) => {
  if (r.type === "inbound-rtp" && r.kind === "video") v = { decoded: r.framesDecoded,
    dropped: r.framesDropped, jitter_buffer_ms: r.jitterBufferEmittedCount ?
      1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount : null }; }); return v; })"""


class BrowserViewer(TimedViewer):
    """``TimedViewer``'s frames and events, as a headless chromium shows and gets them:
    ``video`` holds (shown, None) per frame, ``pts`` each frame's RTP timestamp,
    ``packet_times("video")`` each frame's ``receiveTime``; ``audio`` holds (end, RMS)
    for each 20 ms of sound played."""

    def __init__(self) -> None:
        super().__init__()
        self._received: list[float] = []
        self._played: tuple[float, float] | None = None
        """The last statistics read: total energy and duration of the sound played."""
        self._stack = contextlib.ExitStack()
        self._close_page = None
        self.stats: dict = {}
        """chromium's own count of frames decoded and dropped, and its jitter buffer."""

    async def open(self, http, url: str, token: str) -> None:  # noqa: ANN001
        """Start a headless chromium on the server's page and ``watch`` there."""
        from bench.chromium import chromium, page

        profile = self._stack.enter_context(tempfile.TemporaryDirectory(
            prefix="twincast-browser-"))
        ws_url = self._stack.enter_context(chromium(f"{url}/", Path(profile)))
        evaluate, self._close_page = await page(ws_url)
        await self.watch(evaluate, url, token)

    async def watch(self, evaluate, url: str, token: str) -> None:  # noqa: ANN001
        """In a page of the server's that ``evaluate`` runs JavaScript in, open a session
        with a new embed client on its ``video`` element, and note from then on."""
        self.evaluate, self.url = evaluate, url
        for _ in range(300):  # the page and the embed kit load
            with contextlib.suppress(RuntimeError):
                if await self.evaluate(_HOOK) == "function":
                    break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the server's page did not load the embed kit in chromium")
        self.location = await self.evaluate(_CONNECT % json.dumps(token))
        self.offset = await self._clock_offset()
        self.pumps = [asyncio.ensure_future(self._take_every(0.1))]
        for _ in range(300):
            if self.video:  # shown frames: the stream plays
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("chromium showed no frame of the session in 30 s")

    async def _clock_offset(self, tries: int = 12) -> float:
        """perf_counter() minus the page's performance.now() in seconds, from the
        quickest round trip (its middle)."""
        best = (float("inf"), 0.0)
        for _ in range(tries):
            t0 = time.perf_counter()
            now = float(await self.evaluate("performance.now()"))
            t1 = time.perf_counter()
            best = min(best, (t1 - t0, (t0 + t1) / 2 - now / 1000))
        log.debug("browser clock: offset from its quickest round trip of %.1f ms",
                  best[0] * 1000)
        return best[1]

    def _on_perf(self, ms: float | None) -> float:
        return np.nan if ms is None else self.offset + ms / 1000

    async def take(self) -> None:
        """Bring over what the page noted since the last take."""
        got = await self.evaluate("__twincastTake()")
        for rtp, received, shown in got["frames"]:
            self.video.append((self._on_perf(shown), None))
            self.pts.append(-1 if rtp is None else int(rtp))
            self._received.append(self._on_perf(received))
        self.events.extend((self._on_perf(t), e) for t, e in got["events"])
        for t, energy, duration in got["sound"]:
            if self._played is not None and duration > self._played[1]:
                ms = (energy - self._played[0]) / (duration - self._played[1])
                self.audio.append((self._on_perf(t), float(np.sqrt(max(ms, 0.0)))))
                self.audio_pts.append(-1)
            self._played = (energy, duration)

    async def _take_every(self, period: float) -> None:
        while True:
            await self.take()
            await asyncio.sleep(period)

    def packet_times(self, kind: str) -> np.ndarray:
        if kind != "video":
            return np.full(len(self.audio_pts), np.nan)
        return np.array(self._received, dtype=float)

    async def close(self) -> None:
        for p in self.pumps:
            p.cancel()
        # Let a take in flight end first: the DevTools client answers one call at a time.
        await asyncio.gather(*self.pumps, return_exceptions=True)
        try:
            await self.take()
            self.stats = await self.evaluate(_STATS) or {}
            # The statistics poll ends with the connection; the close DELETEs the session.
            await self.evaluate("clearInterval(__twincastTimer); __twincast.close()")
            if self._close_page is not None:  # the page is ours (open), not the caller's
                await self._close_page()
        finally:
            self._stack.close()
