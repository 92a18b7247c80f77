"""The sync expert is judged on held-out windows before it may teach the generator."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar.models.head import HeadConfig, SyncExpert
from training.head.data import ClipData, Sampler
from training.head.expert_check import ExpertCheck, auc, check_expert
from training.head.plan import describe


def _clip(name: str, t: int, size: int, held_from: int, rng: np.random.Generator) -> ClipData:
    """A synthetic clip whose frames carry their index (so a test can tell which frames a
    window came from) and whose tail from ``held_from`` is held out."""
    regions = np.zeros((t, size, size, 3), np.uint8)
    regions[:, 0, 0, 0] = np.arange(t)
    return ClipData(name, regions, rng.normal(size=(t, 8, 4)).astype(np.float32),
                    np.ones(t, bool), np.ones(t, bool), np.zeros((t, 40, 2), np.float32),
                    np.arange(t) < held_from)


def test_auc_orders_and_ties() -> None:
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5


def test_held_out_windows_stay_on_their_side() -> None:
    rng = np.random.default_rng(0)
    clips = [_clip(f"c{i}", 60, 8, 50, rng) for i in range(3)]
    sampler = Sampler(clips, 5, seed=1)
    held = sampler.batch(64, negatives=True, held_out=True)["regions"][:, :, 0, 0, 0]
    seen = sampler.batch(64, negatives=True, held_out=False)["regions"][:, :, 0, 0, 0]
    assert held.min() >= 50
    assert seen.max() < 50
    # Without a side the whole clip is drawn from.
    anywhere = sampler.batch(256)["regions"][:, :, 0, 0, 0]
    assert anywhere.min() < 50 <= anywhere.max()


def test_no_held_out_side_is_unjudged_not_an_error() -> None:
    rng = np.random.default_rng(0)
    clips = [_clip("c", 40, 8, 40, rng)]  # nothing held out
    sampler = Sampler(clips, 5, seed=1)
    assert sampler.side(held_out=True) is None
    cfg = HeadConfig(size=16, mel_bins=8, mel_frames=4)
    check = check_expert(SyncExpert(cfg), sampler, torch.device("cpu"))
    assert check.auc is None and check.passes(0.9)


def test_an_untrained_expert_is_near_chance_and_left_in_its_mode() -> None:
    rng = np.random.default_rng(0)
    cfg = HeadConfig(size=16, mel_bins=8, mel_frames=4)
    clips = [_clip(f"c{i}", 60, 16, 45, rng) for i in range(4)]
    expert = SyncExpert(cfg).train()
    check = check_expert(expert, Sampler(clips, cfg.sync_frames, seed=3),
                         torch.device("cpu"), windows=128)
    assert expert.training
    assert check.windows == 128
    assert check.auc is not None and 0.3 < check.auc < 0.7
    assert not check.passes(0.75)


def test_describe_says_when_the_sync_loss_was_left_out() -> None:
    summary = {"ran": {"lips": 10, "expert": 10, "gen": 100},
               "nominal": {"lips": 10, "expert": 10, "gen": 100},
               "generator_share": 1.0, "sync_steps": 0, "nominal_sync_steps": 70,
               "expert": {**ExpertCheck(0.55, 384, 0.5, 0.48).to_dict(), "min_auc": 0.6,
                          "sync_loss": False}}
    line = describe(summary)
    assert "no sync loss" in line and "AUC 0.55" in line
    # A preset without a sync loss (cpu, demo) does not count steps it never planned.
    short = {**summary, "generator_share": 0.6, "ran": {**summary["ran"], "gen": 60},
             "nominal_sync_steps": 0, "expert": {}}
    line = describe(short)
    assert "sync" not in line and "60 of 100 steps)" in line


@pytest.mark.slow
def test_a_weak_expert_trains_the_generator_without_the_sync_loss(
        bundle: Path, tmp_path: Path) -> None:
    """A bar no expert can pass: the generator's steps all run without the sync loss, the
    plan says so, and a resumed run keeps the verdict."""
    from training.head.train import head_preset, train_head

    cfg = dataclasses.replace(head_preset("ci"), sync_min_auc=1.01)
    res = train_head(bundle.parent.parent / "features", tmp_path / "head", cfg)
    plan = res.plan
    assert plan["ran"]["gen"] == cfg.gen_steps
    assert plan["sync_steps"] == 0
    assert plan["expert"]["sync_loss"] is False
    assert 0.0 <= plan["expert"]["held_out_auc"] <= 1.0
    history = json.loads((tmp_path / "head" / "history.json").read_text())
    assert any("gen/l1" in row for row in history)
    assert not any("gen/sync" in row for row in history)
    again = train_head(bundle.parent.parent / "features", tmp_path / "head", cfg)
    assert again.resumed
    assert again.state.expert_check == res.state.expert_check
    assert again.plan["expert"]["sync_loss"] is False
