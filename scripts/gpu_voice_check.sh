#!/usr/bin/env bash
# The voice's GPU check (the `gpu` preset's figures), for a session that is lent a device.
#
# Prepare here (CPU machine), once, from the enrolments the README's voice figures use
# (build/lj8: `twincast enrol --voice .../ljspeech/train ...`; build/grid: the GRID video
# enrolment):
#   .venv/bin/python -m training.voice.pack build/lj8 gpu/voice_lj      # ~41 MB
#   .venv/bin/python -m training.voice.pack build/grid gpu/voice_grid   # ~14 MB
#   (gpu/ is git-ignored: name gpu/voice_lj and gpu/voice_grid in the device tool's `carry`.)
# Run there:  bash scripts/gpu_voice_check.sh
#   Not yet run on a GPU. Budgeted at about 8.5 minutes with MINUTES=6: six for the acoustic
#   models (the vocoders' first stages, capped at 4, run beside them), then each voice's
#   adaptation (1 minute), calibration and export; give the device call timeout_s 560. The
#   full gpu preset (9 + 4 + 1 minutes) does not fit one 10-minute call.
# Both voices train at once. For each, the acoustic model and the vocoder's first stage train
# side by side in two processes (neither fills the GPU); a third run then resumes both,
# adapts the vocoder, calibrates the speaking rate and exports a voice-only bundle. The
# bundles come back as float16 weights (what the device tool returns is capped at 64 MiB),
# packed in voices.tgz.* parts, with the logs in logs.tgz.
# Then here:
#   mkdir -p build/gpu-voices && cat FILES_AT/voices.tgz.* | tar xz -C build/gpu-voices
#   .venv/bin/twincast eval voice build/gpu-voices/lj_gpu --data ../shared/data/ljspeech/eval
#   .venv/bin/twincast eval voice build/gpu-voices/grid_gpu --data ../shared/data/grid_s1/eval
# The GPU machine has torch but neither phonemizer nor espeak-ng: the packed caches carry
# each utterance's phonemes. Try it on a CPU with
#   DEVICE=cpu MINUTES=0.3 VOCODER_MINUTES=0.2 PY=.venv/bin/python bash scripts/gpu_voice_check.sh
set -uo pipefail
OUT=${OUT:-build/gpu-voice-out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda:0}
MINUTES=${MINUTES:-6}
VOICES=${VOICES:-lj grid}
rm -rf gpu/logs gpu/bundles
mkdir -p "$OUT" gpu/logs gpu/bundles
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TWINCAST_PROGRESS=0
{ nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"; \
  "$PY" -c "import torch; print('torch', torch.__version__)"; } | tee gpu/logs/gpu.txt

train() {  # train VOICE [extra arguments]
    local v=$1
    shift
    "$PY" -m twincast.cli train voice "gpu/voice_$v" --preset gpu --device "$DEVICE" \
        --max-minutes "$MINUTES" ${VOCODER_MINUTES:+--vocoder-minutes "$VOCODER_MINUTES"} "$@"
}

start=$(date +%s)
pids=()
for v in $VOICES; do
    train "$v" --only acoustic >"gpu/logs/${v}_acoustic.log" 2>&1 & pids+=($!)
    train "$v" --only vocoder >"gpu/logs/${v}_vocoder.log" 2>&1 & pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
echo "stages trained in $(( $(date +%s) - start )) s (failed: $failed)" | tee -a gpu/logs/gpu.txt
pids=()
for v in $VOICES; do
    train "$v" --name "${v}_gpu" >"gpu/logs/${v}_finish.log" 2>&1 & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
echo "finished in $(( $(date +%s) - start )) s (failed: $failed)" | tee -a gpu/logs/gpu.txt
for v in $VOICES; do
    b="gpu/voice_$v/avatars/${v}_gpu"
    [ -f "$b/manifest.json" ] || continue
    "$PY" scripts/half_voice.py "$b" && rm -rf "gpu/bundles/${v}_gpu" && cp -r "$b" gpu/bundles/
    for f in "gpu/voice_$v/voice/"*.png "gpu/voice_$v/voice/"*history.json; do
        [ -f "$f" ] && cp "$f" "gpu/logs/${v}_$(basename "$f")"
    done
done
tar czf "$OUT/logs.tgz" -C gpu logs
if [ -n "$(ls gpu/bundles)" ]; then
    tar czf - -C gpu/bundles . | split -b 16000000 -d - "$OUT/voices.tgz."
fi
tail -n 3 gpu/logs/*.log
ls -l "$OUT"
exit $failed
