#!/usr/bin/env bash
# The talking head's GPU check, for a session that is lent a device (see README "GPU").
# One device call: the gpu preset trained on GRID and on the 10-minute 1080p sample at once
# (two processes on one GPU; neither fills it), after the renderer is timed (alone on the
# GPU) at the gpu preset's working sizes over 512x512, 720p and 1080p bundles.
#
# Prepare here (CPU machine), once (gpu/ is git-ignored; name it in the device tool's carry):
#   .venv/bin/python -m training.head.pack build/grid-idle2/features gpu/grid/features  # 11 MB
#   .venv/bin/python -m training.head.pack build/hd/features gpu/hd/features           # 38 MB
#   for s in 512x512 1280x720 1920x1080; do          # bundles of scripts/resolution_check.sh
#     cp -r build/resolution/$s/work/avatars/s gpu/bundles/$s; done                  # 11 MB
#   (build/grid-idle2: a GRID enrolment; build/hd: scripts/sample_hd_check.sh.)
# Run there (about 8 minutes; timeout_s 590):
#   bash scripts/gpu_check.sh
# The machine has torch and OpenCV but neither PyAV, MediaPipe nor aiortc: head training and
# bench render decode with OpenCV there (avatar/decode.py). Results under $OUT: gpu.txt,
# bench_render.jsonl, and grid.tgz / hd.tgz (generator, its json, history, curves, log).
# Then here, for W in grid (features of build/grid-idle2) and hd (features of build/hd):
#   mkdir -p build/W-gpu/head && ln -s $PWD/build/SRC/features build/W-gpu/features
#   tar xzf FILES_AT/W.tgz -C build/W-gpu/head
#   .venv/bin/twincast train head build/W-gpu --export-only --preset gpu --name W_gpu
#   .venv/bin/twincast eval head build/W-gpu/avatars/W_gpu --footage HELD_OUT...
# Try it on a CPU with DEVICE=cpu TRAIN_MINUTES=0.3 PY=.venv/bin/python.
set -uo pipefail
OUT=${OUT:-build/gpu-out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda:0}
MINUTES=${TRAIN_MINUTES:-5.5}
mkdir -p "$OUT" gpu/logs
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TWINCAST_PROGRESS=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
    || echo "no nvidia-smi"; nproc; \
  "$PY" -c "import torch, numpy, cv2; print('torch', torch.__version__, 'numpy', \
numpy.__version__, 'cv2', cv2.__version__)"; } 2>&1 | tee "$OUT/gpu.txt"

start=$(date +%s)
# Rendering: fresh gpu-preset models at the working size each footage gets (README table).
for b in 512x512:128 1280x720:176 1920x1080:272; do
    "$PY" -m twincast.cli bench render "gpu/bundles/${b%%:*}" --device "$DEVICE" --preset gpu \
        --model-size "${b##*:}" --batches "${BATCHES:-1,16,64,256}" --seconds 2 \
        2>>"$OUT/gpu.txt" | tee -a "$OUT/bench_render.jsonl"
done

t0=$(date +%s)
for w in grid hd; do
    rm -rf "gpu/$w/head"
    "$PY" -m twincast.cli train head "gpu/$w" --preset gpu --device "$DEVICE" --no-export \
        --max-minutes "$MINUTES" >"gpu/logs/$w.log" 2>&1 &
done
wait
echo "training took $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.txt"
for w in grid hd; do
    tail -n 25 "gpu/logs/$w.log"
    cp "gpu/logs/$w.log" "gpu/$w/head/train.log" 2>/dev/null
    (cd "gpu/$w/head" && tar czf - generator.safetensors generator.json history.json \
        curves.png train.log) >"$OUT/$w.tgz" || echo "$w: no generator came out"
done

echo "whole check took $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
