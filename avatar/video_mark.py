"""The invisible video mark: the message (``avatar.mark_code``) as a faint, slowly changing
shading over the whole frame.

Each channel is one smooth luma pattern, a product of half- and whole-period cosines across
the frame (a left-right tilt, a top-bottom tilt, ...), added with the sign of its current
chip; a chip lasts two frames. Why this shape:

* patterns this smooth are what every encoder keeps (VP8 at WebRTC rates, H.264 at a
  platform's), and what rescaling cannot touch: the reader measures them on a 32x24
  thumbnail of whatever size it is given;
* a crop of 10 % moves a half-period cosine by a twentieth of its period, so it still
  correlates at 0.9 with the original;
* the reader works on how the patterns change from chip to chip (a high-pass over time),
  so a still background, the person's face and their slow movements, all of which
  correlate with the patterns, cancel; only the mark flips at the chip rate.

The shading's r.m.s. is ``strength`` grey levels (1.5 by default: PSNR about 44 dB) and the
frame's pixels move by a few levels at most, in its corners.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from avatar.mark_code import BLOCK_CHIPS, ChipSource, Reading, read

PATTERNS = ((1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 1), (1, 2), (2, 2))
CHANNELS = len(PATTERNS)
FRAMES_PER_CHIP = 2
THUMB = (32, 24)
HIGHPASS = 9
"""Frames in the moving average the reader takes away: longer than a chip, shorter than
the slowest head movement that matters."""


@dataclass(frozen=True)
class VideoMarkConfig:
    enabled: bool = True
    strength: float = 1.5
    """R.m.s. of the added shading, in grey levels."""

    def __post_init__(self) -> None:
        if not 0.2 <= self.strength <= 8:
            raise ValueError(f"watermark strength {self.strength}: use 0.2-8 grey levels")


def patterns(width: int, height: int) -> np.ndarray:
    """The channels' patterns at a frame size, each in [-1, 1]: (CHANNELS, height, width)."""
    out = np.empty((CHANNELS, height, width), np.float32)
    x = (np.arange(width) + 0.5) / width
    y = (np.arange(height) + 0.5) / height
    for c, (u, v) in enumerate(PATTERNS):
        out[c] = np.outer(np.cos(np.pi * v * y), np.cos(np.pi * u * x))
    return out


