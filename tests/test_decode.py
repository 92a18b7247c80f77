"""Decoding video twincast wrote itself (``avatar.decode.rgb_frames(own=True)``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar.decode import rgb_frames
from avatar.video_io import VideoWriter


def _picture(h: int, w: int) -> np.ndarray:
    """Smooth colour ramps with a few soft shapes: something like a frame, not noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([40 + 160 * x / w, 60 + 120 * y / h, 200 - 150 * (x + y) / (w + h)], -1)
    cv2.circle(img, (w // 3, h // 2), h // 5, (220, 90, 70), -1)
    cv2.rectangle(img, (w // 2, h // 4), (3 * w // 4, h // 2), (30, 140, 60), -1)
    return cv2.GaussianBlur(img, (0, 0), 1.0).clip(0, 255).astype(np.uint8)


def _written(tmp_path: Path, pic: np.ndarray) -> Path:
    out = tmp_path / "clip.mp4"
    w = VideoWriter(out, 25, pic.shape[1], pic.shape[0], crf=12)
    for _ in range(3):
        w.write(pic)
    w.close()
    return out


@pytest.mark.parametrize("size", [(72, 128), (288, 360)])
def test_own_video_decodes_nearer_its_original_than_ffmpeg_conversion(tmp_path, size):
    pic = _picture(*size)
    clip = _written(tmp_path, pic)
    own = list(rgb_frames(clip, container="mp4", own=True))
    ffmpeg = list(rgb_frames(clip, container="mp4"))
    assert len(own) == len(ffmpeg) == 3
    assert own[0].shape == pic.shape and own[0].dtype == np.uint8
    err_own = np.abs(own[0].astype(int) - pic).mean()
    err_ffmpeg = np.abs(ffmpeg[0].astype(int) - pic).mean()
    # The writer's conversion inverted: no level bias, nearer than swscale's way back.
    assert err_own < err_ffmpeg
    assert abs(float((own[0].astype(int) - pic).mean())) < 0.6
    assert np.abs(own[0].astype(int) - ffmpeg[0]).max() <= 8


def test_own_decoding_skips_and_falls_back_for_what_it_cannot_convert(tmp_path):
    import av

    pic = _picture(64, 96)
    clip = _written(tmp_path, pic)
    frames = list(rgb_frames(clip, skip=2, container="mp4", own=True))
    assert frames[0] is None and frames[1] is None and frames[2].shape == pic.shape
    # Full-range (JPEG) 4:2:0 is not what the writer makes: FFmpeg converts it.
    full = tmp_path / "full.mp4"
    with av.open(str(full), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 96, 64, "yuvj420p"
        for _ in range(2):
            for p in s.encode(av.VideoFrame.from_ndarray(pic, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    a = list(rgb_frames(full, container="mp4", own=True))
    b = list(rgb_frames(full, container="mp4"))
    assert len(a) == 2 and np.array_equal(a[0], b[0])
