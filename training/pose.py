"""Body pose: MediaPipe pose, 33 landmarks per frame."""

from __future__ import annotations

import os

import numpy as np

from training.config import PoseConfig

N_POSE = 33


class BodyTracker:
    def __init__(self, cfg: PoseConfig):
        os.environ.setdefault("GLOG_minloglevel", "2")
        import mediapipe as mp

        self._pose = mp.solutions.pose.Pose(static_image_mode=False,
                                            model_complexity=cfg.model_complexity,
                                            smooth_landmarks=True, enable_segmentation=False)

    def close(self) -> None:
        self._pose.close()

    def reset(self) -> None:
        """Forget what it tracked (see ``FaceTracker.reset``)."""
        self._pose.reset()

    def __call__(self, rgb: np.ndarray, scale_to: tuple[int, int]) -> np.ndarray:
        """(33, 4): x, y, z in source pixels and visibility; NaN when no body is found."""
        result = self._pose.process(rgb)
        if result.pose_landmarks is None:
            return np.full((N_POSE, 4), np.nan, np.float32)
        w, h = scale_to
        return np.array([(p.x * w, p.y * h, p.z * w, p.visibility)
                         for p in result.pose_landmarks.landmark], np.float32)
