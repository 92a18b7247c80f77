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

