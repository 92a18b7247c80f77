"""Choosing the idle footage: the stretch of the person's own video the avatar stands in.

The best stretch has one face throughout, no speech, a closed mouth (the avatar shows this
footage unchanged whenever it is silent, so an open mouth there reads as the avatar about
to speak) and calm head motion. Longer is better, but a short quiet stretch beats a long
one with talking in it: footage made of short sentences (GRID clips are 3 s) has no long
silence. The runtime plays it forwards then backwards, so the loop never jumps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.errors import TwincastError
from training.audio_features import frame_hops
from training.face import mouth_opening

OPEN_MOUTH = 0.04
"""Mouth opening (inner-lip gap over eye distance) above which a mouth counts as open; a
closed mouth reads about 0.002, a spoken vowel 0.08-0.15."""


@dataclass(frozen=True)
class IdleChoice:
    clip: str
    start: int
    stop: int
    score: float


def _window_lengths(want: int, t: int, fps: int) -> list[int]:
    """The loop lengths tried: the wanted one, then shorter ones down to one second."""
    sizes = {min(want, t)} | {min(int(want * f), t) for f in (0.66, 0.5, 0.33)} | {fps}
    return sorted((n for n in sizes if fps <= n <= t), reverse=True)


def choose_idle(features_dir: Path, seconds: float = 6.0, fps: int = 25) -> IdleChoice:
    manifest = json.loads((features_dir / "manifest.json").read_text())
    want = int(seconds * fps)
    best: IdleChoice | None = None
    for c in manifest["clips"]:
        d = features_dir / c["dir"]
        with np.load(d / "frames.npz") as z:
            one = z["n_faces"] == 1
            trans = z["head_translation"]
            raw = z["landmarks_raw"]
        with np.load(d / "audio.npz") as z:
            vad = z["vad"]
        t = len(one)
        if t < fps:  # under a second is no loop
            continue
        hops = frame_hops(t, fps, len(vad))
        speech = vad[hops].astype(float)
        opening = np.array([mouth_opening(lm) if ok else 1.0 for lm, ok in
                            zip(raw, one, strict=True)])
        wide = (opening > OPEN_MOUTH).astype(float)
        iod = np.nan_to_num(trans[:, 2], nan=1.0).clip(min=1.0)
        speed = np.linalg.norm(np.diff(np.nan_to_num(trans[:, :2]), axis=0, prepend=0),
                               axis=1) / iod
        step = max(1, fps // 5)
        for n in _window_lengths(want, t, fps):
            for s in range(0, t - n + 1, step):
                if not one[s: s + n].all():
                    continue
                # Lower is better: speech and an open mouth weigh most, then fast head
                # motion; longer is better.
                score = (speech[s: s + n].mean() + 2.0 * wide[s: s + n].mean()
                         + 2.0 * speed[s: s + n].mean() - 0.5 * n / want)
                if best is None or score < best.score:
                    best = IdleChoice(c["id"], s, s + n, float(score))
    if best is None:
        raise TwincastError(f"{features_dir}: no stretch of at least one second with one "
                            "face to use as idle footage")
    return best
