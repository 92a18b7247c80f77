#!/usr/bin/env bash
# What the footage's size does to the crop, the head's working size and render speed:
# short synthetic samples at 512x512, 1280x720 and 1920x1080, each enrolled with the ci
# preset (enough for a bundle whose idle footage and geometry are the sample's), then
#   - the crop side features chose and the mouth region's size in source pixels,
#   - the working size each preset would pick for it and the on-screen enlargement,
#   - bench render (batch 1 and 16) with fresh models at several working sizes.
#
#   scripts/resolution_check.sh [OUTDIR] [SIZES]     # SIZES default "96 128 160 192 240"
#
# Prints one JSON object per output size; everything stays in OUTDIR.
set -euo pipefail
O=${1:-build/resolution}
SIZES=${2:-96 128 160 192 240}
TW=${TWINCAST:-.venv/bin/twincast}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$O"
for wh in 512x512 1280x720 1920x1080; do
  d="$O/$wh"
  if [ ! -f "$d/work/avatars/s/manifest.json" ]; then
    rm -rf "$d"
    "$TW" sample --out "$d/sample" --minutes 0.5 --size "$wh" --seed 21
    "$TW" enrol "$d/sample/sample.mp4" --transcript "$d/sample/transcript.txt" \
      --workdir "$d/work" --name s --preset ci >"$d/enrol.log" 2>&1
  fi
  "$PY" - "$d/work" <<'PYEOF'
import json, sys
from pathlib import Path
from training.head.resolution import resolve
from training.head.train import head_preset
w = Path(sys.argv[1])
meta = json.loads(next((w / "features/clips").glob("*/meta.json")).read_text())
out = {"frame": [meta["width"], meta["height"]], "crop_size": meta["crop_size"]}
for preset in ("cpu", "gpu"):
    cfg = head_preset(preset)
    _, res = resolve(w / "features", cfg.model, cfg.max_size, cfg.max_upscale,
                     cfg.output_max_side)
    out[preset] = {**res.to_dict(), "preset_size": cfg.model.size, "max_size": cfg.max_size,
                   "upscale_at_preset_size": round(res.region_screen_px / cfg.model.size, 3)}
print(json.dumps(out))
PYEOF
  for s in $SIZES; do
    "$TW" bench render "$d/work/avatars/s" --model-size "$s" --preset cpu --batches 1,16 \
      --seconds 3 | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d[k] for k in ("frame_size","model_size","fps_by_batch")}))'
  done
done
# One live session at 720p with the cpu preset's working size for that footage: a copy of
# the 720p bundle whose generator is an untrained cpu-architecture model of that size
# (weights do not change the cost), served to one real aiortc client.
d="$O/1280x720"
live="$O/live720"
"$PY" - "$d/work" "$live" <<'PYEOF'
import dataclasses, json, shutil, sys
from pathlib import Path
from safetensors.torch import save_file
from avatar.bundle import sha256_file
from avatar.models.head import HEAD_PRESETS, HeadGenerator
from training.head.resolution import resolve
from training.head.train import head_preset
w, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = head_preset("cpu")
model, res = resolve(w / "features", cfg.model, cfg.max_size, cfg.max_upscale,
                     cfg.output_max_side)
shutil.rmtree(out, ignore_errors=True)
shutil.copytree(w / "avatars/s", out)
gen = HeadGenerator(model)
save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(out / "head.safetensors"))
m = json.loads((out / "manifest.json").read_text())
m["head"]["config"] = dataclasses.asdict(model)
m["files"]["head.safetensors"] = sha256_file(out / "head.safetensors")
(out / "manifest.json").write_text(json.dumps(m, indent=1))
print(json.dumps({"live_bundle": str(out), "model_size": model.size}))
PYEOF
"$TW" bench serve "$live" --sessions 1 --seconds 20 | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps(d))'
