"""A session's output pushed to a livestream ingest: H.264 + AAC in FLV over RTMP(S).

The session's clock paces the stream exactly as it paces a WebRTC viewer: every 40 ms the
pump takes the session's frame (rendered by the shared scheduler, or idle) and two 20 ms
audio frames, and hands them to a writer thread through a bounded queue; when the queue is
full, media is dropped and counted, so nothing upstream ever waits for the ingest.

The encoding and the network live in a child process (``streaming.rtmp_push``): FFmpeg's
RTMP client blocks while it connects and PyAV holds the interpreter lock meanwhile, so an
ingest that accepts and then stays silent would otherwise freeze the whole server. The
writer thread scales (and keys) each frame and pipes it to the child. When the ingest
fails the child exits and a new one is started after a growing wait (1, 2, 4 ... 30 s);
each starts a fresh FLV stream with a keyframe first. A child that stops taking frames
(an ingest that stops reading without closing) is killed by the watchdog and replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    """Video frames (with their audio) waiting for the writer before media is dropped."""
    stall_s: float = 6.0
    """A live push taking no frame for this long is replaced (five times this while it
    connects)."""
    max_backoff_s: float = 30.0
    key_colour: tuple[int, int, int] | None = None
    """Replace the background with this colour (for chroma keying in streaming software)."""
    cafile: str | None = None
    """Certificates an ``rtmps://`` ingest's must chain to (None: the system's store, or
    ``SSL_CERT_FILE``); the operator's setting, never an API caller's."""


def redact_url(url: str) -> str:
    """An ingest URL fit for a log: scheme, host and port, and the application path
    without its last element (the stream key), with no user info, query or control
    characters (a URL with a line break once forged a log line)."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        host = u.hostname or ""
        port = f":{u.port}" if u.port else ""
    except ValueError:
        return "(an unreadable URL)"
    path = u.path.rstrip("/").rpartition("/")[0]
    out = f"{u.scheme}://{host}{port}{path}/***"
    return "".join(ch if ch.isprintable() else "?" for ch in out)


def _redact_text(text: str) -> str:
    """``text`` with every RTMP URL in it redacted (FFmpeg's errors quote the URL, stream
    key and all)."""
    import re

    return re.sub(r"rtmps?://[^\s'\"]+", lambda m: redact_url(m.group(0)), text)


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


