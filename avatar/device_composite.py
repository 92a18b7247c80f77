"""Compositing on the renderer's device: the painted mouth colour-matched, warped back into
the frame, given the frame's own fine detail and blended, as ``avatar.avatar._composite``
does with OpenCV on the CPU, but with torch on the device the generator ran on.

On a GPU node the CPU version was the limit, not the GPU: 15-27 ms of a 16-core Xeon's CPU
per frame (720p-1080p) beside an H200 that painted the mouths in a fraction of that, all of
it in the one server process that also wraps and encodes every session's frames. Here only
the box the mouth goes into comes back from the device, and the CPU's part is pasting it
into a copy of the frame.

Measured on an H200 with a 16-core Xeon (720p, 176 px, 2026-12-04): 5.1-5.8 ms of CPU a frame
against 14.8-16.2 with OpenCV, but 173 / 196 frames/s at batch 16 / 64 against 402 / 436,
and 9 sessions held on the lane against 16: frames go through one after another on the
lane's thread (a dozen small kernels each, and the sampling grid made on the CPU), where
OpenCV's path shares them over the cores. Not the default (``Avatar.compositing``); the
next step is one batched pass over all of a batch's frames, boxes padded to the largest.

The same steps with the same constants as the CPU path (Gaussian blurs with OpenCV's kernel
size for a sigma and reflected borders, area reduction, bilinear and bicubic resampling with
pixel centres at half-integers); they differ from OpenCV's fixed-point interpolation and its
border taps by a level or two at most, where the blend weight is near zero.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from avatar import resample
from avatar.detail import DetailConfig

PRIOR = 0.02
"""The mean shift's weight in the colour field (``avatar.colour.match_colour``)."""
DETAIL = DetailConfig()


