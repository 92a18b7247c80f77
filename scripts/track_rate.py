"""How fast a server's sessions actually reach their viewers: ``twincast serve`` in a child
process, N aiortc viewers (optionally all speaking a sentence), and per viewer the video
and audio frames received per second over a window, how much stream time the video
covered in it (less than the wall time: the video fell behind), how far behind its
first frame's pace the video was at the window's end, the frames the server skipped to
keep time, the server's CPU (cores) and the host's busy/steal/idle shares.

    .venv/bin/python scripts/track_rate.py BUNDLE [--viewers 2] [--say] [--window 8]

Prints JSON. Used for the README's figures on a host short of CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCE = "Place blue at F two now, then bin red by G nine again soon please."


def _cpu(pid: int) -> tuple[int, list[int]]:
    """The process's CPU ticks and the host's /proc/stat line."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    host = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return int(fields[11]) + int(fields[12]), [int(x) for x in host]


async def measure(bundle: Path, viewers: int, say: bool, window: float) -> dict:
    import aiohttp

    from bench.client import open_session
    from bench.server_process import ServerProcess

    srv = ServerProcess(bundle, Path(tempfile.mkdtemp()) / "serve.log", token="rate",
                        args=("--host-share", "0"))
    auth = {"Authorization": "Bearer rate"}
    try:
        async with aiohttp.ClientSession() as http:
            await srv.wait_ready(http)
            vs = [await open_session(http, srv.url, "rate") for _ in range(viewers)]
            got: list[dict[str, list]] = [{"video": [], "audio": []} for _ in vs]

            async def drain(i: int, kind: str) -> None:
                while True:
                    f = await vs[i].tracks[kind].recv()
                    got[i][kind].append((time.monotonic(), f.pts))

            pumps = [asyncio.ensure_future(drain(i, k)) for i in range(viewers)
                     for k in ("video", "audio")]

            async def stats() -> list[dict]:
                out = []
                for v in vs:
                    async with http.get(f"{srv.url}{v.location}", headers=auth) as r:
                        out.append(await r.json())
                return out

            if say:
                for v in vs:
                    async with http.post(f"{srv.url}{v.location}/say", headers=auth,
                                         json={"text": SENTENCE}) as r:
                        r.raise_for_status()
            await asyncio.sleep(3.0)  # the sentence under way
            before, cpu0, t0 = await stats(), _cpu(srv.pid), time.monotonic()
            await asyncio.sleep(window)
            t1, cpu1, after = time.monotonic(), _cpu(srv.pid), await stats()
            for p in pumps:
                p.cancel()
            for v in vs:
                await v.pc.close()
    finally:
        srv.stop()
    host = [b - a for a, b in zip(cpu0[1], cpu1[1], strict=True)]
    per = []
    for g, a, b in zip(got, before, after, strict=True):
        video = [(t, p) for t, p in g["video"] if t0 <= t < t1]
        audio = [t for t, _ in g["audio"] if t0 <= t < t1]
        per.append({"video_fps": round(len(video) / (t1 - t0), 1),
                    "audio_fps": round(len(audio) / (t1 - t0), 1),
                    "video_stream_s": round((video[-1][1] - video[0][1]) / 90000, 2)
                    if len(video) > 1 else None,
                    # How far the video was behind its own first frame's pace at the
                    # window's end (seconds of wall time not yet shown).
                    "video_behind_s": round((video[-1][0] - g["video"][0][0])
                                            - (video[-1][1] - g["video"][0][1]) / 90000, 2)
                    if video else None,
                    "frames_skipped": b.get("frames_skipped", 0) - a.get("frames_skipped", 0)})
    return {"viewers": viewers, "speaking": say, "window_s": round(t1 - t0, 2),
            "sessions": per,
            "server_cores": round((cpu1[0] - cpu0[0]) / 100 / (t1 - t0), 2),
            "host_busy_steal_idle": [round(x / sum(host), 2)
                                     for x in (sum(host[:3]), host[7], host[3])]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--viewers", type=int, default=2)
    ap.add_argument("--say", action="store_true")
    ap.add_argument("--window", type=float, default=8.0)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(measure(a.bundle, a.viewers, a.say, a.window))))


if __name__ == "__main__":
    main()
