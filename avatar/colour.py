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


TOLERANCE = 12.0
"""Levels (0-255, the largest channel) by which a ring cell's mean difference may stray from
the light's smooth estimate before it counts for less (1/e of full weight at this much):
see ``match_colour``."""
UNWEIGHTED = float("inf")
"""Every ring pixel counts alike: the field as it was before 2026-12-07. A bundle whose
paint cast (``head.colour``) was measured against that field keeps it (its manifest has no
``head.colour.ring_tolerance``): the cast is what is left after the colour match, so it
holds only with the match it was measured after. ``twincast train colour`` measures it
again against today's."""
PLANE_PASSES = 2
RIDGE = 1e-6
"""Keeps the plane's 3x3 system solvable whatever the ring's shape."""
PRIOR = 0.02
"""The mean shift's weight in the colour field."""


def match_colour(painted: np.ndarray, real: np.ndarray, ring: np.ndarray,
                 mode: str = "field", tolerance: float = TOLERANCE) -> np.ndarray:
    """``painted`` and ``real`` (S, S, 3) float32 0-255 over the same region, ``ring`` (S, S)
    bool; returns the painted region corrected (float32, not clipped).

    ``field`` reads the light from the ring pixels where the paint and the frame show the
    same thing. Where they do not (the painted jaw has dropped below the frame's closed
    one, so the ring shows chin in one and neck or collar in the other), the difference is
    the picture's, not the light's: spread inwards, it tinted the lower lip and chin by
    tens of levels, and the face mesh read the mouth's opening worse through it. So each
    ring cell (a pixel of the quarter-size grid the field is made on) counts by how well
    its mean difference agrees with the light's estimate, a plane across the region fitted
    to the ring's cells with the same weights, down-weighted smoothly beyond
    ``tolerance``; with an infinite one this is the unweighted field. Light that changes
    evenly across the face is followed as before; light that curves strongly within the
    region is followed less closely than the unweighted field did."""
    if not ring.any():
        return painted
    diff = real - painted
    if mode == "mean":
        return painted + diff[ring].mean(0)
    if mode != "field":
        raise ValueError(f"colour mode {mode!r}: use one of {', '.join(MODES)}")
    size = diff.shape[0]
    # On a quarter-size grid (the field is smooth, and a full-size blur this wide would
    # cost a millisecond a frame on a CPU): each cell's share of ring and the ring's mean
    # difference in it.
    small = max(size // 4, 8)
    cover = cv2.resize(ring.astype(np.float32), (small, small), interpolation=cv2.INTER_AREA)
    summed = cv2.resize(diff * ring[..., None], (small, small), interpolation=cv2.INTER_AREA)
    agree = np.ones_like(cover)
    if np.isfinite(tolerance):  # (infinite: every cell counts alike, nothing to weigh)
        cells = cover > 0
        agree[cells] = _light_agreement(summed[cells] / cover[cells][:, None],
                                        _basis(small)[cells], tolerance)
    w = cover * agree
    if w.sum() < 1e-3 * cover.sum():  # nothing agrees: every ring pixel counts alike
        agree, w = np.ones_like(cover), cover
    # The field: the weighted differences spread by normalised Gaussian averaging, with
    # their weighted mean as a weak prior (where the ring is far, the field is the mean).
    summed *= agree[..., None]
    mean = summed.sum((0, 1)) / max(float(w.sum()), 1e-6)
    sigma = small / 8.0
    num = cv2.GaussianBlur(summed, (0, 0), sigma)
    den = cv2.GaussianBlur(w, (0, 0), sigma)[..., None]
    field = (num + PRIOR * mean) / (den + PRIOR)
    return painted + cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR)


def _basis(small: int) -> np.ndarray:
    """(s, s, 3): 1, x, y at the grid's cell centres (fractions of the region, centred)."""
    c = (np.arange(small, dtype=np.float64) + 0.5) / small - 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    return np.stack([np.ones_like(x), x, y], -1)


def _light_agreement(cell_diff: np.ndarray, basis: np.ndarray, tolerance: float
                     ) -> np.ndarray:
    """(K,) how well each ring cell's (K, 3) difference agrees with the light's estimate:
    a plane per channel fitted to the cells, each weighted by its agreement with the
    estimate before (the cells' median to begin with: the lower middle value, as torch's
    median, so ``avatar.device_composite`` computes the same)."""
    d = cell_diff.astype(np.float64)
    k = len(d)
    near = np.partition(d, (k - 1) // 2, axis=0)[(k - 1) // 2][None]
    # einsum and the 3x3 inverse by hand, not BLAS or LAPACK: outside a server numpy's
    # OpenBLAS wakes its thread pool for every product, however small, and its spinning
    # cost a 720p render 6-9 ms of CPU a frame (avatar/blas.py).
    for _ in range(PLANE_PASSES):
        wb = basis * _agreement(d - near, tolerance)[:, None]
        gram = np.einsum("ki,kj->ij", wb, basis) + RIDGE * np.eye(3)
        coef = np.einsum("ij,jc->ic", _inverse3(gram), np.einsum("ki,kc->ic", wb, d))
        near = np.einsum("ki,ic->kc", basis, coef)
    return _agreement(d - near, tolerance).astype(np.float32)


def _inverse3(a: np.ndarray) -> np.ndarray:
    """The inverse of a 3x3 matrix by its adjugate."""
    adj = np.array([
        [a[1, 1] * a[2, 2] - a[1, 2] * a[2, 1], a[0, 2] * a[2, 1] - a[0, 1] * a[2, 2],
         a[0, 1] * a[1, 2] - a[0, 2] * a[1, 1]],
        [a[1, 2] * a[2, 0] - a[1, 0] * a[2, 2], a[0, 0] * a[2, 2] - a[0, 2] * a[2, 0],
         a[0, 2] * a[1, 0] - a[0, 0] * a[1, 2]],
        [a[1, 0] * a[2, 1] - a[1, 1] * a[2, 0], a[0, 1] * a[2, 0] - a[0, 0] * a[2, 1],
         a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]]])
    return adj / (a[0, 0] * adj[0, 0] + a[0, 1] * adj[1, 0] + a[0, 2] * adj[2, 0])


def _agreement(stray: np.ndarray, tolerance: float) -> np.ndarray:
    """Weight of each cell from its (K, 3) differences' distance to an estimate."""
    return np.exp(-np.square(np.abs(stray).max(-1) / tolerance))


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
