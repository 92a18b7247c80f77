"""``twincast verify``: find the invisible marks in a video, an audio file or a stream and
say which bundle made it and when; and read a file's signed Content Credentials.

Only what the readers need is kept while decoding (a 32x24 projection per frame, the audio
at 16 kHz mono), so an hour of video costs its decode and little memory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.audio_mark import READ_RATE, read_audio
from avatar.credentials import read_credentials
from avatar.errors import TwincastError
from avatar.mark_code import Reading, format_id
from avatar.video_mark import CHANNELS, on_grid, read_video, thumbnail_features

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    features: np.ndarray
    """(frames, channels): each video frame's projections."""
    fps: float
    audio: np.ndarray
    """Mono float at ``READ_RATE``."""
    has_video: bool
    has_audio: bool


def _is_url(source: str) -> bool:
    return "://" in source


def decode(source: str, seconds: float | None = None) -> Decoded:
    """The features of ``source`` (a path or a URL), its first ``seconds`` when given."""
    import av

    if not _is_url(source) and not Path(source).is_file():
        raise TwincastError(f"{source}: no such file")
    try:
        container = av.open(source, timeout=15.0) if _is_url(source) else av.open(source)
    except (av.error.FFmpegError, OSError) as e:
        raise TwincastError(f"{source}: cannot be read as video or audio ({e})") from None
    with container:
        vs = container.streams.video[0] if container.streams.video else None
        aus = container.streams.audio[0] if container.streams.audio else None
        if vs is None and aus is None:
            raise TwincastError(f"{source}: has neither video nor audio")
        fps = float(vs.average_rate or vs.guessed_rate or 25) if vs is not None else 25.0
        feats: list[np.ndarray] = []
        vtimes: list[float | None] = []
        pcm: list[np.ndarray] = []
        resampler = av.AudioResampler(format="flt", layout="mono", rate=READ_RATE) \
            if aus is not None else None
        streams = [s for s in (vs, aus) if s is not None]
        try:
            for frame in container.decode(*streams):
                t = float(frame.time) if frame.time is not None else 0.0
                if seconds is not None and t > seconds:
                    break
                if isinstance(frame, av.VideoFrame):
                    small = frame.reformat(width=128, height=96, format="gray",
                                           interpolation="AREA").to_ndarray()
                    feats.append(thumbnail_features(small))
                    vtimes.append(frame.time)
                else:
                    assert resampler is not None
                    for out in resampler.resample(frame):
                        pcm.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as e:
            if not feats and not pcm:
                raise TwincastError(f"{source}: cannot be decoded ({e})") from None
            log.warning("%s: decoding stopped early (%s); reading what came before", source, e)
    features = np.array(feats, np.float64).reshape(-1, CHANNELS)
    if vtimes and None not in vtimes:  # a recording at a variable rate: as it was shown
        features = on_grid(np.array(vtimes, np.float64), features, fps)
    return Decoded(features=features, fps=fps,
                   audio=np.concatenate(pcm) if pcm else np.zeros(0, np.float32),
                   has_video=vs is not None, has_audio=aus is not None)


def _summary(reading: Reading) -> dict:
    ok = [b for b in reading.blocks if b.ident is not None]
    ident = reading.ident
    return {"found": reading.found, "id": format_id(ident) if ident is not None else None,
            "sync_z": round(reading.sync_z, 1),
            "blocks_read": len(ok), "blocks_seen": len(reading.blocks),
            "confidence": _confidence(reading),
            "blocks": [b.describe() for b in reading.blocks if b.ident is not None]}


def _confidence(reading: Reading) -> float:
    """0-1: how sure the reader is that the mark is there and read right. The sync's
    strength past the threshold, times the share of blocks whose CRC held."""
    if not reading.found or reading.ident is None:
        return 0.0
    share = sum(b.ident == reading.ident for b in reading.blocks) / len(reading.blocks)
    sure = 1 - math.exp(-max(reading.sync_z - reading.min_z + 2.0, 0.0))
    return round(sure * share, 3)


def verify(source: str, seconds: float | None = None) -> dict:
    """What ``twincast verify`` prints: each medium's reading and the verdict."""
    d = decode(source, seconds)
    out: dict = {"source": source, "video": None, "audio": None}
    if d.has_video:
        out["video"] = _summary(read_video(d.features, d.fps)) if len(d.features) else None
    if d.has_audio:
        out["audio"] = _summary(read_audio(d.audio, READ_RATE)) if len(d.audio) else None
    found = [m for m in (out["video"], out["audio"]) if m is not None and m["found"]]
    out["c2pa"] = None if _is_url(source) else read_credentials(Path(source))
    c = out["c2pa"]
    signed = c is not None and c["valid"] and c.get("synthetic", False)
    out["found"] = bool(found) or signed
    out["id"] = found[0]["id"] if found else \
        (c["avatar"].get("mark_id") if signed and c is not None else None)
    return out
