"""Offline rendering (``twincast render``) and the render benchmark (``twincast bench
render``), both through the same batched ``Avatar.render`` the server uses."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from avatar.audio import load_audio
from avatar.avatar import Avatar, FrameRequest
from avatar.errors import TwincastError, path_error
from avatar.video_io import VideoWriter

log = logging.getLogger(__name__)


def _bars() -> bool:
    flag = os.environ.get("TWINCAST_PROGRESS")
    return flag not in ("0", "") if flag is not None else sys.stderr.isatty()


def render_file(bundle: Path, audio_path: Path, out: Path, device: str = "cpu",
                batch: int = 16, precision: str = "auto") -> dict:
    """Speak ``audio_path`` over the avatar's idle loop; write ``out`` with the audio muxed."""
    if batch < 1:
        raise TwincastError(f"--batch {batch}: must be at least 1")
    avatar = Avatar.load(bundle, device, precision=precision)
    audio = load_audio(audio_path, 16000)
    if np.abs(audio).max(initial=0.0) == 0.0:
        log.info("%s is silent: the mouth stays closed", audio_path)
    return render_audio(avatar, audio, out, batch)


def render_text(bundle: Path, text: str, out: Path, device: str = "cpu", batch: int = 16,
                pace: float = 1.0, precision: str = "auto") -> dict:
    """The avatar's voice says ``text``, then its face speaks that audio (both muxed)."""
    from avatar.audio import resample
    from avatar.voice import Voice

    if batch < 1:
        raise TwincastError(f"--batch {batch}: must be at least 1")
    voice = Voice.load(bundle, device)
    avatar = Avatar.load(bundle, device, precision=precision)
    speech = voice.say(text, pace)
    return render_audio(avatar, resample(speech, voice.rate, 16000), out, batch)


def render_show(bundle: Path, show_path: Path, out: Path, device: str = "cpu",
                batch: int = 16, precision: str = "auto") -> dict:
    """``twincast render --show``: the whole show (speech, pauses, idle) to one video, in
    batches, as fast as the model allows."""
    from tqdm import tqdm

    from avatar.audio import resample
    from avatar.show import load_show
    from avatar.voice import Voice

    if batch < 1:
        raise TwincastError(f"--batch {batch}: must be at least 1")
    show = load_show(show_path)
    if show.repeat is None:
        raise TwincastError(f"{show_path}: repeat = \"forever\" cannot be rendered to a "
                            "file; give a number")
    voice = Voice.load(bundle, device) if any(s.kind == "say" for s in show.segments) \
        else None
    avatar = Avatar.load(bundle, device, precision=precision)
    parts: list[np.ndarray] = []
    said: dict[tuple[str, float], np.ndarray] = {}
    steps = [s for _ in show.passes() for s in show.segments for _ in range(s.repeat)]
    t0 = time.perf_counter()
    for seg in tqdm(steps, desc="speech", unit="segment", disable=not _bars()):
        if seg.kind == "say":
            assert voice is not None
            key = (seg.text, seg.rate)
            if key not in said:  # a repeated line is synthesised once
                said[key] = resample(voice.say(seg.text, seg.rate), voice.rate, 16000)
            parts.append(said[key])
        else:
            parts.append(np.zeros(int(seg.seconds * 16000), np.float32))
    speech_s = time.perf_counter() - t0
    res = render_audio(avatar, np.concatenate(parts), out, batch)
    res["speech_seconds"] = round(speech_s, 2)
    res["video_seconds"] = round(res["frames"] / avatar.fps, 2)
    res["realtime_x"] = round(res["video_seconds"] / (res["seconds"] + speech_s), 2)
    return res


