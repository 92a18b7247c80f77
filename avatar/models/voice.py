"""The voice's acoustic model: phoneme symbols in, log-mel out, all frames at once.

Text encoder (embedding + convolutions) -> per-symbol hidden states and a per-symbol mel
mean; in training, monotonic alignment search (as in Glow-TTS) finds the most likely way to
spread the symbols over the real mel frames under those means, which gives each symbol its
duration; a duration predictor learns those durations and a convolutional decoder turns the
expanded states into the mel. At synthesis the predicted durations do the expanding, so no
aligner or pretrained model is needed anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Symbols the frontend can produce: espeak-ng's English IPA, pinyin letters with tone
# digits, a word separator and punctuation. Fixed, so every voice shares one table.
PAD = "_"
_PUNCT = " ,.!?;:-'\"()"
_LETTERS = "abcdefghijklmnopqrstuvwxyzü012345"
_IPA = ("ɑɐɒæɓʙβɔɕçɗɖðʤəɘɚɛɜɝɞɟʄɡɠɢʛɦɧħɥʜɨɪʝɭɬɫɮʟɱɯɰŋɳɲɴøɵɸθœɶʘɹɺɾɻʀʁɽʂʃʈʧʉʊʋⱱʌɣɤʍχʎʏʑʐʒʔʡʕʢǀǁǂǃ"
        "ˈˌːˑʼʴʰʱʲʷˠˤ˞↓↑→↗↘ᵻ̩̃")
SYMBOLS: tuple[str, ...] = tuple(dict.fromkeys(PAD + _PUNCT + _LETTERS + _IPA))
NOT_PHONES = frozenset(PAD + _PUNCT)
"""Symbols that are no sound of their own: padding, the word separator, punctuation."""


@dataclass(frozen=True)
class VoiceConfig:
    """Acoustic-model sizes; a preset is one of these."""

    n_symbols: int = len(SYMBOLS)
    n_mels: int = 80
    dim: int = 192
    """Width of the text encoder."""
    enc_layers: int = 4
    dec_dim: int = 256
    dec_layers: int = 6
    kernel: int = 5
    dropout: float = 0.1
    marks: bool = False
    """Stress and length marks as features of the phones they mark (see ``encode``)
    instead of symbols of their own; False in bundles made before they were."""

    @classmethod
    def from_dict(cls, d: dict) -> VoiceConfig:
        return cls(**d)


# Ten minutes of speech is learned by heart quickly: on held-out LJ sentences the mel loss
# stayed near 0.455 from step 300 on with dropout 0.1, and was at 0.416 and falling at step
# 500 with 0.4 (one core per run).
VOICE_PRESETS: dict[str, VoiceConfig] = {
    "ci": VoiceConfig(dim=64, enc_layers=2, dec_dim=96, dec_layers=3, marks=True),
    "demo": VoiceConfig(dim=64, enc_layers=2, dec_dim=96, dec_layers=3, marks=True),
    "cpu": VoiceConfig(dropout=0.4, marks=True),
    # A preset NAME may have a "NAME-light" model, trained instead where its own model's
    # steps do not fit the cap on the host (training.voice.train.fit_voice). cpu has none:
    # one 128/128 wide (half the step on an AVX2-only EPYC) ran 3357 steps in the 33-minute
    # cap on LJ Speech and spoke its held-out sentences at 83 % WER (real 14 %).
    "gpu": VoiceConfig(dim=256, enc_layers=6, dec_dim=384, dec_layers=8, dropout=0.4,
                       marks=True),
}


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, T) tensor."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class Dropout(nn.Module):
    """Dropout from a uniform draw: the same as ``nn.Dropout`` in distribution, its mask
    three times faster on a CPU (28 ms against 9 for 8 x 256 x 750 values; the Bernoulli
    sampling was a tenth of a training step there). No weights, so bundles load either way."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


