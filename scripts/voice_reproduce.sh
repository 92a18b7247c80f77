#!/usr/bin/env bash
# The voice's figures from a fresh voice-only enrolment, as a new user gets them: the cpu
# preset on LJ Speech's training split (features, acoustic model, vocoder), then `eval
# voice` on its eval split (in-domain and unseen-sentence WER, similarity). With BUSY=1
# another process keeps one core busy for the whole enrolment; the evaluation runs after
# it, on a quiet machine.
#
#   scripts/voice_reproduce.sh [WORKDIR]          # idle
#   BUSY=1 scripts/voice_reproduce.sh [WORKDIR]   # one core busy
#   VOICE_MINUTES=33 scripts/voice_reproduce.sh W   # an explicit cap: trains even where
#                                                   # the cap fits less than the floor
#
# Prints the plan line, the wall time and the evaluation's JSON; all stay in WORKDIR.
set -euo pipefail
W=${1:-build/voice-repro}
DATA=${DATA:-../shared/data/ljspeech}
TRAIN=${TRAIN:-train}
EVAL=${EVAL:-eval}
TRANSCRIPT=${TRANSCRIPT:-metadata.csv}
TW=${TWINCAST:-.venv/bin/twincast}
CAP=()
if [ -n "${VOICE_MINUTES:-}" ]; then CAP=(--voice-minutes "$VOICE_MINUTES"); fi
rm -rf "$W"
mkdir -p "$W"
. "$(dirname "$0")/busy.sh"
busy_start
start=$(date +%s)
"$TW" enrol --voice "$DATA/$TRAIN" --transcript "$DATA/$TRANSCRIPT" --workdir "$W" \
  --preset cpu --name voice "${CAP[@]}" 2>&1 | tee "$W/enrol.log"
echo "enrolment took $(( $(date +%s) - start )) s" | tee -a "$W/enrol.log"
busy_stop
"$TW" eval voice "$W/avatars/voice" --data "$DATA/$EVAL" -o "$W/eval" | tee "$W/eval.json"
