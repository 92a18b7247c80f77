"""The visible disclosure: a small "AI-generated" label in a corner of every output frame.

People watching a double must be able to tell it is not the person (the EU AI Act asks that
synthetic video be disclosed), so the label is on by default in every output, offline
renders, WebRTC and livestreams, and off only when the operator says so.

The label is drawn once per frame size (white text on a translucent dark box, anti-aliased)
and kept as a small premultiplied patch; each frame then costs a copy and a blend over the
patch's box, not a text rendering.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
MAX_CHARS = 60


@dataclass(frozen=True)
class LabelConfig:
    text: str = "AI-generated"
    corner: str = "bottom-right"
    enabled: bool = True
    height: float = 0.045
    """Text height as a share of the frame's height (at least 9 pixels)."""

    def __post_init__(self) -> None:
        if self.corner not in CORNERS:
            raise ValueError(f"label corner {self.corner!r}: use one of {', '.join(CORNERS)}")
        if self.enabled and not self.text.strip():
            raise ValueError("the label text is empty: give one, or turn the label off")
        if len(self.text) > MAX_CHARS:
            raise ValueError(f"the label text has {len(self.text)} characters; at most "
                             f"{MAX_CHARS} fit a corner")
        if not self.text.isascii() or not self.text.isprintable():
            # OpenCV's Hershey fonts draw ASCII only: anything else would come out as '?'.
            raise ValueError("the label text must be printable ASCII")


class Label:
    """Applies a ``LabelConfig`` to frames of any size (thread-safe)."""

    def __init__(self, cfg: LabelConfig | None = None):
        self.cfg = cfg or LabelConfig()
        self._patches: dict[tuple[int, int], tuple[int, int, np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """``frame`` (H, W, 3) uint8 with the label on it: a new array (the input may be a
        cached frame shown again); the input itself when the label is off."""
        if not self.cfg.enabled:
            return frame
        h, w = frame.shape[:2]
        x, y, colour, alpha = self._patch(w, h)
        out = frame.copy()
        ph, pw = alpha.shape[:2]
        roi = out[y:y + ph, x:x + pw].astype(np.float32)
        out[y:y + ph, x:x + pw] = (roi * (1.0 - alpha) + colour + 0.5).astype(np.uint8)
        return out

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Where the label sits in a frame of this size: x0, y0, x1, y1."""
        x, y, _, alpha = self._patch(width, height)
        return x, y, x + alpha.shape[1], y + alpha.shape[0]

    def _patch(self, w: int, h: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        with self._lock:
            p = self._patches.get((w, h))
            if p is None:
                p = self._patches[(w, h)] = self._draw(w, h)
            return p

    def _draw(self, w: int, h: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Position, premultiplied colour (float32) and alpha (float32, (ph, pw, 1)) of the
        label for a w x h frame."""
        font = cv2.FONT_HERSHEY_SIMPLEX
        text_h = max(9, round(self.cfg.height * h))
        (tw0, th0), _ = cv2.getTextSize(self.cfg.text, font, 1.0, 1)
        scale = text_h / th0
        thick = max(1, round(scale * 1.6))
        (tw, th), base = cv2.getTextSize(self.cfg.text, font, scale, thick)
        pad = max(2, text_h // 3)
        pw, ph = min(w, tw + 2 * pad), min(h, th + base + 2 * pad)
        # Drawn at 4x and reduced: Hershey strokes at a few pixels look ragged otherwise.
        k = 4
        big_text = np.zeros((ph * k, pw * k), np.uint8)
        cv2.putText(big_text, self.cfg.text, (pad * k, (pad + th) * k), font, scale * k,
                    255, thick * k, cv2.LINE_AA)
        text = cv2.resize(big_text, (pw, ph), interpolation=cv2.INTER_AREA)
        text = text.astype(np.float32)[..., None] / 255
        box_alpha = 0.55
        alpha = box_alpha + (1.0 - box_alpha) * text  # dark box, opaque white text
        colour = 255.0 * text  # premultiplied: the box is black
        margin = max(2, h // 60)
        right = "right" in self.cfg.corner
        bottom = self.cfg.corner.startswith("bottom")
        x = max(0, w - pw - margin) if right else min(margin, w - pw)
        y = max(0, h - ph - margin) if bottom else min(margin, h - ph)
        return x, y, colour.astype(np.float32), alpha.astype(np.float32)
