"""``twincast bench serve``: the server and N real aiortc clients on loopback.

Each client connects, then in turns: sends a sentence, receives audio and video as a viewer
would, and half way through one of its sentences interrupts. Everything is timed at the
client: text to first audible audio; text to the arrival of the frame that paints the
sentence's first word (read from the frames' RTP timestamps and the session's events:
``bench.viewer``), each also to when its packets came in (before the aiortc viewer's own
jitter buffer); the A/V offset, from the invisible marks both tracks carry
(``bench.av_marks``: the same stream instant's arrival in picture and in sound); the
interval between video frames; and interrupt to silence. Late frames are the server's count
of speech frames that had to be shown idle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.viewer import TimedViewer, pct

log = logging.getLogger(__name__)

SENTENCES = ["Good morning, and thank you for joining the stream today.",
             "Here is what we will talk about in the next few minutes.",
             "Please send your questions at any time, I will read them out.",
             "That was a great question, let me think about it for a moment."]


@dataclass
class ClientLog:
    viewer: TimedViewer
    says: list[tuple[float, str]] = field(default_factory=list)
    """(posted, utterance) of every sentence."""
    interrupts: list[float] = field(default_factory=list)
    state: dict = field(default_factory=dict)


async def _client(url: str, token: str, seconds: float, index: int) -> ClientLog:
    import aiohttp

    out = ClientLog(TimedViewer(marks=True))
    v = out.viewer
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        await v.open(http, url, token)
        await asyncio.sleep(1.0 + 0.1 * index)  # media flowing, clocks started
        await v.note_skipped(http, auth)
        end = time.perf_counter() + seconds
        k = 0
        while time.perf_counter() < end:
            text = SENTENCES[(k + index) % len(SENTENCES)]
            t = time.perf_counter()
            async with http.post(f"{url}{v.location}/say", json={"text": text},
                                 headers=auth) as r:
                r.raise_for_status()
                out.says.append((t, (await r.json())["utterance"]))
            if k % 3 == 2:  # every third sentence is cut short
                await asyncio.sleep(1.5)
                out.interrupts.append(time.perf_counter())
                async with http.post(f"{url}{v.location}/interrupt", headers=auth) as r:
                    r.raise_for_status()
                await asyncio.sleep(1.0)
            else:
                await asyncio.sleep(4.5)
            k += 1
        async with http.get(f"{url}{v.location}", headers=auth) as r:
            out.state = await r.json()
        await v.close()
        async with http.delete(f"{url}{v.location}", headers=auth) as r:
            pass
    return out


def mouth_openings(frames: list[np.ndarray]) -> np.ndarray:
    from avatar.quiet import native_stderr_silenced
    from training import face as F
    from training.config import FaceConfig

    out = np.full(len(frames), np.nan)
    with native_stderr_silenced():  # MediaPipe's native logging, on its first frames too
        tracker = F.FaceTracker(FaceConfig())
        try:
            for i, g in enumerate(frames):
                rgb = np.repeat(g[:, :, None], 3, 2)
                obs = tracker(rgb, (rgb.shape[1], rgb.shape[0]))
                if obs.landmarks is not None:
                    out[i] = F.mouth_opening(obs.landmarks)
        finally:
            tracker.close()
    return out


LOUD_RMS = 0.01
"""Received audio louder than this (RMS of a 20 ms frame) counts as sound."""
MOVING_MARGIN = 0.02
"""A mouth opening this far beyond the widest idle opening counts as moving."""


def av_lag(vt: np.ndarray, opening: np.ndarray, at: np.ndarray, rms: np.ndarray,
           rest: float, reach: int = 8) -> int:
    """Video frames by which the mouth's movement trails the sound (negative: leads): the
    lag that best lines up *when* there is sound (loud audio) with when the mouth moves
    (opening beyond ``rest`` + ``MOVING_MARGIN``), over all of a client's sentences, their
    starts, ends and interruptions. Loudness against the opening's size was tried first and does not
    work: within speech the two are weakly related (the mouth is shut on /m/, open on
    vowels of any loudness), and on an offline render, in sync by construction, it picked
    +5 frames; on the same render this one finds 0, and a video delayed by 1-3 frames (or
    advanced by 2) shows as exactly that."""
    moving = (np.nan_to_num(opening, nan=0.0) > rest + MOVING_MARGIN).astype(float)
    best, best_r = 0, -2.0
    if len(at) < 2:
        return best
    for lag in range(-reach, reach + 1):  # positive = mouth after sound
        # The sound as it was ``lag`` frames before each video frame's arrival: shifted by
        # time, not by frames received, so a video that skipped frames (a busy host keeps
        # it in time that way) is measured the same.
        when = vt - lag * 0.04
        inside = (when >= at[0]) & (when <= at[-1])
        x = (np.interp(when[inside], at, rms) > LOUD_RMS).astype(float)
        y = moving[inside]
        if len(x) > 10 and np.std(x) > 0 and np.std(y) > 0:
            r = float(np.corrcoef(x, y)[0, 1])
            if r > best_r:
                best, best_r = lag, r
    return best


def _analyse(logs: list[ClientLog], fps: int) -> dict:
    first_audio, first_frame, intervals, interrupt_ms, offsets = [], [], [], [], []
    audio_in, frame_in = [], []
    late = shown = late_start = dropped = 0
    for c in logs:
        v = c.viewer
        vt = np.array([t for t, _ in v.video])
        at = np.array([t for t, _ in v.audio])
        loud = np.array([r for _, r in v.audio]) > LOUD_RMS
        intervals += list(np.diff(vt) * 1000)
        word_at, word_in = v.word_frames(fps), v.word_frames(fps, packets=True)
        for s, uid in c.says:
            if (a := v.first_sound(s, LOUD_RMS)) is not None:
                first_audio.append((a - s) * 1000)
            if uid in word_at:
                first_frame.append((word_at[uid] - s) * 1000)
            if uid in word_in:
                frame_in.append((word_in[uid] - s) * 1000)
            if (a_in := v.first_sound(s, LOUD_RMS, packets=True)) is not None:
                audio_in.append((a_in - s) * 1000)
        for t in c.interrupts:
            after = np.nonzero(at > t)[0]
            # Silence that lasts: the first frame after which nothing is loud for 200 ms.
            for i in after:
                if not loud[i: i + 10].any():
                    interrupt_ms.append((at[i] - t) * 1000)
                    break
        skew = v.mark_skew(fps).skew_ms
        if skew is not None:
            offsets.append(skew)
        late += c.state.get("frames_late", 0)
        late_start += c.state.get("frames_late_at_start", 0)
        dropped += c.state.get("frames_dropped_late", 0)
        shown += c.state.get("frames_shown", 0)
    return {"first_audio_ms_p50": pct(first_audio, 50), "first_frame_ms_p50":
            pct(first_frame, 50), "first_frame_ms_p95": pct(first_frame, 95),
            # The same two when their packets came in, before the aiortc viewer's own
            # jitter buffer held them (bench.viewer).
            "first_audio_in_ms_p50": pct(audio_in, 50),
            "first_frame_in_ms_p50": pct(frame_in, 50),
            # The picture's delay behind its sound at the viewer (negative: it leads),
            # median over clients; None where the run was too short for a mark's block.
            "av_offset_ms": round(float(np.median(offsets)), 1) if offsets else None,
            "frame_interval_ms_p99": pct(intervals, 99),
            "late_frame_ratio": round(late / max(shown, 1), 4),
            # Of the late frames: how many were among a sentence's first five, and how
            # many the scheduler gave up on as unable to make their time.
            "late_frames": late, "late_frames_at_speech_start": late_start,
            "late_dropped_by_scheduler": dropped,
            "interrupt_ms_p95": pct(interrupt_ms, 95),
            "sentences": sum(len(c.says) for c in logs),
            "interrupts": sum(len(c.interrupts) for c in logs)}


def bench_serve(bundle: Path, sessions: int, seconds: float, devices: tuple[str, ...] = (
        "cpu",), max_batch: int = 16, precision: str = "auto") -> dict:
    from avatar.bundle import read_manifest
    from avatar.errors import TwincastError
    from streaming.app import Server, ServerConfig, bundle_names
    from streaming.routes import RunningServer
    from streaming.session import SessionConfig

    # Not verified here: the server checks every digest when it loads the bundle.
    manifest = read_manifest(Path(bundle), verify=False)
    if manifest.voice is None or manifest.head is None:
        # Its clients send text and time the moving mouth: both halves are needed.
        raise TwincastError(f"{bundle}: bench serve needs an avatar with a face and a voice; "
                            f"this one has no {'voice' if manifest.voice is None else 'face'} "
                            "(enrol it with a transcript or --voice)")
    srv = Server(bundle_names([bundle]), ServerConfig(host_share=None, lost_share=None,
        devices=devices, max_batch=max_batch, max_sessions=256, capacity_share=1e9,
        token="bench", precision=precision, allow_unconsented=True))
    srv.load()
    running = RunningServer(srv)
    try:
        async def run() -> list[ClientLog]:
            return list(await asyncio.gather(*(_client(running.url, srv.token, seconds, i)
                                               for i in range(sessions))))
        t0 = time.perf_counter()
        logs = asyncio.run(run())
        wall = time.perf_counter() - t0
    finally:
        running.stop()
    result = _analyse(logs, SessionConfig().fps)
    assert srv.scheduler is not None
    sizes = [n for lane in srv.scheduler.lanes for n in lane.stats.batch_sizes]
    rendered = sum(lane.stats.frames for lane in srv.scheduler.lanes)
    return {"sessions": sessions, "seconds": seconds, "devices": list(devices),
            "max_batch": max_batch, **result,
            # What the renderer did under this load: frames per second of the run, the
            # mean batch, and what its cost model says it could do at full batches.
            "rendered_fps": round(rendered / wall, 1),
            "mean_batch": round(float(np.mean(sizes)), 2) if sizes else None,
            "capacity_fps": round(srv.scheduler.capacity_fps(), 1),
            # Why the scheduler's late frames were late (``bench lanes`` reports the same).
            "late_by_cause": dict(sum((Counter(lane.stats.late_by_cause)
                                       for lane in srv.scheduler.lanes), Counter()))}