class VideoMarker:
    """Marks frame ``k`` of a stream whose frame 0 is shown at UTC time ``t0``."""

    def __init__(self, ident: int, t0: float, fps: int,
                 cfg: VideoMarkConfig = VideoMarkConfig()):
        self.cfg = cfg
        self.source = ChipSource(CHANNELS, ident, t0, FRAMES_PER_CHIP / fps)
        self._lock = threading.Lock()
        self._size: tuple[int, int] | None = None
        self._patterns: np.ndarray | None = None
        self._gain = 0.0
        self._shade: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _shading(self, width: int, height: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """The chip's shading as what to add and what to take away (uint8, 3 channels), so
        a frame costs two saturating adds; both frames of a chip share it."""
        with self._lock:
            if self._size != (width, height):
                self._size, self._shade = (width, height), {}
                # The shading is smooth: worked out at a quarter of the size and scaled up.
                self._patterns = patterns(max(width // 4, 8), max(height // 4, 8))
                # Each pattern's share so that the sum's r.m.s. is ``strength``.
                power = float((self._patterns ** 2).mean(axis=(1, 2)).sum())
                self._gain = self.cfg.strength / np.sqrt(power)
            hit = self._shade.get(c)
            if hit is not None:
                return hit
            assert self._patterns is not None
            chips = self.source.chips(c).astype(np.float32)
            small = np.tensordot(chips * self._gain, self._patterns, axes=1)
            d = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
            # Its positive and negative parts, rounded and saturated to uint8, in OpenCV's
            # passes: numpy's rint, clip and astype made a new chip cost 3.4-4.9 ms of a
            # 720p stream's frame thread (a chip every other frame), this 1.5 ms, the
            # same bytes.
            up = cv2.convertScaleAbs(cv2.threshold(d, 0, 0, cv2.THRESH_TOZERO)[1])
            down = cv2.convertScaleAbs(cv2.threshold(d, 0, 0, cv2.THRESH_TOZERO_INV)[1])
            up = cv2.cvtColor(up, cv2.COLOR_GRAY2RGB)
            down = cv2.cvtColor(down, cv2.COLOR_GRAY2RGB)
            if len(self._shade) > 8:
                self._shade.clear()
            self._shade[c] = (up, down)
            return up, down

    def apply(self, rgb: np.ndarray, k: int) -> np.ndarray:
        """A marked copy of frame ``k`` (the input is left as it is)."""
        h, w = rgb.shape[:2]
        up, down = self._shading(w, h, k // FRAMES_PER_CHIP)
        return cv2.subtract(cv2.add(rgb, up), down)


def thumbnail_features(rgb: np.ndarray) -> np.ndarray:
    """One frame's projection on every channel's pattern (what ``read_video`` needs; a
    reader keeps only these, not the frames)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    thumb = cv2.resize(grey.astype(np.float32), THUMB, interpolation=cv2.INTER_AREA)
    p = _thumb_patterns()
    return (p * thumb).sum(axis=(1, 2)) / (p ** 2).sum(axis=(1, 2))


_THUMB_PATTERNS: list[np.ndarray] = []


def _thumb_patterns() -> np.ndarray:
    if not _THUMB_PATTERNS:  # computed on first use, not at import
        _THUMB_PATTERNS.append(patterns(*THUMB))
    return _THUMB_PATTERNS[0]


SOURCE_RATES = (25.0, 30.0, 24.0, 50.0, 60.0)
"""Frame rates a mark may have been laid down at: a platform that converted a copy to
another rate (30 fps is common) repeats or drops frames, so the reader also tries the copy
resampled to each of these and keeps the reading whose sync is strongest."""


def on_grid(times: np.ndarray, features: np.ndarray, fps: float) -> np.ndarray:
    """A copy's per-frame features placed on a regular grid at ``fps`` by their times (s):
    each slot holds the frame on screen at its time, as a player shows it. A WebRTC
    session skips frames when its host cannot send them all, and a browser records what it
    received at a variable rate: read frame after frame, the time codes and the chips would
    slide. A copy at a constant rate comes back as it was. Times that would spread the
    frames over more than ten times their number of slots are not trusted (a broken
    clock): the frames stay in their order."""
    times = np.asarray(times, np.float64)
    feats = np.asarray(features)
    if len(times) < 2 or len(times) != len(feats) or not np.isfinite(times).all():
        return feats
    order = np.argsort(times, kind="stable")
    times, feats = times[order], feats[order]
    n = int(round((times[-1] - times[0]) * fps)) + 1
    if n > 10 * len(times):
        return feats
    slots = times[0] + np.arange(n) / fps
    shown = np.searchsorted(times, slots + 0.5 / fps, side="right") - 1
    return feats[np.clip(shown, 0, len(feats) - 1)]


def read_video(features: np.ndarray, fps: float) -> Reading:
    """Find the mark in a copy's per-frame features ((n, CHANNELS), ``thumbnail_features``
    of each frame in order) at the copy's frame rate ``fps``."""
    feats = np.asarray(features, np.float64)
    best: Reading | None = None
    for rate in [fps, *[r for r in SOURCE_RATES if abs(r - fps) > 0.01]]:
        if abs(rate - fps) > 0.01:
            # The frame the copy showed at each of the source's frame times.
            n = int(len(feats) * rate / fps)
            idx = np.minimum((np.arange(n) * fps / rate + 1e-6).astype(int), len(feats) - 1)
            got = read_video_at(feats[idx], rate)
        else:
            got = read_video_at(feats, fps)
        if best is None or got.sync_z > best.sync_z:
            best = got
    assert best is not None
    return best


def read_video_at(features: np.ndarray, fps: float) -> Reading:
    """Read a copy known to be at the rate the mark was laid down at (a session's own
    frames, received live): ``read_video`` without trying other source rates."""
    s = features.T
    n = s.shape[1]
    if n >= HIGHPASS:
        k = np.ones(HIGHPASS) / HIGHPASS
        pad = np.pad(s, ((0, 0), (HIGHPASS // 2, HIGHPASS // 2)), mode="edge")
        s = s - np.stack([np.convolve(row, k, mode="valid") for row in pad])
    phases = []
    for p in range(FRAMES_PER_CHIP):
        m = (n - p) // FRAMES_PER_CHIP
        phases.append(s[:, p:p + m * FRAMES_PER_CHIP].reshape(CHANNELS, m, FRAMES_PER_CHIP)
                      .mean(axis=2) if m > 0 else np.zeros((CHANNELS, 0)))
    return read(phases, FRAMES_PER_CHIP / fps)


def block_seconds(fps: float) -> float:
    return BLOCK_CHIPS * FRAMES_PER_CHIP / fps
