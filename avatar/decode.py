"""A video file's frames as RGB arrays: PyAV where it is installed, OpenCV otherwise.

PyAV is what every machine the README sets up has. The OpenCV path exists for the GPU
machine the device checks run on: it has torch and OpenCV but no PyAV, and PyAV's wheel
(36 MB) would leave no room for the training data that can travel there. Head training and
the render benchmark only ever decode with it; writing video always needs PyAV.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np


class DecodeError(Exception):
    """The file could not be opened or decoded; the message says why."""


def rgb_frames(path: Path, skip: int = 0, container: str | None = None,
               threads: int = 0, own: bool = False) -> Iterator[np.ndarray | None]:
    """Each frame of the first video stream of ``path``, as HxWx3 uint8 RGB; the first
    ``skip`` come as None (decoded, as they must be to reach the rest, but not converted:
    the conversion costs about as much as the decoding). ``container`` names the format
    to read it as (a bundle's videos are MP4: read as anything FFmpeg guesses, a crafted
    file such as a playlist could make it open other files or URLs). ``threads``: the
    decoder's threads (0: FFmpeg's choice, a pool started for every file opened). ``own``:
    the file is one twincast wrote (``avatar.video_io.VideoWriter``: 4:2:0, BT.601 limited
    range), so its frames are converted by OpenCV (``_own_rgb``)."""
    try:
        import av
    except ImportError:
        for i, rgb in enumerate(_opencv_frames(path)):
            yield None if i < skip else rgb
        return
    try:
        with av.open(str(path), format=container) as src:
            if threads:
                src.streams.video[0].thread_count = threads
            convert = _own_rgb if own else _ffmpeg_rgb
            for i, frame in enumerate(src.decode(video=0)):
                yield None if i < skip else convert(frame)
    except av.error.FFmpegError as e:
        raise DecodeError(str(e)) from None


def _ffmpeg_rgb(frame) -> np.ndarray:  # noqa: ANN001 - av.VideoFrame
    return frame.to_ndarray(format="rgb24")


def _own_rgb(frame) -> np.ndarray:  # noqa: ANN001 - av.VideoFrame
    """A frame of a file twincast wrote, as RGB. OpenCV's 4:2:0 conversion rather than
    swscale's: a 720p motion-bank frame, decoded and converted, took 1.85 ms of the
    process's CPU against 2.25-3.0 (swscale works on threads of its own) and 3.1-3.3 ms of
    wall time against 10-11.5 on a 2-core Xeon with both cores busy; and it is the nearer
    inverse of the writer's own conversion (a 720p frame through ``VideoWriter`` and
    back: 0.9 levels from the original on average, no bias, against 1.4 with a bias of
    -1.1 to -1.3 levels for swscale's). Anything else (full range, odd sizes, other
    layouts) goes to FFmpeg."""
    import cv2

    if (frame.format.name != "yuv420p" or frame.color_range == 2  # 2: full (JPEG) range
            or frame.width % 2 or frame.height % 2):
        return _ffmpeg_rgb(frame)
    return cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2RGB_I420)


def _opencv_frames(path: Path) -> Iterator[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DecodeError("OpenCV cannot open it")
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
