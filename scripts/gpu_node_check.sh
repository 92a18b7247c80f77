#!/usr/bin/env bash
# Sessions per node with several server processes sharing one GPU: ROUNDS of PROCSxSESSIONS,
# each round PROCS `bench lanes --encode` processes at once (each its own lane on the GPU and
# its own VP8 encoders on the node's CPUs), every one holding SESSIONS speaking sessions for
# LANE_SECONDS. One process holds only a few 720p sessions once it also encodes them (the
# encoders and the lane share one interpreter); this measures what more processes buy.
# Prepared as scripts/gpu_lanes_check.sh (carry gpu/bundles and gpu/wheels). Run there:
#   ROUNDS="4x4 4x3 8x2" bash scripts/gpu_node_check.sh        # about 2 minutes
# Results under $OUT: node_PxS_I.json per process and node.txt.
set -uo pipefail
OUT=${OUT:-build/gpu-node-out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda:0}
BUNDLE=${BUNDLE:-gpu/bundles/1280x720}
SIZE=${SIZE:-176}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TWINCAST_PROGRESS=0
if ! "$PY" -c "import av" 2>/dev/null; then
    "$PY" -m zipfile -e gpu/wheels/av-*.whl gpu/pylib
    export PYTHONPATH=$PYTHONPATH:$PWD/gpu/pylib
fi
for round in ${ROUNDS:-4x4 4x3 8x2}; do
    p=${round%x*} s=${round#*x}
    for i in $(seq "$p"); do
        # Each process its share of the cores for torch's and OpenCV's thread pools: a
        # pool as large as the machine in every process left 60 threads runnable on 16.
        OMP_NUM_THREADS=$(( $(nproc) / p )) OPENCV_FOR_THREADS_NUM=$(( $(nproc) / p )) \
        timeout 120 "$PY" -m twincast.cli bench lanes "$BUNDLE" --devices "$DEVICE" \
            --preset gpu --model-size "$SIZE" --max-batch 16 --sessions "$s" --encode \
            --seconds "${LANE_SECONDS:-15}" >"$OUT/node_${round}_$i.json" \
            2>"$OUT/node_${round}_$i.log" &
    done
    wait
    echo "round $round:" | tee -a "$OUT/node.txt"
    grep -h "bench.lanes" "$OUT"/node_"${round}"_*.log | tee -a "$OUT/node.txt"
done
