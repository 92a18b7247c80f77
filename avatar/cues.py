"""Gesture cues: where in new speech the person would nod, learned from their own footage.

A nod is the face dipping and coming back within about half a second. In the enrolment
footage the nods are found from the landmarks (``nod_peaks``); a small network learns, from
the speech around each frame, whether a nod peaks there (``training.motion.cues``). At run
time it reads the speech about to be said and marks where nods should land; the motion walk
(``avatar.motion``) then enters the person's own footage so that one of their real nods
plays at each of those moments. Nothing is synthesised: the nod is theirs, only its timing
is chosen.

The network sees each video frame's own 40 ms of the talking head's log-mel (pooled to
``BANDS`` bands) for ``BEFORE`` frames before it and ``AFTER`` after: a word's onset comes
about 0.2 s before the nod's lowest point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar import atomic

NOD_DIP = 0.04
"""A nod: the face centre dips at least this far (inter-ocular distances) under its 1.2 s
running mean."""
NOD_GAP_S = 0.3
"""Two nods' lowest points are at least this far apart."""
BANDS = 20
BEFORE, AFTER = 6, 6


def nod_peaks(lm: np.ndarray, fps: int) -> np.ndarray:
    """Frames where a nod peaks in one uninterrupted stretch of footage: ``lm`` (frames,
    points, 2) landmarks in inter-ocular distances (image y down); the centre's height at a
    local maximum at least ``NOD_DIP`` over its 1.2 s running mean."""
    y = np.nanmean(lm[:, :, 1], axis=1) if len(lm) else np.zeros(0)
    ok = np.isfinite(y)
    if ok.sum() < fps:
        return np.zeros(0, int)
    y = np.interp(np.arange(len(y)), np.flatnonzero(ok), y[ok])
    win = int(1.2 * fps) | 1
    pad = np.pad(y, win // 2, mode="edge")
    hp = y - np.convolve(pad, np.ones(win) / win, mode="valid")
    return _peaks(hp, NOD_DIP, NOD_GAP_S * fps)


def _peaks(x: np.ndarray, floor: float, gap: float) -> np.ndarray:
    """Local maxima of ``x`` at least ``floor``, at least ``gap`` frames apart (the higher
    of two closer ones)."""
    out: list[int] = []
    inner = x[1:-1]
    # Candidates found at once (the loop below sees only them: called per new chunk of a
    # live utterance).
    cand = np.flatnonzero((inner >= floor) & (inner >= x[:-2]) & (inner > x[2:])) + 1
    for i in cand:
        if out and i - out[-1] < gap:
            if x[i] > x[out[-1]]:
                out[-1] = i
            continue
        out.append(i)
    return np.array(out, int)


def bank_nods(index: dict[str, np.ndarray], fps: int) -> np.ndarray:
    """Per motion-bank frame: whether one of the person's nods peaks there (found within
    each uninterrupted stretch, never across a seam)."""
    n = len(index["state"])
    out = np.zeros(n, bool)
    if not n:
        return out
    iod = np.maximum(index["iod"].astype(np.float64), 1.0)[:, None, None]
    lm = index["landmarks"].astype(np.float64) / iod
    cont = index["cont"].astype(bool)
    starts = np.flatnonzero(np.concatenate([[True], ~cont[:-1]]))
    for a, b in zip(starts, list(starts[1:]) + [n], strict=True):
        out[a + nod_peaks(lm[a:b], fps)] = True
    return out


def frame_rows(windows: np.ndarray, fps: int, hop_s: float = 0.01) -> np.ndarray:
    """(frames, BANDS): each video frame's own stretch of its mel window (the middle
    ``1 / fps`` seconds), averaged into ``BANDS`` bands."""
    n, bins, width = windows.shape
    cols = max(1, min(width, int(round(1.0 / fps / hop_s))))
    a = (width - cols) // 2
    own = windows[:, :, a: a + cols].mean(2)
    return own[:, : bins // BANDS * BANDS].reshape(n, BANDS, -1).mean(2).astype(np.float32)


def context(rows: np.ndarray) -> np.ndarray:
    """(frames, (BEFORE + AFTER) * BANDS): each frame's rows from ``BEFORE`` frames before
    it to ``AFTER - 1`` after (silence's floor beyond the ends)."""
    n = len(rows)
    floor = np.float32(np.log(1e-5))
    pad = np.concatenate([np.full((BEFORE, BANDS), floor, np.float32), rows,
                          np.full((AFTER, BANDS), floor, np.float32)])
    idx = np.arange(n)[:, None] + np.arange(BEFORE + AFTER)[None, :]
    return pad[idx].reshape(n, -1)


@dataclass
class NodCues:
    """The learned speech-to-nod model: one hidden layer, run in numpy."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    threshold: float

    def probability(self, rows: np.ndarray, start: int = 0, stop: int | None = None
                    ) -> np.ndarray:
        """How likely a nod peaks at each frame of ``rows`` (``frame_rows``) from ``start``
        to ``stop`` (each frame seen with its neighbours, silence beyond the ends)."""
        stop = len(rows) if stop is None else stop
        if stop <= start:
            return np.zeros(0, np.float32)
        a = max(0, start - BEFORE)
        part = context(rows[a: stop + AFTER])
        return self.score(part[start - a: stop - a])

    def score(self, x: np.ndarray) -> np.ndarray:
        """The network on ``context`` features: the probability per row."""
        h = np.maximum(((x - self.mean) / self.std) @ self.w1 + self.b1, 0.0)
        logit = np.clip(h @ self.w2 + self.b2, -60.0, 60.0)  # no overflow in exp
        return (1.0 / (1.0 + np.exp(-logit))).reshape(-1).astype(np.float32)

    def peaks(self, probability: np.ndarray, fps: int) -> np.ndarray:
        """Per frame: whether a nod should peak there."""
        out = np.zeros(len(probability), bool)
        out[_peaks(probability, self.threshold, NOD_GAP_S * fps)] = True
        return out

    def save(self, path: Path) -> None:
        atomic.save_npz(path, w1=self.w1, b1=self.b1, w2=self.w2, b2=self.b2,
                        mean=self.mean, std=self.std, threshold=np.float32(self.threshold))

    @classmethod
    def load(cls, path: Path) -> NodCues:
        with np.load(path, allow_pickle=False) as z:
            cues = cls(**{k: z[k].astype(np.float32) for k in
                          ("w1", "b1", "w2", "b2", "mean", "std")},
                       threshold=float(z["threshold"]))
        if cues.w1.shape[0] != (BEFORE + AFTER) * BANDS:
            raise ValueError(f"expects {cues.w1.shape[0]} inputs, not "
                             f"{(BEFORE + AFTER) * BANDS}")
        return cues
