#!/usr/bin/env bash
# The head's figures on a synthetic presenter filmed at 1920x1080: a 10-minute sample to
# enrol (features, then the cpu preset's head, as `twincast enrol` runs them) and two
# half-minute samples of the same presenter with other scripts (seeds 11, 12) as its
# held-out footage; `eval head` on those. The working size, crop and on-screen enlargement
# are in WORKDIR/head/generator.json ("plan" -> "resolution").
#
#   scripts/sample_hd_check.sh [WORKDIR] [PRESET]     # default build/hd, cpu
set -euo pipefail
W=${1:-build/hd}
PRESET=${2:-cpu}
TW=${TWINCAST:-.venv/bin/twincast}
rm -rf "$W"
mkdir -p "$W"
scripts/hd_sample.sh "$W"
start=$(date +%s)
"$TW" enrol "$W/sample/sample.mp4" --transcript "$W/sample/transcript.txt" --workdir "$W" \
  --preset "$PRESET" --features-only
"$TW" train head "$W" --preset "$PRESET" --name hd 2>&1 | tee "$W/train-head.log"
echo "enrolment (features + head) took $(( $(date +%s) - start )) s"
"$TW" eval head "$W/avatars/hd" --footage "$W/held/11/sample.mp4" "$W/held/12/sample.mp4" \
  -o "$W/eval"
