"""The talking-head generator and the lip-sync expert.

The generator re-renders the lower face of one person: it sees a reference crop (identity,
teeth, texture), the target crop with the lower face blanked (pose, lighting, background),
a sketch of the lips it must draw and ~0.4 s of log-mel around the frame, and paints the
lower face back. The sketch comes from the real face mesh in training and from the lip
predictor (``avatar.models.lips``, part of the generator) when it speaks. Everything works on
the *mouth region*, a fixed square of the 256 px aligned crop (``HeadConfig.region``).

The sync expert embeds five consecutive mouth images and the matching audio window; the
cosine of the two embeddings says whether they belong together. Trained on the person's own
footage with shifted-audio negatives, it then scores the generator (the sync loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avatar.models.lips import LipPredictor, lip_sketch


@dataclass(frozen=True)
class HeadConfig:
    """Generator and expert sizes; a preset is one of these."""

    size: int = 96
    """Side of the mouth region the models see, in pixels."""
    mel_bins: int = 80
    mel_frames: int = 40
    """Audio window: 40 hops of 10 ms (0.4 s) centred on the video frame; a mouth shape
    depends on the sounds either side of it (coarticulation)."""
    width: int = 16
    """Channels of the first generator level (16 renders a frame in ~10 ms on 2 cores)."""
    audio_dim: int = 256
    lip_dim: int = 128
    """Width of the lip predictor."""
    sync_frames: int = 5
    sync_dim: int = 128
    region: tuple[float, float, float] = (0.23, 0.46, 0.54)
    """The mouth region in the aligned crop, as fractions of the crop side (x0, y0, side):
    from the nose tip to the bottom of the crop (below the chin), cheek to cheek. The eyes
    stay outside, so all of the model's pixels go to the mouth and jaw."""
    mask_top: float = 0.25
    """Rows of the region below this fraction are blanked in the generator's input and
    painted by it (just under the nostrils)."""

    @classmethod
    def from_dict(cls, d: dict) -> HeadConfig:
        """From its JSON form (a bundle manifest or generator.json): lists become tuples."""
        d = dict(d)
        if "region" in d:
            d["region"] = tuple(d["region"])
        return cls(**d)


# Model sizes of the training presets (training adds steps and loss weights on top).
HEAD_PRESETS: dict[str, HeadConfig] = {
    "ci": HeadConfig(size=48, width=8, audio_dim=64, sync_dim=32, lip_dim=32),
    # Half the cpu width: its training step costs half (0.73 s against 1.38 s on an AVX2-only
    # 2-core EPYC) and on held-out renders of the sample it followed the truth no worse
    # (0.946 against 0.896 for width 16 with the same steps, both with the texture bank).
    "demo": HeadConfig(width=8),
    "cpu": HeadConfig(),
    "gpu": HeadConfig(size=128, width=32),
}


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2, inplace=True))


