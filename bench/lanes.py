"""``twincast bench lanes``: how many speaking sessions a device's render lane holds.

N sessions, all speaking without pause, hand their frames to the server's own scheduler
(``streaming.scheduler``) as a live session does: each frame ``render_ahead_frames`` before
it is shown, due ``deadline_margin_s`` before then, its audio conditioning computed ahead
(``FrameRequest.cond``). Sessions start at random phases of the frame period, as real ones
do. They speak over the idle loop, or with ``motion`` each walks the bundle's motion bank as
a live session does: its frames asked of the bank's thread a second ahead, and handed over
only once decoded and prepared (a frame not ready by its time is late, counted apart). A
frame the lane cannot render in time is late (the session would show its idle frame).
N rises until late frames pass ``stop_pct`` and the step between the last count under 1 %
and the first over it is then halved twice, so the figure is the most sessions measured
under 1 %. Beside it: what the server's admission rule (``Registry.reserve``) would admit
from the lanes' warm-up measure, the batches the lanes chose and their busy share.

With ``encode``, every session's frames are also VP8-encoded at their display time on this
machine's CPUs (``bench.encode_load``), and a frame encoded more than a frame period late
counts as lost too: sessions per node, not only per device. Speech synthesis and the WebRTC
transport are still left out: ``bench serve`` measures the whole path.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.avatar import Avatar, FrameRequest
from avatar.errors import TwincastError
from bench.runtime import load_bench_avatar, weights_kind

log = logging.getLogger(__name__)

TICK_S = 0.005
"""How often the sessions hand frames over (a live session's producer loop ticks so)."""
HELD_PCT = 1.0
"""A lane holds N sessions while under this share of their frames is late."""


@dataclass(frozen=True)
class LanesConfig:
    devices: tuple[str, ...] = ("cpu",)
    sessions: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64)
    """Counts tried in rising order (and halved steps between the last held and the first
    not held)."""
    seconds: float = 10.0
    """Each count runs this long."""
    max_batch: int = 16
    stop_pct: float = 5.0
    """Stop rising once this share of frames is late."""
    refine: int = 2
    """Halvings of the step between held and not held."""
    seed: int = 0
    motion: bool = False
    """Each session walks the motion bank (its per-frame decoding and preparing counted)."""
    encode: bool = False
    """Also VP8-encode every session's frames at their display time on this machine's CPUs
    (``bench.encode_load``): what a node spends beside its lanes."""


