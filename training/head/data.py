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

import cv2
import numpy as np

from avatar.audio import mel_windows
from avatar.decode import DecodeError, rgb_frames
from avatar.errors import TwincastError
from avatar.models.lips import LIP_POINTS
from training.audio_features import frame_hops
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
    lips: np.ndarray
    """(T, 40, 2) float32: lip landmarks in the aligned crop, as fractions of its side."""
    lip_train: np.ndarray
    """(T,) bool: frames the lip predictor may learn from; the rest (the tail of each clip)
    is held out to measure it and to calibrate its gain."""


LIP_HOLDOUT = 0.1
"""Share of the footage held out from the lip predictor's training: every tenth clip where
there are ten or more (whole sentences, so nothing of them is seen), else the last tenth of
each clip."""


def crop_lips(landmarks: np.ndarray, affines: np.ndarray, crop_size: int) -> np.ndarray:
    """(T, 478, 3) frame-pixel landmarks + (T, 2, 3) crop transforms -> (T, 40, 2) lip
    points in crop fractions. Raw (unsmoothed) landmarks: smoothing would blunt the fast
    lip movements the predictor must learn."""
    pts = landmarks[:, list(LIP_POINTS), :2].astype(np.float64)
    out = np.einsum("tij,tkj->tki", affines[:, :, :2], pts) + affines[:, None, :, 2]
    return (out / crop_size).astype(np.float32)


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
    raw: list[tuple] = []
    total = sum(c["frames"] for c in manifest["clips"])
    with bar(total, "reading cache", "frame") as pb:
        for c in manifest["clips"]:
            d = features_dir / c["dir"]
            try:
                meta = json.loads((d / "meta.json").read_text())
                with np.load(d / "frames.npz") as z:
                    n_faces = z["n_faces"]
                    lips = crop_lips(z["landmarks_raw"], z["crop_affine"],
                                     int(meta["crop_size"]))
                with np.load(d / "audio.npz") as z:
                    # A packed cache (training.head.pack) keeps the mel in float16.
                    mel, vad = z["mel16"].astype(np.float32), z["vad"]
            except (OSError, KeyError, ValueError) as e:
                raise TwincastError(f"{d}: enrolment cache is incomplete ({e}); re-run "
                                    "'twincast enrol'") from None
            t = meta["n_frames"]
            regions = np.zeros((t, size, size, 3), np.uint8)
            for seg in meta["crops"]:
                try:
                    for i, frame in enumerate(rgb_frames(d / seg["file"])):
                        n = seg["start"] + i
                        if n >= seg["stop"]:
                            break
                        regions[n] = cut_region(frame, size, region)
                        pb.update(1)
                except DecodeError as e:
                    raise TwincastError(f"{d / seg['file']}: cannot be decoded ({e}); re-run "
                                        "'twincast enrol'") from None
            windows = mel_windows(mel, t, fps, mel_frames)
            hops = frame_hops(t, fps, len(vad))
            usable = (n_faces == 1) & np.isfinite(lips).all(axis=(1, 2))
            n_clips = len(manifest["clips"])
            if n_clips >= round(1 / LIP_HOLDOUT):
                held = len(raw) % round(1 / LIP_HOLDOUT) == round(0.5 / LIP_HOLDOUT)
                lip_train = np.full(t, not held)
            else:
                lip_train = np.arange(t) < int(np.ceil(t * (1 - LIP_HOLDOUT)))
            raw.append((c["id"], regions, windows, vad[hops], usable,
                        np.nan_to_num(lips), lip_train))
    if mel_stats is None:
        allm = np.concatenate([r[2][::4].ravel() for r in raw])
        mel_stats = (float(allm.mean()), float(allm.std() + 1e-6))
    mean, std = mel_stats
    clips = [ClipData(cid, r, ((w - mean) / std).astype(np.float32), s, u, lp, lt)
             for cid, r, w, s, u, lp, lt in raw]
    return clips, mel_stats


def candidate_regions(features_dir: Path, size: int, region: tuple[float, float, float],
                      max_frames: int = 3000, keys: list[tuple[int, int]] | None = None
                      ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(N, S, S, 3) uint8 mouth regions of at most ``max_frames`` evenly spaced frames of
    the enrolment's footage with exactly one face, and each one's (clip, frame) key: what
    the texture bank chooses from. With ``keys``: those frames' regions, in that order.

    Cut from the source footage as the renderer cuts its frames' regions (the crop
    transform, bicubic), not from the cache's crops: those were encoded once more, and on
    GRID kept 63 % of the source regions' fine detail (variance of the Laplacian)."""
    from avatar import resample
    from avatar.errors import path_error
    from training.ingest import iter_frames, probe

    manifest = json.loads((features_dir / "manifest.json").read_text())
    fps = int(manifest["fps"])
    total = sum(c["frames"] for c in manifest["clips"])
    every = max(1, int(np.ceil(total / max_frames)))
    wanted = None if keys is None else set(keys)
    found: dict[tuple[int, int], np.ndarray] = {}
    k = 0
    with bar(total, "texture frames", "frame") as pb:
        for ci, c in enumerate(manifest["clips"]):
            if wanted is not None and not any(key[0] == ci for key in wanted):
                pb.update(c["frames"])
                continue
            d = features_dir / c["dir"]
            meta = json.loads((d / "meta.json").read_text())
            source = Path(meta["source"])
            if not source.exists():
                raise path_error(source, "the footage the mouth texture comes from is gone; "
                                 "put it back or re-run enrol")
            with np.load(d / "frames.npz") as z:
                one_face = z["n_faces"] == 1
                affines = z["crop_affine"].astype(np.float64)
            crop = int(meta["crop_size"])
            rx, ry, rs = (v * crop for v in region)
            reg_to_crop = np.array([[rs / size, 0, rx], [0, rs / size, ry], [0, 0, 1]])
            info = probe(source, meta["clip"], fps, 0.0)
            n = min(len(affines), int(c["frames"]))
            for i, rgb in iter_frames(info, fps, 0, n):
                take = (ci, i) in wanted if wanted is not None else \
                    k % every == 0 and bool(one_face[i])
                k += 1
                pb.update(1)
                if take:
                    to_frame = resample.invert(np.vstack([affines[i], [0, 0, 1]])) \
                        @ reg_to_crop
                    found[(ci, i)] = np.clip(resample.warp(
                        rgb, resample.invert(to_frame[:2]), (size, size)), 0, 255
                    ).astype(np.uint8)
    if not found:
        raise TwincastError(f"{features_dir}: no frame with one face to take mouth texture "
                            "from; re-run 'twincast enrol' on footage that shows the face")
    order = list(found) if keys is None else keys
    return np.stack([found[key] for key in order]), order


