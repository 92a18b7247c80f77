#!/usr/bin/env bash
# Sessions per GPU and per node, and the renderer's speed, for a session lent a device.
# One device call (about 7 minutes; give it timeout_s 540):
#   1. `bench render --preset gpu --model-size N` over 512x512, 720p and 1080p bundles at the
#      working size the gpu preset picks for each (batches 1, 16, 64);
#   2. `bench lanes`: speaking sessions one GPU lane holds under 1 % late frames through the
#      server's scheduler, at 720p (batches of at most 16, the server's default, and 64), at
#      1080p (64), and at 720p with every session's frames VP8-encoded on the node's CPUs
#      (`--encode`: sessions per node, not only per GPU).
# Prepare here (CPU machine), once (gpu/ is git-ignored; name gpu/bundles and gpu/wheels in
# the device tool's carry, about 47 MB together):
#   bash /path/to/prep: scripts/resolution_check.sh's short samples, enrolled with the ci
#   preset (its first loop), then
#   for s in 512x512 1280x720 1920x1080; do
#     cp -r build/resolution/$s/work/avatars/s gpu/bundles/$s; done
#   .venv/bin/pip download av==18.1.0 --no-deps --only-binary :all: -d gpu/wheels  # abi3
# The machine has torch and OpenCV but neither PyAV, MediaPipe nor aiortc: the av wheel is
# installed there into gpu/pylib for the encoders. Results under $OUT: gpu.txt,
# bench_render.jsonl, lanes_*.json.
# COMPOSITING=device: the mouth put into its frame on the GPU (`--compositing device`).
# Try it on a CPU with DEVICE=cpu SESSIONS=1,2 LANE_SECONDS=3 BATCHES=1,4 PY=.venv/bin/python.
set -uo pipefail
OUT=${OUT:-build/gpu-lanes-out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda:0}
SESSIONS=${SESSIONS:-8,16,24,32,40,48,64,96,128}
SECONDS_EACH=${LANE_SECONDS:-8}  # (not SECONDS: bash counts its own run time in it)
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TWINCAST_PROGRESS=0
if ! "$PY" -c "import av" 2>/dev/null; then
    # A wheel is a zip: unpacked, it imports (no pip needed; av's wheel bundles FFmpeg).
    "$PY" -m zipfile -e gpu/wheels/av-*.whl gpu/pylib
    export PYTHONPATH=$PYTHONPATH:$PWD/gpu/pylib
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
    || echo "no nvidia-smi"; nproc; lscpu 2>/dev/null | grep "Model name"; \
  "$PY" -c "import sys, torch, numpy, cv2, av; print(sys.version.split()[0], 'torch', \
torch.__version__, 'numpy', numpy.__version__, 'cv2', cv2.__version__, 'av', av.__version__)"; \
} 2>&1 | tee "$OUT/gpu.txt"

start=$(date +%s)
for b in ${RENDER-512x512:128 1280x720:176 1920x1080:272}; do
    timeout 120 "$PY" -m twincast.cli bench render "gpu/bundles/${b%%:*}" --device "$DEVICE" \
        --preset gpu --model-size "${b##*:}" --batches "${BATCHES:-1,16,64}" --seconds 2 \
        --compositing "${COMPOSITING:-cpu}" \
        2>>"$OUT/gpu.txt" | tee -a "$OUT/bench_render.jsonl"
done
echo "render took $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"

lanes() {  # NAME BUNDLE SIZE MAX_BATCH [--encode]
    local t0
    [[ -n ${ONLY:-} && " $ONLY " != *" $1 "* ]] && return  # ONLY="720_b16 ...": just those
    t0=$(date +%s)
    timeout 150 "$PY" -m twincast.cli bench lanes "gpu/bundles/$2" --devices "$DEVICE" \
        --preset gpu --model-size "$3" --max-batch "$4" --sessions "$SESSIONS" \
        --seconds "$SECONDS_EACH" --compositing "${COMPOSITING:-cpu}" "${@:5}" \
        >"$OUT/lanes_$1.json" 2>>"$OUT/gpu.txt"
    echo "lanes $1: rc $? in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu.txt"
    grep -h "bench.lanes" "$OUT/gpu.txt" | tail -n 12
}
lanes 720_b16 1280x720 176 16
lanes 720_b16_encode 1280x720 176 16 --encode
lanes 720_b64_encode 1280x720 176 64 --encode
lanes 720_b64 1280x720 176 64
lanes 1080_b64 1920x1080 272 64
echo "whole check took $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
