"""What every trainer shares: the device check, the config digest that decides whether a
checkpoint may be resumed, and the PNG of the training curves."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from avatar import atomic
from avatar.devices import device

RESUME_FREE = ("max_minutes", "adapt_minutes", "checkpoint_minutes", "precision", "min_share",
               "adapt_min_share", "max_stretch", "refuse_short")
"""Settings that may change between a run and its resume (time caps and the arithmetic's
precision, not the model)."""


def config_digest(cfg: object, *also_free: str) -> str:
    """Hash of a training config's fields that shape the model (``also_free`` are left out
    too, e.g. a stage checkpointed on its own)."""
    d = dataclasses.asdict(cfg)  # type: ignore[arg-type]
    for k in (*RESUME_FREE, *also_free):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


training_device = device
"""Trainers check their device as the runtime does."""


def plot_curves(history: list[dict], path: Path) -> None:
    """One panel per named loss ("group/name" keys) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for h in history for k in h if "/" in k})
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), squeeze=False)
    for ax, k in zip(axes[:, 0], keys, strict=True):
        pts = [(h["step"], h[k]) for h in history if k in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    with atomic.atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
