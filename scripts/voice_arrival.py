"""When a voice's chunks arrive, against when the face needs them, with the cores shared.

A child process keeps two threads of matrix products running (standing in for a render lane
on a 2-core host) while this one speaks answer-like sentences on one thread, as a session's
synthesis worker does. For each sentence: the first chunk's latency, and for each later
chunk its slack (how long before the first video frame that needs it is due: speech
starting 0.1 s after the first chunk, each frame needing 0.24 s of audio past its time).
Negative slack is a frame shown without its mouth.

    .venv/bin/python scripts/voice_arrival.py BUNDLE [--rounds 3]

Prints JSON: first_chunk_ms p50/max, slack_ms p50/min, chunks per sentence.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LOAD = """
import time, torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    for _ in range(20):
        a @ a
    time.sleep(0.004)
"""
SENTENCES = ("It comes in blue, green and black.",
             "The blue one is the most popular this autumn.",
             "Anything else I can tell you?",
             "Hello there, and welcome to the show.")
MARGIN_S = 0.1
LOOKAHEAD_S = 0.24


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch

    from avatar.voice import Voice

    torch.set_num_threads(1)
    voice = Voice.load(args.bundle)
    voice.say("Warm up.")
    load = subprocess.Popen([sys.executable, "-c", LOAD])
    firsts, slacks, chunks = [], [], []
    try:
        time.sleep(1.0)
        for _ in range(args.rounds):
            for text in SENTENCES:
                t0 = time.perf_counter()
                have, first, n = 0.0, 0.0, 0
                for c in voice.speak(text):
                    now = time.perf_counter() - t0
                    if n == 0:
                        first = now
                        firsts.append(now * 1000)
                    else:
                        slacks.append((first + MARGIN_S + have - LOOKAHEAD_S - now) * 1000)
                    have += c.duration
                    n += 1
                chunks.append(n)
    finally:
        load.kill()
    out = {"bundle": str(args.bundle), "sentences": len(chunks),
           "first_chunk_ms_p50": round(float(np.median(firsts)), 1),
           "first_chunk_ms_max": round(max(firsts), 1),
           "slack_ms_p50": round(float(np.median(slacks)), 1) if slacks else None,
           "slack_ms_min": round(min(slacks), 1) if slacks else None,
           "chunks_per_sentence_p50": float(np.median(chunks))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
