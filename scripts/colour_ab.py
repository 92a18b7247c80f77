"""Colour modes side by side: eval head's reconstruction pass (training/head/fidelity.py)
over grid_s1/eval for each colour-matching mode of avatar/colour.py.

    .venv/bin/python scripts/colour_ab.py BUNDLE mean field
"""
import json
import sys
from pathlib import Path

from avatar.avatar import Avatar
from training.config import FaceConfig
from training.evaluate_head import _drive, load_held_out
from training.head.fidelity import Area, Tally

bundle = sys.argv[1]
av = Avatar.load(bundle)
clips = load_held_out([Path("../shared/data/grid_s1/eval")], av.fps, FaceConfig())
out = {}
for mode in sys.argv[2:]:
    av.colour = mode
    t = Tally()
    for c in clips:
        own = av.over(c.frames, c.affines)
        own.colour = mode
        n = len(c.frames)
        g = _drive(own, c.audio16, n)
        t.add_clip(c.frames, g, [Area(*own.paint_area(i)) for i in range(n)], c.silent)
    out[mode] = t.figures()
print(json.dumps(out, indent=1))
