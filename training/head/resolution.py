"""The size the generator paints follows the footage.

The mouth region (a fixed square of the aligned crop) covers some number of pixels of the
person's footage: about 100 in GRID's 360x288 clips, 250 or more for a creator filmed
close at 1080p. A model that paints fewer pixels than the region covers on screen (the
bundle's idle footage: the source, reduced to at most the preset's ``output_max_side``)
is enlarged and cannot be sharp: interpolation makes no detail. Enrolment measures the
region's size on screen and picks the model's working size so the painted region is
enlarged by at most ``max_upscale``, within what the preset allows (``max_size``: what one
session renders in real time on the preset's machine) and what the crops hold.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.errors import TwincastError
from avatar.models.head import HeadConfig

log = logging.getLogger(__name__)

STEP = 16
"""Model sizes are multiples of this: the generator halves its input four times."""


@dataclass
class Resolution:
    """The measured mouth region and the size chosen for it."""

    region_screen_px: float
    """Median side of the mouth region in the output's pixels (nan when no face was
    measured)."""
    crop_px: int
    """Side of the mouth region in the aligned crop: the most detail training can see."""
    size: int
    """The model's working size."""

    @property
    def upscale(self) -> float:
        """Screen pixels per model pixel at the footage's own scale."""
        return self.region_screen_px / self.size

    def to_dict(self) -> dict:
        return {"region_screen_px": round(self.region_screen_px, 1), "crop_px": self.crop_px,
                "size": self.size, "upscale": round(self.upscale, 3)}


def measure(features_dir: Path, region_side: float, output_max_side: int = 0
            ) -> tuple[float, int]:
    """(median side of the mouth region on screen, its side in crop pixels) over the
    enrolment cache's frames with one face; on screen is in source pixels reduced as the
    bundle's idle footage is (to at most ``output_max_side``; 0: never reduced)."""
    manifest_path = features_dir / "manifest.json"
    if not manifest_path.exists():
        raise TwincastError(f"{features_dir}: no enrolment cache here (manifest.json is "
                            "missing); run 'twincast enrol' first")
    sides: list[np.ndarray] = []
    crop_size = 0
    for c in json.loads(manifest_path.read_text())["clips"]:
        d = features_dir / c["dir"]
        meta = json.loads((d / "meta.json").read_text())
        crop_size = int(meta["crop_size"])
        longest = max(int(meta.get("width", 0)), int(meta.get("height", 0)))
        shown = min(1.0, output_max_side / longest) if output_max_side and longest else 1.0
        with np.load(d / "frames.npz") as z:
            one = z["n_faces"] == 1
            m = z["crop_affine"][one].astype(np.float64)
        # Crop pixels per source pixel, per frame: the affine's linear scale.
        scale = np.sqrt(np.abs(m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]))
        scale = scale[scale > 0]
        sides.append(region_side * crop_size / scale * shown)
    all_sides = np.concatenate(sides) if sides else np.zeros(0)
    median = float(np.median(all_sides)) if len(all_sides) else float("nan")
    return median, int(round(region_side * crop_size))


def choose(region_screen_px: float, crop_px: int, base: int, max_size: int,
           max_upscale: float) -> int:
    """The working size: ``base`` (the preset's) unless the region is enlarged by more than
    ``max_upscale`` at it; then the smallest multiple of ``STEP`` that is not, capped by
    ``max_size`` and by the crop's own pixels (more would only interpolate the crop)."""
    if max_size <= base or not math.isfinite(region_screen_px):
        return base
    want = STEP * math.ceil(region_screen_px / max_upscale / STEP)
    cap = min(max_size, STEP * (crop_px // STEP))
    return int(max(base, min(want, cap)))


def resolve(features_dir: Path, model: HeadConfig, max_size: int, max_upscale: float,
            output_max_side: int = 0) -> tuple[HeadConfig, Resolution]:
    """``model`` at the size chosen for this footage, and the figures."""
    src, crop_px = measure(features_dir, model.region[2], output_max_side)
    size = choose(src, crop_px, model.size, max_size, max_upscale)
    res = Resolution(src, crop_px, size)
    if size != model.size:
        log.info("the mouth region spans %.0f pixels on screen: the head works at %d px "
                 "(enlarged %.2fx on screen; the preset's %d px would be %.2fx)", src, size,
                 res.upscale, model.size, src / model.size)
    return dataclasses.replace(model, size=size), res
