"""A session's output pushed to a livestream ingest: H.264 + AAC in FLV over RTMP(S).

The session's clock paces the stream exactly as it paces a WebRTC viewer: every 40 ms the
pump takes the session's frame (rendered by the shared scheduler, or idle) and two 20 ms
audio frames, and hands them to the encoder thread through a bounded queue. Encoding and
the network live in that thread, so a slow or dead ingest can never stall the event loop,
the renderer or other sessions: when the queue is full, media is dropped and counted.

When the ingest fails the thread closes its connection and tries again with growing waits
(1, 2, 4 ... 30 s); each new connection starts a fresh FLV stream with a keyframe first.
FFmpeg's RTMP client cannot be told to give up on a write that blocks (an ingest that
stops reading without closing): a watchdog notices the thread making no progress, leaves
it behind (it ends when its socket finally errors) and starts a new connection.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from avatar.errors import TwincastError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RtmpConfig:
    url: str
    width: int = 1280
    height: int = 720
    video_kbps: int = 2500
    audio_kbps: int = 128
    keyframe_s: float = 2.0
    """Seconds between keyframes (platforms ask for 2)."""
    preset: str = "veryfast"
    queue_frames: int = 50
    """Video frames (with their audio) waiting for the encoder before media is dropped."""
    stall_s: float = 6.0
    """The encoder thread making no progress this long is left behind for a new one."""
    max_backoff_s: float = 30.0
    key_colour: tuple[int, int, int] | None = None
    """Replace the background with this colour (for chroma keying in streaming software)."""


def check_url(url: str) -> None:
    if not url.startswith(("rtmp://", "rtmps://")):
        raise TwincastError(f"--rtmp {url!r}: an ingest URL starts with rtmp:// or rtmps:// "
                            "(for example rtmp://live.example.com/app/STREAM-KEY)")


def fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale the frame to fit ``width`` x ``height`` and pad it (letterbox), no distortion."""
    import cv2

    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    s = min(width / w, height / h)
    nw, nh = max(2, int(round(w * s))), max(2, int(round(h * s)))
    scaled = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR if s > 1 else
                        cv2.INTER_AREA)
    out = np.zeros((height, width, 3), np.uint8)
    y0, x0 = (height - nh) // 2, (width - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = scaled
    return out


MAX_STUCK_THREADS = 4
"""Encoder threads left behind in a blocking call before the watchdog stops adding more."""


class _Connection:
    """One FLV stream to the ingest: its own encoders, timestamps from zero."""

    def __init__(self, cfg: RtmpConfig, fps: int, audio_rate: int):
        import av

        self.cfg, self.fps, self.rate = cfg, fps, audio_rate
        self.out = av.open(cfg.url, mode="w", format="flv")
        v = self.out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = cfg.width, cfg.height, "yuv420p"
        v.bit_rate = cfg.video_kbps * 1000
        gop = max(1, int(round(cfg.keyframe_s * fps)))
        # zerolatency: no frame lookahead or B-frames, so a frame leaves as soon as it is
        # encoded; the keyframe interval is fixed, as ingests want.
        v.options = {"preset": cfg.preset, "tune": "zerolatency", "g": str(gop),
                     "keyint_min": str(gop), "sc_threshold": "0", "bf": "0"}
        a = self.out.add_stream("aac", rate=audio_rate)
        a.layout = "mono"
        a.bit_rate = cfg.audio_kbps * 1000
        self.v, self.a = v, a
        self.k = 0
        self.samples = 0

    def write(self, rgb: np.ndarray, pcm: list[np.ndarray]) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = self.k, Fraction(1, self.fps)
        self.k += 1
        for p in self.v.encode(frame):
            self.out.mux(p)
        for chunk in pcm:
            af = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            af.sample_rate, af.pts = self.rate, self.samples
            af.time_base = Fraction(1, self.rate)
            self.samples += len(chunk)
            for p in self.a.encode(af):
                self.out.mux(p)

    def close(self) -> None:
        try:
            for s in (self.v, self.a):
                for p in s.encode():
                    self.out.mux(p)
        except Exception:  # noqa: BLE001 - a dead ingest: nothing more to flush
            pass
        try:
            self.out.close()
        except Exception:  # noqa: BLE001
            pass


