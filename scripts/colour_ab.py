"""Colour modes side by side: eval head's reconstruction figures (training/head/fidelity.py)
over grid_s1/eval for each colour-matching mode of avatar/colour.py.

    .venv/bin/python scripts/colour_ab.py BUNDLE mean field
"""
import json
import sys
from pathlib import Path

from avatar.avatar import Avatar
from training.evaluate_head import face_config, load_held_out, reconstruct
from training.head.fidelity import Tally

avatar = Avatar.load(sys.argv[1])
clips = load_held_out([Path("../shared/data/grid_s1/eval")], avatar.fps, face_config(avatar))
out = {}
for mode in sys.argv[2:]:
    tally = Tally()
    for clip in clips:
        real = list(clip.frames())
        own = avatar.over(real, clip.affines)
        own.colour = mode
        frames, areas = reconstruct(own, clip)
        tally.add_clip(real, frames, areas, clip.silent)
    out[mode] = tally.figures()
print(json.dumps(out, indent=1))
