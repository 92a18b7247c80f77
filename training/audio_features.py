"""Voice features of one clip: speech/silence, loudness, log-mel, f0 and level measures.

All frame-rate arrays share one hop (10 ms by default, four frames per 25 fps video frame);
the 22.05 kHz log-mel for the voice model uses its own hop, recorded beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from avatar.audio import FACE_MEL, SPEECH_RATE, VOICE_MEL, log_mel
from training.config import AudioConfig
from training.vad import voice_activity


@dataclass
class AudioFeatures:
    vad: np.ndarray
    """(N,) bool: speech per hop."""
    loudness_db: np.ndarray
    """(N,) RMS level in dBFS per hop (25 ms window)."""
    f0_hz: np.ndarray
    """(N,) fundamental frequency, 0 where unvoiced."""
    mel16: np.ndarray
    """(n_mels, N) natural-log mel spectrogram of the 16 kHz audio."""
    mel22: np.ndarray
    """(n_mels, M) natural-log mel spectrogram of the 22.05 kHz audio (hop ``mel22_hop``)."""
    stats: dict[str, float]
    """Level measures for the quality report."""

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vad": self.vad, "loudness_db": self.loudness_db, "f0_hz": self.f0_hz,
                "mel16": self.mel16, "mel22": self.mel22}


def frame_hops(n_frames: int, fps: int, length: int, hop_rate: int = 100) -> np.ndarray:
    """For each of ``n_frames`` video frames, the index of the hop (``hop_rate`` per
    second) at its centre, within an array of ``length`` hops."""
    at = np.round((np.arange(n_frames) + 0.5) / fps * hop_rate).astype(int)
    return np.clip(at, 0, max(0, length - 1))


def speech_per_frame(audio16k: np.ndarray, n_frames: int, fps: int) -> np.ndarray:
    """Voice activity (the 10 ms VAD of enrolment) of 16 kHz audio at each video frame."""
    hop = FACE_MEL.hop
    vad = voice_activity(loudness(audio16k, SPEECH_RATE, hop), hop / SPEECH_RATE)
    return vad[frame_hops(n_frames, fps, len(vad))]


def frame_signal(x: np.ndarray, win: int, hop: int) -> np.ndarray:
    """(N, win) frames centred on each hop, zero-padded at the ends."""
    pad = win // 2
    xp = np.pad(x, (pad, pad + win))
    n = len(x) // hop + 1
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    return xp[idx]


def loudness(x: np.ndarray, rate: int, hop: int) -> np.ndarray:
    frames = frame_signal(x, int(0.025 * rate), hop)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    return (20 * np.log10(rms + 1e-10)).astype(np.float32)


def pitch_yin(x: np.ndarray, rate: int, hop: int, f_min: float, f_max: float,
              threshold: float = 0.15, chunk: int = 4096) -> np.ndarray:
    """f0 per hop with YIN's cumulative-mean-normalised difference (0 = unvoiced)."""
    w = int(0.025 * rate)
    tau_max = int(rate / f_min)
    tau_min = int(rate / f_max)
    frames = frame_signal(x, w + tau_max, hop)
    f0 = np.zeros(len(frames), np.float32)
    nfft = 1 << int(np.ceil(np.log2(2 * (w + tau_max))))
    for a in range(0, len(frames), chunk):
        fr = torch.from_numpy(frames[a: a + chunk].astype(np.float32))
        head = fr[:, :w]
        # r(tau) = sum_j x_j x_{j+tau} over the window, for every tau at once by FFT.
        spec = torch.fft.rfft(fr, nfft) * torch.conj(torch.fft.rfft(head, nfft))
        r = torch.fft.irfft(spec, nfft)[:, : tau_max + 1]
        sq = torch.cumsum(torch.nn.functional.pad(fr ** 2, (1, 0)), dim=1)
        e0 = sq[:, w: w + 1]
        taus = torch.arange(tau_max + 1)
        e_tau = sq[:, taus + w] - sq[:, taus]
        d = (e0 + e_tau - 2 * r).clamp(min=0)
        # Cumulative mean normalised difference d'(tau) = d(tau) * tau / sum_{k<=tau} d(k).
        cum = torch.cumsum(d[:, 1:], dim=1)
        dn = torch.ones_like(d)
        dn[:, 1:] = d[:, 1:] * taus[1:] / cum.clamp(min=1e-9)
        dn = dn[:, tau_min:]
        below = dn < threshold
        # First dip under the threshold, else the global minimum if it is low enough.
        first = torch.where(below.any(1), below.float().argmax(1), dn.argmin(1))
        # Walk to the local minimum after the first crossing.
        idx = first.clone()
        last = dn.shape[1] - 1
        for _ in range(tau_max):
            nxt = (idx + 1).clamp(max=last)
            better = dn.gather(1, nxt[:, None])[:, 0] < dn.gather(1, idx[:, None])[:, 0]
            if not bool(better.any()):
                break
            idx = torch.where(better, nxt, idx)
        val = dn.gather(1, idx[:, None])[:, 0]
        # Parabolic interpolation around the minimum for sub-sample period accuracy.
        lo, hi = (idx - 1).clamp(min=0), (idx + 1).clamp(max=last)
        y0, y2 = dn.gather(1, lo[:, None])[:, 0], dn.gather(1, hi[:, None])[:, 0]
        denom = y0 - 2 * val + y2
        shift = torch.where(denom.abs() > 1e-9, 0.5 * (y0 - y2) / denom, torch.zeros_like(val))
        tau = (idx + tau_min).float() + shift.clamp(-1, 1)
        voiced = (val < 0.35) & (e0[:, 0] > 1e-6 * w)
        f0[a: a + chunk] = torch.where(voiced, rate / tau, torch.zeros_like(tau)).numpy()
    return f0


