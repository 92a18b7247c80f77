"""Keyed output for compositing in streaming software (OBS and the like): the background
behind the person becomes one solid colour, found by MediaPipe's selfie segmentation (its
model ships inside the mediapipe wheel, so nothing is downloaded)."""

from __future__ import annotations

import numpy as np

from avatar.errors import TwincastError


class Keyer:
    """``keyer(rgb) -> rgb`` with everything but the person in ``colour``. Not thread-safe:
    one per output thread."""

    def __init__(self, colour: tuple[int, int, int] = (0, 255, 0)):
        try:
            import mediapipe as mp
        except ImportError:
            raise TwincastError("keyed output needs mediapipe; install it with: pip install "
                                "'twincast[key]'") from None
        from avatar.quiet import native_stderr_silenced

        with native_stderr_silenced():
            # Model 1 (landscape, 144x256) is the fast one, made for video calls.
            self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=1)
            self._seg.process(np.zeros((144, 256, 3), np.uint8))  # its first-call chatter
        self.colour = np.array(colour, np.float32)

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) float in [0, 1]: 1 on the person."""
        import cv2

        m = self._seg.process(np.ascontiguousarray(rgb)).segmentation_mask
        if m is None:
            return np.ones(rgb.shape[:2], np.float32)
        # A little blur and a steeper ramp: a clean edge without a halo of the old
        # background, and no flicker of single pixels.
        m = cv2.GaussianBlur(m.astype(np.float32), (5, 5), 0)
        return np.clip((m - 0.3) / 0.4, 0.0, 1.0)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        m = self.mask(rgb)[:, :, None]
        return (rgb.astype(np.float32) * m + self.colour * (1 - m)).astype(np.uint8)

    def close(self) -> None:
        self._seg.close()
