"""Voice activity, loudness, pitch and utterance cutting on signals with known answers."""

from __future__ import annotations

import numpy as np

from training.audio_features import compute, pitch_yin
from training.config import AudioConfig
from training.utterances import make_utterances
from training.vad import speech_segments

RATE = 16000


def _bursts() -> np.ndarray:
    """0.5 s silence, 1 s of a 150 Hz voice-like tone, 1 s silence, 0.8 s tone, 0.7 s."""
    rng = np.random.default_rng(1)
    t = np.arange(RATE) / RATE
    tone = 0.3 * np.sign(np.sin(2 * np.pi * 150 * t)) * 0.5 + 0.2 * np.sin(2 * np.pi * 150 * t)
    parts = [np.zeros(RATE // 2), tone, np.zeros(RATE), tone[: int(0.8 * RATE)],
             np.zeros(int(0.7 * RATE))]
    x = np.concatenate(parts) + 0.001 * rng.standard_normal(sum(map(len, parts)))
    return x.astype(np.float32)


def test_vad_finds_the_bursts() -> None:
    x = _bursts()
    feats = compute(x, x, AudioConfig())  # the 22 kHz path only needs some signal here
    segs = speech_segments(feats.vad, 0.01)
    assert len(segs) == 2
    (a0, b0), (a1, b1) = segs
    assert abs(a0 - 0.5) < 0.1 and abs(b0 - 1.5) < 0.1
    assert abs(a1 - 2.5) < 0.1 and abs(b1 - 3.3) < 0.1
    assert feats.stats["snr_db"] > 30
    assert abs(feats.stats["speech_seconds"] - 1.8) < 0.3


def test_pitch_of_a_tone() -> None:
    t = np.arange(RATE) / RATE
    for f in (110.0, 220.0, 330.0):
        x = (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)
        f0 = pitch_yin(x, RATE, 160, 60, 500)
        assert abs(np.median(f0[10:-10]) - f) / f < 0.02


def test_long_speech_is_split_under_the_limit() -> None:
    db = np.full(3000, -20.0, np.float32)
    db[1400:1420] = -50  # the quietest point of a 30 s stretch
    utts = make_utterances("c", [(0.0, 30.0)], db, 0.01, 30.0, max_len_s=12.0,
                           min_pause_s=0.35)
    assert len(utts) >= 3
    assert all(u.end - u.start <= 12.2 for u in utts)
    assert utts[0].end > utts[0].start


def test_resampling_and_mel_with_kept_filters_equal_freshly_designed_ones() -> None:
    """The resampler's low-pass and the mel filter bank are designed once per setting and
    kept (a live session uses them every 20 ms): what they give must be exactly what
    scipy's own design and a freshly built transform give, for each rate pair and dtype."""
    import torch
    import torchaudio
    from scipy.signal import resample_poly

    from avatar.audio import log_mel, resample

    rng = np.random.default_rng(3)
    for src, dst in [(22050, 16000), (48000, 16000), (16000, 48000), (24000, 22050)]:
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal(src // 3).astype(dtype)
            g = np.gcd(src, dst)
            want = resample_poly(x, dst // g, src // g).astype(np.float32)
            for _ in range(2):  # designed, then kept
                assert np.array_equal(resample(x, src, dst), want), (src, dst, dtype)
    ints = (rng.standard_normal(4800) * 3000).astype(np.int16)
    assert np.array_equal(resample(ints, 48000, 16000),
                          resample_poly(ints, 1, 3).astype(np.float32))
    y = rng.standard_normal(8000).astype(np.float32)
    fresh = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=80,
        f_min=0.0, power=1.0, norm="slaney", mel_scale="slaney", center=True)
    with torch.inference_mode():
        want = torch.log(torch.clamp(fresh(torch.from_numpy(y)), min=1e-5)).numpy()
    for _ in range(2):
        assert np.array_equal(log_mel(y), want)
    assert log_mel(y, n_mels=40).shape[0] == 40  # another setting, another bank