def say_file(bundle: Path, text: str, out: Path, device: str = "cpu", pace: float = 1.0
             ) -> dict:
    """``twincast say``: text to a .wav file in the avatar's voice."""
    import soundfile as sf

    from avatar import atomic
    from avatar.voice import Voice

    if out.suffix.lower() != ".wav":
        raise path_error(out, "must end in .wav")
    voice = Voice.load(bundle, device)
    t0 = time.perf_counter()
    audio = voice.say(text, pace)
    seconds = time.perf_counter() - t0
    try:
        with atomic.atomic_path(out, ".wav") as tmp:
            sf.write(str(tmp), audio, voice.rate, subtype="PCM_16", format="WAV")
    except OSError as e:
        raise path_error(out, f"cannot be written ({e.strerror})") from None
    return {"audio_seconds": round(len(audio) / voice.rate, 2), "seconds": round(seconds, 3),
            "out": str(out)}


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
            "audio_seconds": round(audio_s, 2), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def render_audio(avatar: Avatar, audio: np.ndarray, out: Path, batch: int = 16) -> dict:
    """Speak 16 kHz ``audio`` over the avatar's idle loop into ``out`` with the audio."""
    from tqdm import tqdm

    windows = avatar.mel_windows(audio)
    n = len(windows)
    w, h = avatar.manifest["frame_size"]
    t0 = time.perf_counter()
    try:
        writer = VideoWriter(out, avatar.fps, int(w), int(h), audio_rate=16000)
    except OSError as e:
        raise path_error(out, f"cannot be written ({e.strerror})") from None
    with writer, tqdm(total=n, desc="render", unit="frame", disable=not _bars()) as pb:
        for a in range(0, n, batch):
            reqs = [FrameRequest(idle_index=i, mel=windows[i]) for i in range(a, min(n, a + batch))]
            for i, frame in zip(range(a, a + len(reqs)), avatar.render(reqs), strict=True):
                writer.write(frame)
                s0, s1 = int(i * 16000 / avatar.fps), int((i + 1) * 16000 / avatar.fps)
                writer.write_audio(audio[s0:s1])
            pb.update(len(reqs))
    seconds = time.perf_counter() - t0
    return {"frames": n, "seconds": round(seconds, 2), "fps": round(n / seconds, 1),
            "out": str(out)}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_render(bundle: Path, device: str = "cpu", batches: tuple[int, ...] = (1, 4, 16, 64),
                 seconds: float = 3.0, preset: str | None = None,
                 precision: str = "auto") -> dict:
    """Frames per second of ``Avatar.render`` (generator and compositing) per batch size.
    With ``preset``, a fresh model of that preset's size stands in for the bundle's."""
    import torch

    from avatar.models.head import HEAD_PRESETS

    if preset is not None and preset not in HEAD_PRESETS:
        raise TwincastError(f"--preset {preset}: choose one of {', '.join(HEAD_PRESETS)}")
    avatar = Avatar.load(bundle, device, HEAD_PRESETS[preset] if preset else None,
                         precision)
    rng = np.random.default_rng(0)
    # Real speech-like input: mel windows of noise shaped like the training statistics.
    mel = (avatar.mel_mean + avatar.mel_std * rng.standard_normal(
        (256, avatar.gen.cfg.mel_bins, avatar.mel_frames))).astype(np.float32)
    result: dict[str, float] = {}
    for b in batches:
        reqs = [FrameRequest(idle_index=i, mel=mel[i % len(mel)]) for i in range(b)]
        avatar.render(reqs)  # warm-up
        if avatar.device.type == "cuda":
            torch.cuda.synchronize()
        frames, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            avatar.render(reqs)
            frames += b
        if avatar.device.type == "cuda":
            torch.cuda.synchronize()
        result[str(b)] = round(frames / (time.perf_counter() - t0), 1)
    w, h = avatar.manifest["frame_size"]
    return {"device": str(avatar.device), "frame_size": [w, h],
            "precision": str(avatar.dtype).removeprefix("torch."),
            "weights": f"untrained {preset} architecture" if preset else "bundle",
            "model_size": avatar.size, "model_width": avatar.gen.cfg.width,
            "threads": torch.get_num_threads(), "fps_by_batch": result,
            "peak_rss_mb": round(_peak_rss_mb(), 1)}