@lru_cache(maxsize=64)
def _kernel(sigma: float, device: str) -> torch.Tensor:
    """OpenCV's Gaussian for a float image and this sigma: size round(8 sigma + 1), odd."""
    size = int(math.floor(sigma * 8 + 1 + 0.5)) | 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).float().to(device)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) blurred per channel, borders reflected without repeating the edge
    (OpenCV's default)."""
    k = _kernel(float(sigma), str(x.device))
    c = x.shape[1]
    pad = len(k) // 2
    # A kernel wider than the image: clamp the reflection (OpenCV folds it again; such
    # sizes are far from any used here).
    ph, pw = min(pad, x.shape[2] - 1), min(pad, x.shape[3] - 1)
    x = F.pad(x, (pw, pw, 0, 0), mode="reflect") if pw else x
    x = F.conv2d(x, k[len(k) // 2 - pw: len(k) // 2 + pw + 1].view(1, 1, 1, -1)
                 .expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, ph, ph), mode="reflect") if ph else x
    return F.conv2d(x, k[len(k) // 2 - ph: len(k) // 2 + ph + 1].view(1, 1, -1, 1)
                    .expand(c, 1, -1, 1), groups=c)


def match_colour(painted: torch.Tensor, real: torch.Tensor, ring: torch.Tensor,
                 mode: str = "field") -> torch.Tensor:
    """``avatar.colour.match_colour`` for (3, S, S) float 0-255 tensors and a (S, S) bool
    ring that is not empty."""
    w = ring.float()
    n = w.sum().clamp(min=1)  # (no sync with the device: the caller checks for an empty ring)
    diff = real - painted
    mean = (diff * w).sum((1, 2)) / n
    if mode == "mean":
        return painted + mean[:, None, None]
    size = painted.shape[-1]
    small = max(size // 4, 8)
    sigma = small / 8.0
    num = blur(F.interpolate((diff * w)[None], size=(small, small), mode="area"), sigma)
    den = blur(F.interpolate(w[None, None], size=(small, small), mode="area"), sigma)
    field = (num + PRIOR * mean[None, :, None, None]) / (den + PRIOR)
    return painted + F.interpolate(field, size=(size, size), mode="bilinear",
                                   align_corners=False)[0]


def warp(src: torch.Tensor, m: np.ndarray, dsize: tuple[int, int]) -> torch.Tensor:
    """``avatar.resample.warp`` of a (C, h, w) tensor: ``m`` maps source pixels to output
    pixels; bicubic, edges replicated, area-reduced first where it shrinks by more than
    ``resample.SHRINK``."""
    m = np.asarray(m, np.float64)
    shrink = 1.0 / max(resample.scale_of(m), 1e-9)
    if shrink > resample.SHRINK:
        h, w = src.shape[-2:]
        sh, sw = max(1, round(h / shrink)), max(1, round(w / shrink))
        src = F.interpolate(src[None], size=(sh, sw), mode="area")[0]
        m = m.copy()
        m[:, 0] *= w / sw
        m[:, 1] *= h / sh
    inv = resample.invert(m)
    dw, dh = dsize
    h, w = src.shape[-2:]
    ys, xs = np.mgrid[0:dh, 0:dw].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    # Pixel centres at integers, normalised as grid_sample reads them (align_corners off).
    grid = np.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], -1).astype(np.float32)
    g = torch.from_numpy(grid).to(src.device)[None]
    return F.grid_sample(src[None].float(), g, mode="bicubic", padding_mode="border",
                         align_corners=False)[0]


def keep_detail(painted: torch.Tensor, frame: torch.Tensor, upscale: float,
                cfg: DetailConfig = DETAIL) -> torch.Tensor:
    """``avatar.detail.keep_detail`` for (3, h, w) float 0-255 tensors."""
    s = cfg.sigma * max(upscale, 1.0)
    low_p = blur(painted[None], s)[0]
    low_f = blur(frame[None], s)[0]
    diff = (low_p - low_f).abs().amax(0)
    agree = blur(torch.exp(-(diff / cfg.tolerance) ** 2)[None, None], s)[0]
    return painted + agree * ((frame - low_f) - (painted - low_p))


def composite(idle: list, painted: torch.Tensor, regions: torch.Tensor, colour: str,
              detail: str) -> list[np.ndarray]:
    """Frames for a batch: ``idle`` the batch's ``_IdleFrame``s, ``painted`` (B, 3, S, S)
    the generator's output in 0-1 and ``regions`` the model's views of the frames (both on
    the device)."""
    dev = painted.device
    # As the CPU path sees them: the paint quantised to 8 bits, the region at 0-255.
    paint = (painted.float().clamp(0, 1) * 255).to(torch.uint8).float()
    real = regions.float() * 255
    rings: dict[int, torch.Tensor] = {}
    boxes = []
    for i, f in enumerate(idle):
        ring = rings.get(id(f.ring))
        if ring is None:
            ring = rings[id(f.ring)] = torch.from_numpy(f.ring).to(dev)
        x0, y0, x1, y1 = f.box
        patch = (match_colour(paint[i], real[i], ring, colour) if f.ring.any()
                 else paint[i]).clamp(0, 255)
        m = f.to_frame.copy()
        m[:, 2] -= (x0, y0)
        warped = warp(patch, m, (x1 - x0, y1 - y0)).clamp(0, 255)
        roi = torch.from_numpy(np.ascontiguousarray(f.frame[y0:y1, x0:x1])).to(dev)
        roi = roi.permute(2, 0, 1).float()
        if detail == "keep":
            warped = keep_detail(warped, roi, resample.scale_of(m)).clamp(0, 255)
        blend = torch.from_numpy(f.blend).to(dev).permute(2, 0, 1)
        boxes.append(torch.round(roi + (warped - roi) * blend).to(torch.uint8)
                     .permute(1, 2, 0).reshape(-1))
    # One copy back for the whole batch: a copy per frame waits on the device each time.
    flat = torch.cat(boxes).cpu().numpy()
    out, at = [], 0
    for f in idle:
        x0, y0, x1, y1 = f.box
        n = (y1 - y0) * (x1 - x0) * 3
        frame = f.frame.copy()
        frame[y0:y1, x0:x1] = flat[at:at + n].reshape(y1 - y0, x1 - x0, 3)
        at += n
        out.append(frame)
    return out
