"""Compositing on the renderer's device: the painted mouth colour-matched, warped back into
the frame, given the frame's own fine detail and blended, as ``avatar.avatar._composite``
does with OpenCV on the CPU, but with torch on the device the generator ran on.

On a GPU node the CPU version was the limit, not the GPU: 15-27 ms of a 16-core Xeon's CPU
per frame (720p-1080p) beside an H200 that painted the mouths in a fraction of that, all of
it in the one server process that also wraps and encodes every session's frames. Here only
the box the mouth goes into comes back from the device, and the CPU's part is pasting it
into a copy of the frame.

A first version that went frame by frame was measured on an H200 with a 16-core Xeon (720p,
176 px, 2026-12-04): 5.1-5.8 ms of CPU a frame against 14.8-16.2 with OpenCV, but 173 / 196
frames/s at batch 16 / 64 against 402 / 436, and 9 sessions held on the lane against 16:
frames went through one after another on the lane's thread (a dozen small kernels each, the
sampling grid made on the CPU, a wait on the device per frame), where OpenCV's path shares
them over the cores. So a batch now goes through in one pass, its boxes padded to the
largest (frame by frame only where a box shrinks the paint or frames differ in ring).
Measured the same way: 3.0-3.3 ms of CPU a 720p frame past batch 16, 307 / 332 frames/s
at batch 16 / 64, 12 sessions on the lane at batch 16 (16 with OpenCV) and 19 at 64 (14),
none rendered late up to 8 sessions encoded in the same process (58-64 % with OpenCV at
8). The rest of a frame's CPU is the box's copy back and the paste.

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
from avatar.colour import PLANE_PASSES, PRIOR, RIDGE, TOLERANCE
from avatar.detail import DetailConfig

DETAIL = DetailConfig()


@lru_cache(maxsize=64)
def _kernel(sigma: float, device: str) -> torch.Tensor:
    """OpenCV's Gaussian for a float image and this sigma: size round(8 sigma + 1), odd."""
    size = int(math.floor(sigma * 8 + 1 + 0.5)) | 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).float().to(device)


