"""``twincast bench soak``: the server under steady load for a long time, and what grows.

Two real aiortc viewers make the avatar speak without pause (a sentence, then the next as
soon as it ends) and receive its audio and video as a viewer would; a third viewer comes,
says one sentence and leaves every ``churn_s`` (or is refused, 503, where the server's
admission finds the host full, by its rendering capacity or its CPU use: counted). The
server is ``twincast serve`` in a child process (``bench.server_process``), so what is
measured is the server alone: every ``sample_s`` its resident memory, open file
descriptors and threads are read; every ``window_s`` the steady
sessions' late frames (speech frames that had to be shown idle) over frames shown. What the
figures are for: memory that stops growing after warm-up, no window with late frames over
1 %, descriptors and threads flat, and the same audio-visual offset at the end as at the
start (a window of what the first viewer received, early on and after the run).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streaming.hostload import read_cpu_ticks

log = logging.getLogger(__name__)

SENTENCES = ["Welcome back to the stream, it is good to see so many of you here.",
             "Today we look at the new collection, one piece at a time.",
             "If you have a question, write it in the chat and I will answer it.",
             "Let me show you the details of this one before we move on."]


AV_PAUSE_S = 1.5
"""Silence the recording viewer leaves after each sentence within an A/V window."""


@dataclass
class AvRecord:
    """What one viewer received while a window was open: per video frame its arrival, a
    JPEG of its grey picture (the mouth) and its mark features (8 numbers); per 20 ms of
    sound its arrival, RMS and mono samples. Kept small (it is in the benchmark's process,
    beside the viewers): a 40-s window of 512 px video holds about 20 MB, its sound 8 MB."""

    windows: list[tuple[float, float]]
    video: list[list[tuple[float, bytes]]] = field(default_factory=list)
    audio: list[list[tuple[float, float]]] = field(default_factory=list)
    video_marks: list[list[np.ndarray]] = field(default_factory=list)
    audio_pcm: list[list[np.ndarray]] = field(default_factory=list)
    pts: list[dict[str, list[int]]] = field(default_factory=list)
    """Each track's RTP timestamps as received (the stream's own clock), kept with the
    recordings."""
    audio_rate: int = 48000

    def __post_init__(self) -> None:
        self.video = [[] for _ in self.windows]
        self.audio = [[] for _ in self.windows]
        self.video_marks = [[] for _ in self.windows]
        self.audio_pcm = [[] for _ in self.windows]
        self.pts = [{"video": [], "audio": []} for _ in self.windows]

    def which(self, t: float) -> int | None:
        for i, (a, b) in enumerate(self.windows):
            if a <= t < b:
                return i
        return None

    def save(self, i: int, path: Path) -> None:
        """Window ``i``'s arrivals, mark features and sound, for reading again
        (``bench.av_marks.mark_skew``) without re-running the soak."""
        np.savez_compressed(path, video_t=np.array([t for t, _ in self.video[i]]),
                            video_marks=np.array(self.video_marks[i]).reshape(-1, 8),
                            audio_t=np.array([t for t, _ in self.audio[i]]),
                            audio=np.concatenate(self.audio_pcm[i] or [np.zeros(0)]),
                            audio_len=np.array([len(p) for p in self.audio_pcm[i]]),
                            audio_rate=self.audio_rate,
                            video_pts=np.array(self.pts[i]["video"], np.int64),
                            audio_pts=np.array(self.pts[i]["audio"], np.int64))

    def offsets(self, i: int) -> dict:
        """Window ``i``'s A/V offset from the marks (``bench.av_marks``), the mouth's lag
        behind loud sound where a face moves with it, and what the window held."""
        from bench.av_marks import mark_skew

        marks = mark_skew(np.array([t for t, _ in self.video[i]]),
                          np.array(self.video_marks[i]).reshape(-1, 8),
                          np.array([t for t, _ in self.audio[i]]), self.audio_pcm[i],
                          self.audio_rate, video_pts=np.array(self.pts[i]["video"]),
                          audio_pts=np.array(self.pts[i]["audio"]))
        lag, held = av_offset_ms(self.video[i], self.audio[i])
        return {"marks_ms": marks.skew_ms, "marks": marks.describe(), "mouth_lag_ms": lag,
                "held": held}


async def _viewer(url: str, token: str, stop: asyncio.Event, says: int | None,
                  log_sid: list[str], record: AvRecord | None = None) -> int:
    """A viewer that speaks ``says`` sentences (None: until ``stop``), each after the
    previous one ended; returns how many it said. ``record``: keep what arrives within its
    windows, for the A/V offset."""
    import aiohttp
    import cv2

    from avatar.video_mark import thumbnail_features
    from bench.client import open_session

    auth = {"Authorization": f"Bearer {token}"}
    said = 0
    async with aiohttp.ClientSession() as http:
        v = await open_session(http, url, token)
        log_sid.append(v.location.rsplit("/", 1)[1])

        async def drain(kind: str) -> None:
            while True:
                f = await v.tracks[kind].recv()
                now = time.monotonic()
                i = record.which(now) if record is not None else None
                if i is None:
                    continue
                assert record is not None
                record.pts[i][kind].append(-1 if f.pts is None else int(f.pts))
                if kind == "video":
                    grey = cv2.cvtColor(f.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY)
                    record.video[i].append((now, cv2.imencode(".jpg", grey)[1].tobytes()))
                    record.video_marks[i].append(thumbnail_features(grey))
                else:
                    # Packed samples, channels interleaved: the marks are read in mono.
                    pcm = f.to_ndarray().astype(np.float32).reshape(
                        -1, len(f.layout.channels)).mean(axis=1) / 32768
                    record.audio_rate = f.sample_rate
                    record.audio[i].append((now, float(np.sqrt(np.mean(pcm ** 2)))))
                    record.audio_pcm[i].append(pcm)

        pumps = [asyncio.ensure_future(drain("video")), asyncio.ensure_future(drain("audio"))]
        try:
            while not stop.is_set() and (says is None or said < says):
                async with http.post(f"{url}{v.location}/say",
                                     json={"text": SENTENCES[said % len(SENTENCES)]},
                                     headers=auth) as r:
                    r.raise_for_status()
                said += 1
                # Until it has been said: the session is idle again.
                while not stop.is_set():
                    await asyncio.sleep(0.5)
                    async with http.get(f"{url}{v.location}", headers=auth) as r:
                        if not (await r.json()).get("queued"):
                            break
                if record is not None and record.which(time.monotonic()) is not None:
                    # In an A/V window the recording viewer leaves a clear silence between
                    # sentences: speaking back to back, sound was on nearly all the time
                    # and the lag that lines sound up with a moving mouth was no measure
                    # (runs of a minute read anything from -320 to +320 ms).
                    await asyncio.sleep(AV_PAUSE_S)
        finally:
            for p in pumps:
                p.cancel()
            async with http.delete(f"{url}{v.location}", headers=auth):
                pass
            await v.pc.close()
    return said


def av_offset_ms(video: list[tuple[float, bytes]], audio: list[tuple[float, float]]
                 ) -> tuple[float | None, dict]:
    """How far the received mouth trails the received sound in one recorded window
    (``bench.serve.av_lag``, whole frames of 40 ms), and what the window held (frames of
    video and audio, video frames with a face found, loud audio frames): an unmeasured
    window says why. The viewers speak back to back, with no long idle stretch to learn
    the mouth's rest from: the rest is the window's 10th percentile of openings (the mouth
    shut between words and sentences)."""
    import cv2

    from bench.serve import LOUD_RMS, av_lag, mouth_openings

    held = {"video": len(video), "audio": len(audio), "faces": 0,
            "loud": sum(r > LOUD_RMS for _, r in audio)}
    if len(video) < 50 or len(audio) < 50:
        return None, held
    frames = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE)
              for _, b in video]
    opening = mouth_openings(frames)
    held["faces"] = int(np.isfinite(opening).sum())
    if not held["faces"]:
        return None, held
    rest = float(np.nanpercentile(opening, 10))
    lag = av_lag(np.array([t for t, _ in video]), opening, np.array([t for t, _ in audio]),
                 np.array([r for _, r in audio]), rest)
    return float(lag * 40), held


def bench_soak(bundle: Path, minutes: float, window_s: float = 300.0, churn_s: float = 60.0,
               sample_s: float = 10.0, av_window_s: float = 40.0, viewer_nice: int = 10,
               work: Path | None = None) -> dict:
    import tempfile

    import aiohttp

    from bench.server_process import ServerProcess

    work = Path(work or tempfile.mkdtemp(prefix="twincast-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(bundle, work / "serve.log", token="soak")
    # The viewers stand in for people on other machines: on a host this small they share
    # its cores with the server, so they yield them to it (a lower priority, set after the
    # server started: it keeps the normal one).
    if viewer_nice:
        os.nice(viewer_nice)
    samples: list[dict] = []
    windows: list[dict] = []
    steady: list[str] = []

    async def run() -> dict:
        async with aiohttp.ClientSession() as http:
            await server.wait_ready(http)
            return await _drive(http, server, minutes, window_s, churn_s, sample_s,
                                av_window_s, samples, windows, steady, work)

    try:
        counts = asyncio.run(run())
    finally:
        exit_code = server.stop()
    warm = [s for s in samples if s["t_s"] >= min(600.0, minutes * 60 / 3)]
    growth = (warm[-1]["rss_mb"] / warm[0]["rss_mb"] - 1) if len(warm) >= 2 else None
    late = [w["late_ratio"] for w in windows if w["late_ratio"] is not None]
    return {"minutes": minutes, "window_s": window_s, "churn_s": churn_s,
            "sentences_said": counts["said"], "viewers_churned": counts["churned"],
            "rss_mb": {"start": samples[0]["rss_mb"],
                       "after_warmup": warm[0]["rss_mb"] if warm else None,
                       "end": samples[-1]["rss_mb"]},
            "rss_growth_after_warmup": None if growth is None else round(growth, 4),
            "late_ratio_by_window": late,
            "late_ratio_max": max(late) if late else None,
            "windows": windows,
            "fds": {"start": samples[0]["fds"], "end": samples[-1]["fds"],
                    "max": max(s["fds"] for s in samples)},
            "threads": {"start": samples[0]["threads"], "end": samples[-1]["threads"],
                        "max": max(s["threads"] for s in samples)},
            "av_offset_ms": counts["av"],
            "av_recordings": [str(work / "av_start.npz"), str(work / "av_end.npz")],
            "server_exit_code": exit_code,
            "samples": samples,
            "method": "twincast serve in a child process (memory, descriptors and threads "
                      "read from /proc; late frames from each session's own figures); 2 "
                      "aiortc viewers in the benchmark's process, at nice "
                      f"+{viewer_nice}, speaking back to back, and a third joining, saying "
                      "a sentence and leaving every churn_s; warm-up is the first 10 "
                      "minutes (a third of a shorter run) (bench/soak.py)"}


def late_causes(metrics: str) -> dict[str, float]:
    """From a server's ``/metrics`` text: frames dropped as too late by cause, summed over
    lanes, and ``bursts``."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        m = re.match(r'twincast_frames_late_by_cause_total\{(.*)\} (\S+)$', line)
        if m:
            cause = re.search(r'cause="([^"]+)"', m.group(1))
            if cause:
                out[cause.group(1)] = out.get(cause.group(1), 0.0) + float(m.group(2))
        elif line.startswith("twincast_late_bursts_total"):
            out["bursts"] = out.get("bursts", 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def thread_cpu(metrics: str) -> dict[str, float]:
    """From a server's ``/metrics`` text: its CPU seconds by kind of thread
    (``streaming.thread_cpu``)."""
    out: dict[str, float] = {}
    for m in re.finditer(r'^twincast_thread_cpu_seconds_total\{thread="([^"]+)"\} (\S+)$',
                         metrics, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def _host_ticks(path: Path = Path("/proc/stat")) -> list[float] | None:
    """The host's CPU clock ticks since boot (all cores: user nice system idle iowait irq
    softirq steal); None where there is no ``/proc/stat``."""
    read = read_cpu_ticks(path)
    return None if read is None else read[0]


def _host_shares(then: list[float] | None, now: list[float] | None) -> dict:
    """Between two readings: the host's busy share of its cores (every process, the
    viewers included) and the share a hypervisor took for other guests (steal): late
    frames in a window whose steal is high were lost to the host, not to the server."""
    if then is None or now is None:
        return {"host_busy": None, "host_steal": None}
    d = [b - a for a, b in zip(then, now, strict=True)]
    total = sum(d)
    if total <= 0:
        return {"host_busy": None, "host_steal": None}
    return {"host_busy": round((total - d[3] - d[4]) / total, 3),
            "host_steal": round(d[7] / total, 4)}


async def _drive(http: object, server: object, minutes: float, window_s: float,
                 churn_s: float, sample_s: float, av_window_s: float, samples: list[dict],
                 windows: list[dict], steady: list[str], work: Path) -> dict:
    """The run itself, once the server answers: viewers, churn, samples and windows."""
    url, token = server.url, server.token  # type: ignore[attr-defined]
    auth = {"Authorization": f"Bearer {token}"}
    t0 = time.monotonic()
    # A/V offset: a window early on (after the first sentences) and one after the run.
    early = min(20.0, minutes * 60 / 4)
    # A short run's early window may reach past its middle: the marks need about 20 s of
    # a window to find a block start in both tracks.
    av_window_s = min(av_window_s, minutes * 60 - early)
    record = AvRecord([(t0 + early, t0 + early + av_window_s),
                       (t0 + minutes * 60, t0 + minutes * 60 + av_window_s)])

    def sample() -> None:
        samples.append({"t_s": round(time.monotonic() - t0, 1),
                        **server.sample()})  # type: ignore[attr-defined]

    ticks_then = _host_ticks()

    async def causes() -> tuple[dict[str, float], dict[str, float]]:
        """The lanes' dropped frames by cause, and their bursts, and the server's CPU
        seconds by kind of thread, from ``/metrics``."""
        async with http.get(f"{url}/metrics") as r:  # type: ignore[attr-defined]
            text = await r.text()
        return late_causes(text), thread_cpu(text)

    async def totals() -> tuple[int, int, int, int]:
        shown = late = dropped = at_start = 0
        for sid in steady:
            async with http.get(f"{url}/v1/sessions/{sid}",  # type: ignore[attr-defined]
                                headers=auth) as r:
                if r.status == 200:
                    st = await r.json()
                    shown += st["frames_shown"]
                    late += st["frames_late"]
                    dropped += st["frames_dropped_late"]
                    at_start += st["frames_late_at_start"]
        return shown, late, dropped, at_start

    stop = asyncio.Event()
    churned: list[str] = []
    sample()
    tasks = [asyncio.ensure_future(_viewer(url, token, stop, None, steady,
                                           record if i == 0 else None)) for i in range(2)]

    async def churn() -> dict:
        n = {"joined": 0, "refused": 0, "refused_host_cpu": 0}
        while not stop.is_set():
            try:  # the run may end before the next viewer is due
                await asyncio.wait_for(stop.wait(), churn_s)
                break
            except TimeoutError:
                pass
            try:
                await _viewer(url, token, stop, 1, churned)
                n["joined"] += 1
            except RuntimeError as e:  # admission said no (a full host): counted
                if "503" not in str(e):
                    raise
                n["refused"] += 1
                # Which measure said no: the host's CPU use, or the lanes' frames/s.
                n["refused_host_cpu"] += "host's CPUs" in str(e)
        return n

    churner = asyncio.ensure_future(churn())
    end = t0 + minutes * 60
    last = (0, 0, 0, 0)
    last_causes, last_cpu = await causes()
    last_t = time.monotonic()
    next_window = t0 + window_s
    while time.monotonic() < end:
        await asyncio.sleep(min(sample_s, max(0.1, end - time.monotonic())))
        sample()
        if time.monotonic() >= next_window or time.monotonic() >= end:
            now = await totals()
            d_shown, d_late, d_dropped, d_start = (a - b for a, b in zip(now, last,
                                                                        strict=True))
            # Late: speech frames shown without their mouth; of those, the scheduler gave
            # up on some before rendering (the rest came back after their time).
            ticks_now = _host_ticks()
            now_causes, now_cpu = await causes()
            span, last_t = time.monotonic() - last_t, time.monotonic()
            windows.append({"end_s": round(time.monotonic() - t0, 1),
                            "frames_shown": d_shown, "frames_late": d_late,
                            "dropped_unrendered": d_dropped,
                            "late_in_first_5_of_a_sentence": d_start,
                            "late_ratio": round(d_late / d_shown, 4) if d_shown else None,
                            # Why the lanes dropped frames (any session's, the third
                            # viewer's too), and in how many bursts.
                            "dropped_by_cause": {k: int(v - last_causes.get(k, 0))
                                                 for k, v in now_causes.items()},
                            # Cores each kind of the server's threads kept busy on
                            # average: what rose in a window that went over.
                            "server_cores_by_thread": {
                                k: round((v - last_cpu.get(k, 0.0)) / max(span, 1e-9), 3)
                                for k, v in now_cpu.items()},
                            **_host_shares(ticks_then, ticks_now)})
            last, ticks_then, last_causes, last_cpu = now, ticks_now, now_causes, now_cpu
            next_window += window_s
    # The end's A/V window comes after the last sample, so what it keeps is not in the
    # memory figures.
    await asyncio.sleep(max(0.0, record.windows[1][1] - time.monotonic()))
    stop.set()
    said = await asyncio.gather(*tasks)
    for i, name in enumerate(("start", "end")):
        record.save(i, work / f"av_{name}.npz")
    start, end_ = record.offsets(0), record.offsets(1)
    drift = None if start["marks_ms"] is None or end_["marks_ms"] is None else \
        round(end_["marks_ms"] - start["marks_ms"], 1)
    return {"said": list(said), "churned": await churner,
            "av": {"start": start["marks_ms"], "end": end_["marks_ms"], "drift_ms": drift,
                   "window_s": av_window_s,
                   "method": "video arrival minus sound arrival of the same stream "
                             "instant, read from the marks both tracks carry "
                             "(bench/av_marks.py); positive: the picture trails",
                   "marks": {"start": start["marks"], "end": end_["marks"]},
                   "mouth_lag_ms": {"start": start["mouth_lag_ms"],
                                    "end": end_["mouth_lag_ms"]},
                   "held": {"start": start["held"], "end": end_["held"]}}}
