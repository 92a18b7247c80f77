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
               threads: int = 0) -> Iterator[np.ndarray | None]:
    """Each frame of the first video stream of ``path``, as HxWx3 uint8 RGB; the first
    ``skip`` come as None (decoded, as they must be to reach the rest, but not converted:
    the conversion costs about as much as the decoding). ``container`` names the format
    to read it as (a bundle's videos are MP4: read as anything FFmpeg guesses, a crafted
    file such as a playlist could make it open other files or URLs). ``threads``: the
    decoder's threads (0: FFmpeg's choice, a pool started for every file opened)."""
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
            for i, frame in enumerate(src.decode(video=0)):
                yield None if i < skip else frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        raise DecodeError(str(e)) from None


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