def blur(x: torch.Tensor, sigma: float | list[float]) -> torch.Tensor:
    """(N, C, H, W) blurred per channel, borders reflected without repeating the edge
    (OpenCV's default); ``sigma`` one for all, or one per image of the batch (their kernels
    zero-padded to the widest, which changes nothing they weigh)."""
    n, c = x.shape[:2]
    sigmas = [float(sigma)] * n if isinstance(sigma, (int, float)) else list(sigma)
    kernels = [_kernel(v, str(x.device)) for v in sigmas]
    size = max(len(k) for k in kernels)
    k = torch.stack([F.pad(k, ((size - len(k)) // 2,) * 2) for k in kernels])  # (N, size)
    k = k.repeat_interleave(c, 0)  # a kernel per image and channel
    pad = size // 2
    # A kernel wider than the image: clamp the reflection (OpenCV folds it again; such
    # sizes are far from any used here).
    ph, pw = min(pad, x.shape[2] - 1), min(pad, x.shape[3] - 1)
    y = x.reshape(1, n * c, *x.shape[2:])
    y = F.pad(y, (pw, pw, 0, 0), mode="reflect") if pw else y
    y = F.conv2d(y, k[:, pad - pw: pad + pw + 1].reshape(n * c, 1, 1, -1), groups=n * c)
    y = F.pad(y, (0, 0, ph, ph), mode="reflect") if ph else y
    y = F.conv2d(y, k[:, pad - ph: pad + ph + 1].reshape(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, *y.shape[2:])


def match_colour(painted: torch.Tensor, real: torch.Tensor, ring: torch.Tensor,
                 mode: str = "field", tolerance: float = TOLERANCE) -> torch.Tensor:
    """``avatar.colour.match_colour`` for (N, 3, S, S) float 0-255 tensors and one (S, S)
    bool ring that is not empty. Dense over the grid (a cell off the ring weighs 0), so
    nothing waits for the device: no indexing by the ring, no per-frame branch."""
    w = ring.float()[None, None]
    diff = real - painted
    if mode == "mean":
        n = w.sum().clamp(min=1)  # (no sync: the caller checks for an empty ring)
        mean = (diff * w).sum((2, 3)) / n  # (N, 3)
        return painted + mean[:, :, None, None]
    size = painted.shape[-1]
    small = max(size // 4, 8)
    cover = F.interpolate(w, size=(small, small), mode="area")  # (1, 1, s, s)
    summed = F.interpolate(diff * w, size=(small, small), mode="area")  # (N, 3, s, s)
    agree = torch.ones_like(summed[:, :1])
    if math.isfinite(tolerance):  # (infinite: every cell counts alike, nothing to weigh)
        cells = cover > 0
        cell_diff = (summed / cover.clamp(min=1e-12)).double()
        agree = torch.where(cells, _light_agreement(cell_diff, cells, tolerance).float(),
                            agree)
    wk = cover * agree  # (N, 1, s, s)
    # Nothing agrees: every ring pixel counts alike.
    few = wk.sum((1, 2, 3), keepdim=True) < 1e-3 * cover.sum()
    agree = torch.where(few, torch.ones_like(agree), agree)
    wk = cover * agree
    summed = summed * agree
    mean = summed.sum((2, 3)) / wk.sum((2, 3)).clamp(min=1e-6)  # (N, 3)
    sigma = small / 8.0
    num = blur(summed, sigma)
    den = blur(wk, sigma)
    field = (num + PRIOR * mean[:, :, None, None]) / (den + PRIOR)
    return painted + F.interpolate(field, size=(size, size), mode="bilinear",
                                   align_corners=False)


def _light_agreement(cell_diff: torch.Tensor, cells: torch.Tensor, tolerance: float
                     ) -> torch.Tensor:
    """(N, 1, s, s) float64: ``avatar.colour._light_agreement`` over the grid, each frame
    on its own; the values off the ring's ``cells`` (1, 1, s, s) mean nothing."""
    small = cell_diff.shape[-1]
    c = (torch.arange(small, device=cell_diff.device, dtype=torch.float64) + 0.5) / small \
        - 0.5
    basis = torch.stack([torch.ones(small, small, device=c.device, dtype=c.dtype),
                         c[None, :].expand(small, small), c[:, None].expand(small, small)])
    on = cells.double()
    # The lower median of the ring cells' differences per frame and channel.
    near = cell_diff.masked_fill(~cells, float("nan")).flatten(2).nanmedian(-1).values
    near = near[:, :, None, None]
    eye = RIDGE * torch.eye(3, device=c.device, dtype=c.dtype)
    for _ in range(PLANE_PASSES):
        wb = on * _agreement(cell_diff - near, tolerance) * basis[None]  # (N, 3, s, s)
        gram = torch.einsum("nihw,jhw->nij", wb, basis) + eye
        coef = torch.linalg.solve(gram, torch.einsum("nihw,nchw->nic", wb, cell_diff))
        near = torch.einsum("ihw,nic->nchw", basis, coef)
    return _agreement(cell_diff - near, tolerance)


def _agreement(stray: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(N, 1, s, s) weight of each cell from its differences' distance to an estimate."""
    return torch.exp(-torch.square(stray.abs().amax(1, keepdim=True) / tolerance))


def _grid(inv: np.ndarray, size: tuple[int, int], src: tuple[int, int],
          device: torch.device) -> torch.Tensor:
    """grid_sample's grid for output pixels (``size`` = h, w) read through ``inv`` (N, 2, 3:
    output pixel -> source pixel) from a ``src`` (h, w) image: pixel centres at integers,
    normalised as grid_sample reads them with align_corners off."""
    h, w = size
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :]
    a = torch.as_tensor(inv, dtype=torch.float32, device=device)[:, :, :, None, None]
    sx = a[:, 0, 0] * xs + a[:, 0, 1] * ys + a[:, 0, 2]
    sy = a[:, 1, 0] * xs + a[:, 1, 1] * ys + a[:, 1, 2]
    return torch.stack([(2 * sx + 1) / src[1] - 1, (2 * sy + 1) / src[0] - 1], -1)


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
    g = _grid(resample.invert(m)[None], (dsize[1], dsize[0]), src.shape[-2:], src.device)
    return F.grid_sample(src[None].float(), g, mode="bicubic", padding_mode="border",
                         align_corners=False)[0]


def keep_detail(painted: torch.Tensor, frame: torch.Tensor, upscale: list[float],
                cfg: DetailConfig = DETAIL) -> torch.Tensor:
    """``avatar.detail.keep_detail`` for (N, 3, h, w) float 0-255 tensors, each image with
    its own enlargement."""
    s = [cfg.sigma * max(u, 1.0) for u in upscale]
    low_p = blur(painted, s)
    low_f = blur(frame, s)
    diff = (low_p - low_f).abs().amax(1, keepdim=True)
    agree = blur(torch.exp(-(diff / cfg.tolerance) ** 2), s)
    fine_p, fine_f = painted - low_p, frame - low_f
    p, f = _luma(fine_p), _luma(fine_f)
    scale = [v * cfg.energy_scale for v in s]
    vp, vf, c = blur(p * p, scale), blur(f * f, scale), blur(p * f, scale)
    want = (1 - agree) * vp + agree * vf
    got = (1 - agree) ** 2 * vp + agree * agree * vf + 2 * agree * (1 - agree) * c
    gain = ((want + 1.0) / (got + 1.0)).clamp(1.0, cfg.max_gain ** 2).sqrt()
    return low_p + gain * (fine_p + agree * (fine_f - fine_p))


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) luma of (N, 3, h, w) RGB, OpenCV's RGB2GRAY weights (no weight tensor
    to copy to the device on every batch)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _fine_map(m: np.ndarray, size: int, fine_size: int) -> np.ndarray:
    """``avatar.texture.screen_band``'s map: fine-band pixels -> box pixels."""
    m = m.copy()
    m[:, :2] *= size / fine_size
    return m


def _put_fine(warped: torch.Tensor, fine: torch.Tensor, maps: list[np.ndarray], size: int,
              sigma: float) -> torch.Tensor:
    """``avatar.avatar._composite``'s fine-band step for (N, 3, h, w) boxes: the box blurred
    by the band's scale on screen, the bank's band (``fine``, (N, 3, H, H) levels) warped in."""
    fm = [_fine_map(m, size, fine.shape[-1]) for m in maps]
    g = _grid(np.stack([resample.invert(m) for m in fm]), warped.shape[-2:], fine.shape[-2:],
              warped.device)
    band = F.grid_sample(fine.float(), g, mode="bicubic", padding_mode="border",
                         align_corners=False)
    return blur(warped, [sigma * resample.scale_of(m) for m in fm]) + band


def composite(idle: list, painted: torch.Tensor, regions: torch.Tensor, colour: str,
              detail: str, batched: bool = True, fine: torch.Tensor | None = None,
              fine_sigma: float = 0.0, tolerance: float = TOLERANCE) -> list[np.ndarray]:
    """Frames for a batch: ``idle`` the batch's ``_IdleFrame``s, ``painted`` (B, 3, S, S)
    the generator's output in 0-1 and ``regions`` the model's views of the frames (both on
    the device); ``fine``: the texture bank's fine bands at screen size (``avatar.texture``),
    blurred by ``fine_sigma``, or None. The whole batch in one pass, its boxes padded to
    the largest; frame by frame where a box shrinks the paint (area-reduced first), the
    frames have different rings, or ``batched`` is off."""
    maps = []
    for f in idle:
        m = f.to_frame.copy()
        m[:, 2] -= f.box[:2]
        maps.append(m)
    # As the CPU path sees them: the paint quantised to 8 bits, the region at 0-255.
    paint = (painted.float().clamp(0, 1) * 255).to(torch.uint8).float()
    real = regions.float() * 255
    if not batched or len({id(f.ring) for f in idle}) > 1 or any(
            resample.scale_of(m) * resample.SHRINK < 1 for m in maps):
        return _frame_by_frame(idle, maps, paint, real, colour, detail, fine, fine_sigma,
                               tolerance)
    dev = painted.device
    ring = idle[0].ring
    patch = match_colour(paint, real, torch.from_numpy(ring).to(dev), colour, tolerance) \
        if ring.any() else paint
    sizes = [(f.box[3] - f.box[1], f.box[2] - f.box[0]) for f in idle]
    hh, ww = max(h for h, _ in sizes), max(w for _, w in sizes)
    g = _grid(np.stack([resample.invert(m) for m in maps]), (hh, ww), paint.shape[-2:], dev)
    warped = F.grid_sample(patch.clamp(0, 255), g, mode="bicubic", padding_mode="border",
                           align_corners=False).clamp(0, 255)
    if fine is not None:
        warped = _put_fine(warped, fine, maps, paint.shape[-1], fine_sigma).clamp(0, 255)
    # Each box's frame pixels and blend weights, padded with zeros (outside its box the
    # weight is 0, so the frame's pixels stay): one copy to the device for the batch.
    rois = np.zeros((len(idle), hh, ww, 3), np.uint8)
    blends = np.zeros((len(idle), hh, ww, 1), np.float32)
    for i, (f, (h, w)) in enumerate(zip(idle, sizes, strict=True)):
        x0, y0, x1, y1 = f.box
        rois[i, :h, :w] = f.frame[y0:y1, x0:x1]
        blends[i, :h, :w] = f.blend
    roi = torch.from_numpy(rois).to(dev).permute(0, 3, 1, 2).float()
    blend = torch.from_numpy(blends).to(dev).permute(0, 3, 1, 2)
    if detail == "keep":
        # Its blurs read past each box's edge, where OpenCV reflects the box itself: the
        # padding of the smaller boxes does too (zeros would darken their edges).
        warped = keep_detail(_reflect_fill(warped, sizes), _reflect_fill(roi, sizes),
                             [resample.scale_of(m) for m in maps]).clamp(0, 255)
    done = torch.round(roi + (warped - roi) * blend).to(torch.uint8).permute(0, 2, 3, 1)
    boxes = done.cpu().numpy()
    return [_paste(f, boxes[i, :h, :w]) for i, (f, (h, w)) in enumerate(zip(idle, sizes,
                                                                             strict=True))]


def _reflect_fill(x: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
    """(N, C, H, W) boxes padded to the largest, each image's padding beyond its own
    (h, w) filled by reflecting it (replicating where the padding is wider than the box)."""
    hh, ww = x.shape[-2:]
    if all(s == (hh, ww) for s in sizes):
        return x
    out = x.clone()
    for i, (h, w) in enumerate(sizes):
        if (h, w) != (hh, ww):
            mode = "reflect" if hh - h < h and ww - w < w else "replicate"
            out[i] = F.pad(x[i:i + 1, :, :h, :w], (0, ww - w, 0, hh - h), mode=mode)[0]
    return out


def _paste(f, box: np.ndarray) -> np.ndarray:  # noqa: ANN001 - an _IdleFrame
    frame = f.frame.copy()
    x0, y0, x1, y1 = f.box
    frame[y0:y1, x0:x1] = box
    return frame


def _frame_by_frame(idle: list, maps: list[np.ndarray], paint: torch.Tensor,
                    real: torch.Tensor, colour: str, detail: str,
                    fine: torch.Tensor | None = None, fine_sigma: float = 0.0,
                    tolerance: float = TOLERANCE) -> list[np.ndarray]:
    dev = paint.device
    rings: dict[int, torch.Tensor] = {}
    boxes = []
    for i, (f, m) in enumerate(zip(idle, maps, strict=True)):
        ring = rings.get(id(f.ring))
        if ring is None:
            ring = rings[id(f.ring)] = torch.from_numpy(f.ring).to(dev)
        x0, y0, x1, y1 = f.box
        patch = (match_colour(paint[i:i + 1], real[i:i + 1], ring, colour, tolerance)[0]
                 if f.ring.any() else paint[i]).clamp(0, 255)
        warped = warp(patch, m, (x1 - x0, y1 - y0)).clamp(0, 255)
        if fine is not None:
            warped = _put_fine(warped[None], fine[i:i + 1], [m], paint.shape[-1],
                               fine_sigma)[0].clamp(0, 255)
        roi = torch.from_numpy(np.ascontiguousarray(f.frame[y0:y1, x0:x1])).to(dev)
        roi = roi.permute(2, 0, 1).float()
        if detail == "keep":
            warped = keep_detail(warped[None], roi[None], [resample.scale_of(m)])[0]
            warped = warped.clamp(0, 255)
        blend = torch.from_numpy(f.blend).to(dev).permute(2, 0, 1)
        boxes.append(torch.round(roi + (warped - roi) * blend).to(torch.uint8)
                     .permute(1, 2, 0).reshape(-1))
    # One copy back for the whole batch: a copy per frame waits on the device each time.
    flat = torch.cat(boxes).cpu().numpy()
    out, at = [], 0
    for f in idle:
        x0, y0, x1, y1 = f.box
        n = (y1 - y0) * (x1 - x0) * 3
        out.append(_paste(f, flat[at:at + n].reshape(y1 - y0, x1 - x0, 3)))
        at += n
    return out
