"""Choosing the idle footage: the stretch of the person's own video the avatar stands in.

The best stretch has one face throughout, little speech (the generator re-renders the lower
face anyway, but the cheeks and head still move with speech) and calm head motion. The
runtime plays it forwards then backwards, so the loop never jumps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.errors import TwincastError


@dataclass(frozen=True)
class IdleChoice:
    clip: str
    start: int
    stop: int
    score: float


def choose_idle(features_dir: Path, seconds: float = 6.0, fps: int = 25) -> IdleChoice:
    manifest = json.loads((features_dir / "manifest.json").read_text())
    want = int(seconds * fps)
    best: IdleChoice | None = None
    for c in manifest["clips"]:
        d = features_dir / c["dir"]
        with np.load(d / "frames.npz") as z:
            one = z["n_faces"] == 1
            trans = z["head_translation"]
        with np.load(d / "audio.npz") as z:
            vad = z["vad"]
        t = len(one)
        n = min(want, t)
        if n < fps:  # under a second is no loop
            continue
        hops = np.clip(np.round((np.arange(t) + 0.5) / fps * 100).astype(int), 0, len(vad) - 1)
        speech = vad[hops].astype(float)
        iod = np.nan_to_num(trans[:, 2], nan=1.0).clip(min=1.0)
        speed = np.linalg.norm(np.diff(np.nan_to_num(trans[:, :2]), axis=0, prepend=0),
                               axis=1) / iod
        step = max(1, fps // 2)
        for s in range(0, t - n + 1, step):
            if not one[s: s + n].all():
                continue
            # Lower is better: speech weighs most, then fast head motion; longer is better.
            score = (speech[s: s + n].mean() + 2.0 * speed[s: s + n].mean()
                     - 0.5 * n / want)
            if best is None or score < best.score:
                best = IdleChoice(c["id"], s, s + n, float(score))
    if best is None:
        raise TwincastError(f"{features_dir}: no stretch of at least one second with one "
                            "face to use as idle footage")
    return best
