"""Face: MediaPipe face mesh per frame, head pose, and the aligned face crop.

MediaPipe is imported inside the tracker, not at module import, so that nothing heavy loads
until a worker needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from avatar import resample
from training.config import FaceConfig

# Face-mesh landmark indices used here (MediaPipe's 478-point topology).
NOSE_TIP = 1
CHIN = 152
FOREHEAD = 10
RIGHT_EYE_OUTER, RIGHT_EYE_INNER = 33, 133
LEFT_EYE_INNER, LEFT_EYE_OUTER = 362, 263
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
FACE_LEFT, FACE_RIGHT = 234, 454
# Points that barely move when the person speaks: used for jitter and the crop.
STABLE_POINTS = (168, 6, 197, RIGHT_EYE_INNER, LEFT_EYE_INNER)
# The face oval, in order, and the part of it that bounds the lower face.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21,
             54, 103, 67, 109)
LOWER_OVAL = (93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397,
              288, 361, 323)

# Where the crop puts the eye centres and the nose tip, as fractions of the crop side. Only
# points that do not move when the person speaks: a crop fitted to the mouth corners would
# shift and scale with every syllable, and the crop box would then carry the mouth's motion
# into anything driven over the footage. The lower face and chin fit below (mouth ~0.70).
CROP_TEMPLATE = np.array([
    [0.365, 0.40],  # right eye centre (image left)
    [0.635, 0.40],  # left eye centre
    [0.50, 0.56],   # nose tip
], dtype=np.float64)


@dataclass
class FaceObservation:
    n_faces: int
    landmarks: np.ndarray | None
    """(478, 3) in source-frame pixels (z in the same pixel scale), or None."""


class FaceTracker:
    """MediaPipe face mesh in tracking mode; one instance per clip segment."""

    def __init__(self, cfg: FaceConfig):
        os.environ.setdefault("GLOG_minloglevel", "2")
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=cfg.max_faces, refine_landmarks=True,
            min_detection_confidence=cfg.min_detection_confidence,
            min_tracking_confidence=cfg.min_tracking_confidence)

    @classmethod
    def quiet(cls, cfg: FaceConfig, first: np.ndarray) -> FaceTracker:
        """A tracker opened, and run once on ``first``, with MediaPipe's start-up chatter
        on the native stderr silenced (its first call logs)."""
        from avatar.quiet import native_stderr_silenced

        with native_stderr_silenced():
            tracker = cls(cfg)
            tracker(first, (first.shape[1], first.shape[0]))
        return tracker

    def close(self) -> None:
        self._mesh.close()

    def reset(self) -> None:
        """Forget what it tracked: the next frame is found from scratch, as by a new
        tracker (restarting the graph costs ~30 ms and 0.15 MB, a new one ~7 MB)."""
        self._mesh.reset()

    def __call__(self, rgb: np.ndarray, scale_to: tuple[int, int]) -> FaceObservation:
        """Track faces in ``rgb``; landmarks come back in a frame of size ``scale_to``
        (width, height), the source size, whatever size ``rgb`` was analysed at."""
        result = self._mesh.process(rgb)
        faces = result.multi_face_landmarks or []
        if not faces:
            return FaceObservation(0, None)
        w, h = scale_to
        arrays = [np.array([(p.x * w, p.y * h, p.z * w) for p in f.landmark], np.float32)
                  for f in faces]
        # With two faces, keep the larger one: it is most likely the presenter.
        best = max(arrays, key=lambda a: float(np.ptp(a[:, 0])))
        return FaceObservation(len(faces), best)


def eye_centres(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    right = (lm[RIGHT_EYE_OUTER, :2] + lm[RIGHT_EYE_INNER, :2]) / 2
    left = (lm[LEFT_EYE_INNER, :2] + lm[LEFT_EYE_OUTER, :2]) / 2
    return right, left


def interocular(lm: np.ndarray) -> float:
    """Distance between the outer eye corners (33-263), the scale of every face metric."""
    return float(np.linalg.norm(lm[RIGHT_EYE_OUTER, :2] - lm[LEFT_EYE_OUTER, :2]))


def mouth_opening(lm: np.ndarray) -> float:
    """Inner-lip gap (13-14) over the inter-ocular distance (33-263)."""
    gap = float(np.linalg.norm(lm[UPPER_LIP_INNER, :2] - lm[LOWER_LIP_INNER, :2]))
    return gap / max(interocular(lm), 1e-6)


def crop_points(lm: np.ndarray) -> np.ndarray:
    right, left = eye_centres(lm)
    return np.stack([right, left, lm[NOSE_TIP, :2]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation+uniform scale+translation mapping src points to dst (2x3).

    Umeyama's closed form: no RANSAC, so the same landmarks always give the same crop.
    """
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = float((sig * sign).sum() / max(s.var(0).sum(), 1e-9))
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def crop_transform(lm: np.ndarray, size: int) -> np.ndarray:
    """2x3 matrix from source pixels to the aligned crop of side ``size``."""
    return similarity_transform(crop_points(lm), CROP_TEMPLATE * size)


def warp_crop(rgb: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """The aligned crop: bicubic, area-reduced first from large faces, so the training
    targets keep the detail the footage has (``avatar.resample``)."""
    return resample.warp(rgb, m, (size, size))


def head_pose(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (3x3) and translation (x, y, scale in px) of the head.

    The axes come from the face itself (eye line, chin-to-forehead line), so the pose is
    comparable across clips and people without a 3D reference model.
    """
    x_axis = lm[LEFT_EYE_OUTER] - lm[RIGHT_EYE_OUTER]
    x_axis = x_axis / (np.linalg.norm(x_axis) + 1e-9)
    up = lm[FOREHEAD] - lm[CHIN]
    # Image y points down; the head's y axis points up.
    y_axis = -(up - x_axis * float(up @ x_axis))
    y_axis = y_axis / (np.linalg.norm(y_axis) + 1e-9)
    z_axis = np.cross(x_axis, y_axis)
    rot = np.stack([x_axis, y_axis, z_axis], axis=1)
    centre = lm[list(STABLE_POINTS), :2].mean(0)
    return rot.astype(np.float32), np.array([centre[0], centre[1], interocular(lm)], np.float32)


def euler_degrees(rot: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) in degrees from a head rotation matrix."""
    yaw = np.degrees(np.arctan2(-rot[2, 0], np.hypot(rot[0, 0], rot[1, 0])))
    pitch = np.degrees(np.arctan2(rot[2, 1], rot[2, 2]))
    roll = np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))
    return np.array([yaw, pitch, roll], np.float32)


def lower_face_mask(crop_landmarks: np.ndarray, size: int, feather: int = 9) -> np.ndarray:
    """Feathered uint8 mask (0-255) of the lower face in crop space: the jaw line up to just
    below the nose, the region a talking head re-renders."""
    pts = crop_landmarks[list(LOWER_OVAL), :2].copy()
    nose_y = crop_landmarks[NOSE_TIP, 1] + 0.02 * size
    top = np.array([[pts[-1, 0], nose_y], [pts[0, 0], nose_y]])
    poly = np.concatenate([pts, top]).round().astype(np.int32)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [poly], 255)
    if feather > 0:
        k = feather * 2 + 1
        mask = cv2.GaussianBlur(mask, (k, k), 0)
    return mask
