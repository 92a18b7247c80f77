"""The colour match's ring tolerance (avatar/colour.py) against lip sync and cost.

For each tolerance the bundle speaks the first FRAMES frames of FOOTAGE's audio over its
idle loop (as `eval head` drives it), the face mesh reads the mouth's opening on the
rendered frames, and its correlation with the footage's own opening (its truth.npz for
`twincast sample` footage, else the face mesh on the real frames) is printed with the
colour match's CPU time a frame at the bundle's working size. Choose on footage no figure
uses (the README's choice: `twincast sample --minutes 0.5 --size 1920x1080 --seed 31`).

    .venv/bin/python scripts/colour_tolerance.py BUNDLE FOOTAGE [FRAMES] [TOL,TOL,...]
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

from avatar.audio import log_mel, mel_windows
from avatar.avatar import Avatar, FrameRequest
from avatar.colour import match_colour
from training.evaluate_head import _Mouths, face_config
from training.ingest import decode_audio

bundle, footage = Path(sys.argv[1]), Path(sys.argv[2])
frames = int(sys.argv[3]) if len(sys.argv) > 3 else 500
tolerances = [float(t) for t in (sys.argv[4] if len(sys.argv) > 4 else "inf,8,12,16,20")
              .split(",")]
avatar = Avatar.load(bundle)
cfg = face_config(avatar)
truth_file = footage.parent / "truth.npz"
if footage.name == "sample.mp4" and truth_file.exists():
    with np.load(truth_file) as z:
        truth = z["mouth_opening"].astype(np.float64)[:frames]
else:
    from training.ingest import clip_ids, iter_frames, probe

    info = probe(footage, clip_ids([footage])[0], avatar.fps, 0.0)
    with _Mouths(cfg) as footage_mouths:
        for _, rgb in iter_frames(info, avatar.fps, 0, frames):
            footage_mouths.add(rgb)
        truth = footage_mouths.openings()
n = len(truth)
windows = mel_windows(log_mel(decode_audio(footage, [16000])[16000]), n, avatar.fps,
                      avatar.mel_frames)
# The colour match's cost is timed on one idle frame's region and a noisy paint of it.
idle = avatar.idle[0]
real = idle.region.transpose(1, 2, 0) * 255
painted = np.clip(real + np.random.default_rng(0).normal(0, 8, real.shape), 0, 255
                  ).astype(np.float32)
avatar.render([FrameRequest(0, windows[n // 2])])  # warm-up
out = {}
for tol in tolerances:
    avatar.colour_tolerance = tol
    with _Mouths(cfg) as mouths:
        for a in range(0, n, 16):
            for frame in avatar.render([FrameRequest(i, windows[i])
                                        for i in range(a, min(n, a + 16))]):
                mouths.add(frame)
        opening = mouths.openings()
    ok = np.isfinite(opening) & np.isfinite(truth)
    t0 = time.process_time()
    for _ in range(200):
        match_colour(painted, real, idle.ring, "field", tol)
    out[str(tol)] = {"mouth_opening_corr": round(float(np.corrcoef(opening[ok],
                                                                    truth[ok])[0, 1]), 4),
                     "colour_match_ms": round((time.process_time() - t0) / 200 * 1000, 3)}
print(json.dumps({"bundle": str(bundle), "footage": str(footage), "frames": n,
                  "by_tolerance": out}, indent=1))