class RtmpOutput:
    """Feeds a push process from a writer thread; ``offer`` never blocks."""

    def __init__(self, cfg: RtmpConfig, fps: int = 25, audio_rate: int = 48000,
                 keyer: object | None = None, label: object | None = None,
                 mark: object | None = None):
        self.cfg, self.fps, self.audio_rate = cfg, fps, audio_rate
        self.keyer = keyer
        self.label = label
        """``avatar.label.Label`` drawn on every frame after scaling and keying (so it is
        at the ingest's size and never keyed out); None: none."""
        self.mark = mark
        """``avatar.video_mark.VideoMarker`` laid over the finished frame, last (a keyed
        background would otherwise lose it); None: none."""
        self.stats: dict[str, float] = {"frames_sent": 0, "frames_dropped": 0, "connects": 0,
                                        "failures": 0, "connected_at": -1.0}
        """connected_at: the session time of the current connection's first frame (its
        FLV timestamps count from there)."""
        self.state = "starting"
        self.closed_cleanly: bool | None = None
        """At the end of a live stream: whether the push flushed and closed it."""
        self.last_error: str | None = None
        self.last_failure: str | None = None
        """Why the last connection failed (URLs redacted), for the session's state."""
        self._q: queue.Queue = queue.Queue(maxsize=cfg.queue_frames)
        self._stop = threading.Event()
        self._progress = time.monotonic()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rtmp-writer", daemon=True)
        self._thread.start()

    def offer(self, rgb: np.ndarray, pcm: list[np.ndarray], t: float = 0.0) -> bool:
        """Queue one video frame and its audio, shown at session time ``t``; False
        (dropped) when the writer is behind."""
        try:
            self._q.put_nowait((rgb, pcm, t))
            return True
        except queue.Full:
            self.stats["frames_dropped"] += 1
            return False

    def check(self) -> None:
        """Watchdog (call every second or so): kill a push process that takes no frames;
        the writer then starts a new one."""
        proc = self._proc
        if self._stop.is_set() or proc is None or proc.poll() is not None:
            return
        limit = self.cfg.stall_s if self.state == "live" else 5 * self.cfg.stall_s
        if time.monotonic() - self._progress > limit:
            log.warning("rtmp %s: the ingest took nothing for %.0f s; reconnecting",
                        self.redacted_url(), limit)
            self.last_error = f"the ingest took nothing for {limit:.0f} s"
            proc.kill()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=4)  # the child ends its stream cleanly
            proc = self._proc
            if self._thread.is_alive() and proc is not None:
                proc.kill()  # stuck on a silent ingest: the write ends with the child
                self._thread.join(timeout=5)

    @property
    def pid(self) -> int | None:
        """The current push process's id (for measuring its CPU)."""
        return self._proc.pid if self._proc is not None else None

    def redacted_url(self) -> str:
        return redact_url(self.cfg.url)

    def _launch(self) -> subprocess.Popen:
        c = self.cfg
        spec = {"url": c.url, "width": c.width, "height": c.height, "fps": self.fps,
                "audio_rate": self.audio_rate, "video_kbps": c.video_kbps,
                "audio_kbps": c.audio_kbps, "keyframe_s": c.keyframe_s, "preset": c.preset,
                "cafile": c.cafile}
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH",
                                                                              "")}
        proc = subprocess.Popen([sys.executable, "-m", "streaming.rtmp_push"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, bufsize=0)
        # The settings (the URL holds the stream key) go down the pipe, not on the
        # command line where `ps` shows them to every user.
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
        except OSError:
            pass  # the child is gone already: the caller sees it end
        return proc

    def _listen(self, proc: subprocess.Popen, first_t: list[float]) -> None:
        """The push process's word: ``live`` once the ingest took the stream."""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line == "live":
                self.stats["connects"] += 1
                self.stats["connected_at"] = first_t[0] if first_t else -1.0
                self.state = "live"
                log.info("rtmp %s: live", self.redacted_url())
            elif line.startswith("error "):
                self.last_error = line[6:]

    def _record(self, rgb: np.ndarray, pcm: list[np.ndarray], t: float = 0.0) -> bytes:
        import cv2

        rgb = fit(rgb, self.cfg.width, self.cfg.height)
        if self.keyer is not None:
            rgb = self.keyer(rgb)  # type: ignore[operator]
        if self.label is not None:
            rgb = self.label.apply(rgb)  # type: ignore[attr-defined]
        if self.mark is not None:
            rgb = self.mark.apply(rgb, round(t * self.fps))  # type: ignore[attr-defined]
        i420 = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
        audio = np.concatenate(pcm).astype(np.int16)
        return i420.tobytes() + audio.tobytes()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            proc = self._launch()
            self._proc = proc
            first_t: list[float] = []
            listener = threading.Thread(target=self._listen, args=(proc, first_t),
                                        daemon=True, name="rtmp-listen")
            listener.start()
            self._progress = time.monotonic()
            try:
                assert proc.stdin is not None
                while not self._stop.is_set():
                    try:
                        rgb, pcm, t = self._q.get(timeout=0.5)
                    except queue.Empty:
                        self._progress = time.monotonic()
                        if proc.poll() is not None:
                            raise BrokenPipeError("the push process ended") from None
                        continue
                    if not first_t:
                        first_t.append(t)
                    # Blocks while the child is busy connecting or the ingest is slow;
                    # the watchdog kills a child that stays stuck, which ends the write.
                    proc.stdin.write(self._record(rgb, pcm, t))
                    self._progress = time.monotonic()
                    self.stats["frames_sent"] += 1
                    if self.state == "live":
                        backoff = 1.0
            except (OSError, ValueError) as e:
                if self._stop.is_set():
                    break
                self.stats["failures"] += 1
                # The child's last word (why it ended) may still be in its pipe.
                if proc.poll() is not None:
                    listener.join(timeout=2)
                why = _redact_text(self.last_error or str(e))
                self.last_failure = why
                self.state = "reconnecting"
                log.warning("rtmp %s: %s; retrying in %.0f s", self.redacted_url(), why[:200],
                            backoff)
            finally:
                self._finish(proc)
                if self._stop.is_set() and self.state == "live":
                    # The end of a stream: the child flushed its encoders and closed the
                    # FLV (exit 0), or had to be killed (the ingest stopped taking data).
                    clean = proc.returncode == 0
                    self.closed_cleanly = clean
                    log.info("rtmp %s: stream %s", self.redacted_url(),
                             "flushed and closed" if clean else
                             f"killed at the end (exit {proc.returncode})")
            # Wait, dropping what arrives meanwhile (old frames are no use after a gap).
            until = time.monotonic() + backoff
            while time.monotonic() < until and not self._stop.is_set():
                self._progress = time.monotonic()
                try:
                    self._q.get(timeout=0.1)
                    self.stats["frames_dropped"] += 1
                except queue.Empty:
                    pass
            backoff = min(self.cfg.max_backoff_s, backoff * 2)
            self.last_error = None
        self.state = "stopped"

    @staticmethod
    def _finish(proc: subprocess.Popen) -> None:
        """Let the child end its stream (close stdin: it flushes and closes the FLV), or
        kill it if it cannot."""
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


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
