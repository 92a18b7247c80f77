#!/usr/bin/env bash
# What the motion bank costs the renderer: `bench render` of a cpu-size model at batch 1 and
# 16 over the idle loop and over the bank's walk (every frame a new one to decode, blend and
# prepare), at 512x512 and 1280x720, three runs each (medians in the note). The bundles are
# the resolution check's (scripts/resolution_check.sh) with a bank added by `train motion`.
#
#   scripts/motion_bench.sh [RUNS]
set -euo pipefail
RUNS=${1:-3}
TW=${TWINCAST:-.venv/bin/twincast}
for r in 512x512 1280x720; do
  W=build/resolution/$r/work
  grep -q '"motion"' "$W/avatars/s/manifest.json" || "$TW" train motion "$W" > /dev/null
  for i in $(seq "$RUNS"); do
    for m in "" "--motion"; do
      echo "== $r ${m:-idle} run $i"
      "$TW" bench render "$W/avatars/s" --preset cpu --batches 1,16 --seconds 4 $m \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["fps_by_batch"], r["background"], r.get("chunks_decoded_per_frame", ""), r["peak_rss_mb"])'
    done
  done
done
