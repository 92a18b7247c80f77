"""Per-frame face and pose features of one segment of a clip, in one decoding pass.

For each output frame: face mesh (raw and One-Euro smoothed), head pose, the aligned crop
(written to an H.264 stream), body pose, and the image measures of the quality report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar.video_io import VideoWriter
from training import face as F
from training.config import FeaturesConfig
from training.ingest import ClipInfo, iter_frames
from training.pose import N_POSE, BodyTracker
from training.smoothing import OneEuroFilter

log = logging.getLogger(__name__)

N_LANDMARKS = 478
MEASURE_SIZE = 256
"""Crop side the image measures (blur, exposure) are taken at."""
WARMUP_FRAMES = 12
"""Frames decoded before a segment's first frame so tracking and smoothing are settled."""


@dataclass
class Trackers:
    """The MediaPipe graphs a worker keeps for its whole life: building them anew for every
    segment leaks memory inside MediaPipe (about 7 MB per rebuild). They are reset at each
    segment instead, so a segment's features depend on that segment alone, not on which
    segments its worker (a process here, a Ray task on a cluster) happened to do before."""

    face: F.FaceTracker
    body: BodyTracker | None

    @classmethod
    def create(cls, cfg: FeaturesConfig) -> Trackers:
        return cls(F.FaceTracker(cfg.face), BodyTracker(cfg.pose) if cfg.pose.enabled else None)

    def close(self) -> None:
        self.face.close()
        if self.body is not None:
            self.body.close()

    def reset(self) -> None:
        self.face.reset()
        if self.body is not None:
            self.body.reset()


def process_segment(info: ClipInfo, start: int, stop: int, cfg: FeaturesConfig,
                    crops_path: Path, progress: Callable[[int], None] | None = None,
                    trackers: Trackers | None = None) -> dict[str, np.ndarray]:
    """Features of frames ``start <= n < stop``; writes the aligned crops to ``crops_path``."""
    stop = min(stop, info.n_frames)
    t = stop - start
    size = cfg.face.crop_size
    out = {
        "n_faces": np.zeros(t, np.uint8),
        "landmarks_raw": np.full((t, N_LANDMARKS, 3), np.nan, np.float32),
        "landmarks": np.full((t, N_LANDMARKS, 3), np.nan, np.float32),
        "crop_affine": np.zeros((t, 2, 3), np.float32),
        "head_rotation": np.tile(np.eye(3, dtype=np.float32), (t, 1, 1)),
        "head_translation": np.full((t, 3), np.nan, np.float32),
        "head_euler": np.full((t, 3), np.nan, np.float32),
        "pose": np.full((t, N_POSE, 4), np.nan, np.float32),
        "face_width_px": np.full(t, np.nan, np.float32),
        "blur": np.full(t, np.nan, np.float32),
        "brightness": np.full(t, np.nan, np.float32),
        "clipped_share": np.full(t, np.nan, np.float32),
    }
    smoother = OneEuroFilter(cfg.fps, cfg.face.smooth_min_cutoff, cfg.face.smooth_beta)
    own = trackers is None
    if trackers is None:
        trackers = Trackers.create(cfg)
    else:
        trackers.reset()
    src_size = (info.width, info.height)
    last_m: np.ndarray | None = None
    pending = 0  # frames before the first face, whose crop waits for a transform
    first = max(0, start - WARMUP_FRAMES)
    try:
        with VideoWriter(crops_path, cfg.fps, size, size) as writer:
            for n, rgb in iter_frames(info, cfg.fps, first, stop):
                # The mesh sees a reduced frame (it only costs time to give it more); the
                # crop is cut from the full frame, so a large face keeps its detail.
                obs = trackers.face(_downscale(rgb, cfg.face.analysis_max_side), src_size)
                if obs.landmarks is not None:
                    scale = F.interocular(obs.landmarks)
                    smooth = smoother(obs.landmarks, scale).astype(np.float32)
                else:
                    smoother.reset()
                    smooth = None
                if n < start:
                    continue
                i = n - start
                if progress is not None:
                    progress(1)
                out["n_faces"][i] = obs.n_faces
                if smooth is not None:
                    out["landmarks_raw"][i] = obs.landmarks
                    out["landmarks"][i] = smooth
                    last_m = F.crop_transform(smooth, size)
                    rot, trans = F.head_pose(smooth)
                    out["head_rotation"][i] = rot
                    out["head_translation"][i] = trans
                    out["head_euler"][i] = F.euler_degrees(rot)
                    out["face_width_px"][i] = np.linalg.norm(
                        smooth[F.FACE_LEFT, :2] - smooth[F.FACE_RIGHT, :2])
                if last_m is None:
                    pending += 1
                    continue
                while pending:  # frames before the first face get its crop box
                    out["crop_affine"][i - pending] = last_m
                    pending -= 1
                out["crop_affine"][i] = last_m
                crop = F.warp_crop(rgb, last_m, size)
                if writer.frames < i:
                    # Crops of faceless frames before the first face: repeat this one so the
                    # crop stream stays frame-aligned with the arrays.
                    for _ in range(i - writer.frames):
                        writer.write(crop)
                writer.write(crop)
                if smooth is not None:
                    _image_measures(crop, out, i)
                if trackers.body is not None:
                    out["pose"][i] = trackers.body(_downscale(rgb, cfg.pose.analysis_max_side),
                                                   src_size)
            blank = np.zeros((size, size, 3), np.uint8)
            while writer.frames < t:  # a clip with no face at all still gets a crop stream
                writer.write(blank)
    finally:
        if own:
            trackers.close()
    return out


def _downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    s = max_side / max(h, w)
    return cv2.resize(rgb, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)


def _image_measures(crop: np.ndarray, out: dict[str, np.ndarray], i: int) -> None:
    """Blur (variance of the Laplacian) and exposure of the face's central region."""
    if crop.shape[0] != MEASURE_SIZE:
        # Measured at one crop size whatever the crop's: the gates' thresholds are set there.
        crop = cv2.resize(crop, (MEASURE_SIZE, MEASURE_SIZE), interpolation=cv2.INTER_AREA)
    s = MEASURE_SIZE
    centre = crop[s // 4: 3 * s // 4, s // 4: 3 * s // 4]
    gray = cv2.cvtColor(centre, cv2.COLOR_RGB2GRAY)
    out["blur"][i] = cv2.Laplacian(gray, cv2.CV_32F).var()
    out["brightness"][i] = gray.mean()
    out["clipped_share"][i] = np.mean((gray <= 5) | (gray >= 250))
