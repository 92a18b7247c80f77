"""Mel spectrogram -> waveform.

``GriffinLim`` needs no training: the mel is mapped back to a linear magnitude spectrogram
(least squares through the mel filterbank) and a phase is found by Griffin-Lim's iterations.
It is the ci and demo presets' vocoder and the fallback of every voice; it sounds buzzier
than a trained vocoder but is always available.

It can also vocode a piece chunk by chunk (``GriffinLim.stream``), so the first half second
of a sentence can be played before the rest has been vocoded. Griffin-Lim finds a phase
for the frames it is given, and two chunks vocoded apart would disagree at their seam; so
each chunk starts from the phase the chunk before it settled on for the frames they share
(held fixed for the frames already played), and its first few milliseconds are crossfaded
with the previous chunk's look-ahead. It is the overlap-and-carry idea of real-time
spectrogram inversion (RTISI), done with whole Griffin-Lim passes over a chunk at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from avatar.audio import MelSpec

CONTEXT_FRAMES = 6
"""Frames before a chunk whose phase is carried from the chunk before and held: more than
the n_fft / hop frames that reach a chunk's first sample."""
AHEAD_FRAMES = 6
"""Frames past a chunk that are vocoded with it and dropped (their samples would sit on the
inverse STFT's one-sided edge); the next chunk starts its own from their phase."""
FADE_FRAMES = 2
"""Hops over which a chunk's first samples are crossfaded with the previous chunk's
look-ahead, hiding what is left of the mismatch (about 23 ms at 22.05 kHz)."""


def _iterate(mag: torch.Tensor, angles: torch.Tensor, start: torch.Tensor, held: int,
             window: torch.Tensor, n_iter: int, momentum: float, n_fft: int, hop: int,
             win: int) -> torch.Tensor:
    """Griffin-Lim's iterations with momentum from ``angles``; the first ``held`` frames'
    phase stays ``start``'s."""
    frames = mag.shape[1]
    length = frames * hop
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        wav = torch.istft(mag * angles, n_fft, hop, win, window, center=True, length=length)
        rebuilt = torch.stft(wav, n_fft, hop, win, window, center=True, pad_mode="reflect",
                             return_complex=True)[:, :frames]
        angles = rebuilt - previous * (momentum / (1 + momentum))
        angles = angles / (angles.abs() + 1e-16)
        if held > 0:
            angles[:, :held] = start[:, :held]
        previous = rebuilt
    return angles


class GriffinLim:
    def __init__(self, spec: MelSpec, n_iter: int = 32, device: str | torch.device = "cpu",
                 momentum: float = 0.99, seed: int = 0):
        import torchaudio

        self.spec = spec
        self.n_iter = n_iter
        self.momentum = momentum
        self.seed = seed
        """Seeds the random starting phase: the same mel gives the same audio every time."""
        self.device = torch.device(device)
        fb = torchaudio.functional.melscale_fbanks(
            spec.n_fft // 2 + 1, 0.0, spec.f_max or spec.rate / 2, spec.n_mels, spec.rate,
            norm="slaney", mel_scale="slaney")  # (freqs, mels)
        self.inverse = torch.linalg.pinv(fb.T).to(self.device)  # (freqs, mels)
        self.window = torch.hann_window(spec.win or spec.n_fft, device=self.device)

    def magnitude(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(n_mels, T) natural-log mel -> (freqs, T) linear magnitude."""
        return torch.clamp(self.inverse @ torch.exp(log_mel.to(self.device)), min=0.0)

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        s = self.spec
        return torch.istft(spec, s.n_fft, s.hop, s.win or s.n_fft, self.window,
                           center=True, length=length)

    def _stft(self, wav: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return torch.stft(wav, s.n_fft, s.hop, s.win or s.n_fft, self.window, center=True,
                          pad_mode="reflect", return_complex=True)

    def phase(self, mag: torch.Tensor, start: torch.Tensor | None = None,
              held: int = 0) -> torch.Tensor:
        """Griffin-Lim (with momentum) over ``mag`` (freqs, T): unit-modulus phases.
        ``start`` (freqs, k): the first k frames' starting phase (the rest random);
        ``held``: how many of those stay fixed through the iterations."""
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        angles = torch.exp(2j * torch.pi * torch.rand(
            mag.shape, generator=gen, device=self.device, dtype=mag.dtype))
        if start is not None:
            angles[:, :start.shape[1]] = start
        s = self.spec
        held_start = start if start is not None else angles[:, :0]
        return _iterate(mag, angles, held_start, held, self.window, self.n_iter,
                        self.momentum, s.n_fft, s.hop, s.win or s.n_fft)

    @torch.inference_mode()
    def __call__(self, log_mel: torch.Tensor) -> np.ndarray:
        """(n_mels, T) natural-log mel magnitude -> (T * hop,) float32 waveform at
        ``spec.rate``, the whole at once."""
        mag = self.magnitude(log_mel)
        wav = self._istft(mag * self.phase(mag), mag.shape[1] * self.spec.hop)
        return wav.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)

    def stream(self, log_mel: torch.Tensor) -> GriffinLimStream:
        """Vocode ``log_mel`` chunk by chunk, in order (``GriffinLimStream.chunk``)."""
        return GriffinLimStream(self, log_mel)


class GriffinLimStream:
    """One piece's mel vocoded in consecutive chunks [a, b), each ``(b - a) * hop`` samples,
    which played one after another make the piece."""

    def __init__(self, gl: GriffinLim, log_mel: torch.Tensor):
        self.gl = gl
        self.mag = gl.magnitude(log_mel)
        self.pos = 0
        self._angles: torch.Tensor | None = None
        """The previous chunk's phase from ``_a0`` to its look-ahead's end."""
        self._a0 = 0
        self._tail = np.zeros(0, np.float32)
        """The previous chunk's samples past its end (its look-ahead), for the crossfade."""

    @torch.inference_mode()
    def chunk(self, a: int, b: int) -> np.ndarray:
        if a != self.pos:
            raise ValueError(f"chunks go in order: expected one from frame {self.pos}, got {a}")
        gl, hop, n = self.gl, self.gl.spec.hop, self.mag.shape[1]
        lo = max(0, a - CONTEXT_FRAMES) if self._angles is not None else 0
        hi = min(n, b + AHEAD_FRAMES)
        start, held = None, 0
        if self._angles is not None:
            start = self._angles[:, lo - self._a0:]  # frames lo .. previous look-ahead end
            held = a - lo
        mag = self.mag[:, lo:hi]
        angles = gl.phase(mag, start, held)
        wav = gl._istft(mag * angles, (hi - lo) * hop).clamp(-1.0, 1.0)
        wav = wav.cpu().numpy().astype(np.float32)
        out = wav[(a - lo) * hop:(b - lo) * hop].copy()
        fade = min(len(self._tail), FADE_FRAMES * hop, len(out))
        if fade:
            w = np.linspace(0.0, 1.0, fade + 2, dtype=np.float32)[1:-1]
            out[:fade] = (1 - w) * self._tail[:fade] + w * out[:fade]
        self._tail = wav[(b - lo) * hop:]
        self._angles, self._a0 = angles, lo
        self.pos = b
        return out
