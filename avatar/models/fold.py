"""Folding batch normalisation into the convolution before it, for inference.

In evaluation mode a BatchNorm is a fixed per-channel scale and shift, so it can be
absorbed into the preceding convolution's weights and bias: one pass over the activations
fewer per layer, the same numbers to rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d))


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every convolution-then-BatchNorm pair inside
    an ``nn.Sequential`` merged into the convolution; the BatchNorm becomes Identity."""
    model = copy.deepcopy(model).eval()
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if not any(isinstance(conv, c) and isinstance(bn, b) for c, b in _PAIRS):
                continue
            if not bn.track_running_stats or bn.running_var is None:
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shape = (-1,) + (1,) * (conv.weight.dim() - 1)
            conv.weight.copy_(conv.weight * scale.view(shape))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = (bias - bn.running_mean) * scale + bn.bias
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias)
            else:
                conv.bias.copy_(new_bias)
            seq[i + 1] = nn.Identity()
    return model
