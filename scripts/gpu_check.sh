#!/usr/bin/env bash
# The talking head's GPU check, for a session that is lent a device (see README "GPU").
#
# Prepare here (CPU machine), once:
#   make setup
#   .venv/bin/twincast enrol ../shared/data/grid_s1/train \
#       --transcript ../shared/data/grid_s1/transcripts.tsv --workdir build/grid --preset cpu \
#       --features-only
#   .venv/bin/python -m training.head.pack build/grid/features gpu/work/features  # ~12 MB
#   .venv/bin/twincast sample --out gpu/sample --minutes 0.5 && .venv/bin/twincast enrol \
#       gpu/sample/sample.mp4 --transcript gpu/sample/transcript.txt --workdir gpu/s --preset ci
#   mkdir -p .whl && python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       -d .whl av==18.1.0
#   (gpu/ and .whl/ are git-ignored: name them in the device tool's `carry`.)
# Run there:  bash scripts/gpu_check.sh   (writes JSON and the trained generator under $OUT)
# Then here:  copy $OUT/generator.* into build/grid/head/ and
#   .venv/bin/twincast train head build/grid --export-only --preset gpu --name grid_gpu
#   .venv/bin/twincast eval head build/grid/avatars/grid_gpu --footage ../shared/data/grid_s1/eval
set -euo pipefail
OUT=${OUT:-build/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TWINCAST_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# Training: the gpu preset, capped so the whole check fits the device budget.
python3 -m twincast.cli train head gpu/work --preset gpu --device cuda:0 --no-export \
    --max-minutes "${TRAIN_MINUTES:-6}" 2>&1 | tail -n 20 | tee "$OUT/train.log"
cp gpu/work/head/generator.safetensors gpu/work/head/generator.json gpu/work/head/history.json \
    "$OUT/"
# Rendering: the gpu preset's architecture over the sample bundle's idle footage.
python3 -m twincast.cli bench render gpu/s/avatars/sample --device cuda:0 --preset gpu \
    --batches 1,16,64,256,1024,2048 --seconds 2 | tee "$OUT/bench_render_gpu.json"
python3 -m twincast.cli bench render gpu/s/avatars/sample --device cuda:0 --preset cpu \
    --batches 1,64,1024 --seconds 2 | tee "$OUT/bench_render_cpu_arch.json"
