"""``python -m training.head.pack FEATURES OUT``: the part of an enrolment cache that head
training reads (crops, mel, voice activity, face counts, lip landmarks and crop transforms),
small enough to carry to a GPU machine. Other landmarks and per-segment arrays stay behind."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from avatar import atomic
from avatar.models.lips import LIP_POINTS


def pack(features: Path, out: Path) -> Path:
    manifest = json.loads((features / "manifest.json").read_text())
    with atomic.atomic_dir(out) as tmp:
        shutil.copy(features / "manifest.json", tmp / "manifest.json")
        shutil.copy(features / "mask.png", tmp / "mask.png")
        for c in manifest["clips"]:
            src, dst = features / c["dir"], tmp / c["dir"]
            (dst / "crops").mkdir(parents=True)
            shutil.copy(src / "meta.json", dst / "meta.json")
            with np.load(src / "audio.npz") as z:
                # float16 halves the largest array (ten minutes' mel is 19 MB in float32);
                # a log-mel needs no more than its three significant digits.
                np.savez_compressed(dst / "audio.npz", mel16=z["mel16"].astype(np.float16),
                                    vad=z["vad"])
            with np.load(src / "frames.npz") as z:
                # Only the lip rows are kept; the zeros elsewhere compress to nothing.
                lm = np.zeros_like(z["landmarks_raw"])
                lm[:, list(LIP_POINTS)] = z["landmarks_raw"][:, list(LIP_POINTS)]
                np.savez_compressed(dst / "frames.npz", n_faces=z["n_faces"],
                                    landmarks_raw=lm, crop_affine=z["crop_affine"])
            for f in (src / "crops").glob("*.mp4"):
                shutil.copy(f, dst / "crops" / f.name)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m training.head.pack FEATURES_DIR OUT_DIR")
    print(pack(Path(sys.argv[1]), Path(sys.argv[2])))
