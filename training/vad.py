"""Speech/silence from the signal level, and the run-length helpers around it.

Kept free of torch so the processes that only cut utterances stay small.
"""

from __future__ import annotations

import numpy as np


def voice_activity(db: np.ndarray, hop_s: float) -> np.ndarray:
    """Speech per hop from the level alone, with a threshold placed between the noise floor
    and the speech level of this very recording, then hangover smoothing."""
    if db.size == 0:
        return np.zeros(0, bool)
    noise = float(np.percentile(db, 10))
    speech = float(np.percentile(db, 95))
    thresh = max(noise + 0.35 * (speech - noise), noise + 6.0, -60.0)
    active = db > thresh
    # Bridge short gaps (stops, plosives) and drop blips, then pad the edges.
    active = _close_gaps(active, int(round(0.20 / hop_s)))
    active = _remove_short(active, int(round(0.08 / hop_s)))
    return _dilate(active, int(round(0.05 / hop_s)))


def _runs(mask: np.ndarray, value: bool) -> list[tuple[int, int]]:
    """[start, end) runs where mask == value."""
    m = np.concatenate([[not value], mask == value, [not value]]).astype(np.int8)
    d = np.diff(m)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1), strict=True))


def _close_gaps(mask: np.ndarray, n: int) -> np.ndarray:
    out = mask.copy()
    for a, b in _runs(mask, False):
        if a > 0 and b < len(mask) and b - a <= n:
            out[a:b] = True
    return out


def _remove_short(mask: np.ndarray, n: int) -> np.ndarray:
    out = mask.copy()
    for a, b in _runs(mask, True):
        if b - a < n:
            out[a:b] = False
    return out


def _dilate(mask: np.ndarray, n: int) -> np.ndarray:
    out = mask.copy()
    for a, b in _runs(mask, True):
        out[max(0, a - n): b + n] = True
    return out


def speech_segments(vad: np.ndarray, hop_s: float) -> list[tuple[float, float]]:
    return [(a * hop_s, b * hop_s) for a, b in _runs(vad, True)]
