#!/usr/bin/env bash
# The refiner's GPU check (#17's `gpu` figures), for a session that is lent a device: one
# device call that times the renderer with and without a refiner on the GPU, then trains
# the `gpu` preset's generator on GRID alone on the GPU (the whole device, not shared with
# a second training as in scripts/gpu_check.sh). The refiner itself is trained back here at
# export (its frames are cut from the source footage, decoded with PyAV, which the GPU
# machine lacks), so the figures name the CPU it trained on.
#
# Prepare here (CPU machine), once (gpu/ is git-ignored; name gpu/grid and gpu/bundles in
# the device tool's carry):
#   .venv/bin/python -m training.head.pack build/grid-idle/features gpu/grid/features
#   mkdir -p gpu/bundles && cp -r build/grid-refine/avatars/grid_s1 gpu/bundles/grid
#   (build/grid-idle: a `cpu` GRID enrolment; build/grid-refine: it with `train refine`.)
# Run there (budgeted at about 8.5 minutes, not yet run on a GPU; timeout_s 560):
#   bash scripts/gpu_refine_check.sh
# Results under $OUT: gpu.txt, bench_render.jsonl, grid.tgz (generator, json, history,
# curves, log). Then here:
#   mkdir -p build/grid-gpu/head && ln -s $PWD/build/grid-idle/features build/grid-gpu/
#   tar xzf FILES_AT/grid.tgz -C build/grid-gpu/head
#   .venv/bin/twincast train head build/grid-gpu --export-only --preset gpu --name grid_gpu
#   .venv/bin/twincast eval head build/grid-gpu/avatars/grid_gpu \
#       --footage ../shared/data/grid_s1/eval [--refine off]
# On a CPU (DEVICE=cpu BATCHES=1 PY=.venv/bin/python) its benchmark half takes 30 s; its
# training half does not finish quickly there (the gpu preset's speed probe alone ran over
# ten minutes on 2 cores), so stop it after the benchmarks.
set -uo pipefail
OUT=${OUT:-build/gpu-refine-out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda:0}
MINUTES=${TRAIN_MINUTES:-6.5}
BATCHES=${BATCHES:-1,16,64}
mkdir -p "$OUT" gpu/logs
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TWINCAST_PROGRESS=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
    || echo "no nvidia-smi"; nproc; lscpu | grep "Model name"; \
  "$PY" -c "import torch, numpy, cv2; print('torch', torch.__version__, 'numpy', \
numpy.__version__, 'cv2', cv2.__version__)"; } 2>&1 | tee "$OUT/gpu.txt"

start=$(date +%s)
bench() {  # bench [arguments]: one line of bench_render.jsonl
    "$PY" -m twincast.cli bench render gpu/bundles/grid --device "$DEVICE" \
        --batches "$BATCHES" --seconds 1.5 "$@" 2>>"$OUT/gpu.txt" \
        | "$PY" -c "import json, sys; print(json.dumps(json.load(sys.stdin)))" \
        | tee -a "$OUT/bench_render.jsonl"
}
# The trained bundle (96 px `cpu` model) with its refiner and without (its texture bank),
# then fresh `gpu` models at 128 px (GRID's size) and 272 px (a 1080p face's) with an
# untrained refiner and without one: what the refiner costs on the GPU.
bench --refiner keep
bench --refiner off
for size in 128 272; do
    for r in off fresh; do
        bench --preset gpu --model-size "$size" --refiner "$r"
    done
done
echo "benchmarks took $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"

t0=$(date +%s)
rm -rf gpu/grid/head
"$PY" -m twincast.cli train head gpu/grid --preset gpu --device "$DEVICE" --no-export \
    --max-minutes "$MINUTES" >gpu/logs/grid.log 2>&1
rc=$?
echo "training took $(( $(date +%s) - t0 )) s (exit $rc)" | tee -a "$OUT/gpu.txt"
tail -n 25 gpu/logs/grid.log
cp gpu/logs/grid.log gpu/grid/head/train.log 2>/dev/null
(cd gpu/grid/head && tar czf - generator.safetensors generator.json history.json \
    curves.png train.log) >"$OUT/grid.tgz" || echo "grid: no generator came out"
echo "whole check took $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
