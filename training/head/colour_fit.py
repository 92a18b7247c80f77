"""The paint's colour cast, measured on the enrolment's own frames at export.

The colour match (``avatar.colour``) corrects the paint where it fades into the frame,
on the skin around the mouth. A cast of the paint itself inside, on the lips and in the
mouth, is out of its reach: on the demo sample the generator painted the mouth's mean
colour about (L +0.6, a -1.3, b -0.5) CIELAB units off the real one, on its training
frames and on held-out frames alike; with it taken off, delta E on two held-out samples
(the photoreal issue's colour figure) fell from 2.66 to 1.98.

So the bundle measures it: the generator re-paints evenly spaced frames of the enrolment
(their own audio, the bundle's reference, regions cut from the source footage as the
renderer cuts them), the paint is colour-matched as rendering does, and the mean CIELAB
difference of the painted interior from the real one is the cast. Rendering adds the RGB
shift that takes it off (``avatar.avatar.Avatar.cast``) over the interior only.

The cast changes from frame to frame with what was painted and the light around it, so the
same frames also fit a per-frame linear model of the shift (``avatar.paint_cast``), kept
where it beats the one shift on frames it was not fitted on. On the demo sample's
enrolment that was delta E 2.13 (one shift) against 0.82 on the other half of its frames,
and on two held-out samples ``eval head`` gave 2.06 -> 0.96; on GRID (a `cpu` bundle,
grid_s1/eval) 1.92 -> 1.11.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avatar.audio import mel_windows
from avatar.colour import PAINTED, TOLERANCE, match_colour, rgb_shift, to_lab
from avatar.models.head import HeadConfig, HeadGenerator, blank_lower
from avatar.paint_cast import LinearCast, feature_weights, features
from training.progress import bar

log = logging.getLogger(__name__)

MAX_FRAMES = 600
"""Frames re-painted: the cast's standard error is then about 0.1 CIELAB units in L and
0.03 in a and b (per-frame spread 2.4 and 0.6 on the demo sample), for a few seconds of
generator time."""
MIN_FRAMES = 25
"""Below this the measurement is too noisy to correct by: the bundle goes without."""


@dataclass(frozen=True)
class ColourFit:
    lab_cast: np.ndarray
    """(3,) mean CIELAB difference, paint minus real, over the painted interior."""
    rgb_shift: np.ndarray
    """(3,) levels that take the cast off the interior's mean colour."""
    frames: int
    delta_e_before: float
    """Mean per-frame delta E of the interior's mean colour, before the correction."""
    delta_e_after: float
    """The same with the cast taken off (on the frames it was measured on)."""
    linear: LinearCast | None = None
    """The per-frame model (``avatar.paint_cast``), where it beat the one shift on frames
    it was not fitted on; None: rendering adds ``rgb_shift``."""
    held_out: dict = field(default_factory=dict)
    """Mean delta E on each half of the frames with the correction fitted on the other
    half: ``constant`` (one shift) and ``linear`` (the per-frame model)."""
    ring_tolerance: float = TOLERANCE
    """The colour match's ``tolerance`` the cast was measured after (``avatar.colour``):
    rendering uses the same."""

    def to_dict(self) -> dict:
        out = {"rgb_shift": [round(float(v), 3) for v in self.rgb_shift],
               "lab_cast": [round(float(v), 3) for v in self.lab_cast],
               "frames": self.frames, "delta_e_before": round(self.delta_e_before, 3),
               "delta_e_after": round(self.delta_e_after, 3),
               "ring_tolerance": self.ring_tolerance}
        if self.held_out:
            out["delta_e_held_out"] = {k: round(v, 3) for k, v in self.held_out.items()}
        if self.linear is not None:
            out["linear"] = self.linear.to_dict()
        return out


