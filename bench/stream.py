"""``twincast bench stream``: what one RTMP stream costs and how fast it reacts.

For each output size the server pushes one stream to a local nginx ingest while a viewer
in another process plays it back. First the avatar stands idle (nothing to render): the CPU
time of the server and its push process over that stretch, per second of stream, is the
cost of the stream itself (pacing, scaling, H.264 and AAC encoding, FLV over RTMP). Then
it is sent sentences: the time from each ``say`` request to the first frame with a moving
mouth in the played-back stream (face mesh on the received frames, as ``bench serve``
reads them), and the CPU including rendering and speech synthesis.
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


def _first_moving(vt: np.ndarray, opening: np.ndarray, says: list[float]) -> list[float]:
    idle = opening[: max(1, int(np.searchsorted(vt, says[0])))]
    rest = np.nanmax(idle) if np.isfinite(idle).any() else 0.0
    moving = np.nan_to_num(opening, nan=0.0) > rest + 0.02
    both = moving & np.r_[moving[1:], False]
    out = []
    for s in says:
        v = np.nonzero((vt > s) & both)[0]
        if len(v):
            out.append(round(float(vt[v[0]] - s) * 1000, 1))
    return out


def _one(bundle: Path, size: tuple[int, int], idle_s: float, work: Path) -> dict:
    import aiohttp

    from bench.localrtmp import LocalRtmp
    from bench.serve import mouth_openings
    from streaming.app import Server, ServerConfig, bundle_names
    from streaming.routes import RunningServer

    rtmp = LocalRtmp(work / f"nginx{size[1]}")
    rtmp.start()
    # Not admission by the host's load: the benchmark fills the host on purpose.
    srv = Server(bundle_names([bundle]), ServerConfig(token="bench", max_sessions=4,
                                                      allow_unconsented=True,
                                                      host_share=None))
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

        async def run() -> tuple[str, dict, list[float]]:
            async with aiohttp.ClientSession() as http:
                made = await post(http, "/v1/streams", {"rtmp": url, "width": size[0],
                                                        "height": size[1]})
                await asyncio.sleep(2.0)  # connected, encoder warm
                output = srv.registry.get(made["id"]).output.push
                pids = (output.pid,)  # type: ignore[attr-defined]
                c0, w0 = _cpu_s(pids), time.monotonic()
                await asyncio.sleep(idle_s)
                idle = {"cpu": _cpu_s(pids) - c0, "wall": time.monotonic() - w0}
                says = []
                c0, w0 = _cpu_s(pids), time.monotonic()
                for text in SENTENCES:
                    says.append(time.time())
                    await post(http, f"{made['location']}/say", {"text": text})
                    await asyncio.sleep(5.0)
                idle["speak_cpu"] = _cpu_s(pids) - c0
                idle["speak_wall"] = time.monotonic() - w0
                return made["id"], idle, says

        sid, cpu, says = asyncio.run(run())
        state = srv.sessions[sid].describe()
        reader.wait(timeout=total + 60)
    finally:
        reader.kill()
        running.stop()
        rtmp.kill()
    with np.load(out) as z:
        vt, frames = z["video_t"], list(z["frames"])
    opening = mouth_openings(frames)
    firsts = _first_moving(vt, opening, says)
    return {"size": f"{size[0]}x{size[1]}",
            "cpu_core_s_per_s_idle": round(cpu["cpu"] / cpu["wall"], 3),
            "cpu_core_s_per_s_speaking": round(cpu["speak_cpu"] / cpu["speak_wall"], 3),
            "say_to_first_frame_ms": firsts,
            "say_to_first_frame_ms_p50": float(np.median(firsts)) if firsts else None,
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
