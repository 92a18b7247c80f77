"""The refiner: a small person-specific network that puts fine detail back on the paint.

The generator, trained with pixel losses, paints the mouth softer than the camera saw it
(on GRID its paint keeps about 40 % of the real mouth's high-frequency energy): it
averages away every detail whose exact place it cannot predict. The refiner is a second
stage, trained at export on the person's own frames (``training.head.refine``): it takes
the generator's paint at the working size and adds a residual, learnt with an L1 loss and a
patch critic that judges only the fine bands, so the detail it adds has the texture
of the person's own lips, teeth and skin while the coarse picture (the mouth's shape, which
the lip sync rests on) stays the generator's.

Fully convolutional and small: five 3x3 residual blocks at 32 channels and one half-size
branch for context (57 k weights). Over a large working size the blocks work on the paint
folded to half its side (``scale`` 2: each 2x2 block of pixels as 12 channels, unfolded
again at the end), which costs a quarter as much: at 160 px over 720p the full-size
refiner alone took 9.3 ms a frame at batch 16 on 2 cores (AMX Xeon), half the frame rate.

What it paints still loses fine energy on the way to the screen: the warp back onto the
frame interpolates (a sub-pixel bicubic round trip keeps about 92 % of a GRID mouth's
Laplacian energy), and a refiner chosen for faithfulness stops short of the camera's
texture. So the bundle also carries a ``sharpen`` amount, chosen at export with the refiner
on frames held out from its training (``training.head.refine.choose_sharpen``): rendering
lifts the refined paint's finest band by that much (``sharpen``) before compositing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class RefineConfig:
    channels: int = 32
    blocks: int = 5
    scale: int = 1
    """The blocks work at 1/scale of the paint's side (1 or 2; bundles made before it: 1)."""

    @classmethod
    def from_dict(cls, d: dict) -> RefineConfig:
        try:
            cfg = cls(**{k: int(d[k]) for k in cls.__dataclass_fields__ if k in d})
        except (TypeError, ValueError) as e:
            raise ValueError(f"head.refine.config is not a refiner's config ({e})") from e
        if cfg.channels < 1 or cfg.blocks < 2 or cfg.scale not in (1, 2):
            raise ValueError("head.refine.config needs channels >= 1, blocks >= 2 and "
                             "scale 1 or 2")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


MAX_BODY = 128
"""Largest side the refiner's blocks work at: over larger paints they fold it (``scale``)."""


def scale_for(size: int) -> int:
    """The refiner's ``scale`` for a working size of ``size`` px: 2 where the paint is
    larger than ``MAX_BODY`` (and its side even), else 1."""
    return 2 if size > MAX_BODY and size % 2 == 0 else 1


class Refiner(nn.Module):
    """(B, 3, S, S) paint in [0, 1] -> the same with fine detail added (any S; with
    ``scale`` 2, S even)."""

    def __init__(self, cfg: RefineConfig = RefineConfig()):
        super().__init__()
        self.cfg = cfg
        ch, folded = cfg.channels, 3 * cfg.scale * cfg.scale
        self.inp = nn.Conv2d(folded, ch, 3, padding=1)
        self.down = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(cfg.blocks))
        self.out = nn.Conv2d(ch, folded, 3, padding=1)
        # Zero at first: an untrained refiner returns the paint as it is.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, paint: torch.Tensor) -> torch.Tensor:
        k = self.cfg.scale
        if k > 1 and (paint.shape[-1] % k or paint.shape[-2] % k):
            raise ValueError(f"a refiner of scale {k} needs sides divisible by {k}, "
                             f"not {tuple(paint.shape[-2:])}")
        x = F.pixel_unshuffle(paint, k) if k > 1 else paint
        h = F.relu(self.inp(x))
        context = F.relu(self.down(h))
        for i, conv in enumerate(self.body):
            if i == 1:  # a wider view (the mouth's shape) joins after the first block
                h = h + F.interpolate(context, size=h.shape[-2:], mode="bilinear",
                                      align_corners=False)
            h = F.relu(conv(h)) + h
        detail = self.out(h)
        return paint + (F.pixel_shuffle(detail, k) if k > 1 else detail)


SHARPEN_SIGMA = 1.0
"""Blur (working-size pixels) below which ``sharpen`` lifts detail: the band the warp back
and the refiner's own averaging leave weakest."""


def sharpen(x: torch.Tensor, amount: float, sigma: float = SHARPEN_SIGMA,
            blur: torch.Tensor | None = None) -> torch.Tensor:
    """Unsharp masking of (B, C, H, W) images: ``x + amount * (x - blur(x))`` with a
    Gaussian blur of ``sigma`` (reflected borders, as OpenCV's default). The band lifted
    averages to zero, so colours and the mouth's shape stay where they were. ``blur``:
    ``blur_matrix(H, sigma)`` on ``x``'s device, where the caller keeps one (square
    images), so none is made and copied to the device per call."""
    if amount <= 0:
        return x
    rows = blur if blur is not None else blur_matrix(x.shape[-2], sigma).to(x.device, x.dtype)
    cols = rows if x.shape[-1] == x.shape[-2] else \
        blur_matrix(x.shape[-1], sigma).to(x.device, x.dtype)
    # The separable blur as two small matrix products: depthwise 1-D convolutions took
    # 1-4 ms a frame on this CPU (2 cores) where these take 0.2-0.8 at 96-160 px.
    return x + amount * (x - rows @ (x @ cols.T))


def blur_matrix(n: int, sigma: float = SHARPEN_SIGMA) -> torch.Tensor:
    """(n, n): a Gaussian blur of ``sigma`` along one axis of length ``n``, borders
    reflected without repeating the edge pixel (OpenCV's BORDER_REFLECT_101)."""
    r = max(1, math.ceil(4 * sigma))
    d = np.arange(-r, r + 1)
    k = np.exp(-(d * d) / (2 * sigma * sigma))
    k /= k.sum()
    j = np.abs(np.arange(n)[:, None] + d[None, :])
    j = np.clip(np.where(j > n - 1, 2 * (n - 1) - j, j), 0, n - 1)  # (clip: n under r)
    m = np.zeros((n, n), np.float32)
    np.add.at(m, (np.repeat(np.arange(n), len(d)), j.ravel()), np.tile(k, n))
    return torch.from_numpy(m)
