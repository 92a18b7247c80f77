"""Audio helpers shared by enrolment and the runtime: decoding to mono at a rate, and the
log-mel spectrogram both the training data and live speech go through (one definition, so
the model sees the same features in both)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np

SPEECH_RATE = 16000
"""The face model's audio, forced alignment and the recognisers work at 16 kHz."""
VOICE_RATE = 22050
"""The voice is trained on and speaks at 22.05 kHz (the LJ Speech convention)."""


@dataclass(frozen=True)
class MelSpec:
    """A log-mel spectrogram's settings (slaney mel scale and norm, magnitude, centred)."""

    rate: int
    n_fft: int
    hop: int
    n_mels: int = 80
    f_max: float | None = None
    """Top of the mel filterbank; None: half the sample rate."""
    win: int | None = None
    """Window length; None: ``n_fft``."""

    def to_dict(self) -> dict:
        """The voice manifest's form (``win`` only where it differs from ``n_fft``)."""
        d = {"rate": self.rate, "n_fft": self.n_fft, "hop": self.hop, "n_mels": self.n_mels,
             "f_max": self.f_max}
        if self.win is not None:
            d["win"] = self.win
        return d

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n_mels, N) log-mel of mono float audio at ``rate``."""
        return log_mel(x, self.rate, self.n_fft, self.win, self.hop, self.n_mels, self.f_max)


FACE_MEL = MelSpec(rate=SPEECH_RATE, n_fft=512, hop=160, n_mels=80, win=400)
"""What the talking head hears: 10 ms hop, four mel frames per 25 fps video frame (the
enrolment cache's ``mel16``)."""
VOICE_MEL = MelSpec(rate=VOICE_RATE, n_fft=1024, hop=256, n_mels=80, f_max=8000.0)
"""What the voice speaks in (the enrolment cache's ``mel22``, the vocoder's input)."""




def log_mel(x: np.ndarray, rate: int = FACE_MEL.rate, n_fft: int = FACE_MEL.n_fft,
            win: int | None = FACE_MEL.win, hop: int = FACE_MEL.hop,
            n_mels: int = FACE_MEL.n_mels,
            f_max: float | None = None) -> np.ndarray:
    """(n_mels, N) natural-log mel magnitude spectrogram, centred frames."""
    import torch

    mel = _mel_transform(rate, n_fft, win or n_fft, hop, n_mels, f_max)
    with torch.inference_mode():
        m = mel(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return torch.log(torch.clamp(m, min=1e-5)).numpy().astype(np.float32)


@lru_cache(maxsize=16)
def _mel_transform(rate: int, n_fft: int, win: int, hop: int, n_mels: int,
                   f_max: float | None) -> object:
    """One transform per setting, kept: building its filter bank was 1.3 of a call's 1.8 ms
    and a live session calls it every 20 ms. Its forward only reads its buffers, so the
    threads that share it need no lock."""
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=rate, n_fft=n_fft, win_length=win, hop_length=hop, n_mels=n_mels,
        f_min=0.0, f_max=f_max, power=1.0, norm="slaney", mel_scale="slaney", center=True)


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase resampling of mono float audio: a few ms for seconds of audio, cheap enough
    to call on every tick of a live session."""
    if src == dst or x.size == 0:
        return np.asarray(x, np.float32)
    from scipy.signal import resample_poly

    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    g = gcd(src, dst)
    up, down = dst // g, src // g
    return resample_poly(x, up, down, window=_lowpass(up, down, x.dtype.str)
                         ).astype(np.float32)


@lru_cache(maxsize=16)
def _lowpass(up: int, down: int, dtype: str) -> np.ndarray:
    """The anti-aliasing filter ``resample_poly`` designs by default for these factors (a
    Kaiser-windowed sinc, beta 5, ten periods of the higher rate either side), made once:
    designing it was 3.2 of the 3.9 ms that resampling half a second took. Read-only, as
    ``resample_poly`` copies it."""
    from scipy.signal import firwin

    top = max(up, down)
    h = firwin(2 * 10 * top + 1, 1.0 / top, window=("kaiser", 5.0)).astype(dtype)
    h.flags.writeable = False
    return h


def load_audio(path: Path, rate: int = SPEECH_RATE) -> np.ndarray:
    """Any audio (or video) file PyAV reads -> mono float32 at ``rate``."""
    import av

    from avatar.errors import path_error

    if not Path(path).is_file():
        raise path_error(path, "no such audio file")
    rs = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    parts: list[np.ndarray] = []
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise path_error(path, "has no audio track")
            for frame in c.decode(audio=0):
                frame.pts = None
                parts.extend(f.to_ndarray()[0] for f in rs.resample(frame))
    except av.error.FFmpegError as e:
        raise path_error(path, f"cannot be read as audio ({str(e).splitlines()[0][:120]})"
                         ) from None
    parts.extend(f.to_ndarray()[0] for f in rs.resample(None))
    if not parts or sum(len(p) for p in parts) == 0:
        raise path_error(path, "holds no audio (empty)")
    return np.concatenate(parts).astype(np.float32)


def mel_windows(mel: np.ndarray, n_frames: int, fps: int = 25, width: int = 20,
                hop_s: float = FACE_MEL.hop / FACE_MEL.rate) -> np.ndarray:
    """(n_frames, bins, width) windows of ``mel`` centred on each video frame's middle;
    beyond the ends the spectrogram is padded with silence (its floor, log 1e-5)."""
    bins, n = mel.shape
    floor = np.float32(np.log(1e-5))
    pad = width
    padded = np.concatenate([np.full((bins, pad), floor, np.float32), mel,
                             np.full((bins, pad + width), floor, np.float32)], axis=1)
    centre = np.round((np.arange(n_frames) + 0.5) / fps / hop_s).astype(int)
    starts = centre - width // 2 + pad
    idx = starts[:, None] + np.arange(width)[None, :]
    return np.transpose(padded[:, idx], (1, 0, 2))


def frame_levels_db(audio: np.ndarray, n_frames: int, fps: int, rate: int = SPEECH_RATE
                    ) -> np.ndarray:
    """RMS level (dBFS) of each video frame's stretch of ``audio`` (-100 where empty)."""
    hop = rate / fps
    out = np.full(n_frames, -100.0, np.float32)
    for i in range(n_frames):
        x = audio[int(i * hop): int((i + 1) * hop)]
        if x.size:
            out[i] = 20 * np.log10(float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
                                   + 1e-9)
    return out