class ConvBlock(nn.Module):
    """Residual conv -> ReLU -> norm -> dropout, masked so padding never leaks in."""

    def __init__(self, c: int, kernel: int, dropout: float, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(c, c, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        self.norm = ChannelNorm(c)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.norm(F.relu(self.conv(x * mask))))
        return (x + y) * mask


class TextEncoder(nn.Module):
    def __init__(self, cfg: VoiceConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.n_symbols, cfg.dim, padding_idx=0)
        self.marks = cfg.marks
        if cfg.marks:
            self.stress = nn.Embedding(3, cfg.dim)
            self.long = nn.Embedding(2, cfg.dim)
        self.blocks = nn.ModuleList(ConvBlock(cfg.dim, cfg.kernel, cfg.dropout)
                                    for _ in range(cfg.enc_layers))
        # A bidirectional GRU gives every symbol the whole sentence as context (the
        # convolutions alone see ~17 symbols).
        self.rnn = nn.GRU(cfg.dim, cfg.dim // 2, batch_first=True, bidirectional=True)
        self.mu = nn.Conv1d(cfg.dim, cfg.n_mels, 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, N) -> hidden (B, D, N) and mel means (B, n_mels, N)."""
        if self.marks:
            sym, stress, long = split_marks(tokens)
            x = self.embed(sym) + self.stress(stress) + self.long(long)
        else:
            x = self.embed(tokens)
        x = x.transpose(1, 2) * mask  # (B, D, N)
        for b in self.blocks:
            x = b(x, mask)
        x = self.rnn(x.transpose(1, 2))[0].transpose(1, 2) * mask
        return x, self.mu(x) * mask


class DurationPredictor(nn.Module):
    def __init__(self, cfg: VoiceConfig):
        super().__init__()
        self.blocks = nn.ModuleList(ConvBlock(cfg.dim, 3, 0.3) for _ in range(2))
        self.out = nn.Conv1d(cfg.dim, 1, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, D, N) -> (B, N) log(1 + frames) per symbol."""
        for b in self.blocks:
            h = b(h, mask)
        return (self.out(h) * mask)[:, 0]


class Decoder(nn.Module):
    def __init__(self, cfg: VoiceConfig):
        super().__init__()
        self.inp = nn.Conv1d(cfg.dim + cfg.n_mels, cfg.dec_dim, 1)
        dil = [1, 2, 4]
        self.blocks = nn.ModuleList(ConvBlock(cfg.dec_dim, cfg.kernel, cfg.dropout,
                                              dil[i % len(dil)])
                                    for i in range(cfg.dec_layers))
        self.out = nn.Conv1d(cfg.dec_dim, cfg.n_mels, 1)

    def forward(self, h: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Expanded states (B, D, T) and means (B, n_mels, T) -> mel (B, n_mels, T); the
        decoder refines the means (a residual on top of them)."""
        x = self.inp(torch.cat([h, mu], 1)) * mask
        for b in self.blocks:
            x = b(x, mask)
        return (mu + self.out(x)) * mask


def sequence_mask(lengths: torch.Tensor, n: int | None = None) -> torch.Tensor:
    n = int(lengths.max()) if n is None else n
    return (torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]).float()


@torch.no_grad()
def monotonic_alignment(logp: torch.Tensor, n_sym: torch.Tensor, n_frames: torch.Tensor
                        ) -> torch.Tensor:
    """Most likely monotonic path through (B, N, T) log-likelihoods (Glow-TTS's search):
    every frame goes to one symbol, symbols in order, each symbol at least one frame.
    Returns a 0/1 path (B, N, T).

    A loop over frames of a few small operations each: in NumPy on frame-major copies,
    since per-call overhead is what it costs (torch took 70 ms a CPU training step, a
    tenth of a small model's step; this takes 13, with the same float32 arithmetic)."""
    lp = np.ascontiguousarray(logp.detach().float().cpu().numpy().transpose(2, 0, 1))
    t, b, n = lp.shape
    q = np.full((b, n), -1e9, np.float32)
    q[:, 0] = lp[0, :, 0]
    came_diag = np.zeros((t, b, n), bool)
    diag = np.full((b, n), -1e9, np.float32)
    for j in range(1, t):
        diag[:, 1:] = q[:, :-1]
        np.greater(diag, q, out=came_diag[j])
        np.maximum(q, diag, out=q)
        q += lp[j]
    # Backtrack per item from (last symbol, last frame): a short loop over frames.
    out = np.zeros((b, n, t), np.float32)
    for k in range(b):
        i = int(n_sym[k]) - 1
        for j in range(int(n_frames[k]) - 1, -1, -1):
            out[k, i, j] = 1
            if i > 0 and (came_diag[j, k, i] or i == j):
                i -= 1
    return torch.from_numpy(out).to(device=logp.device, dtype=logp.dtype)


class AcousticModel(nn.Module):
    def __init__(self, cfg: VoiceConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = TextEncoder(cfg)
        self.duration = DurationPredictor(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, tokens: torch.Tensor, n_sym: torch.Tensor, mels: torch.Tensor,
                n_frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """tokens (B, N), mels (B, n_mels, T) normalised -> predicted mel and named losses."""
        xm = sequence_mask(n_sym, tokens.shape[1]).unsqueeze(1)   # (B, 1, N)
        ym = sequence_mask(n_frames, mels.shape[2]).unsqueeze(1)  # (B, 1, T)
        h, mu = self.encoder(tokens, xm)
        # The alignment search compares log-likelihoods that differ in the third digit:
        # always in float32, also when the rest trains under bfloat16 autocast.
        with torch.no_grad(), torch.autocast(mels.device.type, enabled=False):
            # log N(y_t; mu_i, I) up to a constant, for every symbol/frame pair (B, N, T).
            m32 = mu.float()
            logp = (-0.5 * (m32.pow(2).sum(1, keepdim=True).transpose(1, 2)
                            - 2 * torch.einsum("bcn,bct->bnt", m32, mels)
                            + mels.pow(2).sum(1, keepdim=True)))
            logp = logp.masked_fill(xm.transpose(1, 2) * ym == 0, -1e9)
            path = monotonic_alignment(logp, n_sym, n_frames)
        dur = path.sum(2)                                            # (B, N) frames
        mu_up = torch.einsum("bcn,bnt->bct", mu, path)
        h_up = torch.einsum("bdn,bnt->bdt", h, path)
        n_valid = ym.sum() * self.cfg.n_mels
        prior = 0.5 * ((mels - mu_up) ** 2 * ym).sum() / n_valid
        logd = self.duration(h.detach(), xm)
        dur_loss = (((logd - torch.log1p(dur)) ** 2) * xm[:, 0]).sum() / xm.sum()
        mel = self.decoder(h_up, mu_up, ym)
        mel_loss = ((mel - mels).abs() * ym).sum() / n_valid
        return mel, {"voice/mel": mel_loss, "voice/prior": prior, "voice/duration": dur_loss}

    @torch.inference_mode()
    def synthesise(self, tokens: torch.Tensor, pace: float = 1.0, scale: float = 1.0,
                   lead: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (1, N) -> normalised mel (n_mels, T) and frames per symbol (N,).
        ``pace`` > 1 speaks faster; ``scale`` is the voice's duration calibration; ``lead``
        caps the frames of the first symbol (the silence before the first word)."""
        xm = torch.ones(1, 1, tokens.shape[1], device=tokens.device)
        h, mu = self.encoder(tokens, xm)
        frames = torch.clamp(torch.round(torch.expm1(self.duration(h, xm)[0]) * scale / pace),
                             min=1)
        if lead is not None:
            frames[0] = frames[0].clamp(max=max(1, lead))
        idx = torch.repeat_interleave(torch.arange(tokens.shape[1], device=tokens.device),
                                      frames.long())
        h_up, mu_up = h[:, :, idx], mu[:, :, idx]
        ym = torch.ones(1, 1, len(idx), device=tokens.device)
        return self.decoder(h_up, mu_up, ym)[0], frames.long()


_INDEX = {s: i for i, s in enumerate(SYMBOLS)}


_STRESS = {"ˈ": 1, "ˌ": 2}
_LONG = "ː"
_VOWELS = set("aeiouyæɐɑɒɔəɘɚɛɜɝɞɤɨɪʉʊʌʏøœɶɯɵ")
N_SYMBOLS = len(SYMBOLS)


def split_marks(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids from ``encode(..., marks=True)`` -> symbol, stress (0 none, 1 primary,
    2 secondary) and length (0/1)."""
    return ids % N_SYMBOLS, (ids // N_SYMBOLS) % 3, ids // (3 * N_SYMBOLS)


def symbol_of(i: int) -> str:
    return SYMBOLS[i % N_SYMBOLS]


def encode(phonemes: str, marks: bool = False) -> tuple[list[int], set[str]]:
    """Phoneme string -> symbol ids, with a word separator at each end to carry the
    silence around the words; characters outside the table are dropped and returned.

    With ``marks``, espeak's stress marks and length mark are not symbols: a stress mark
    marks the phones of its syllable up to and including the vowel, a length mark the
    phone before it (id + N_SYMBOLS x (stress + 3 x long)). As symbols of their own they
    take frames of audio that belong to the phones around them (the alignment gives every
    symbol at least one frame), which blurs those phones on ten minutes of speech."""
    space = _INDEX[" "]
    ids, unknown = [space], set()
    stress = 0
    for ch in phonemes:
        if marks and ch in _STRESS:
            stress = _STRESS[ch]
        elif marks and ch == _LONG:
            if ids[-1] != space and ids[-1] < 3 * N_SYMBOLS:
                ids[-1] += 3 * N_SYMBOLS
        elif ch in _INDEX:
            if ch == " ":
                stress = 0
            ids.append(_INDEX[ch] + N_SYMBOLS * stress)
            if ch in _VOWELS:
                stress = 0
        else:
            unknown.add(ch)
    ids.append(space)
    return ids, unknown
