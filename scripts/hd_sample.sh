#!/usr/bin/env bash
# The 1920x1080 synthetic presenter the 1080p checks share: 10 minutes to enrol
# (WORKDIR/sample) and two half-minute samples of the same presenter with other scripts
# (seeds 11, 12) as held-out footage (WORKDIR/held/11, WORKDIR/held/12).
#
#   scripts/hd_sample.sh WORKDIR
set -euo pipefail
W=$1
TW=${TWINCAST:-.venv/bin/twincast}
"$TW" sample --out "$W/sample" --minutes 10 --size 1920x1080 --seed 0
for s in 11 12; do
  "$TW" sample --out "$W/held/$s" --minutes 0.5 --size 1920x1080 --seed "$s"
done
