"""Constant-rate decoding, segment seeking and audio resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_av
from training.ingest import clip_ids, decode_audio, iter_frames, probe


def _numbered(n: int, size: int = 64) -> list[np.ndarray]:
    """Frames whose brightness encodes their index (robust to compression)."""
    return [np.full((size, size, 3), 8 + 4 * (i % 60), np.uint8) for i in range(n)]


def _index(frame: np.ndarray) -> int:
    return int(round((frame.mean() - 8) / 4))


@pytest.mark.parametrize("src_fps", [50, 15, 25])
def test_constant_25fps_from_any_rate(src_fps: int, tmp_path: Path) -> None:
    n_src = src_fps * 2  # 2 s
    audio = np.zeros(16000 * 2, np.float32)
    path = write_av(tmp_path / f"v{src_fps}.mp4", _numbered(n_src), fps=src_fps, audio=audio)
    info = probe(path, "v", 25, 1.0)
    assert info.n_frames == 50
    got = [(n, _index(f)) for n, f in iter_frames(info, 25, 0, info.n_frames)]
    assert [n for n, _ in got] == list(range(50))
    for n, idx in got:
        # Output frame n shows the source frame on screen at n/25 s.
        expected = int(np.floor(n / 25 * src_fps + 1e-6)) % 60
        assert idx == expected, (n, idx, expected)


def test_segment_decoding_matches_full_decoding(tmp_path: Path) -> None:
    path = write_av(tmp_path / "long.mp4", _numbered(250), fps=25,
                    audio=np.zeros(16000 * 10, np.float32))
    info = probe(path, "long", 25, 1.0)
    full = {n: _index(f) for n, f in iter_frames(info, 25, 0, info.n_frames)}
    part = {n: _index(f) for n, f in iter_frames(info, 25, 130, 170)}
    assert sorted(part) == list(range(130, 170))
    assert all(part[n] == full[n] for n in part)


def test_downscaled_analysis_frames(tmp_path: Path) -> None:
    path = write_av(tmp_path / "big.mp4", _numbered(30, size=320), fps=25,
                    audio=np.zeros(16000 * 2, np.float32))
    info = probe(path, "big", 25, 1.0)
    _, frame = next(iter_frames(info, 25, 0, 1, max_side=160))
    assert frame.shape == (160, 160, 3)


def test_audio_resampled_to_each_rate(tmp_path: Path) -> None:
    t = np.arange(44100 * 2) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_av(tmp_path / "tone.mp4", _numbered(50), audio=tone, rate=44100)
    out = decode_audio(path, [16000, 22050])
    for rate, x in out.items():
        assert abs(len(x) - 2 * rate) < rate * 0.1
        spec = np.abs(np.fft.rfft(x[rate // 4: rate // 4 + rate]))
        assert abs(np.argmax(spec) - 440) <= 2  # 1 Hz bins over one second


def test_clip_ids_are_unique_and_safe(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "my clip!.mp4", tmp_path / "y" / "my clip!.mp4"
    ids = clip_ids([a, b])
    assert ids[0] == "my_clip_" and ids[1].startswith("my_clip_-") and ids[0] != ids[1]


@pytest.mark.parametrize("fmt,ext,vcodec,acodec,fps,rate", [
    ("webm", ".webm", "libvpx-vp9", "libopus", 30, 48000),
    ("matroska", ".mkv", "mpeg4", "flac", 24, 44100),
    ("mov", ".mov", "mjpeg", "pcm_s16le", 30, 22050),
])
def test_other_containers_and_codecs(fmt: str, ext: str, vcodec: str, acodec: str, fps: int,
                                     rate: int, tmp_path: Path) -> None:
    n = fps * 2
    t = np.arange(rate * 2) / rate
    tone = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    path = write_av(tmp_path / f"clip{ext}", _numbered(n, 64), fps, tone, rate, fmt=fmt,
                    vcodec=vcodec, acodec=acodec)
    info = probe(path, "clip", 25, 1.0)
    assert abs(info.duration - 2.0) < 0.15
    frames = list(iter_frames(info, 25, 0, info.n_frames))
    assert len(frames) == info.n_frames >= 48
    out = decode_audio(path, [16000])[16000]
    assert abs(len(out) - 32000) < 2000
