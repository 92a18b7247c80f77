"""Lips from audio: the mouth shape the generator is asked to draw.

A small network reads ~0.4 s of log-mel around a video frame and predicts where the 40 lip
landmarks of MediaPipe's face mesh sit in the aligned crop. The generator then paints a mouth
that matches a sketch of those points. Splitting the problem this way lets a small model
learn *what* the mouth does from a cheap coordinate loss, and the image model only *how* it
looks; one network learning both from pixels under-articulates (it averages mouth shapes).
"""

from __future__ import annotations

import torch
from torch import nn

# MediaPipe face-mesh lip contours, each a closed loop in order.
LIP_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37,
             39, 40, 185)
LIP_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82,
             81, 80, 191)
LIP_POINTS = LIP_OUTER + LIP_INNER
N_LIP = len(LIP_POINTS)


N_SHAPES = 8
"""Lip shapes are predicted as this many principal components of the person's own lip
landmarks: far fewer numbers to learn from a few minutes of footage than 80 coordinates,
and no noise in the directions lips never move."""


class LipPredictor(nn.Module):
    """(B, 1, bins, frames) normalised log-mel -> (B, 40, 2) lip points in crop fractions.

    The network predicts standardised shape coefficients; ``mean``, ``basis`` (unit rows)
    and ``scale`` (their spread) are the person's lip-shape components, set before
    training, and ``gain`` undoes the shrinkage a squared-error model shows towards the
    average mouth (set from held-out frames after training).
    """

    def __init__(self, dim: int = 128, bins: int = 80, shapes: int = N_SHAPES):
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv1d(cin, cout, 5, stride, 2), nn.BatchNorm1d(cout),
                    nn.LeakyReLU(0.2, inplace=True)]

        # Mel bins are channels and time is the axis the convolutions run along.
        self.net = nn.Sequential(*conv(bins, dim, 1), nn.Dropout(0.1), *conv(dim, dim, 2),
                                 *conv(dim, dim, 2), *conv(dim, dim, 2),
                                 nn.AdaptiveAvgPool1d(5), nn.Flatten(), nn.Dropout(0.3),
                                 nn.Linear(dim * 5, shapes))
        self.register_buffer("mean", torch.zeros(2 * N_LIP))
        self.register_buffer("basis", torch.eye(shapes, 2 * N_LIP))
        self.register_buffer("scale", torch.full((shapes,), 0.01))
        self.register_buffer("gain", torch.ones(shapes))

    def standardised(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, K) standardised shape coefficients (what the loss sees)."""
        if self.training:
            # The same sounds never come twice with the same level and noise.
            mel = mel + 0.1 * torch.randn_like(mel) + 0.2 * torch.randn(
                len(mel), 1, 1, 1, device=mel.device)
        return self.net(mel[:, 0])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.points(self.standardised(mel) * self.gain)

    def points(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K) standardised coefficients -> (B, 40, 2) crop fractions."""
        return ((z * self.scale) @ self.basis + self.mean).view(-1, N_LIP, 2)

    def standardise(self, points: torch.Tensor) -> torch.Tensor:
        """(B, 40, 2) crop fractions -> (B, K) standardised coefficients."""
        return (points.reshape(len(points), -1) - self.mean) @ self.basis.T / self.scale

    def weights(self) -> torch.Tensor:
        """(K,) share of the lips' variance in each component: the loss's weights, so that
        errors count as they would on the points themselves."""
        v = self.scale ** 2
        return v / v.sum()

    @torch.no_grad()
    def fit_shapes(self, points: torch.Tensor) -> None:
        """Set mean, basis and scale from (N, 40, 2) training lip points."""
        flat = points.reshape(len(points), -1).double()
        self.mean.copy_(flat.mean(0))
        _, s, vt = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
        k = len(self.scale)
        self.basis.copy_(vt[:k])
        self.scale.copy_((s[:k] / max(len(flat) - 1, 1) ** 0.5).clamp(min=1e-5))


def _densify(points: torch.Tensor, loop: int) -> torch.Tensor:
    """Insert the midpoint after each point of every closed loop of ``loop`` points, so the
    sketch reads as a contour rather than dots."""
    b, k, _ = points.shape
    loops = points.view(b, k // loop, loop, 2)
    mids = (loops + loops.roll(-1, dims=2)) / 2
    return torch.stack([loops, mids], 3).reshape(b, -1, 2)


def lip_sketch(points: torch.Tensor, region: tuple[float, float, float], size: int
               ) -> torch.Tensor:
    """(B, 40, 2) lip points in crop fractions -> (B, 2, S, S) sketch of the outer and
    inner lip contours in the mouth region, values in [0, 1].

    Each point is a small Gaussian; a Gaussian is separable, so a contour is a batched
    matrix product of its x and y profiles (cheap at any batch size, differentiable).
    """
    x0, y0, side = region
    px = (points[..., 0] - x0) / side * size
    py = (points[..., 1] - y0) / side * size
    pts = _densify(torch.stack([px, py], -1), len(LIP_OUTER))
    grid = torch.arange(size, device=points.device, dtype=points.dtype) + 0.5
    sigma = 1.2 * size / 96
    gx = torch.exp(-((grid[None, None, :] - pts[..., 0:1]) ** 2) / (2 * sigma ** 2))
    gy = torch.exp(-((grid[None, None, :] - pts[..., 1:2]) ** 2) / (2 * sigma ** 2))
    half = pts.shape[1] // 2  # outer loop first, then inner
    outer = torch.einsum("bky,bkx->byx", gy[:, :half], gx[:, :half])
    inner = torch.einsum("bky,bkx->byx", gy[:, half:], gx[:, half:])
    return torch.stack([outer, inner], 1).clamp(max=1.0)


def lip_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             weights: torch.Tensor) -> torch.Tensor:
    """Weighted squared error of standardised shape coefficients plus of their
    frame-to-frame change, for windows (B, W, K) with a (B, W) mask of the frames that
    count: the mouth must move when the real one moves, not only sit right on average."""
    m = mask.float()
    pos = ((pred - target) ** 2 * weights).sum(-1)
    loss = (pos * m).sum() / m.sum().clamp(min=1)
    if pred.shape[1] > 1:
        mv = m[:, 1:] * m[:, :-1]
        d = (pred[:, 1:] - pred[:, :-1]) - (target[:, 1:] - target[:, :-1])
        loss = loss + ((d ** 2 * weights).sum(-1) * mv).sum() / mv.sum().clamp(min=1)
    return loss
