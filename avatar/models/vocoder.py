"""A trained vocoder: log-mel -> waveform through a predicted short-time Fourier transform.

In the manner of Vocos: a stack of ConvNeXt blocks runs at the mel's frame rate and predicts,
for every frame, the magnitude and phase of each STFT bin; an inverse STFT makes the
waveform. Working at the frame rate (not the sample rate) keeps it small and fast on a CPU.
It is trained on the person's own recordings with multi-resolution STFT and mel losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VocoderConfig:
    n_mels: int = 80
    dim: int = 256
    blocks: int = 6
    intermediate: int = 768
    n_fft: int = 1024
    hop: int = 256

    @classmethod
    def from_dict(cls, d: dict) -> VocoderConfig:
        return cls(**d)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, intermediate: int):
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, intermediate)
        self.pw2 = nn.Linear(intermediate, dim)
        self.scale = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, T)."""
        y = self.dw(x).transpose(1, 2)                      # (B, T, C)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.scale
        return x + y.transpose(1, 2)


class Vocoder(nn.Module):
    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Conv1d(cfg.n_mels, cfg.dim, 7, padding=3)
        self.norm = nn.LayerNorm(cfg.dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(cfg.dim, cfg.intermediate)
                                    for _ in range(cfg.blocks))
        self.final = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.n_fft + 2)  # magnitude and phase per bin
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) natural-log mel -> (B, (T - 1) * hop) waveform; sample n sits at
        time n / rate, frame t is centred on sample t * hop (as the mel was computed)."""
        x = self.embed(log_mel)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        for b in self.blocks:
            x = b(x)
        x = self.head(self.final(x.transpose(1, 2))).transpose(1, 2)   # (B, n_fft + 2, T)
        log_mag, phase = x.chunk(2, 1)
        mag = torch.exp(log_mag.clamp(max=6.0))
        spec = torch.polar(mag, phase)
        return torch.istft(spec, self.cfg.n_fft, self.cfg.hop, self.cfg.n_fft, self.window,
                           center=True)

    @torch.inference_mode()
    def synthesise(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(n_mels, T) -> (T * hop,) waveform in [-1, 1] (the last frame's hop padded)."""
        wav = self.forward(log_mel[None])[0]
        wav = F.pad(wav, (0, self.cfg.hop))
        return wav.clamp(-1.0, 1.0)

    @property
    def context(self) -> int:
        """Mel frames either side that reach a frame's samples: the input convolution and
        each block's depthwise convolution see 3 frames each way, and the inverse STFT
        overlaps n_fft / 2 samples each way."""
        return 3 + 3 * self.cfg.blocks + -(-self.cfg.n_fft // (2 * self.cfg.hop)) + 1

    @torch.inference_mode()
    def segment(self, log_mel: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """The samples of frames [a, b) of ``synthesise(log_mel)``, computed from those
        frames and ``context`` more either side only, so a long mel can be vocoded and
        played piece by piece with no seam: the result is the same as a whole."""
        n = log_mel.shape[1]
        a0, b0 = max(0, a - self.context), min(n, b + self.context)
        wav = self.synthesise(log_mel[:, a0:b0])
        hop = self.cfg.hop
        return wav[(a - a0) * hop: (b - a0) * hop]


def stft_loss(pred: torch.Tensor, target: torch.Tensor,
              resolutions: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256),
                                                         (2048, 512))) -> torch.Tensor:
    """Multi-resolution STFT loss: spectral convergence + log-magnitude L1 at each
    resolution (n_fft, hop), so no single time-frequency trade-off is favoured."""
    total = pred.new_zeros(())
    for n_fft, hop in resolutions:
        w = torch.hann_window(n_fft, device=pred.device)
        sp = torch.stft(pred, n_fft, hop, n_fft, w, return_complex=True).abs() + 1e-5
        st = torch.stft(target, n_fft, hop, n_fft, w, return_complex=True).abs() + 1e-5
        sc = torch.linalg.norm(st - sp) / torch.linalg.norm(st)
        total = total + sc + F.l1_loss(sp.log(), st.log())
    return total / len(resolutions)
