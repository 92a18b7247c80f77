"""Writing video (and optional audio) with PyAV, atomically.

Used for the aligned crop streams of the enrolment cache, the synthetic sample, and later
for rendered output. Frames are written as they come: nothing is held in memory.
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np


def video_frame(rgb: np.ndarray) -> av.VideoFrame:
    """An HxWx3 uint8 RGB picture as a YUV 4:2:0 frame, the form a live session's VP8
    encoder takes.

    Converted by OpenCV rather than left to FFmpeg: swscale has no fast path from packed
    RGB, and at 720p its conversion took 4.4 ms a frame on a 2-core AVX2 EPYC against
    1.5 ms for OpenCV's (one thread), in the encoder's thread of every live session. Both
    are BT.601 limited range (on a 720p bank frame at most 3 levels apart; more at a sharp
    colour edge, where the two place the chroma samples differently). Odd sizes, which 4:2:0
    cannot hold whole, go as RGB for FFmpeg to convert as before."""
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        return av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420),
                                      format="yuv420p")


class VideoWriter:
    """H.264 writer with an optional mono audio track; the file appears only on close()."""

    def __init__(self, path: Path, fps: int, width: int, height: int, crf: int = 18,
                 preset: str = "veryfast", audio_rate: int | None = None,
                 tune: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp.mp4",
                                   dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._out = av.open(str(self._tmp), "w", format="mp4")
        self._v = self._out.add_stream("libx264", rate=fps)
        self._v.width, self._v.height = width, height
        self._v.pix_fmt = "yuv420p"
        self._v.options = {"crf": str(crf), "preset": preset, **({"tune": tune} if tune else {})}
        # One encoder thread per writer: callers already run one writer per core.
        self._v.codec_context.thread_count = 1
        self._a = None
        self._audio_rate = audio_rate
        self._audio_pts = 0
        if audio_rate:
            self._a = self._out.add_stream("aac", rate=audio_rate)
            self._a.layout = "mono"
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        # RGB, left to FFmpeg to convert: OpenCV's conversion (``video_frame``) was faster
        # here too (14-17 -> 11-13 ms of CPU a 720p frame with x264), but with it two
        # renders differing only by a drawn label differed by 2.1 levels away from the
        # label (tests/test_label.py allows 2; why x264's output moved so is not traced).
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self._v.encode(frame):
            self._out.mux(packet)
        self.frames += 1

    def write_audio(self, samples: np.ndarray) -> None:
        """Append mono float32 samples in [-1, 1] at ``audio_rate``."""
        if self._a is None:
            raise ValueError("this writer has no audio track")
        data = np.clip(samples, -1, 1).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="mono")
        frame.sample_rate = self._audio_rate
        frame.pts = self._audio_pts
        frame.time_base = Fraction(1, self._audio_rate)
        self._audio_pts += data.shape[1]
        for packet in self._a.encode(frame):
            self._out.mux(packet)

    def close(self) -> None:
        for packet in self._v.encode():
            self._out.mux(packet)
        if self._a is not None:
            for packet in self._a.encode():
                self._out.mux(packet)
        self._out.close()
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self._tmp, 0o666 & ~mask)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        try:
            self._out.close()
        except av.error.FFmpegError:
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