class AudioEncoder(nn.Module):
    """(B, 1, mel_bins, mel_frames) log-mel -> (B, dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(
            _block(1, 32), _block(32, 32, (2, 1)),    # 80x20 -> 40x20
            _block(32, 64, 2), _block(64, 64),         # 20x10
            _block(64, 128, 2), _block(128, 128),      # 10x5
            _block(128, dim, 2),                       # 5x3
            nn.AdaptiveAvgPool2d(1))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net(mel).flatten(1)


class HeadGenerator(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        chans = [w, w * 2, w * 4, w * 4, w * 8]  # levels at size, /2, /4, /8, /16
        self.enc = nn.ModuleList()
        cin = 8  # reference, blanked target, lip sketch (outer, inner)
        for i, c in enumerate(chans):
            self.enc.append(nn.Sequential(_block(cin, c, 1 if i == 0 else 2), _block(c, c)))
            cin = c
        self.audio = AudioEncoder(cfg.audio_dim)
        # The audio vector scales and shifts the two deepest levels (FiLM).
        self.film = nn.Linear(cfg.audio_dim, 2 * (chans[-1] + chans[-2]))
        self.dec = nn.ModuleList()
        for i in range(len(chans) - 1, 0, -1):
            self.dec.append(nn.Sequential(_block(chans[i] + chans[i - 1], chans[i - 1]),
                                          _block(chans[i - 1], chans[i - 1])))
        self.out = nn.Conv2d(chans[0], 3, 1)
        self.lips = LipPredictor(cfg.lip_dim)

    def forward(self, ref: torch.Tensor, masked: torch.Tensor, mel: torch.Tensor,
                target: torch.Tensor | None = None, lips: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """ref, masked, target: (B, 3, S, S) in [0, 1]; mel: (B, 1, bins, frames); lips:
        (B, 40, 2) lip points in crop fractions, predicted from the audio when not given.
        Returns the painted region (B, 3, S, S), the L1 loss when a target is given, and
        in training with given lips the lip predictor's standardised output (B, 80)."""
        # Learning the lips rides along with the generator's step (one forward, so
        # data-parallel training sees every parameter used): the caller gets the
        # predictor's standardised output and scores it against the real lips.
        lip_z = self.lips.standardised(mel) if lips is not None and self.training else None
        if lips is None:
            lips = self.lips(mel)
        y = self.paint(ref, masked, self.audio(mel), lips)
        loss = None if target is None else F.l1_loss(y, target)
        return y, loss, lip_z

    def condition(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, audio_dim + 80): everything the painter takes from the audio (the audio
        vector and the predicted lip points), which depends on nothing else: a live
        session computes it as its speech arrives, not in the render batch."""
        return torch.cat([self.audio(mel), self.lips(mel).flatten(1)], 1)

    def paint_conditioned(self, ref: torch.Tensor, masked: torch.Tensor,
                          cond: torch.Tensor) -> torch.Tensor:
        """``generate`` from ``condition``'s output instead of the log-mel."""
        a, lips = cond.split([self.cfg.audio_dim, cond.shape[1] - self.cfg.audio_dim], 1)
        return self.paint(ref, masked, a, lips.reshape(len(lips), -1, 2))

    def paint(self, ref: torch.Tensor, masked: torch.Tensor, a: torch.Tensor,
              lips: torch.Tensor) -> torch.Tensor:
        """The painted region from its inputs and the audio's part: its vector ``a``
        (B, audio_dim) and the lip points (B, 40, 2)."""
        sketch = lip_sketch(lips, self.cfg.region, ref.shape[-1])
        x = torch.cat([ref, masked, sketch], 1)  # (B, 8, S, S)
        skips = []
        for layer in self.enc:
            x = layer(x)
            skips.append(x)
        c4, c3 = skips[-1].shape[1], skips[-2].shape[1]
        g4, b4, g3, b3 = self.film(a).split([c4, c4, c3, c3], 1)
        skips[-1] = skips[-1] * (1 + g4[:, :, None, None]) + b4[:, :, None, None]
        skips[-2] = skips[-2] * (1 + g3[:, :, None, None]) + b3[:, :, None, None]
        x = skips[-1]
        for i, layer in enumerate(self.dec):
            skip = skips[-2 - i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = layer(torch.cat([x, skip], 1))
        y = torch.sigmoid(self.out(x))
        # Only the blanked rows are painted; above them the input passes through unchanged,
        # so the region's seam with the untouched face is exact.
        keep = region_keep_mask(y.shape[-1], self.cfg.mask_top, y.device)
        # ``masked`` already carries the kept rows (times ``keep``), so the weights add to 1.
        return masked + y * (1 - keep)

    @torch.inference_mode()
    def generate(self, ref: torch.Tensor, masked: torch.Tensor,
                 mel: torch.Tensor) -> torch.Tensor:
        return self.forward(ref, masked, mel)[0]


def region_keep_mask(size: int, mask_top: float, device: torch.device | str = "cpu"
                     ) -> torch.Tensor:
    """(1, 1, S, S): 1 on the rows the generator keeps, 0 on the rows it paints, with a
    soft edge so the boundary never shows."""
    rows = torch.arange(size, device=device, dtype=torch.float32) / size
    edge = 0.04
    keep = ((mask_top + edge - rows) / (2 * edge)).clamp(0, 1)
    return keep.view(1, 1, size, 1).expand(1, 1, size, size)


def blank_lower(region: torch.Tensor, mask_top: float) -> torch.Tensor:
    """The generator's second input: the region with its lower part blanked."""
    return region * region_keep_mask(region.shape[-1], mask_top, region.device)


class SyncExpert(nn.Module):
    """Embeds a stack of mouth images and an audio window into one space."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        n = cfg.sync_frames
        self.face = nn.Sequential(
            _block(n, 32), _block(32, 64, 2), _block(64, 64),
            _block(64, 128, 2), _block(128, 128), _block(128, 256, 2),
            _block(256, 256, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(256, cfg.sync_dim))
        self.audio = nn.Sequential(AudioEncoder(256), nn.Linear(256, cfg.sync_dim))

    @staticmethod
    def mouth(regions: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) regions -> (B, T, S/2, S) grey lower halves."""
        s = regions.shape[-1]
        grey = regions.mean(2)
        return grey[:, :, s // 2:, :]

    def forward(self, regions: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """regions (B, T, 3, S, S), mel (B, 1, bins, frames) -> cosine similarity (B,)."""
        f = F.normalize(self.face(self.mouth(regions)), dim=1)
        a = F.normalize(self.audio(mel), dim=1)
        return (f * a).sum(1)

    def loss(self, regions: torch.Tensor, mel: torch.Tensor,
             label: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of 'in sync' from the cosine, mapped to (0, 1)."""
        p = ((self.forward(regions, mel) + 1) / 2).clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(p, label)