def measure_cast(painted: np.ndarray, real: np.ndarray, ring: np.ndarray,
                 region_mask: np.ndarray, colour: str = "field",
                 tolerance: float = TOLERANCE) -> ColourFit | None:
    """``painted`` and ``real`` (N, S, S, 3) uint8 regions of the same frames; ``ring`` and
    ``region_mask`` as rendering uses them (``avatar.avatar.region_geometry``). None when
    too few frames or no interior."""
    inner = region_mask >= PAINTED
    if len(painted) < MIN_FRAMES or inner.sum() < 16:
        return None
    diffs, means, matched, targets = [], [], [], []
    for p, r in zip(painted, real, strict=True):
        r = r.astype(np.float32)
        m = match_colour(p.astype(np.float32), r, ring, colour, tolerance)
        matched.append(m)
        m = np.clip(m, 0, 255)
        diffs.append(to_lab(m)[inner].mean(0) - to_lab(r)[inner].mean(0))
        means.append(r[inner].mean(0))
        targets.append(r[inner].mean(0) - m[inner].mean(0))
    d = np.array(diffs)
    cast = d.mean(0)
    fit = ColourFit(lab_cast=cast, rgb_shift=rgb_shift(cast, np.mean(means, 0)),
                    frames=len(d), delta_e_before=float(np.linalg.norm(d, axis=1).mean()),
                    delta_e_after=float(np.linalg.norm(d - cast, axis=1).mean()),
                    ring_tolerance=tolerance)
    return _with_linear(fit, painted, real, ring, region_mask, matched, np.array(targets))


def _with_linear(fit: ColourFit, painted: np.ndarray, real: np.ndarray, ring: np.ndarray,
                 region_mask: np.ndarray, matched: list[np.ndarray], targets: np.ndarray
                 ) -> ColourFit:
    """``fit`` with the per-frame model where it beats the one shift. Judged on halves of
    the frames in their order (the frames are spread over the enrolment's clips in order,
    so each half holds other clips than the one it is judged against): each correction is
    fitted on one half and scored on the other, both ways."""
    inner_w, ring_w = feature_weights(region_mask, ring)
    feats = features(torch.from_numpy(painted).permute(0, 3, 1, 2).float(),
                     torch.from_numpy(real).permute(0, 3, 1, 2).float(),
                     torch.from_numpy(inner_w), torch.from_numpy(ring_w)).numpy()
    inner = region_mask >= PAINTED
    real_lab = [to_lab(r.astype(np.float32))[inner].mean(0) for r in real]

    def delta_e(idx: np.ndarray, shifts: np.ndarray) -> float:
        return float(np.mean([np.linalg.norm(
            to_lab(np.clip(matched[i][inner] + s, 0, 255)[None])[0].mean(0) - real_lab[i])
            for i, s in zip(idx, shifts, strict=True)]))

    half = len(feats) // 2
    folds = [(np.arange(half), np.arange(half, len(feats))),
             (np.arange(half, len(feats)), np.arange(half))]
    scores: dict[str, list[float]] = {"constant": [], "linear": []}
    for train, test in folds:
        # The one shift at its best: the mean RGB difference (``rgb_shift``'s round trip
        # through CIELAB adds up to 0.2 units of its own).
        shift = targets[train].mean(0)
        scores["constant"].append(delta_e(test, np.repeat(shift[None], len(test), 0)))
        scores["linear"].append(delta_e(test, fit_linear(feats[train],
                                                         targets[train]).shift(feats[test])))
    held_out = {k: float(np.mean(v)) for k, v in scores.items()}
    keep = held_out["linear"] < held_out["constant"] - LINEAR_GAIN
    log.info("paint cast on frames it was not fitted on: delta E %.2f with one shift, %.2f "
             "per frame (%s)", held_out["constant"], held_out["linear"],
             "kept" if keep else "not worth it: one shift")
    return dataclasses.replace(fit, held_out=held_out,
                               linear=fit_linear(feats, targets) if keep else None)


LINEAR_GAIN = 0.05
"""CIELAB units the per-frame model must gain over the one shift on unseen frames."""
RIDGE = 1e-2
"""Ridge weight on the standardised features, per frame: keeps the model from leaning on
a feature that hardly varies over the enrolment."""


