"""The video encoders of ``bench lanes --encode``: each simulated session's frames VP8-encoded
at their display time, as a WebRTC sender does, so a node's CPUs are counted beside its
render lanes.

The settings are aiortc's VP8 sender's (libvpx through PyAV: real-time deadline, no lag,
constant bitrate, two threads for 720p on a machine of three or more cores), at the bitrate
its congestion control climbs to on a good link. Needs only PyAV, not aiortc, so it also
runs where aiortc is not installed.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np

from avatar.errors import TwincastError

BITRATE = 1_500_000
"""aiortc's most for VP8 (its receivers' estimates on loopback reach it within seconds)."""


def _threads(pixels: int, cpus: int) -> int:
    """libvpx threads aiortc gives an encoder of this many pixels on this many CPUs."""
    if pixels >= 1920 * 1080 and cpus > 8:
        return 8
    if pixels > 1280 * 960 and cpus >= 6:
        return 3
    if pixels > 640 * 480 and cpus >= 3:
        return 2
    return 1


class SessionEncoder(threading.Thread):
    """One session's sender: at each frame's display time, encodes the rendered frame if
    it came back (else the idle frame the session would show) and notes how long after its
    display time the encoded frame was ready."""

    def __init__(self, shown_at: Callable[[int], float], frame_at: Callable[[int], np.ndarray],
                 frames: int, fps: int, behind_s: float):
        super().__init__(daemon=True, name="encoder")
        try:
            import av
        except ImportError:
            raise TwincastError("--encode needs PyAV (pip install av)") from None
        self._av = av
        self.shown_at, self.frame_at, self.frames, self.fps = shown_at, frame_at, frames, fps
        self.behind_s = behind_s
        self.after: list[float] = []
        """Seconds after its display time each frame was encoded."""
        self.skipped = 0
        """Frames never encoded: the sender had fallen behind and went to the present."""
        self.codec = None
        self.stop = threading.Event()

    def _open(self, width: int, height: int):  # noqa: ANN202 - a PyAV codec context
        c = self._av.CodecContext.create("libvpx", "w")
        c.width, c.height, c.pix_fmt = width, height, "yuv420p"
        c.bit_rate, c.time_base = BITRATE, Fraction(1, self.fps)
        c.gop_size, c.qmin, c.qmax = 3000, 2, 56
        c.options = {"bufsize": str(BITRATE), "minrate": str(BITRATE),
                     "maxrate": str(BITRATE), "cpu-used": "-6", "deadline": "realtime",
                     "lag-in-frames": "0", "noise-sensitivity": "4", "static-thresh": "1",
                     "overshoot-pct": "15", "undershoot-pct": "100", "partitions": "0"}
        c.thread_count = _threads(width * height, multiprocessing.cpu_count())
        return c

    def run(self) -> None:
        k = 0
        while k < self.frames:
            wait = self.shown_at(k) - time.monotonic()
            if wait > 0 and self.stop.wait(wait):
                return
            # Fallen ``behind_s`` behind, a server's track sends the present frame next
            # (``SessionConfig.video_behind_s``); those passed over count as late.
            present = k
            while present + 1 < self.frames and \
                    time.monotonic() - self.shown_at(present + 1) >= 0:
                present += 1
            if present - k >= self.behind_s * self.fps:
                self.skipped += present - k
                k = present
            rgb = self.frame_at(k)
            if self.codec is None:
                self.codec = self._open(rgb.shape[1], rgb.shape[0])
            frame = self._av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            self.codec.encode(frame.reformat(format="yuv420p"))
            self.after.append(time.monotonic() - self.shown_at(k))
            k += 1
