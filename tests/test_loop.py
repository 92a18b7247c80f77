"""The shared training loop and the preset table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from training import presets
from training.loop import Checkpoint, Every, LoopConfig, Progress, train_loop, write_history


class Tiny:
    """A one-weight model fitted to y = 3x: enough to see resuming change nothing."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.progress = Progress()
        self.lrs: list[float] = []

    def step(self) -> dict[str, float]:
        # The batch depends on the step only, as the trainers reseed their samplers.
        g = torch.Generator().manual_seed(self.progress.step)
        x = torch.randn(8, 1, generator=g)
        loss = ((self.model(x) - 3 * x) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.lrs.append(self.opt.param_groups[0]["lr"])
        return {"tiny/loss": float(loss.detach())}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                **self.progress.state_dict()}

    def load(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.opt.load_state_dict(d["opt"])
        self.progress.load_state_dict(d)


def run(t: Tiny, steps: int, ckpt: Checkpoint, **kw) -> bool:
    return train_loop(LoopConfig("tiny", steps, max_minutes=5.0), t.progress, t.step,
                      lambda: ckpt.save(t.state_dict()), optimizers=[t.opt], **kw)


def test_a_resumed_run_ends_where_an_unbroken_one_does(tmp_path: Path):
    whole = Tiny()
    run(whole, 30, Checkpoint(tmp_path / "whole.pt", "d1"))

    ckpt = Checkpoint(tmp_path / "part.pt", "d1")
    first = Tiny()
    run(first, 30 - 17, ckpt)
    ckpt.save(first.state_dict())
    second = Tiny(seed=5)  # other initial weights: the checkpoint must replace them
    saved = ckpt.load(torch.device("cpu"))
    assert saved is not None
    second.load(saved)
    assert second.progress.step == 13
    run(second, 30, ckpt)
    assert second.progress.step == 30
    assert torch.equal(second.model.weight, whole.model.weight)
    # The same losses at the same steps; the broken run also recorded where it stopped.
    def losses(history: list[dict]) -> dict[int, float]:
        return {h["step"]: h["tiny/loss"] for h in history}

    assert sorted(losses(second.progress.history)) == [10, 13, 20, 30]
    assert losses(whole.progress.history) == {
        k: v for k, v in losses(second.progress.history).items() if k != 13}


def test_history_hooks_and_the_learning_rate(tmp_path: Path):
    t = Tiny()
    scored = []

    def score() -> dict[str, float]:
        scored.append(t.progress.step)
        return {"held/loss": 1.0}

    run(t, 25, Checkpoint(tmp_path / "c.pt", "d"), hooks=[Every(10, score)],
        lr=lambda step, used: 0.1 / (1 + step))
    assert scored == [10, 20]
    assert [h["step"] for h in t.progress.history] == [10, 20, 25]
    assert "held/loss" in t.progress.history[0] and "held/loss" not in t.progress.history[2]
    assert t.lrs[:3] == pytest.approx([0.1, 0.05, 0.1 / 3])
    write_history(t.progress, tmp_path, "tiny_")
    assert json.loads((tmp_path / "tiny_history.json").read_text()) == t.progress.history
    assert (tmp_path / "tiny_curves.png").stat().st_size > 0


def test_the_cap_stops_a_run_and_every_process_with_it(tmp_path: Path, caplog):
    t = Tiny()
    t.progress.seconds = 10 * 60.0  # resumed from a run that used its whole cap
    with caplog.at_level(logging.WARNING):
        capped = run(t, 100, Checkpoint(tmp_path / "c.pt", "d"))
    assert capped and t.progress.step == 0
    assert "stopped at its 5-minute cap" in caplog.text
    # A process under its own cap still stops when another reached it.
    t2 = Tiny()
    assert run(t2, 100, Checkpoint(tmp_path / "c2.pt", "d"), any_rank=lambda flag: True)
    assert t2.progress.step == 0


def test_agreed_processes_share_the_cap_s_use_and_stop_together(tmp_path: Path):
    """With ``agree`` (the largest over the processes) every process sets its learning rate
    from the same share of the cap and stops at the same step, whatever its own clock."""
    t = Tiny()
    seen: list[float] = []

    def agree(used: float) -> float:
        seen.append(used)
        return 0.5 if len(seen) < 4 else 1.5  # another process is further on

    capped = train_loop(LoopConfig("tiny", 100, 5.0, 1.0), t.progress, t.step, lambda: None,
                        lr=lambda step, used: 0.1 * (1 - used), optimizers=[t.opt],
                        agree=agree)
    assert capped and t.progress.step == 3 and len(seen) == 4
    assert t.lrs == pytest.approx([0.05] * 3)  # from the agreed share, not its own (about 0)


def test_a_checkpoint_of_other_settings_starts_over(tmp_path: Path, caplog):
    t = Tiny()
    run(t, 5, Checkpoint(tmp_path / "c.pt", "old"))
    Checkpoint(tmp_path / "c.pt", "old").save(t.state_dict())
    assert Checkpoint(tmp_path / "c.pt", "old").load(torch.device("cpu"))["step"] == 5
    with caplog.at_level(logging.WARNING):
        assert Checkpoint(tmp_path / "c.pt", "new").load(torch.device("cpu")) is None
    assert "made with other settings; starting over" in caplog.text
    assert Checkpoint(tmp_path / "none.pt", "new").load(torch.device("cpu")) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary left


def test_presets_are_one_table_shared_by_models_and_command_line():
    from avatar.models.head import HEAD_PRESETS
    from avatar.models.voice import VOICE_PRESETS
    from twincast.cli import build_parser

    assert presets.names() == ("ci", "demo", "cpu", "gpu")
    assert tuple(HEAD_PRESETS) == tuple(VOICE_PRESETS) == presets.names()
    enrol = build_parser().parse_args(["enrol", "x", "--workdir", "w", "--preset", "gpu"])
    assert enrol.preset == "gpu"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "head", "w", "--preset", "huge"])


def test_preset_tables_override_defaults():
    import dataclasses

    from training.head.train import HeadTrainConfig, head_preset
    from training.voice.train import voice_preset

    # cpu is the defaults but for how large the footage may make its mouth and for having
    # no sync expert (training/presets.toml says why).
    cpu = head_preset("cpu")
    assert cpu.max_size == 160 and head_preset("gpu").max_size == 288
    assert cpu.expert_steps == 0 and cpu.sync_weight == 0
    base = HeadTrainConfig(model=cpu.model)
    assert dataclasses.replace(cpu, max_size=0, expert_steps=base.expert_steps,
                               sync_weight=base.sync_weight) == base
    assert head_preset("ci").gen_steps == 40 and head_preset("gpu").gan_weight == 0.01
    assert voice_preset("ci").vocoder is None  # `vocoder = false`
    assert voice_preset("gpu").vocoder.model.dim == 384
    assert voice_preset("gpu").vocoder.steps == 30000
    with pytest.raises(Exception, match="huge is not a setting of HeadTrainConfig"):
        presets.apply(HeadTrainConfig(), {"huge": 1})
    with pytest.raises(Exception, match="unknown preset 'tiny'"):
        head_preset("tiny")