def fit_linear(feats: np.ndarray, targets: np.ndarray) -> LinearCast:
    """Least squares (ridge) of the RGB shift on the features: (N, 6), (N, 3)."""
    mean = feats.mean(0)
    scale = feats.std(0) + 1e-3
    x = (feats - mean) / scale
    bias = targets.mean(0)
    a = x.T @ x + RIDGE * len(x) * np.eye(x.shape[1])
    w = np.linalg.solve(a, x.T @ (targets - bias))
    return LinearCast(mean=mean, weights=w / scale[:, None], bias=bias)


def mel_for(features_dir: Path, keys: list[tuple[int, int]], mel_frames: int
            ) -> np.ndarray:
    """Raw log-mel windows (N, bins, frames) of the frames ``keys`` ((clip index, frame))
    name in the enrolment cache, as rendering makes them from the audio."""
    manifest = json.loads((features_dir / "manifest.json").read_text())
    fps = int(manifest["fps"])
    windows: dict[int, np.ndarray] = {}
    out = []
    for ci, i in keys:
        if ci not in windows:
            c = manifest["clips"][ci]
            with np.load(features_dir / c["dir"] / "audio.npz") as z:
                mel = z["mel16"].astype(np.float32)
            windows[ci] = mel_windows(mel, int(c["frames"]), fps, mel_frames)
        out.append(windows[ci][i])
    return np.stack(out)


@torch.no_grad()
def paint_regions(gen: HeadGenerator, reference: np.ndarray, regions: np.ndarray,
                  mels: np.ndarray, mel_stats: tuple[float, float], what: str = "painting",
                  batch: int = 32) -> np.ndarray:
    """Re-paint ``regions`` (N, S, S, 3) uint8 with their raw log-mel windows ``mels`` and
    the bundle's ``reference`` (S, S, 3) uint8, as rendering would: (N, S, S, 3) uint8."""
    dev = next(gen.parameters()).device
    was_training = gen.training
    gen.eval()
    ref = torch.from_numpy(reference).permute(2, 0, 1).float().div(255).to(dev)
    painted = []
    with bar(len(regions), what, "frame") as pb:
        for a in range(0, len(regions), batch):
            reg = torch.from_numpy(regions[a:a + batch]).to(dev).permute(0, 3, 1, 2) \
                .float().div(255)
            mel = (torch.from_numpy(mels[a:a + batch]).float() - mel_stats[0]) / mel_stats[1]
            out = gen.generate(ref.unsqueeze(0).expand(len(reg), -1, -1, -1),
                               blank_lower(reg, gen.cfg.mask_top), mel.unsqueeze(1).to(dev))
            painted.append((out.float().clamp(0, 1) * 255).byte().permute(0, 2, 3, 1)
                           .cpu().numpy())
            pb.update(len(reg))
    gen.train(was_training)
    return np.concatenate(painted) if painted else regions[:0].copy()


def fit_colour(painted: np.ndarray, regions: np.ndarray, head: HeadConfig,
               crop_mask: np.ndarray, crop_size: int) -> ColourFit | None:
    """Measure the cast of ``painted`` (the paint as rendering makes it, refined where the
    bundle has a refiner) against the real ``regions``, both (N, S, S, 3) uint8;
    ``crop_mask``/``crop_size``: the bundle's mask.png and crop size."""
    from avatar.avatar import region_geometry

    _, region_mask, ring = region_geometry(crop_mask, crop_size, head)
    fit = measure_cast(painted, regions, ring, region_mask)
    if fit is not None:
        log.info("colour cast of the paint on %d enrolment frames: L %+.2f a %+.2f b %+.2f "
                 "(delta E %.2f -> %.2f with it taken off)", fit.frames, *fit.lab_cast,
                 fit.delta_e_before, fit.delta_e_after)
    return fit
