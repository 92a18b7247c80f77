#!/usr/bin/env bash
# The talking head's GPU check, for a session that is lent a device (see README "GPU").
#
# Prepare here (CPU machine), once:
#   make setup
#   .venv/bin/twincast enrol ../shared/data/grid_s1/train \
#       --transcript ../shared/data/grid_s1/transcripts.tsv --workdir build/grid --preset cpu \
#       --features-only
#   .venv/bin/python -m training.head.pack build/grid/features gpu/work/features  # ~14 MB
#   .venv/bin/twincast sample --out build/gsample --minutes 0.5 && .venv/bin/twincast enrol \
#       build/gsample/sample.mp4 --transcript build/gsample/transcript.txt --workdir build/gs \
#       --preset ci --name sample && cp -r build/gs/avatars/sample gpu/bundle
#   mkdir -p .whl && python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       -d .whl av==18.1.0
#   (gpu/ and .whl/ are git-ignored: name them in the device tool's `carry`.)
# Run there:  bash scripts/gpu_check.sh   (writes JSON and the trained generator under $OUT)
# Then here:  copy $OUT/generator.* into build/grid/head/ and
#   .venv/bin/twincast train head build/grid --export-only --preset gpu --name grid_gpu
#   .venv/bin/twincast eval head build/grid/avatars/grid_gpu --footage ../shared/data/grid_s1/eval
# The GPU machine has torch but neither mediapipe nor aiortc: nothing run here may need them.
# Try it on a CPU with DEVICE=cpu TRAIN_MINUTES=0.3 PY=.venv/bin/python.
set -uo pipefail
OUT=${OUT:-build/gpu-out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda:0}
mkdir -p "$OUT"
if ! "$PY" -c "import av" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TWINCAST_PROGRESS=0
{ nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"; \
  "$PY" -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/gpu.txt"
# Training: the gpu preset, capped so the whole check fits the device budget.
"$PY" -m twincast.cli train head gpu/work --preset gpu --device "$DEVICE" --no-export \
    --max-minutes "${TRAIN_MINUTES:-6}" 2>&1 | tail -n 30 | tee "$OUT/train.log"
cp gpu/work/head/generator.safetensors gpu/work/head/generator.json \
    gpu/work/head/history.json gpu/work/head/curves.png "$OUT/" || exit 1
# Rendering: the gpu preset's architecture over the sample bundle's idle footage.
"$PY" -m twincast.cli bench render gpu/bundle --device "$DEVICE" --preset gpu \
    --batches "${BATCHES:-1,16,64,256,1024,2048}" --seconds 2 | tee "$OUT/bench_render_gpu.json"
"$PY" -m twincast.cli bench render gpu/bundle --device "$DEVICE" --preset cpu \
    --batches "${BATCHES_CPU:-1,64,1024}" --seconds 2 | tee "$OUT/bench_render_cpu_arch.json"
