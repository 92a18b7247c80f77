"""Is the sync expert good enough to teach the generator?

The expert trains on the lip predictor's side of the held-out split and is judged here on
the other side, in eval mode: the mode the generator's sync loss meets it in. A generator
trained against an expert that cannot tell in-sync audio from shifted audio learns to
please the expert instead of to follow the speech: on a fresh GRID enrolment (the idle
AMX Xeon, December 2026) the expert scored real windows 0.456 and shifted-audio windows
0.425 but the generator's own mouths 0.757; the generator's L1 rose from 0.014 to 0.02 as
the sync loss joined, and its mouth followed held-out speech at 0.817 where an earlier run
had reached 0.89.
The measure is the area under the ROC curve (AUC): the chance that an in-sync window
scores above a shifted one; 0.5 is a coin.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from training.head.data import Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertCheck:
    """How well the expert tells in-sync from shifted audio on held-out windows."""

    auc: float | None
    """None where the footage has no held-out windows to judge on."""
    windows: int
    in_sync: float | None
    """Mean p(in sync) the expert gives in-sync held-out windows."""
    shifted: float | None
    """Mean p(in sync) for the same footage with audio from elsewhere in its clip."""

    def passes(self, min_auc: float) -> bool:
        """Unmeasured passes: nothing says the expert is weak, and without held-out
        footage there is nothing better to do than the preset's plan."""
        return self.auc is None or self.auc >= min_auc

    def to_dict(self) -> dict:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)
        return {"held_out_auc": r(self.auc), "windows": self.windows,
                "p_in_sync": r(self.in_sync), "p_shifted": r(self.shifted)}


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney U)."""
    above = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(above + 0.5 * ties)


@torch.no_grad()
def check_expert(expert: torch.nn.Module, sampler: Sampler, device: torch.device,
                 windows: int = 384, batch: int = 32, seed: int = 4243) -> ExpertCheck:
    """Score ``windows`` held-out windows (about half with shifted audio) in eval mode.

    Draws from a copy of the sampler with its own random numbers, so the training's data
    order does not depend on whether or when the check ran."""
    if sampler.side(held_out=True) is None:
        return ExpertCheck(None, 0, None, None)
    data = copy.copy(sampler)
    data.rng = np.random.default_rng(seed)
    was_training = expert.training
    expert.eval()
    scores, labels = [], []
    try:
        for start in range(0, windows, batch):
            b = data.batch(min(batch, windows - start), negatives=True, held_out=True)
            regions = torch.from_numpy(b["regions"]).to(device).permute(0, 1, 4, 2, 3)
            mel = torch.from_numpy(b["sync_mel"]).to(device).unsqueeze(1)
            cos = expert(regions.float() / 255.0, mel)
            scores.append(((cos + 1) / 2).float().cpu().numpy())
            labels.append(b["label"] > 0.5)
    finally:
        expert.train(was_training)
    p, lab = np.concatenate(scores), np.concatenate(labels)
    if lab.all() or not lab.any():
        return ExpertCheck(None, len(p), None, None)
    pos, neg = p[lab], p[~lab]
    return ExpertCheck(auc(pos, neg), len(p), float(pos.mean()), float(neg.mean()))
