"""``twincast train head``: the head stage alone, on an existing enrolment cache.

Kept apart from ``training.enrol`` (which imports footage ingest, and with it PyAV) so that
training alone runs where only torch and OpenCV are installed: the GPU machine of
``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from training.workdir import Workdir


def train_and_export(workdir: Path, preset: str, device: str = "cpu",
                     name: str | None = None, export: bool = True, train: bool = True,
                     max_minutes: float | None = None) -> dict:
    """``twincast train head``: the head stage alone, on an existing enrolment cache. Safe
    under ``torchrun`` (every rank trains; rank 0 exports). ``train=False`` exports the
    generator a previous training left in WORKDIR/head (for one trained elsewhere)."""
    from training.head.train import head_preset, load_trained, train_head

    wd = Workdir(workdir)
    feats = wd.features
    out: dict = {"head_seconds": 0.0}
    main = True
    if train:
        cfg = head_preset(preset)
        if max_minutes is not None:
            cfg = dataclasses.replace(cfg, max_minutes=max_minutes)
        result = train_head(feats, wd.head, cfg, device=device)
        out["head_seconds"] = result.seconds
        out["head_plan"] = result.plan
        main = result.dist.main
    if export and main:
        # Exporting writes video (PyAV); training alone must not need it (the GPU machine).
        from training.head.export import export_bundle

        head = load_trained(wd.head)
        out["head_seconds"] = head.seconds
        manifest = json.loads((feats / "manifest.json").read_text())
        name = name or manifest["clips"][0]["id"]
        out["bundle"] = export_bundle(feats, head, wd.bundle(name), name, preset)
    return out
