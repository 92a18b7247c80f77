"""The aligned crop's size follows the footage.

A 256 px crop holds a 360p face at better than 1:1, but a creator filmed at 1080p whose
face is 450 px wide would lose two thirds of its pixels to it, and no model trained on
such crops can paint a sharp mouth back at that size. Before the features run, a few
frames of the footage are looked at and the crop is made large enough that the face is
shrunk by at most ``FaceConfig.crop_shrink`` (within the config's bounds).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np

from avatar import resample
from training.config import FeaturesConfig
from training.ingest import ClipInfo, iter_frames

log = logging.getLogger(__name__)

PROBE_CLIPS = 6
PROBE_FRAMES = 3
"""Frames looked at per clip (spread over it), in up to ``PROBE_CLIPS`` clips."""
STEP = 32
"""Crop sides are multiples of this (the video encoder and the model's levels like it)."""


def natural_side(landmarks: np.ndarray) -> float:
    """The crop side at which the aligned crop is 1:1 with the source pixels of this face
    (``landmarks``: face-mesh points in source pixels)."""
    from training import face as F

    return 256.0 / max(resample.scale_of(F.crop_transform(landmarks, 256)), 1e-9)


def choose(natural: float, cfg: FeaturesConfig) -> int:
    """The crop side for faces of ``natural`` side (see ``natural_side``)."""
    face = cfg.face
    if face.max_crop_size <= face.crop_size or not math.isfinite(natural):
        return face.crop_size
    want = STEP * math.ceil(natural / face.crop_shrink / STEP)
    return int(min(max(want, face.crop_size), face.max_crop_size))


def measure(infos: Sequence[ClipInfo], cfg: FeaturesConfig) -> float:
    """Median natural crop side over a few frames of the footage (nan when no face)."""
    from avatar.quiet import native_stderr_silenced
    from training import face as F

    sides: list[float] = []
    with native_stderr_silenced():
        tracker = F.FaceTracker(cfg.face)
    try:
        for info in list(infos)[:PROBE_CLIPS]:
            for k in range(PROBE_FRAMES):
                n = int((k + 0.5) / PROBE_FRAMES * info.n_frames)
                for _, rgb in iter_frames(info, cfg.fps, n, n + 1, cfg.face.analysis_max_side):
                    obs = tracker(rgb, (info.width, info.height))
                    if obs.landmarks is not None and obs.n_faces == 1:
                        sides.append(natural_side(obs.landmarks))
    finally:
        tracker.close()
    return float(np.median(sides)) if sides else float("nan")


def sized(infos: Sequence[ClipInfo], cfg: FeaturesConfig) -> FeaturesConfig:
    """``cfg`` with the crop side chosen for this footage."""
    if cfg.face.max_crop_size <= cfg.face.crop_size or not infos:
        return cfg
    natural = measure(infos, cfg)
    side = choose(natural, cfg)
    if side != cfg.face.crop_size:
        log.info("faces in this footage fill a %.0f px crop at 1:1: crops are %d px (not %d)",
                 natural, side, cfg.face.crop_size)
    return dataclasses.replace(cfg, face=dataclasses.replace(cfg.face, crop_size=side))
