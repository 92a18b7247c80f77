"""A stream viewer for ``twincast bench stream``, run in a process of its own so that its
decoding is not counted in the server's CPU time.

    python -m bench.rtmp_reader URL OUT.npz SECONDS

Writes the arrival time (``time.time()``) and a grey, 640-wide copy of every video frame,
and the arrival time and loudness of every audio frame."""

from __future__ import annotations

import sys
import time

import numpy as np


def main(url: str, out: str, seconds: float) -> None:
    import av
    import cv2

    vt, frames, at, rms = [], [], [], []
    with av.open(url, timeout=60) as c:
        t0 = time.monotonic()
        for packet in c.demux():
            for f in packet.decode():
                now = time.time()
                if isinstance(f, av.VideoFrame):
                    g = f.to_ndarray(format="gray")
                    scale = 640 / g.shape[1]
                    frames.append(cv2.resize(g, (640, int(round(g.shape[0] * scale))),
                                             interpolation=cv2.INTER_AREA))
                    vt.append(now)
                elif isinstance(f, av.AudioFrame):
                    pcm = f.to_ndarray().astype(np.float32)
                    at.append(now)
                    rms.append(float(np.sqrt(np.mean(pcm ** 2))))
            if time.monotonic() - t0 > seconds:
                break
    np.savez(out, video_t=np.array(vt), frames=np.stack(frames), audio_t=np.array(at),
             rms=np.array(rms))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