class RtmpOutput:
    """Encodes and pushes frames in a thread of its own; ``offer`` never blocks."""

    def __init__(self, cfg: RtmpConfig, fps: int = 25, audio_rate: int = 48000,
                 keyer: object | None = None):
        check_url(cfg.url)
        self.cfg, self.fps, self.audio_rate = cfg, fps, audio_rate
        self.keyer = keyer
        self.stats: dict[str, float] = {"frames_sent": 0, "frames_dropped": 0, "connects": 0,
                                        "failures": 0, "connected_at": -1.0}
        """connected_at: the session time of the current connection's first frame (its
        FLV timestamps count from there)."""
        self.state = "starting"
        self.last_error: str | None = None
        self._q: queue.Queue = queue.Queue(maxsize=cfg.queue_frames)
        self._stop = threading.Event()
        self._generation = 0
        self._progress = time.monotonic()
        self._thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn()

    def _spawn(self) -> None:
        self._generation += 1
        self._progress = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(self._generation,),
                                        name=f"rtmp-{self._generation}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [self._thread]
        self._thread.start()

    def offer(self, rgb: np.ndarray, pcm: list[np.ndarray], t: float = 0.0) -> bool:
        """Queue one video frame and its audio, shown at session time ``t``; False
        (dropped) when the encoder is behind."""
        try:
            self._q.put_nowait((rgb, pcm, t))
            return True
        except queue.Full:
            self.stats["frames_dropped"] += 1
            return False

    def check(self) -> None:
        """Watchdog (call every second or so): replace an encoder thread stuck in a write
        (or in connecting, or in closing a dead connection). Connecting gets longer: a
        TCP connect to a host that does not answer takes a while to fail by itself."""
        if self._stop.is_set():
            return
        limit = self.cfg.stall_s if self.state == "live" else 5 * self.cfg.stall_s
        if time.monotonic() - self._progress <= limit:
            return
        stuck = [t for t in self._threads if t.is_alive()]
        if len(stuck) >= MAX_STUCK_THREADS:
            return  # already waiting on several; they end when their sockets fail
        log.warning("rtmp %s: no progress for %.0f s; starting a new connection",
                    self._redacted(), limit)
        self.stats["failures"] += 1
        self.state = "reconnecting"
        self._spawn()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _redacted(self) -> str:
        # The last path element of an ingest URL is the stream key: keep it out of logs.
        head, _, _key = self.cfg.url.rpartition("/")
        return f"{head}/***"

    def _run(self, generation: int) -> None:
        backoff = 1.0
        while not self._stop.is_set() and generation == self._generation:
            conn = None
            try:
                conn = _Connection(self.cfg, self.fps, self.audio_rate)
                first = True
                while not self._stop.is_set() and generation == self._generation:
                    try:
                        rgb, pcm, t = self._q.get(timeout=0.5)
                    except queue.Empty:
                        self._progress = time.monotonic()
                        continue
                    rgb = fit(rgb, self.cfg.width, self.cfg.height)
                    if self.keyer is not None:
                        rgb = self.keyer(rgb)  # type: ignore[operator]
                    conn.write(rgb, pcm)
                    self._progress = time.monotonic()
                    self.stats["frames_sent"] += 1
                    if first:  # the ingest took the stream header and a keyframe
                        first = False
                        self.stats["connected_at"] = t
                        self.stats["connects"] += 1
                        self.state = "live"
                        backoff = 1.0
                        log.info("rtmp %s: live", self._redacted())
            except Exception as e:  # noqa: BLE001 - any failure of the ingest: reconnect
                if generation != self._generation or self._stop.is_set():
                    break
                self.stats["failures"] += 1
                self.last_error = str(e)[:200]
                self.state = "reconnecting"
                log.warning("rtmp %s: %s; retrying in %.0f s", self._redacted(),
                            self.last_error, backoff)
            finally:
                if conn is not None:
                    conn.close()
            # Wait, dropping what arrives meanwhile (old frames are no use after a gap).
            until = time.monotonic() + backoff
            while time.monotonic() < until and not self._stop.is_set() and \
                    generation == self._generation:
                self._progress = time.monotonic()
                try:
                    self._q.get(timeout=0.1)
                    self.stats["frames_dropped"] += 1
                except queue.Empty:
                    pass
            backoff = min(self.cfg.max_backoff_s, backoff * 2)
        if generation == self._generation:
            self.state = "stopped"


async def pump(session, output: RtmpOutput) -> None:  # noqa: ANN001 - streaming.Session
    """Feed ``output`` from ``session`` on the session's clock, forever (cancel to stop)."""
    fps = session.cfg.fps
    per_frame = 50 // fps  # 20 ms audio frames per video frame
    session.clock.start()
    k = 0
    try:
        while True:
            await session.clock.wait_until(k / fps)
            # Behind by more than a second (a paused machine): skip ahead, do not burst.
            behind = int(session.clock.now() * fps) - k
            if behind > fps:
                k += behind
                continue
            rgb = session.video_frame(k)
            pcm = [session.audio_frame(k * per_frame + i) for i in range(per_frame)]
            output.offer(rgb, pcm, k / fps)
            if k % fps == 0:
                output.check()
            k += 1
    finally:
        await asyncio.get_running_loop().run_in_executor(None, output.stop)
