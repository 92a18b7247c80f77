"""Losses of the generator beyond plain L1, none needing a pretrained network.

L1 alone rewards the average of the mouths that fit the input, which is a soft mouth:
teeth, lip lines and stubble are high frequencies that averaging removes. Matching image
gradients at several scales puts a price on losing them. Matching the change from one
frame to the next (the windows are consecutive frames) puts a price on a mouth that
shimmers while the real one is still, and on one that jumps while the real one glides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gradient_loss(out: torch.Tensor, target: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Mean L1 distance between the horizontal and vertical differences of ``out`` and
    ``target`` (B, C, H, W), at full size and ``scales - 1`` halvings."""
    total = out.new_zeros(())
    for k in range(scales):
        if k:
            out, target = F.avg_pool2d(out, 2), F.avg_pool2d(target, 2)
        for dim in (-1, -2):
            total = total + (torch.diff(out, dim=dim) - torch.diff(target, dim=dim)).abs().mean()
    return total / scales


def temporal_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between frame-to-frame changes; ``out``, ``target``: (B, T, C, H,
    W) windows of consecutive frames."""
    return (torch.diff(out, dim=1) - torch.diff(target, dim=1)).abs().mean()


def _bands(x: torch.Tensor, scales: int) -> list[torch.Tensor]:
    """Laplacian-pyramid bands of ``x``: each level minus its blurred, halved and
    re-enlarged self (the detail that level adds), finest first."""
    bands = []
    for _ in range(scales):
        low = F.avg_pool2d(x, 2)
        bands.append(x - F.interpolate(low, size=x.shape[-2:], mode="bilinear",
                                       align_corners=False))
        x = low
    return bands


def texture_loss(out: torch.Tensor, target: torch.Tensor, scales: int = 2,
                 window: int = 4) -> torch.Tensor:
    """Mean L1 distance between the local energy of each fine band of ``out`` and of
    ``target`` (B, C, H, W): the mean absolute band value over ``window``-pixel cells.

    L1 and the gradient loss compare detail sample by sample, so where the exact position
    of a lip line, a tooth edge or a hair is uncertain the cheapest answer is none: a
    smooth mouth. This term compares only how much detail a cell has, not where inside the
    cell it sits, so leaving the detail out is what costs."""
    grey_o, grey_t = out.mean(1, keepdim=True), target.mean(1, keepdim=True)
    total = out.new_zeros(())
    for bo, bt in zip(_bands(grey_o, scales), _bands(grey_t, scales), strict=True):
        eo = F.avg_pool2d(bo.abs(), window)
        et = F.avg_pool2d(bt.abs(), window)
        total = total + (eo - et).abs().mean()
    return total / scales
