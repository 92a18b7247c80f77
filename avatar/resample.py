"""Affine resampling that keeps the high frequencies a mouth is made of.

A frame's mouth is resampled twice on its way to the screen (frame -> the model's region,
painted region -> frame), and once more when training crops are cut. Bilinear sampling at
a sub-pixel offset averages neighbouring pixels: two such passes at about 1:1 halve the
variance of the Laplacian of a perfect mouth painted back into its own frame (GRID eval:
0.52 of the real frames' figure; bicubic both ways keeps 0.90). So warps here interpolate
bicubically; where a warp shrinks the image by more than ``SHRINK`` it would alias instead,
so the source is first reduced by pixel-area averaging and the rest of the way warped.
"""

from __future__ import annotations

import cv2
import numpy as np

SHRINK = 1.5
"""Source pixels per output pixel above which the source is area-reduced first."""


def scale_of(m: np.ndarray) -> float:
    """Output pixels per source pixel of a 2x3 affine map (its mean linear scale)."""
    m = np.asarray(m, np.float64)
    return float(np.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])))


def invert(m: np.ndarray) -> np.ndarray:
    """The inverse of an affine map given as 2x3 or 3x3 (returned in the same shape).
    Not ``np.linalg.inv``: per frame, its LAPACK call cost a third of a millisecond next
    to the renderer's threads, more than the warp it sets up."""
    m = np.asarray(m, np.float64)
    inv = cv2.invertAffineTransform(m[:2])
    return inv if m.shape[0] == 2 else np.vstack([inv, [0.0, 0.0, 1.0]])


def warp(src: np.ndarray, m: np.ndarray, dsize: tuple[int, int],
         border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """``cv2.warpAffine(src, m, dsize)`` with bicubic interpolation, area-averaged first
    where it would shrink the source by more than ``SHRINK``. float results may overshoot
    the input's range by a few percent (bicubic rings at edges): clip before casting."""
    m = np.asarray(m, np.float64)
    shrink = 1.0 / max(scale_of(m), 1e-9)
    src, m = _crop_to_need(src, m, dsize, shrink)
    if shrink > SHRINK:
        h, w = src.shape[:2]
        k = 1.0 / shrink
        small = cv2.resize(src, (max(1, round(w * k)), max(1, round(h * k))),
                           interpolation=cv2.INTER_AREA)
        # The map from the reduced source: scale its input coordinates back up.
        sx, sy = w / small.shape[1], h / small.shape[0]
        m = m.copy()
        m[:, 0] *= sx
        m[:, 1] *= sy
        src = small
    return cv2.warpAffine(src, m, dsize, flags=cv2.INTER_CUBIC, borderMode=border)


def _crop_to_need(src: np.ndarray, m: np.ndarray, dsize: tuple[int, int], shrink: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``src`` the warp reads (its output's preimage, with room for the
    bicubic kernel and the area reduction), and the map from that part: a mouth region
    needs a few percent of a 1080p frame, and reducing the whole frame cost more than the
    warp itself."""
    h, w = src.shape[:2]
    inv = cv2.invertAffineTransform(m)
    dw, dh = dsize
    pts = inv @ np.array([[0, 0, 1], [dw, 0, 1], [0, dh, 1], [dw, dh, 1]], np.float64).T
    pad = int(np.ceil(4 * max(shrink, 1.0))) + 4
    x0 = max(0, int(np.floor(pts[0].min())) - pad)
    y0 = max(0, int(np.floor(pts[1].min())) - pad)
    x1 = min(w, int(np.ceil(pts[0].max())) + pad)
    y1 = min(h, int(np.ceil(pts[1].max())) + pad)
    if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) > 0.8 * w * h:
        return src, m
    m = m.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    return src[y0:y1, x0:x1], m
