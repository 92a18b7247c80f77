"""What the motion bank adds to each rendered frame, in CPU milliseconds:
a session's walk (speaking and silence in turns, seed 0) is made ready frame by frame
as the bank's thread does it (decoding chunks, mixing cross-fades, preparing the frame
for compositing), timed with the process's CPU clock, so the figure does not move with
the host's neighbours as frames/s does. The process's, not the thread's: FFmpeg's
swscale converted frames on threads of its own (0.4-0.7 ms of a 720p frame that a
thread clock did not see).

    .venv/bin/python scripts/bank_cost.py BUNDLE [--frames 1500]

Prints JSON: frames, cross-fade share, chunk decodes per frame, and ms per frame for
decoding, mixing and preparing, and their sum.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import cv2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--frames", type=int, default=1500)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # as the bank's thread runs it
    from avatar.avatar import Avatar

    av = Avatar.load(args.bundle, "cpu")
    bank = av.bank
    if bank is None:
        raise SystemExit(f"{args.bundle}: no motion bank")
    walker = av.walker(0)
    # Six seconds of speech, then two of silence, in turns.
    entries = [walker.next("speaking" if k % 200 < 150 else "silent")
               for k in range(args.frames)]
    spent = {"decode": 0.0, "mix": 0.0, "prepare": 0.0}
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for e in entries:
        t = time.process_time()
        for f in e.frames():
            bank.rgb(f)
        t1 = time.process_time()
        if e.b >= 0:
            bank.show(e)
        t2 = time.process_time()
        bank.background(e)
        t3 = time.process_time()
        spent["decode"] += t1 - t
        spent["mix"] += t2 - t1
        spent["prepare"] += t3 - t2
    n = len(entries)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    out = {"bundle": str(args.bundle), "frame_size": av.manifest.frame_size, "frames": n,
           "crossfade_share": round(sum(e.b >= 0 for e in entries) / n, 3),
           "chunks_decoded_per_frame": round(bank.decoded_chunks / n, 3),
           # New memory touched (4 KiB pages): a few microseconds each on a virtual host.
           "page_faults_per_frame": round(faults / n, 1),
           **{f"{k}_ms_per_frame": round(v * 1000 / n, 2) for k, v in spent.items()},
           "bank_ms_per_frame": round(sum(spent.values()) * 1000 / n, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
