"""A stream viewer for ``twincast bench stream``, run in a process of its own so that its
decoding is not counted in the server's CPU time.

    python -m bench.rtmp_reader URL OUT.npz SECONDS

Writes the arrival time (``time.time()``, once decoded) and the FLV timestamp (s) of every
video frame, and the same and the loudness of every audio frame."""

from __future__ import annotations

import sys
import time

import numpy as np


def main(url: str, out: str, seconds: float) -> None:
    import av

    vt, vpts, at, apts, rms = [], [], [], [], []
    with av.open(url, timeout=60) as c:
        t0 = time.monotonic()
        for packet in c.demux():
            for f in packet.decode():
                now = time.time()
                if isinstance(f, av.VideoFrame):
                    vt.append(now)
                    vpts.append(f.time if f.time is not None else np.nan)
                elif isinstance(f, av.AudioFrame):
                    pcm = f.to_ndarray().astype(np.float32)
                    at.append(now)
                    apts.append(f.time if f.time is not None else np.nan)
                    rms.append(float(np.sqrt(np.mean(pcm ** 2))))
            if time.monotonic() - t0 > seconds:
                break
    np.savez(out, video_t=np.array(vt), video_pts=np.array(vpts, np.float64),
             audio_t=np.array(at), audio_pts=np.array(apts, np.float64), rms=np.array(rms))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
