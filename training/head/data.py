"""Training data for the talking head, read from the enrolment cache.

Each usable frame contributes its mouth region (a fixed square of the aligned crop, resized
to the model's size) and the log-mel window around it. Regions are kept in memory as uint8:
ten minutes of footage at 96 px is about 400 MB.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from avatar.audio import mel_windows
from avatar.errors import TwincastError
from training.progress import bar

log = logging.getLogger(__name__)


def region_box(crop_size: int, region: tuple[float, float, float]) -> tuple[int, int, int]:
    """(x0, y0, side) in pixels of the mouth region in a crop of ``crop_size`` pixels."""
    x0, y0, side = region
    return int(round(x0 * crop_size)), int(round(y0 * crop_size)), int(round(side * crop_size))


def cut_region(crop: np.ndarray, size: int, region: tuple[float, float, float]) -> np.ndarray:
    x0, y0, side = region_box(crop.shape[0], region)
    return cv2.resize(crop[y0:y0 + side, x0:x0 + side], (size, size),
                      interpolation=cv2.INTER_AREA)


@dataclass
class ClipData:
    clip: str
    regions: np.ndarray
    """(T, S, S, 3) uint8."""
    mels: np.ndarray
    """(T, bins, frames) float32, normalised."""
    speech: np.ndarray
    """(T,) bool: the voice activity detector heard speech in this frame."""
    usable: np.ndarray
    """(T,) bool: exactly one face."""


def load_cache(features_dir: Path, size: int, mel_frames: int,
               region: tuple[float, float, float],
               mel_stats: tuple[float, float] | None = None
               ) -> tuple[list[ClipData], tuple[float, float]]:
    """Read every clip of an enrolment cache; returns the clips and the mel mean/std used
    to normalise them (computed here unless given)."""
    manifest_path = features_dir / "manifest.json"
    if not manifest_path.exists():
        raise TwincastError(f"{features_dir}: no enrolment cache here (manifest.json is "
                            "missing); run 'twincast enrol' first")
    manifest = json.loads(manifest_path.read_text())
    fps = int(manifest["fps"])
    raw: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    total = sum(c["frames"] for c in manifest["clips"])
    with bar(total, "reading cache", "frame") as pb:
        for c in manifest["clips"]:
            d = features_dir / c["dir"]
            try:
                meta = json.loads((d / "meta.json").read_text())
                with np.load(d / "frames.npz") as z:
                    n_faces = z["n_faces"]
                with np.load(d / "audio.npz") as z:
                    mel, vad = z["mel16"], z["vad"]
            except (OSError, KeyError, ValueError) as e:
                raise TwincastError(f"{d}: enrolment cache is incomplete ({e}); re-run "
                                    "'twincast enrol'") from None
            t = meta["n_frames"]
            regions = np.zeros((t, size, size, 3), np.uint8)
            for seg in meta["crops"]:
                with av.open(str(d / seg["file"])) as container:
                    for i, frame in enumerate(container.decode(video=0)):
                        n = seg["start"] + i
                        if n >= seg["stop"]:
                            break
                        regions[n] = cut_region(frame.to_ndarray(format="rgb24"), size,
                                                region)
                        pb.update(1)
            windows = mel_windows(mel, t, fps, mel_frames)
            hops = np.clip(np.round((np.arange(t) + 0.5) / fps * 100).astype(int), 0,
                           len(vad) - 1)
            raw.append((c["id"], regions, windows, vad[hops], n_faces == 1))
    if mel_stats is None:
        allm = np.concatenate([w[::4].ravel() for _, _, w, _, _ in raw])
        mel_stats = (float(allm.mean()), float(allm.std() + 1e-6))
    mean, std = mel_stats
    clips = [ClipData(cid, r, ((w - mean) / std).astype(np.float32), s, u)
             for cid, r, w, s, u in raw]
    return clips, mel_stats


class Sampler:
    """Draws training examples: windows of consecutive frames with their audio, a reference
    frame from elsewhere in the same clip, and shifted-audio negatives for the expert."""

    def __init__(self, clips: list[ClipData], window: int, seed: int = 0):
        self.clips = [c for c in clips if c.usable.sum() >= window + 2]
        if not self.clips:
            raise TwincastError("the enrolment cache has no clip with enough usable frames "
                                "for the talking head")
        self.window = window
        self.rng = np.random.default_rng(seed)
        weights = np.array([len(c.regions) for c in self.clips], float)
        self.p = weights / weights.sum()

    def _start(self, clip: ClipData) -> int:
        half = self.window // 2
        for _ in range(20):
            s = int(self.rng.integers(0, len(clip.regions) - self.window + 1))
            if clip.usable[s: s + self.window].all():
                return s
        return half  # rare: fall back to the clip's start

    def batch(self, n: int, negatives: bool = False) -> dict[str, np.ndarray]:
        """n windows: regions (n, W, S, S, 3), refs (n, W, S, S, 3), mels (n, W, bins,
        frames) for every frame, sync_mel (n, bins, frames) for the centre frame, label."""
        w = self.window
        regions, refs, mels, sync_mel, labels, speech = [], [], [], [], [], []
        for _ in range(n):
            clip = self.clips[int(self.rng.choice(len(self.clips), p=self.p))]
            s = self._start(clip)
            t = len(clip.regions)
            regions.append(clip.regions[s: s + w])
            ref_idx = self.rng.integers(0, t, size=w)
            refs.append(clip.regions[ref_idx])
            mels.append(clip.mels[s: s + w])
            speech.append(clip.speech[s: s + w])
            centre = s + w // 2
            label = 1.0
            if negatives and self.rng.random() < 0.5:
                # A real negative: this clip's audio from at least 5 frames away.
                offsets = np.r_[np.arange(-t, -4), np.arange(5, t)]
                offsets = offsets[(centre + offsets >= 0) & (centre + offsets < t)]
                if len(offsets):
                    centre = centre + int(self.rng.choice(offsets))
                    label = 0.0
            sync_mel.append(clip.mels[centre])
            labels.append(label)
        return {"regions": np.stack(regions), "refs": np.stack(refs), "mels": np.stack(mels),
                "sync_mel": np.stack(sync_mel), "label": np.array(labels, np.float32),
                "speech": np.stack(speech)}
