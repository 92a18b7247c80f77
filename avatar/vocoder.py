"""Mel spectrogram -> waveform.

``GriffinLim`` needs no training: the mel is mapped back to a linear magnitude spectrogram
(least squares through the mel filterbank) and a phase is found by Griffin-Lim's iterations.
It is the ci preset's vocoder and the fallback of every voice; it sounds buzzier than a
trained vocoder but is always available.
"""

from __future__ import annotations

import numpy as np
import torch

from avatar.audio import MelSpec


class GriffinLim:
    def __init__(self, spec: MelSpec, n_iter: int = 32, device: str | torch.device = "cpu"):
        import torchaudio

        self.spec = spec
        self.device = torch.device(device)
        fb = torchaudio.functional.melscale_fbanks(
            spec.n_fft // 2 + 1, 0.0, spec.f_max or spec.rate / 2, spec.n_mels, spec.rate,
            norm="slaney", mel_scale="slaney")  # (freqs, mels)
        self.inverse = torch.linalg.pinv(fb.T).to(self.device)  # (freqs, mels)
        self.gl = torchaudio.transforms.GriffinLim(
            n_fft=spec.n_fft, hop_length=spec.hop, win_length=spec.n_fft, power=1.0,
            n_iter=n_iter, momentum=0.99).to(self.device)

    @torch.inference_mode()
    def __call__(self, log_mel: torch.Tensor) -> np.ndarray:
        """(n_mels, T) natural-log mel magnitude -> float32 waveform at ``spec.rate``."""
        mag = torch.clamp(self.inverse @ torch.exp(log_mel.to(self.device)), min=0.0)
        wav = self.gl(mag).clamp(-1.0, 1.0)
        return wav.cpu().numpy().astype(np.float32)