def lip_split(clips: list[ClipData], train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every usable frame of one side of the lip split: mels (N, bins, frames) and lip
    points (N, 40, 2)."""
    mels, lips = [], []
    for c in clips:
        keep = c.usable & (c.lip_train if train else ~c.lip_train)
        mels.append(c.mels[keep])
        lips.append(c.lips[keep])
    return np.concatenate(mels), np.concatenate(lips)


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
        self._sides: dict[bool, tuple[list[int], np.ndarray] | None] = {}
        weights = np.array([len(c.regions) for c in self.clips], float)
        self.p = weights / weights.sum()
        if not any((c.usable & c.lip_train).sum() > window for c in self.clips):
            raise TwincastError("the enrolment cache has too few frames with a face for the "
                                "lip predictor; record more footage")

    def _start(self, clip: ClipData, held_out: bool | None = None) -> int:
        """A window's first frame: all its frames usable and, where ``held_out`` is given,
        all on that side of the lip split."""
        ok = clip.usable if held_out is None else clip.usable & (clip.lip_train != held_out)
        for _ in range(20):
            s = int(self.rng.integers(0, len(clip.regions) - self.window + 1))
            if ok[s: s + self.window].all():
                return s
        if held_out is not None:  # a short side: search it all rather than give up
            runs = np.convolve(ok, np.ones(self.window), "valid") == self.window
            if runs.any():
                return int(self.rng.choice(np.flatnonzero(runs)))
        return self.window // 2  # rare: fall back to the clip's start

    def side(self, held_out: bool) -> tuple[list[int], np.ndarray] | None:
        """The clips with at least one whole window on one side of the lip split, and how
        often to draw each (by frames on that side); None where there is none."""
        if held_out in self._sides:
            return self._sides[held_out]
        w = self.window
        idx, weight = [], []
        for i, c in enumerate(self.clips):
            ok = c.usable & (c.lip_train != held_out)
            if len(ok) >= w and (np.convolve(ok, np.ones(w), "valid") == w).any():
                idx.append(i)
                weight.append(float(ok.sum()))
        found = None
        if idx:
            p = np.array(weight)
            found = idx, p / p.sum()
        self._sides[held_out] = found
        return found

    def lip_batch(self, n: int) -> dict[str, np.ndarray]:
        """n windows of the lip predictor's training frames: mels (n, W, bins, frames) and
        lips (n, W, 40, 2)."""
        w = self.window
        mels, lips = [], []
        for _ in range(200 * n):
            if len(mels) == n:
                break
            clip = self.clips[int(self.rng.choice(len(self.clips), p=self.p))]
            s = int(self.rng.integers(0, len(clip.regions) - w + 1))
            if (clip.usable[s: s + w] & clip.lip_train[s: s + w]).all():
                mels.append(clip.mels[s: s + w])
                lips.append(clip.lips[s: s + w])
        else:
            raise TwincastError("too few unbroken stretches of face to train the lip "
                                "predictor on; record more footage")
        return {"mels": np.stack(mels), "lips": np.stack(lips)}

    def batch(self, n: int, negatives: bool = False,
              held_out: bool | None = None) -> dict[str, np.ndarray]:
        """n windows: regions (n, W, S, S, 3), refs (n, W, S, S, 3), mels (n, W, bins,
        frames) for every frame, sync_mel (n, bins, frames) for the centre frame, label,
        lips (n, W, 40, 2) and whether the lip predictor may learn from them.

        ``held_out``: None draws from every frame; False only from the lip predictor's
        training side of the split, True only from its held-out side (where the sync
        expert is judged, ``training.head.expert_check``)."""
        w = self.window
        pool = None if held_out is None else self.side(held_out)
        if held_out is not None and pool is None:
            raise TwincastError("the enrolment cache has no unbroken stretch of face on one "
                                "side of its held-out split; record more footage")
        regions, refs, mels, sync_mel, labels, speech, lips, lip_train = ([] for _ in range(8))
        for _ in range(n):
            if pool is None:
                clip = self.clips[int(self.rng.choice(len(self.clips), p=self.p))]
            else:
                clip = self.clips[pool[0][int(self.rng.choice(len(pool[0]), p=pool[1]))]]
            s = self._start(clip, held_out)
            t = len(clip.regions)
            regions.append(clip.regions[s: s + w])
            ref_idx = self.rng.integers(0, t, size=w)
            refs.append(clip.regions[ref_idx])
            mels.append(clip.mels[s: s + w])
            speech.append(clip.speech[s: s + w])
            lips.append(clip.lips[s: s + w])
            lip_train.append(clip.lip_train[s: s + w])
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
                "speech": np.stack(speech), "lips": np.stack(lips),
                "lip_train": np.stack(lip_train)}
