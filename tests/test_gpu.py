"""The few checks that need CUDA; skipped on machines without it (CI has none)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_ci_training_and_render_on_cuda(sample, tmp_path: Path) -> None:
    from avatar.avatar import Avatar, FrameRequest
    from training.config import features_preset
    from training.enrol import enrol_features
    from training.head.export import export_bundle
    from training.head.train import head_preset, train_head

    feats = enrol_features([sample.video], tmp_path / "w", features_preset("ci", 1),
                           transcript=sample.transcript)
    res = train_head(feats.dir, tmp_path / "head", head_preset("ci"), device="cuda:0")
    bundle = export_bundle(feats.dir, res.trained(), tmp_path / "bundle", "gpu", "ci")
    avatar = Avatar.load(bundle, "cuda:0")
    mel = np.zeros((80, 20), np.float32) + avatar.mel_mean
    frames = avatar.render([FrameRequest(i, mel) for i in range(8)])
    assert len(frames) == 8 and frames[0].dtype == np.uint8