def compute(audio16: np.ndarray, audio22: np.ndarray, cfg: AudioConfig) -> AudioFeatures:
    rate16 = cfg.rates[0]
    hop = int(round(cfg.hop_ms / 1000 * rate16))
    hop_s = hop / rate16
    db = loudness(audio16, rate16, hop)
    vad = voice_activity(db, hop_s)
    mel16 = log_mel(audio16, rate16, 512, 400, hop, cfg.n_mels)
    mel22 = log_mel(audio22, cfg.rates[1], cfg.mel22_n_fft, cfg.mel22_n_fft, cfg.mel22_hop,
                    cfg.n_mels, f_max=VOICE_MEL.f_max)
    f0 = pitch_yin(audio16, rate16, hop, cfg.f0_min, cfg.f0_max)
    n = min(len(db), len(f0), mel16.shape[1])
    db, vad, f0, mel16 = db[:n], vad[:n], f0[:n], mel16[:, :n]
    f0 = np.where(vad, f0, 0).astype(np.float32)
    return AudioFeatures(vad=vad, loudness_db=db, f0_hz=f0, mel16=mel16, mel22=mel22,
                         stats=level_stats(audio16, rate16, db, vad, hop_s))


def level_stats(x: np.ndarray, rate: int, db: np.ndarray, vad: np.ndarray, hop_s: float
                ) -> dict[str, float]:
    speech_db = db[vad]
    quiet_db = db[~vad]
    if speech_db.size and quiet_db.size:
        # Power means, not dB means: a few loud frames must weigh as loud.
        p_speech = 10 * np.log10(np.mean(10 ** (speech_db / 10)))
        p_noise = 10 * np.log10(np.mean(10 ** (np.percentile(quiet_db, 50) / 10)))
        snr = float(p_speech - p_noise)
    else:
        snr = float("nan")
    return {
        "seconds": float(len(x) / rate),
        "speech_seconds": float(vad.sum() * hop_s),
        "speech_level_dbfs": float(np.median(speech_db)) if speech_db.size else float("nan"),
        "peak_dbfs": float(20 * np.log10(np.max(np.abs(x)) + 1e-10)) if x.size else -200.0,
        "clipping_share": float(np.mean(np.abs(x) >= 0.999)) if x.size else 0.0,
        "snr_db": snr,
    }