class _Timed:
    """A renderer that adds up the seconds its calls take (the lane's busy time)."""

    def __init__(self, avatar: Avatar):
        self.avatar = avatar
        self.busy = 0.0

    def render(self, requests: list[FrameRequest]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = self.avatar.render(requests)
        self.busy += time.perf_counter() - t0
        return out


class _Count:
    """Frames back from the lanes, by outcome (called from the lane threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by = Counter()
        self.lateness: list[float] = []
        """Seconds before its deadline each rendered frame came back (negative: after)."""

    def done(self, job, frame, status: str) -> None:  # noqa: ANN001 - scheduler callback
        now = time.monotonic()
        with self.lock:
            self.by[status] += 1
            if status == "ok":
                self.lateness.append(job.deadline - now)


def _requests(avatar: Avatar, rng: np.random.Generator, n: int = 256) -> list[FrameRequest]:
    """Speech-like frames: mel windows of noise shaped like the training statistics, each
    conditioned ahead as a live session's are."""
    mel = (avatar.mel_mean + avatar.mel_std * rng.standard_normal(
        (n, avatar.gen.cfg.mel_bins, avatar.mel_frames))).astype(np.float32)
    cond = avatar.condition(mel)
    return [FrameRequest(idle_index=i, mel=mel[i], cond=cond[i]) for i in range(n)]


def run_sessions(avatars: list[Avatar], n: int, cfg: LanesConfig,
                 speech: list[FrameRequest]) -> dict:
    """``n`` sessions speaking for ``cfg.seconds`` through a fresh scheduler over one lane
    per avatar (each on its device); what came back in time."""
    from streaming.app import ServerConfig
    from streaming.scheduler import Lane, Scheduler, SchedulerConfig
    from streaming.session import SessionConfig

    scfg = SessionConfig()
    fps, ahead, margin = scfg.fps, scfg.render_ahead_frames, scfg.deadline_margin_s
    timed = [_Timed(a) for a in avatars]
    # CPU lanes on half the cores, as `serve` gives them (``ServerConfig.render_threads``).
    cpu_threads = max(1, (os.cpu_count() or 1) // 2)
    lanes = [Lane(f"{t.avatar.device}#{i}", {"a": t},
                  threads=cpu_threads if t.avatar.device.type == "cpu" else None)
             for i, t in enumerate(timed)]
    sch = Scheduler(lanes, SchedulerConfig(max_batch=cfg.max_batch))
    sch.warm_up(lambda _name, k: [speech[i % len(speech)] for i in range(k)])
    capacity = sch.capacity_fps()
    admitted = max(1, math.floor(ServerConfig().capacity_share * capacity / fps))
    for t in timed:
        t.busy = 0.0
    count = _Count()
    rng = np.random.default_rng(cfg.seed + n)
    phase = rng.uniform(0, 1 / fps, n)
    nxt = np.zeros(n, np.int64)
    submitted = refused = 0
    rendered: list[dict[int, np.ndarray]] = [{} for _ in range(n)]
    walk = _Walks(avatars[0], n, fps) if cfg.motion else None
    started = time.monotonic()
    t0 = started + 0.7  # the first frames are handed over half a second before they show
    end = t0 + cfg.seconds
    encoders = _encoders(avatars[0], n, t0, phase, fps, cfg, rendered) if cfg.encode else []

    def done(s: int, k: int):  # noqa: ANN202 - the scheduler's callback for one frame
        def finish(job, frame, status: str) -> None:  # noqa: ANN001
            if frame is not None and cfg.encode:
                rendered[s][k] = frame
            count.done(job, frame, status)
        return finish

    sch.start()
    cpu0 = time.process_time()
    for e in encoders:
        e.start()
    try:
        while (now := time.monotonic()) < end:
            if walk is not None:
                walk.ahead(now, t0, phase)
            for s in range(n):
                # Frame k of session s is shown at t0 + phase + k / fps; handed over
                # ``ahead`` frames before that.
                while t0 + phase[s] + (nxt[s] - ahead) / fps <= now:
                    k = int(nxt[s])
                    due = t0 + phase[s] + k / fps - margin
                    base = None
                    if walk is not None:
                        base = walk.bases[s][k]
                        if not avatars[0].base_frame_ready(base):
                            if now < due:
                                break  # asked again at the next tick, as a session does
                            walk.not_ready += 1  # its time came before its footage
                            submitted += 1
                            nxt[s] += 1
                            del walk.bases[s][k]
                            continue
                        del walk.bases[s][k]
                    req = speech[(k + 7 * s) % len(speech)]
                    job = FrameRequest(k % avatars[0].idle_frames, req.mel, f"s{s}", due,
                                       base=base, cond=req.cond)
                    if sch.submit("a", job, done(s, k)) is None:
                        refused += 1
                    submitted += 1
                    nxt[s] += 1
            time.sleep(TICK_S)
        # Everything handed over is due within ``ahead`` frames: let it come back.
        settle = time.monotonic() + ahead / fps + 1.0
        while time.monotonic() < settle and sch.pending:
            time.sleep(0.02)
    finally:
        for e in encoders:
            e.stop.set()
        sch.stop()
        for e in encoders:
            e.join(timeout=5)
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - started
    not_ready = walk.not_ready if walk is not None else 0
    late = count.by["late"] + count.by["error"] + refused + sch.pending + not_ready
    sizes = [b for lane in lanes for b in lane.stats.batch_sizes]
    early = np.asarray(count.lateness) * 1000 if count.lateness else np.zeros(1)
    causes = Counter()
    for lane in lanes:
        causes.update(lane.stats.late_by_cause)
    return {"sessions": n, "frames": submitted, "rendered": count.by["ok"], "late": late,
            "late_pct": round(100 * late / max(submitted, 1), 3),
            "late_by_cause": dict(causes), "refused": refused,
            **({"footage_not_ready": not_ready} if walk is not None else {}),
            "batch_mean": round(float(np.mean(sizes)), 2) if sizes else 0.0,
            "lane_busy": round(sum(t.busy for t in timed) / (wall * len(timed)), 3),
            "margin_ms_p5": round(float(np.percentile(early, 5)), 1),
            "capacity_fps": round(capacity, 1), "admitted_by_rule": admitted,
            "cpu_cores": round(cpu / wall, 2), **_encoded(encoders, fps)}


class _Walks:
    """Every session's walk through the motion bank, asked of the bank's thread a second
    ahead (``MotionTimeline.prefetch``'s horizon)."""

    HORIZON_S = 1.0

    def __init__(self, avatar: Avatar, n: int, fps: int):
        if avatar.bank is None:
            raise TwincastError("--motion needs a bundle with a motion bank (add one with "
                                "`twincast train motion WORKDIR`)")
        self.avatar, self.fps = avatar, fps
        self.walkers = [avatar.walker(seed) for seed in range(n)]
        self.bases: list[dict[int, object]] = [{} for _ in range(n)]
        """Each session's footage by frame, from when it is asked for until handed over."""
        self.asked = [0] * n
        self.not_ready = 0

    def ahead(self, now: float, t0: float, phase: np.ndarray) -> None:
        new = []
        for s, w in enumerate(self.walkers):
            while t0 + phase[s] + self.asked[s] / self.fps <= now + self.HORIZON_S:
                e = w.next("speaking")
                self.bases[s][self.asked[s]] = e
                new.append(e)
                self.asked[s] += 1
        if new:
            self.avatar.bank.prefetch(new, new)


def _encoders(avatar: Avatar, n: int, t0: float, phase: np.ndarray, fps: int,
              cfg: LanesConfig, rendered: list[dict[int, np.ndarray]]) -> list:
    """One VP8 sender per session, each showing its rendered frames (else idle ones)."""
    from bench.encode_load import SessionEncoder

    def frame_at(s: int):  # noqa: ANN202
        return lambda k: rendered[s].pop(k, None) if k in rendered[s] else \
            avatar.idle_frame(k)

    from streaming.session import SessionConfig

    frames = int(cfg.seconds * fps)
    behind = SessionConfig().video_behind_s
    return [SessionEncoder(lambda k, s=s: t0 + phase[s] + k / fps, frame_at(s), frames, fps,
                           behind) for s in range(n)]


def _encoded(encoders: list, fps: int) -> dict:
    """Frames encoded more than a frame period after their display time, or passed over by
    a sender that had fallen behind: one that cannot keep up at ``fps``."""
    if not encoders:
        return {}
    after = np.concatenate([np.asarray(e.after) for e in encoders if e.after] or [np.zeros(0)])
    skipped = sum(e.skipped for e in encoders)
    shown = len(after) + skipped
    if not shown:
        return {"encoded": 0, "encode_skipped": 0, "encode_late_pct": 100.0}
    late = int((after > 1 / fps).sum()) + skipped
    return {"encoded": len(after), "encode_skipped": skipped,
            "encode_late_pct": round(100 * late / shown, 3),
            "encode_after_ms_p95": round(float(np.percentile(after, 95)) * 1000, 1)
            if len(after) else None}


def lost_pct(r: dict) -> float:
    """Share of a count's frames late at the renderer or (with ``encode``) the encoder."""
    return r["late_pct"] + r.get("encode_late_pct", 0.0)


def _counts(cfg: LanesConfig, results: dict[int, dict]):
    """The counts to try, one at a time: rising until ``stop_pct``, then halving the step
    between the last held and the first not held."""
    for n in sorted(set(cfg.sessions)):
        yield n
        if lost_pct(results[n]) >= cfg.stop_pct:
            break
    for _ in range(cfg.refine):
        held = [k for k, r in results.items() if lost_pct(r) < HELD_PCT]
        if not held:
            return
        lo = max(held)
        above = [k for k in results if k > lo]  # none of them held
        if not above or min(above) - lo < 2:
            return
        yield (lo + min(above)) // 2


def bench_lanes(bundle: Path, cfg: LanesConfig, preset: str | None = None,
                precision: str = "auto", model_size: int | None = None,
                compositing: str = "cpu") -> dict:
    """Sessions held under 1 % late frames by the lanes on ``cfg.devices``."""
    import torch

    if not cfg.devices:
        raise TwincastError("--devices: name at least one device, e.g. cpu or cuda:0")
    if any(n < 1 for n in cfg.sessions):
        raise TwincastError("--sessions: counts must be at least 1")
    avatars = [load_bench_avatar(bundle, d, preset, precision, model_size, compositing)
               for d in cfg.devices]
    speech = _requests(avatars[0], np.random.default_rng(cfg.seed))
    # Each batch shape once before any count: a model's first call at a shape is slow (the
    # CPU plans kernels, CUDA loads them), which the first count's measure would take in.
    for a in avatars:
        for k in range(1, cfg.max_batch + 1):
            a.render(speech[:k])
    results: dict[int, dict] = {}
    for n in _counts(cfg, results):
        r = run_sessions(avatars, n, cfg, speech)
        log.info("%d sessions: %.2f %% of %d frames late%s (batches of %.1f, lanes %.0f %% "
                 "busy, %.1f cores)", n, r["late_pct"], r["frames"],
                 f", {r['encode_late_pct']:.2f} % encoded late" if cfg.encode else "",
                 r["batch_mean"], 100 * r["lane_busy"], r["cpu_cores"])
        results[n] = r
    held = [n for n, r in results.items() if lost_pct(r) < HELD_PCT]
    a = avatars[0]
    w, h = a.manifest.frame_size or (0, 0)
    return {"devices": [str(x.device) for x in avatars], "frame_size": [w, h],
            "precision": str(a.dtype).removeprefix("torch."),
            "weights": weights_kind(preset, model_size), "model_size": a.size,
            "threads": torch.get_num_threads(), "max_batch": cfg.max_batch,
            "seconds_each": cfg.seconds, "cpus": os.cpu_count(), "compositing": compositing,
            "encoded": "VP8 at each frame's display time" if cfg.encode else "no",
            "background": "motion bank walk" if cfg.motion else "idle loop",
            "sessions_held": max(held) if held else 0,
            "sessions_held_per_device": round((max(held) if held else 0) / len(avatars), 1),
            "by_sessions": [results[n] for n in sorted(results)]}
