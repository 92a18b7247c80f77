"""Image fidelity of the painted lower face, at the footage's own scale (``eval head``).

Measured in the reconstruction setting: held-out frames re-rendered with their own audio,
so the generated frame and the real one show the same moment and can be compared pixel
for pixel. Lip sync is measured elsewhere without that leak (``evaluate_head``); texture,
colour, seam and stillness do not depend on it. Every figure is a ratio or a difference
against the real frames, so a sharper or noisier camera does not move the bar:

- sharpness: variance of the Laplacian of the painted area, generated over real (a soft
  or upscaled mouth loses its high frequencies first); also with another clip's audio
  (``sharpness_ratio_other_audio``), where the painted mouth differs from the frame's own
  as it does live, so the frame's detail (``avatar.detail``) only helps where it should;
- PSNR and SSIM of the painted area;
- colour: CIELAB distance (delta E 1976) between the mean colours of the generated and
  the real painted area, per frame; also the mean per-pixel distance, which includes
  texture;
- seam: gradient magnitude along the blend's feathered edge, generated over real (a
  visible box or a colour step raises it);
- stillness: frame-to-frame change of the painted area in the real clip's silent
  stretches, generated over real (a shimmering mouth in silence raises it);
- upscale: screen pixels per generator pixel, the factor the painted square is enlarged
  by (above 1 the mouth is interpolated up and cannot be sharp).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from avatar.colour import PAINTED, to_lab

EDGE = (0.1, 0.9)
"""Blend weights of the feathered edge, where a seam would show."""


@dataclass
class Area:
    """Where the generator paints in one frame: a box and the blend weight over it."""

    box: tuple[int, int, int, int]
    blend: np.ndarray
    """(h, w) float weights in [0, 1]."""
    upscale: float
    """Screen pixels per generator pixel."""


@dataclass
class Tally:
    """Sums over frames, turned into figures by ``figures``."""

    lap_gen: list[float] = field(default_factory=list)
    lap_real: list[float] = field(default_factory=list)
    sq_err: float = 0.0
    n_px: int = 0
    ssim: list[float] = field(default_factory=list)
    de_mean: list[float] = field(default_factory=list)
    de_pixel: list[float] = field(default_factory=list)
    edge_gen: list[float] = field(default_factory=list)
    edge_real: list[float] = field(default_factory=list)
    still_gen: list[float] = field(default_factory=list)
    still_real: list[float] = field(default_factory=list)
    upscale: list[float] = field(default_factory=list)
    frames: int = 0
    lap_gen_other: list[float] = field(default_factory=list)
    lap_real_other: list[float] = field(default_factory=list)

    def add_clip(self, real: list[np.ndarray], gen: list[np.ndarray], areas: list[Area],
                 silent: np.ndarray) -> None:
        prev: tuple[np.ndarray, np.ndarray] | None = None
        for i, (r, g, a) in enumerate(zip(real, gen, areas, strict=True)):
            x0, y0, x1, y1 = a.box
            rr = r[y0:y1, x0:x1].astype(np.float32)
            gg = g[y0:y1, x0:x1].astype(np.float32)
            inner = a.blend >= PAINTED
            if inner.sum() < 16:
                prev = None
                continue
            self.frames += 1
            self.upscale.append(a.upscale)
            r_grey, g_grey = grey(rr), grey(gg)
            self.lap_real.append(laplacian_var(r_grey, inner))
            self.lap_gen.append(laplacian_var(g_grey, inner))
            diff = (rr - gg)[inner]
            self.sq_err += float((diff ** 2).sum())
            self.n_px += int(diff.size)
            self.ssim.append(_ssim(r_grey, g_grey, inner))
            lab_r, lab_g = to_lab(rr), to_lab(gg)
            self.de_mean.append(float(np.linalg.norm(lab_r[inner].mean(0)
                                                     - lab_g[inner].mean(0))))
            self.de_pixel.append(float(np.linalg.norm(lab_r[inner] - lab_g[inner],
                                                      axis=1).mean()))
            edge = (a.blend > EDGE[0]) & (a.blend < EDGE[1])
            if edge.sum() >= 16:
                self.edge_real.append(float(_gradient(r_grey)[edge].mean()))
                self.edge_gen.append(float(_gradient(g_grey)[edge].mean()))
            if prev is not None and silent[i] and silent[i - 1] \
                    and prev[0].shape == r_grey.shape:
                self.still_real.append(float(np.abs(r_grey - prev[0])[inner].mean()))
                self.still_gen.append(float(np.abs(g_grey - prev[1])[inner].mean()))
            prev = (r_grey, g_grey)

    def add_other_audio(self, real: list[np.ndarray], gen: Iterable[np.ndarray],
                        areas: list[Area]) -> Iterator[np.ndarray]:
        """Sharpness of frames driven by *another* clip's audio (the leakage control's),
        passing them on: there the mouth differs from the frame it is painted into, as it
        does live, so detail the frame lends (``avatar.detail``) cannot stand in for the
        mouth's own."""
        for r, g, a in zip(real, gen, areas, strict=True):
            x0, y0, x1, y1 = a.box
            inner = a.blend >= PAINTED
            if inner.sum() >= 16:
                self.lap_real_other.append(laplacian_var(
                    grey(r[y0:y1, x0:x1].astype(np.float32)), inner))
                self.lap_gen_other.append(laplacian_var(
                    grey(g[y0:y1, x0:x1].astype(np.float32)), inner))
            yield g

    def figures(self) -> dict:
        def ratio(a: list[float], b: list[float]) -> float | None:
            return round(float(np.mean(a) / np.mean(b)), 4) if a and np.mean(b) > 0 else None

        mse = self.sq_err / max(self.n_px, 1)
        return {
            "frames": self.frames,
            "sharpness_ratio": ratio(self.lap_gen, self.lap_real),
            "sharpness_ratio_other_audio": ratio(self.lap_gen_other, self.lap_real_other),
            "laplacian_var_real": round(float(np.mean(self.lap_real)), 2)
            if self.lap_real else None,
            "psnr_db": round(float(10 * np.log10(255.0 ** 2 / mse)), 3) if mse > 0 else None,
            "ssim": round(float(np.mean(self.ssim)), 4) if self.ssim else None,
            "colour_delta_e": round(float(np.mean(self.de_mean)), 3) if self.de_mean else None,
            "pixel_delta_e": round(float(np.mean(self.de_pixel)), 3)
            if self.de_pixel else None,
            "seam_ratio": ratio(self.edge_gen, self.edge_real),
            "silence_change_ratio": ratio(self.still_gen, self.still_real),
            "silent_pairs": len(self.still_real),
            "upscale": round(float(np.median(self.upscale)), 3) if self.upscale else None,
        }


def grey(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def laplacian_var(grey: np.ndarray, mask: np.ndarray) -> float:
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
    # Away from the mask's own border, where the painted area meets the untouched frame.
    inside = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return float(lap[inside].var()) if inside.sum() > 8 else 0.0


def _gradient(grey: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def _ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean structural similarity (Gaussian window, sigma 1.5) over the masked pixels."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (7, 7), 1.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                      * (var_a + var_b + c2))
    return float(s[mask].mean())
