"""Taking the paint's colour cast off its interior, frame by frame.

The colour match (``avatar.colour``) corrects the paint where it fades into the frame; the
interior (lips, teeth, the inside of the mouth) is far from that ring, and the generator
paints it a little off in colour. First twincast measured that cast once per bundle and
added one shift (``rgb_shift``). But the cast is not the same in every frame: on the demo
sample's enrolment frames its per-frame spread (2.6 CIELAB units in L) was larger than its
mean, and it follows what was painted (an open mouth's dark interior is off by another
amount than closed lips) and the light around it (the ring's difference, which the match's
field spreads inwards only part of the way). So a bundle may carry a linear model of the
shift from six numbers every frame has before compositing: the paint's mean interior
colour and the ring's mean real-minus-paint difference (``features``). It is fitted on the
enrolment's frames (``training.head.colour_fit``) and kept only where it beats the one
shift on frames it was not fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avatar.colour import PAINTED, interior_weight

FEATURES = 6
"""The paint's mean interior RGB, then the ring's mean real-minus-paint RGB (levels)."""


def feature_weights(region_mask: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, S) float32 averaging weights over the interior and over the ring: features are
    weighted sums, so a batch on a GPU needs no boolean indexing (and no sync)."""
    inner = (region_mask >= PAINTED).astype(np.float32)
    ring_w = ring.astype(np.float32)
    return inner / max(inner.sum(), 1.0), ring_w / max(ring_w.sum(), 1.0)


def features(paint: torch.Tensor, real: torch.Tensor, inner_w: torch.Tensor,
             ring_w: torch.Tensor) -> torch.Tensor:
    """``paint`` and ``real`` (B, 3, S, S) in levels (0-255) over the same region;
    ``inner_w``/``ring_w`` from ``feature_weights``. Returns (B, 6) float32."""
    paint, real = paint.float(), real.float()
    inner = (paint * inner_w).sum((2, 3))
    ring = ((real - paint) * ring_w).sum((2, 3))
    return torch.cat([inner, ring], 1)


@dataclass(frozen=True)
class LinearCast:
    """shift (levels, RGB) = bias + (features - mean) @ weights."""

    mean: np.ndarray
    """(6,) the features' mean over the frames it was fitted on."""
    weights: np.ndarray
    """(6, 3)."""
    bias: np.ndarray
    """(3,) the shift at the mean features."""

    def to_dict(self) -> dict:
        return {"mean": [round(float(v), 4) for v in self.mean],
                "weights": [[round(float(v), 5) for v in row] for row in self.weights],
                "bias": [round(float(v), 4) for v in self.bias]}

    @classmethod
    def from_dict(cls, d: object) -> LinearCast:
        """Raises ValueError, saying what is wrong, on a damaged entry."""
        if not isinstance(d, dict):
            raise ValueError("must be an object with mean, weights and bias")
        try:
            mean = np.asarray(d["mean"], np.float64)
            weights = np.asarray(d["weights"], np.float64)
            bias = np.asarray(d["bias"], np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"needs numeric mean, weights and bias ({e})") from None
        if mean.shape != (FEATURES,) or weights.shape != (FEATURES, 3) or bias.shape != (3,):
            raise ValueError(f"mean, weights and bias must be {FEATURES}, {FEATURES}x3 and "
                             f"3 numbers")
        if not (np.isfinite(mean).all() and np.isfinite(weights).all()
                and np.isfinite(bias).all()) or np.abs(bias).max() >= 64:
            raise ValueError("must be finite, the bias under 64 levels")
        return cls(mean, weights, bias)

    def shift(self, feats: np.ndarray) -> np.ndarray:
        """(N, 6) -> (N, 3) levels."""
        return self.bias + (np.asarray(feats, np.float64) - self.mean) @ self.weights


MAX_SHIFT = 32.0
"""Levels: a frame unlike any the model was fitted on (a face half out of the light) gets
at most this much, not whatever a linear model says far outside its data."""


class PaintCast:
    """The correction rendering adds to the paint: the bundle's one shift, or its linear
    model per frame, over the interior only (zero on the ring, so the colour match, which
    reads the ring, is unchanged)."""

    def __init__(self, region_mask: np.ndarray, ring: np.ndarray, device: torch.device,
                 shift: np.ndarray | None = None, linear: LinearCast | None = None) -> None:
        if shift is None and linear is None:
            raise ValueError("a paint cast needs a shift or a linear model")
        w = torch.from_numpy(interior_weight(region_mask))
        self.weight = w.view(1, 1, *w.shape).to(device)
        self.linear = linear
        self.constant = None if shift is None else \
            torch.tensor(np.asarray(shift), dtype=torch.float32).view(1, 3, 1, 1).to(device)
        if linear is not None:
            inner_w, ring_w = feature_weights(region_mask, ring)
            self.inner_w = torch.from_numpy(inner_w).to(device)
            self.ring_w = torch.from_numpy(ring_w).to(device)
            self.mean = torch.tensor(linear.mean, dtype=torch.float32, device=device)
            self.weights = torch.tensor(linear.weights, dtype=torch.float32, device=device)
            self.bias = torch.tensor(linear.bias, dtype=torch.float32, device=device)

    def __call__(self, paint: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``paint`` and ``real`` (B, 3, S, S) in [0, 1] (the painted and the frame's
        regions) -> the correction to add to the paint, (B, 3, S, S) float32 in [0, 1]
        units."""
        if self.linear is None:
            assert self.constant is not None
            return (self.constant / 255 * self.weight).expand(len(paint), -1, -1, -1)
        f = features(paint.float() * 255, real.float() * 255, self.inner_w, self.ring_w)
        shift = (self.bias + (f - self.mean) @ self.weights).clamp(-MAX_SHIFT, MAX_SHIFT)
        return shift[:, :, None, None] / 255 * self.weight
