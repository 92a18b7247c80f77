"""Matching the painted region's colour and light to the frame it goes into.

The generator paints the lower face from a reference frame of the enrolment, so the light
it paints is that frame's; the live frame's may differ (another session of recording, a
cloud, a head turned towards the window). Where the painted region fades into the frame
(the ring) both are visible, and their difference says how to correct the paint.

``mean``: one shift per channel, the mean difference over the ring (what twincast did
first). ``field``: a smooth shift that varies over the region, the ring's differences
spread inwards by normalised Gaussian averaging, so light that falls off from one side of
the face to the other is matched on both sides; far from the ring it falls back to the
mean shift.

Neither can see a cast of the paint itself inside the region, where the ring is far: the
lips a little paler or less red than the person's. That cast is measured once per bundle
on the enrolment's own frames (``training.head.colour_fit``) and taken out of the paint's
interior (``interior_weight``) at render time.
"""

from __future__ import annotations

import cv2
import numpy as np

MODES = ("mean", "field")
RING = (0.15, 0.6)
"""Blend weights of the ring, where the paint fades into the frame."""
PAINTED = 0.9
"""Blend weight from which a pixel is all paint."""


def match_colour(painted: np.ndarray, real: np.ndarray, ring: np.ndarray,
                 mode: str = "field") -> np.ndarray:
    """``painted`` and ``real`` (S, S, 3) float32 0-255 over the same region, ``ring`` (S, S)
    bool; returns the painted region corrected (float32, not clipped)."""
    if not ring.any():
        return painted
    diff = real - painted
    mean = diff[ring].mean(0)
    if mode == "mean":
        return painted + mean
    if mode != "field":
        raise ValueError(f"colour mode {mode!r}: use one of {', '.join(MODES)}")
    size = painted.shape[0]
    # Computed at a quarter of the size: the field is smooth, and a full-size blur this wide
    # would cost a millisecond a frame on a CPU.
    small = max(size // 4, 8)
    sigma = small / 8.0
    w = ring.astype(np.float32)
    num = cv2.GaussianBlur(cv2.resize(diff * w[..., None], (small, small),
                                      interpolation=cv2.INTER_AREA), (0, 0), sigma)
    den = cv2.GaussianBlur(cv2.resize(w, (small, small), interpolation=cv2.INTER_AREA),
                           (0, 0), sigma)[..., None]
    # A small prior weight on the mean shift: where the ring is far, the field is the mean.
    prior = 0.02
    field = (num + prior * mean) / (den + prior)
    return painted + cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR)


def interior_weight(region_mask: np.ndarray) -> np.ndarray:
    """(S, S) float32 weight of the paint-cast correction: 0 on and outside the ring (the
    colour match owns those pixels), rising to 1 where the region is all paint."""
    return np.clip((region_mask - RING[1]) / (PAINTED - RING[1]), 0, 1).astype(np.float32)


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """float RGB 0-255 (..., 3) -> CIELAB (L 0-100), D65."""
    return cv2.cvtColor(np.clip(np.asarray(rgb, np.float32) / 255.0, 0, 1), cv2.COLOR_RGB2Lab)


def rgb_shift(lab_cast: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """The RGB shift (0-255 levels) that takes the CIELAB cast ``lab_cast`` off the colour
    ``rgb`` (the painted interior's mean): one shift for the whole interior, so rendering
    adds a constant instead of converting every frame to LAB and back; exact at that
    colour, approximate at the darker or redder ones around it."""
    rgb = np.asarray(rgb, np.float32).reshape(1, 1, 3)
    lab = to_lab(rgb) - np.asarray(lab_cast, np.float32)
    back = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB) * 255
    return (back - rgb).reshape(3)
