"""Learning when the person nods from what they say (``avatar.cues`` runs it).

The motion bank's own frames say where the nods are (``avatar.cues.bank_nods``); the
enrolment cache holds the speech under every frame (``mel16``). A one-hidden-layer network
learns from the first ``1 - validation`` of the bank which stretches of speech are followed
by a nod, and the last part (later footage it never saw) picks the probability over which
a nod is called and measures how well that works. A person who barely nods, or whose nods
the speech does not foretell, gets no model: the walk then ignores nods, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.audio import mel_windows
from avatar.cues import NodCues, bank_nods, context, frame_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CueConfig:
    hidden: int = 64
    epochs: int = 60
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    validation: float = 0.2
    """The last share of the bank's frames kept out of training, to set and check it."""
    tolerance_s: float = 0.08
    """A called nod within this of a real one counts as found (two frames at 25 fps)."""
    min_nods: int = 20
    min_f1: float = 0.5
    """Below this many nods in the footage, or this F1 on the kept-out part, no model."""
    seed: int = 0


def speech_rows(features_dir: Path, clip_dirs: list[str], frames: list[int], fps: int,
                width: int) -> list[np.ndarray]:
    """Each clip's ``avatar.cues.frame_rows`` from the enrolment cache's mel (what the
    runtime computes from the speech it is given)."""
    out = []
    for d, n in zip(clip_dirs, frames, strict=True):
        with np.load(features_dir / d / "audio.npz") as z:
            mel = z["mel16"].astype(np.float32)
        out.append(frame_rows(mel_windows(mel, n, fps, width), fps))
    return out


def fit_nod_cues(rows: list[np.ndarray], index: dict[str, np.ndarray], fps: int,
                 cfg: CueConfig | None = None) -> tuple[NodCues | None, dict]:
    """The model for a bank ``index`` whose frames come from clips with speech ``rows``
    (per clip, per source frame), and a report of how well it calls the kept-out nods."""
    import torch

    cfg = cfg or CueConfig()
    nods = bank_nods(index, fps)
    clip, src = index["clip"].astype(int), index["source_frame"].astype(int)
    x = np.concatenate([context(r)[src[clip == c]] for c, r in enumerate(rows)
                        if (clip == c).any()])
    order = np.concatenate([np.flatnonzero(clip == c) for c in range(len(rows))])
    nods = nods[order]
    minutes = len(nods) / fps / 60
    report = {"nods": int(nods.sum()), "per_minute": round(float(nods.sum()) /
                                                          max(minutes, 1e-9), 1)}
    if nods.sum() < cfg.min_nods:
        report.update(used=False, why=f"{int(nods.sum())} nods in the footage (a model needs "
                                       f"{cfg.min_nods})")
        return None, report
    cut = int(len(x) * (1 - cfg.validation))
    mean = x[:cut].mean(0)
    std = x[:cut].std(0) + 1e-3
    # A soft target around each nod: the frame before or after is nearly as right.
    t = np.arange(len(nods))
    target = np.zeros(len(nods), np.float32)
    for p in np.flatnonzero(nods):
        target = np.maximum(target, np.exp(-0.5 * (t - p) ** 2).astype(np.float32))
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    z = torch.from_numpy((x[:cut] - mean) / std)
    y = torch.from_numpy(target[:cut])
    net = torch.nn.Sequential(torch.nn.Linear(z.shape[1], cfg.hidden), torch.nn.ReLU(),
                              torch.nn.Dropout(cfg.dropout), torch.nn.Linear(cfg.hidden, 1))
    opt = torch.optim.Adam(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(z), generator=gen)
        for i in range(0, len(z), cfg.batch):
            b = perm[i: i + cfg.batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(z[b])[:, 0], y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    lin1, lin2 = net[0], net[3]
    cues = NodCues(w1=lin1.weight.detach().numpy().T.copy(), b1=lin1.bias.detach().numpy(),
                   w2=lin2.weight.detach().numpy().T.copy(), b2=lin2.bias.detach().numpy(),
                   mean=mean.astype(np.float32), std=std.astype(np.float32), threshold=0.5)
    # Called on the kept-out part: the threshold with the best F1 there.
    prob = cues.score(x[cut:])
    real = np.flatnonzero(nods[cut:])
    tol = max(1, int(round(cfg.tolerance_s * fps)))
    best = (-1.0, 0.5, 0.0, 0.0)
    for thr in np.arange(0.1, 0.91, 0.05):
        cues.threshold = round(float(thr), 2)
        called = np.flatnonzero(cues.peaks(prob, fps))
        recall = np.mean([np.any(np.abs(called - r) <= tol) for r in real]) if real.size else 0
        precision = np.mean([np.any(np.abs(real - c) <= tol) for c in called]) \
            if called.size else 0.0
        f1 = 2 * recall * precision / max(recall + precision, 1e-9)
        if f1 > best[0]:
            best = (float(f1), cues.threshold, float(recall), float(precision))
    f1, cues.threshold, recall, precision = best
    report.update(threshold=round(cues.threshold, 2), recall=round(recall, 3),
                  precision=round(precision, 3), f1=round(f1, 3),
                  validation_nods=int(real.size))
    if f1 < cfg.min_f1:
        report.update(used=False, why=f"speech foretells the nods too poorly (F1 {f1:.2f} on "
                                      f"later footage, a model needs {cfg.min_f1})")
        return None, report
    report["used"] = True
    log.info("nod cues: %d nods, later footage's found %.0f%% (%.0f%% of calls right)",
             int(nods.sum()), 100 * recall, 100 * precision)
    return cues, report
