#!/usr/bin/env bash
# The head's figures from a fresh enrolment, as a new user gets them: features, the cpu
# preset's head training, then `eval head` on GRID's held-out clips. With BUSY=1 another
# process keeps one core busy for the whole training (a user's machine is rarely idle);
# the evaluation runs after it, on a quiet machine, so only the training is loaded.
#
#   scripts/head_reproduce.sh [WORKDIR]          # idle
#   BUSY=1 scripts/head_reproduce.sh [WORKDIR]   # one core busy
#
# Prints the plan line and the evaluation's JSON; both stay in WORKDIR (head/, eval/).
set -euo pipefail
W=${1:-build/grid-repro}
DATA=${DATA:-../shared/data/grid_s1}
TW=${TWINCAST:-.venv/bin/twincast}
rm -rf "$W"
. "$(dirname "$0")/busy.sh"
busy_start
start=$(date +%s)
"$TW" enrol "$DATA/train" --transcript "$DATA/transcripts.tsv" --workdir "$W" \
  --preset cpu --features-only
"$TW" train head "$W" --preset cpu --name grid_s1 2>&1 | tee "$W/train-head.log"
echo "enrolment (features + head) took $(( $(date +%s) - start )) s"
busy_stop
"$TW" eval head "$W/avatars/grid_s1" --footage "$DATA/eval" -o "$W/eval"
