#!/usr/bin/env bash
# The motion bank's figures on the synthetic presenter at 1920x1080 (it nods on long words
# and sways more while speaking: the known mannerism): a 10-minute sample enrolled (features,
# then a ci-preset head: the motion figures do not depend on the mouth's quality, and the
# bank is written at the same 1080p either way), two half-minute samples of the same
# presenter with other scripts (seeds 11, 12) as held-out footage; `eval motion` driven by
# their audio, and the bank's size.
#
#   scripts/motion_check.sh [WORKDIR]      # default build/hd-motion
set -euo pipefail
W=${1:-build/hd-motion}
TW=${TWINCAST:-.venv/bin/twincast}
rm -rf "$W"
mkdir -p "$W"
scripts/hd_sample.sh "$W"
start=$(date +%s)
"$TW" enrol "$W/sample/sample.mp4" --transcript "$W/sample/transcript.txt" --workdir "$W" \
  --preset cpu --features-only
"$TW" train head "$W" --preset ci --name hd 2>&1 | tee "$W/train-head.log"
echo "enrolment (features, ci head, bank) took $(( $(date +%s) - start )) s"
du -sh "$W/avatars/hd"
"$TW" eval motion "$W/avatars/hd" --footage "$W/held/11/sample.mp4" "$W/held/12/sample.mp4" \
  -o "$W/eval-motion" | tee "$W/eval-motion.json"
