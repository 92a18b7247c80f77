"""The RTMP push itself, in a process of its own (started by ``streaming.rtmp``).

    python -m streaming.rtmp_push   < CONFIG_JSON_LINE records

FFmpeg's RTMP client blocks while it connects, and PyAV holds Python's interpreter lock
while it opens the connection: an ingest that accepts and then stays silent would freeze
every thread of the server. Here it can only freeze this process, which the server kills
and replaces. Only PyAV and numpy are needed.

stdin's first line is the configuration as JSON (the ingest URL holds the stream key: on
the command line, any user's ``ps`` would show it); then come fixed-size records, one per
video frame: the frame as I420 (width x height
x 1.5 bytes) followed by its audio as 16-bit mono samples. stdout says ``live`` once the
ingest has taken the stream header and the first frame.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from streaming.tls_relay import RelayRefused


def record_size(cfg: dict) -> tuple[int, int]:
    """(video bytes, audio bytes) of one record."""
    video = cfg["width"] * cfg["height"] * 3 // 2
    audio = cfg["audio_rate"] // cfg["fps"] * 2
    return video, audio


class Connection:
    """One FLV stream to the ingest: its own encoders, timestamps from zero."""

    def __init__(self, cfg: dict):
        import av

        self.cfg = cfg
        fps, rate = cfg["fps"], cfg["audio_rate"]
        self.relay = None
        url = cfg["url"]
        if url.startswith("rtmps://"):
            url = self._through_relay(url, cfg.get("cafile"))
        try:
            self.out = av.open(url, mode="w", format="flv")
        except Exception:
            self._close_relay()
            raise
        v = self.out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = cfg["width"], cfg["height"], "yuv420p"
        v.bit_rate = cfg["video_kbps"] * 1000
        gop = max(1, int(round(cfg["keyframe_s"] * fps)))
        # zerolatency: no lookahead or B-frames, a frame leaves as soon as it is encoded;
        # a fixed keyframe interval, as ingests want.
        v.options = {"preset": cfg["preset"], "tune": "zerolatency", "g": str(gop),
                     "keyint_min": str(gop), "sc_threshold": "0", "bf": "0"}
        a = self.out.add_stream("aac", rate=rate)
        a.layout = "mono"
        a.bit_rate = cfg["audio_kbps"] * 1000
        self.v, self.a = v, a
        self.k = 0
        self.samples = 0

    def _through_relay(self, url: str, cafile: str | None) -> str:
        """The loopback URL FFmpeg pushes to, carried over TLS checked by the relay
        (``streaming.tls_relay``). The RTMP handshake then names the loopback address as
        its tcUrl (PyAV gives FFmpeg's protocol no options to set it); ingests route by the
        application and stream key, which are unchanged."""
        from streaming.tls_relay import TlsRelay

        parts = urlsplit(url)
        self.relay = TlsRelay(parts.hostname or "", parts.port or 443, cafile)
        return urlunsplit(("rtmp", f"127.0.0.1:{self.relay.port}", parts.path, parts.query,
                           ""))

    def _close_relay(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None

    def write(self, i420: np.ndarray, pcm: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts, frame.time_base = self.k, Fraction(1, self.cfg["fps"])
        self.k += 1
        for p in self.v.encode(frame):
            self.out.mux(p)
        af = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        af.sample_rate, af.pts = self.cfg["audio_rate"], self.samples
        af.time_base = Fraction(1, self.cfg["audio_rate"])
        self.samples += len(pcm)
        for p in self.a.encode(af):
            self.out.mux(p)

    def close(self) -> None:
        for s in (self.v, self.a):
            for p in s.encode():
                self.out.mux(p)
        self.out.close()
        self._close_relay()


def main(cfg: dict | None = None) -> int:
    src = sys.stdin.buffer
    if cfg is None:
        cfg = json.loads(src.readline())
    vbytes, abytes = record_size(cfg)
    w, h = cfg["width"], cfg["height"]
    conn = None
    try:
        while True:
            rec = src.read(vbytes + abytes)
            if len(rec) < vbytes + abytes:  # the server closed the pipe: finish cleanly
                break
            i420 = np.frombuffer(rec[:vbytes], np.uint8).reshape(h * 3 // 2, w)
            pcm = np.frombuffer(rec[vbytes:], np.int16)
            if conn is None:
                conn = Connection(cfg)
                conn.write(i420, pcm)
                print("live", flush=True)
            else:
                conn.write(i420, pcm)
        if conn is not None:
            conn.close()
    except RelayRefused as e:
        print(f"error {e}", flush=True)
        return 3
    except Exception as e:  # noqa: BLE001 - any failure: the server reconnects
        print(f"error {str(e)[:300]}", flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
