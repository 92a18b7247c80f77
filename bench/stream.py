"""``twincast bench stream``: what one RTMP stream costs and how fast it reacts.

For each output size the server pushes one stream to a local nginx ingest while a viewer
in another process plays it back. First the avatar stands idle (nothing to render): the CPU
time of the server and its push process over that stretch, per second of stream, is the
cost of the stream itself (pacing, scaling, H.264 and AAC encoding, FLV over RTMP). Then
it is sent sentences: the time from each ``say`` request to the played-back frame that
paints its first word (found by its FLV timestamp and the session's events, as
``bench serve`` finds it by RTP timestamps) and to its first loud sound, and the CPU
including rendering and speech synthesis. The viewer times frames as FFmpeg hands them over
decoded, with no player's buffer after that; nginx and FFmpeg's RTMP reading come before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SENTENCES = ["Welcome back, everyone, and thank you for tuning in.",
             "Today we are looking at three new products.",
             "Send me your questions in the chat and I will answer them."]


def _cpu_s(pids: tuple[int, ...] = ()) -> float:
    """CPU seconds (user + system) of this process and of the given children (the push
    process, read from /proc while it runs)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def word_frame_arrivals(video_t: np.ndarray, video_pts: np.ndarray, connected_at: float,
                        events: list[dict], said: dict[str, float], fps: int
                        ) -> dict[str, float]:
    """utterance -> ms from its ``say`` request (``said``, ``time.time()``) to the arrival
    of the played-back frame that paints its first word.

    The push process numbers the frames it is given from the session time its connection
    began (``connected_at``), so a frame's FLV timestamp plus that is the session time it
    was shown at; the word is at ``speech_started``'s stream time plus the earliest word
    start of the utterance's ``words`` events (as ``bench.viewer`` reads a WebRTC
    viewer's frames)."""
    from bench.viewer import first_words

    words = first_words(events)
    # Frame numbers of the session's timeline (rounded: FLV keeps milliseconds).
    k = np.round((connected_at + np.asarray(video_pts, np.float64)) * fps)
    out = {}
    for u, at in said.items():
        if u not in words:
            continue
        word = round(words[u] * fps)
        i = np.nonzero(k >= word)[0]
        if len(i):
            out[u] = round(1000 * (float(video_t[i[0]]) - at), 1)
    return out


def first_sounds(audio_t: np.ndarray, rms: np.ndarray, said: dict[str, float]
                 ) -> dict[str, float]:
    """utterance -> ms from its ``say`` request to the first loud audio played back
    (``bench.serve``'s threshold; AAC decodes to full scale 1 as aiortc's viewer scales)."""
    from bench.serve import LOUD_RMS

    out = {}
    for u, at in said.items():
        i = np.nonzero((np.asarray(audio_t) > at) & (np.asarray(rms) > LOUD_RMS))[0]
        if len(i):
            out[u] = round(1000 * (float(audio_t[i[0]]) - at), 1)
    return out


