"""Streaming speech into frames: chunked audio gives the same per-frame audio windows and
the same playback audio as the whole utterance at once, each frame handed out once."""

from __future__ import annotations

import numpy as np

from avatar.audio import log_mel, mel_windows
from streaming.speech import SpeechConfig, SpeechFrames


def _speechlike(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))
    return (0.3 * env * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


def test_chunked_equals_whole() -> None:
    audio = _speechlike(2.3, 22050)
    sf = SpeechFrames(SpeechConfig())
    frames: list[tuple[int, np.ndarray]] = []
    out: list[np.ndarray] = []
    for a in range(0, len(audio), 7000):
        sf.feed(audio[a: a + 7000], 22050)
        got = sf.ready_video()
        # Nothing is handed out before its audio window is complete.
        assert all((n + 0.5) / 25 + 0.2 <= sf.seconds for n, _ in got)
        frames += got
        out += sf.ready_audio()
    sf.finish()
    frames += sf.ready_video()
    out += sf.ready_audio()
    assert sf.ready_video() == [] and sf.ready_audio() == []
    n = sf.total_video_frames
    assert [i for i, _ in frames] == list(range(n)) and n == int(np.ceil(2.3 * 25))
    from avatar.audio import resample

    a16 = resample(audio, 22050, 16000)
    whole = mel_windows(log_mel(a16), n, 25, 40)
    got = np.stack([w for _, w in frames])
    assert np.allclose(got, whole, atol=1e-3)
    pcm = np.concatenate(out)
    assert len(pcm) % 960 == 0 and abs(len(pcm) - 2.3 * 48000) < 960
    assert pcm.dtype == np.int16 and np.abs(pcm).max() > 1000
    a48 = resample(audio, 22050, 48000)
    ref = (np.clip(a48, -1, 1) * 32767).astype(np.int16)
    assert np.abs(pcm[: len(ref)].astype(int) - ref.astype(int)).max() <= 2


def test_live_microphone_chunks_equal_whole() -> None:
    """20 ms pieces at 48 kHz, as a microphone track delivers them: the same windows as the
    whole, and the work per piece does not redo the whole utterance."""
    from avatar.audio import resample

    audio = _speechlike(3.0, 48000)
    sf = SpeechFrames(SpeechConfig())
    frames: list[tuple[int, np.ndarray]] = []
    for a in range(0, len(audio), 960):
        sf.feed(audio[a: a + 960], 48000)
        frames += sf.ready_video()
        sf.ready_audio()
    sf.finish()
    frames += sf.ready_video()
    n = sf.total_video_frames
    assert [i for i, _ in frames] == list(range(n))
    whole = mel_windows(log_mel(resample(audio, 48000, 16000)), n, 25, 40)
    assert np.allclose(np.stack([w for _, w in frames]), whole, atol=1e-3)
