"""Benchmarks of the runtime: the renderer's frames per second by batch size and the
voice's real-time factor and first-chunk latency (``twincast bench render|voice``)."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np

from avatar.avatar import Avatar, FrameRequest
from avatar.errors import TwincastError


def peak_rss_mb() -> float:
    """This process's peak resident memory so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


BENCH_SENTENCE = "Please call me back this afternoon when you have read the new report."
"""Twelve words, as the voice benchmark asks."""


def bench_voice(bundle: Path, device: str = "cpu", repeats: int = 7) -> dict:
    """Real-time factor (synthesis seconds per second of audio, acoustic model and vocoder
    together) and the latency of the first chunk, medians over ``repeats`` runs."""
    import torch

    from avatar.voice import Voice

    voice = Voice.load(bundle, device)
    voice.say("Warm up.")  # first calls load espeak-ng and pick kernels
    firsts, rtfs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        audio_s = 0.0
        for i, chunk in enumerate(voice.speak(BENCH_SENTENCE)):
            if voice.device.type == "cuda":
                torch.cuda.synchronize()
            if i == 0:
                firsts.append((time.perf_counter() - t0) * 1000)
            audio_s += chunk.duration
        rtfs.append((time.perf_counter() - t0) / max(audio_s, 1e-6))
    return {"device": str(voice.device), "threads": torch.get_num_threads(),
            "sentence": BENCH_SENTENCE, "rtf": round(float(np.median(rtfs)), 4),
            "first_chunk_ms": round(float(np.median(firsts)), 1),
            "audio_seconds": round(audio_s, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}


REFINERS = ("keep", "off", "fresh")


def load_bench_avatar(bundle: Path, device: str, preset: str | None = None,
                      precision: str = "auto", model_size: int | None = None,
                      compositing: str = "cpu", refiner: str = "keep") -> Avatar:
    """The bundle's avatar for a benchmark: with ``preset``, a fresh model of that
    preset's architecture stands in for the bundle's; with ``model_size``, one painting
    that many pixels (the preset's, else the bundle's, architecture otherwise);
    ``compositing``: ``Avatar.compositing``. ``refiner``: ``keep`` the bundle's (where it
    has one and its own model renders), ``off`` (the texture bank where it has one), or a
    ``fresh`` untrained one (what a refiner costs at any model size; it computes as much)."""
    import dataclasses

    from avatar.bundle import read_manifest
    from avatar.models.head import HEAD_PRESETS, HeadConfig

    if preset is not None and preset not in HEAD_PRESETS:
        raise TwincastError(f"--preset {preset}: choose one of {', '.join(HEAD_PRESETS)}")
    if model_size is not None and (model_size < 16 or model_size % 16):
        raise TwincastError(f"--model-size {model_size}: use a multiple of 16 (the "
                            "generator halves its input four times)")
    arch = HEAD_PRESETS[preset] if preset else None
    if model_size is not None:
        if arch is None:
            head = read_manifest(Path(bundle)).head
            arch = HeadConfig.from_dict(head.config) if head else HeadConfig()
        arch = dataclasses.replace(arch, size=model_size)
    if compositing not in ("cpu", "device"):
        raise TwincastError(f"--compositing {compositing}: choose cpu or device")
    if refiner not in REFINERS:
        raise TwincastError(f"--refiner {refiner}: choose one of {', '.join(REFINERS)}")
    avatar = Avatar.load(bundle, device, arch, precision, refine=refiner == "keep")
    avatar.compositing = compositing
    if refiner == "fresh":
        from avatar.avatar import place_refiner
        from avatar.models.refine import RefineConfig, Refiner, scale_for

        avatar.texture = None  # as a bundle with a refiner renders
        # The refiner an enrolment at this working size would train.
        avatar.refiner = place_refiner(Refiner(RefineConfig(scale=scale_for(avatar.size))),
                                       avatar.device)
        avatar.sharpen = 0.5  # its cost does not depend on the amount, only on its being on
    return avatar


def refiner_kind(avatar: Avatar, asked: str) -> str:
    """Which refiner a benchmark rendered with, for its JSON."""
    if avatar.refiner is None:
        return "none"
    return "untrained" if asked == "fresh" else "bundle"


def weights_kind(preset: str | None, model_size: int | None) -> str:
    """What ``load_bench_avatar`` rendered with, for a benchmark's JSON."""
    if preset is None and model_size is None:
        return "bundle"
    return f"untrained {preset or 'bundle'} architecture"


def bench_render(bundle: Path, device: str = "cpu", batches: tuple[int, ...] = (1, 4, 16, 64),
                 seconds: float = 3.0, preset: str | None = None,
                 precision: str = "auto", model_size: int | None = None,
                 motion: bool = False, compositing: str = "cpu", refiner: str = "keep",
                 threads: int = 0) -> dict:
    """Frames per second of ``Avatar.render`` (generator and compositing) per batch size.
    With ``preset``, a fresh model of that preset's size stands in for the bundle's; with
    ``model_size``, one painting that many pixels (the preset's, else the bundle's,
    architecture otherwise): what a footage-chosen working size costs. With ``motion``,
    each of the batch's frames belongs to its own session walking the motion bank, so every
    frame is a new one to decode, blend and prepare (on the bank's thread, a second of each
    walk ahead, as a server's sessions prefetch them), the bank decoded whole beforehand
    where it fits its cache, as ``serve`` does. ``refiner``: as ``load_bench_avatar``'s.
    ``threads``: torch's threads for the model calls (0: torch's default, every core;
    ``serve`` gives a CPU lane half the cores, so that the bank, the voice and the encoders
    have the rest)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench_render(bundle, device, batches, seconds, preset, precision,
                             model_size, motion, compositing, refiner)
    finally:
        torch.set_num_threads(before)


def _bench_render(bundle: Path, device: str, batches: tuple[int, ...], seconds: float,
                  preset: str | None, precision: str, model_size: int | None, motion: bool,
                  compositing: str, refiner: str) -> dict:
    import torch

    avatar = load_bench_avatar(bundle, device, preset, precision, model_size, compositing,
                               refiner)
    rng = np.random.default_rng(0)
    # Real speech-like input: mel windows of noise shaped like the training statistics.
    mel = (avatar.mel_mean + avatar.mel_std * rng.standard_normal(
        (256, avatar.gen.cfg.mel_bins, avatar.mel_frames))).astype(np.float32)
    if motion and avatar.bank is None:
        raise TwincastError(f"{bundle}: --motion needs a bundle with a motion bank (add one "
                            "with `twincast train motion WORKDIR`)")
    whole = False
    if motion:
        whole = avatar.bank.preload()
    result: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    chunks: dict[str, float] = {}
    for b in batches:
        walkers = [avatar.walker(seed) for seed in range(b)] if motion else []
        feed = _Feed(avatar, mel, b, walkers)
        # Warm-up as long as the measure: a walk's first frames each need a chunk decoded
        # from cold (16 sessions at 720p: 16 chunks, seconds of decoding on 2 cores),
        # which a server pays once per session, not per frame; the figure is the steady
        # state. The idle loop gets the same warm-up.
        feed.run(seconds)
        before = avatar.bank.decoded_chunks if walkers else 0
        cpu0 = time.process_time()
        frames, took = feed.run(seconds)
        result[str(b)] = round(frames / took, 1)
        # CPU time of every thread of the process per frame: on a shared host whose
        # hypervisor takes a varying share of the cores, frames/s moves with the
        # neighbours, the work a frame costs much less.
        cpu_ms[str(b)] = round((time.process_time() - cpu0) * 1000 / frames, 2)
        if walkers:
            chunks[str(b)] = round((avatar.bank.decoded_chunks - before) / frames, 3)
    w, h = avatar.manifest.frame_size or (0, 0)
    return {"device": str(avatar.device), "frame_size": [w, h],
            "precision": str(avatar.dtype).removeprefix("torch."),
            "weights": weights_kind(preset, model_size),
            "model_size": avatar.size, "model_width": avatar.gen.cfg.width,
            "threads": torch.get_num_threads(), "fps_by_batch": result,
            "cpu_ms_per_frame": cpu_ms,
            "background": "motion bank walk" if motion else "idle loop",
            "compositing": compositing, "refiner": refiner_kind(avatar, refiner),
            **({"chunks_decoded_per_frame": chunks,
                "bank": "decoded whole beforehand" if whole else
                "decoded as the walks need it (larger than its cache)"} if motion else {}),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


class _Feed:
    """Batches of ``b`` frames for the render benchmark: over the idle loop, or each frame
    the next of its own session's walk through the motion bank, planned ``ahead`` frames
    before it is rendered and handed to the bank's thread then, as a server's session
    does (``streaming.session``'s motion prefetch: a second). Planned only a batch ahead,
    a 512x512 walk's chunks were still being decoded when their batch came, and the
    render decoded them itself (6 % of its time)."""

    def __init__(self, avatar: Avatar, mel: np.ndarray, b: int, walkers: list,
                 ahead: int = 25):
        self.avatar, self.mel, self.b, self.walkers = avatar, mel, b, walkers
        self.planned: list[deque] = [deque() for _ in walkers]
        self.ahead = ahead

    def plan(self) -> None:
        """Plan every walk ``ahead`` frames on and hand the new frames to the bank."""
        new = []
        for w, q in zip(self.walkers, self.planned, strict=True):
            while len(q) < self.ahead:
                q.append(w.next("speaking"))
                new.append(q[-1])
        if new:
            self.avatar.bank.prefetch(new, new)

    def batch(self) -> list[FrameRequest]:
        mel = self.mel
        if not self.walkers:
            return [FrameRequest(idle_index=i, mel=mel[i % len(mel)]) for i in range(self.b)]
        self.plan()
        return [FrameRequest(idle_index=i, mel=mel[i % len(mel)], base=q.popleft())
                for i, q in enumerate(self.planned)]

    def run(self, seconds: float) -> tuple[int, float]:
        """Render for ``seconds`` as a session would, its walks' frames made ready on the
        bank's thread ahead of their batch; frames rendered and time."""
        import torch

        avatar = self.avatar
        frames, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            avatar.render(self.batch())
            frames += self.b
        if avatar.device.type == "cuda":
            torch.cuda.synchronize()
        return frames, time.perf_counter() - t0