def _one(bundle: Path, size: tuple[int, int], idle_s: float, work: Path) -> dict:
    import aiohttp

    from bench.localrtmp import LocalRtmp
    from streaming.app import Server, ServerConfig, bundle_names
    from streaming.routes import RunningServer

    rtmp = LocalRtmp(work / f"nginx{size[1]}")
    rtmp.start()
    # Not admission by the host's load: the benchmark fills the host on purpose. The
    # ingest is on loopback, which a server refuses unless its operator allows it.
    srv = Server(bundle_names([bundle]), ServerConfig(token="bench", max_sessions=4,
                                                      allow_unconsented=True,
                                                      host_share=None, lost_share=None,
                                                      rtmp_allow=("127.0.0.1",)))
    srv.load()
    running = RunningServer(srv)
    url = rtmp.url("bench")
    speak_s = 5.0 * len(SENTENCES)
    total = 2.0 + idle_s + speak_s + 2.0
    out = work / f"read{size[1]}.npz"
    reader = subprocess.Popen([sys.executable, "-m", "bench.rtmp_reader", url, str(out),
                               str(total)])
    try:
        time.sleep(1.0)  # the viewer waits on the ingest before the stream starts

        async def post(http, path: str, body: dict) -> dict:  # noqa: ANN001
            async with http.post(f"{running.url}{path}", json=body,
                                 headers={"Authorization": "Bearer bench"}) as r:
                if r.status >= 300:
                    raise RuntimeError(f"{path}: {r.status} {await r.text()}")
                return await r.json()

        async def run() -> tuple[str, object, dict, dict[str, float]]:
            async with aiohttp.ClientSession() as http:
                made = await post(http, "/v1/streams", {"rtmp": url, "width": size[0],
                                                        "height": size[1]})
                await asyncio.sleep(2.0)  # connected, encoder warm
                output = srv.registry.get(made["id"]).output.push
                pids = (output.pid,)  # type: ignore[attr-defined]
                c0, w0 = _cpu_s(pids), time.monotonic()
                await asyncio.sleep(idle_s)
                idle = {"cpu": _cpu_s(pids) - c0, "wall": time.monotonic() - w0}
                said: dict[str, float] = {}
                c0, w0 = _cpu_s(pids), time.monotonic()
                for text in SENTENCES:
                    at = time.time()
                    said[(await post(http, f"{made['location']}/say",
                                     {"text": text}))["utterance"]] = at
                    await asyncio.sleep(5.0)
                idle["speak_cpu"] = _cpu_s(pids) - c0
                idle["speak_wall"] = time.monotonic() - w0
                return made["id"], output, idle, said

        sid, output, cpu, said = asyncio.run(run())
        session = srv.sessions[sid]
        state = session.describe()
        events = [e.to_json() for e in session.events]
        push = dict(output.stats)  # type: ignore[attr-defined]
        reader.wait(timeout=total + 60)
    finally:
        reader.kill()
        running.stop()
        rtmp.kill()
    with np.load(out) as z:
        vt, vpts, at, rms = z["video_t"], z["video_pts"], z["audio_t"], z["rms"]
    # A frame dropped before the push process, or a second connection, would shift the
    # timestamps against the session's timeline: no word-frame figure then.
    whole = push["frames_dropped"] == 0 and push["connects"] == 1
    words = word_frame_arrivals(vt, vpts, push["connected_at"], events, said, session.cfg.fps) \
        if whole else {}
    firsts = list(words.values())
    sounds = list(first_sounds(at, rms, said).values())
    return {"size": f"{size[0]}x{size[1]}",
            "cpu_core_s_per_s_idle": round(cpu["cpu"] / cpu["wall"], 3),
            "cpu_core_s_per_s_speaking": round(cpu["speak_cpu"] / cpu["speak_wall"], 3),
            "say_to_first_frame_ms": firsts,
            "say_to_first_frame_ms_p50": float(np.median(firsts)) if firsts else None,
            "say_to_first_sound_ms": sounds,
            "say_to_first_sound_ms_p50": float(np.median(sounds)) if sounds else None,
            "frames_received": len(vt),
            "frames_dropped": state.get("rtmp_frames_dropped"),
            "frames_late": state.get("frames_late"), "connects": state.get("rtmp_connects")}


def bench_stream(bundle: Path, sizes: tuple[tuple[int, int], ...] = ((1280, 720),
                                                                     (1920, 1080)),
                 idle_s: float = 10.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="twincast-bench-stream-") as tmp:
        runs = [_one(bundle, s, idle_s, Path(tmp)) for s in sizes]
    return {"bundle": str(bundle), "method": "one stream to a local nginx RTMP ingest, "
            "played back by a viewer in another process; CPU is the user+system time of "
            "the server process and its push process per second of stream (2 cores here)",
            "runs": runs}


if __name__ == "__main__":  # pragma: no cover - use ``twincast bench stream``
    print(json.dumps(bench_stream(Path(sys.argv[1])), indent=2))
