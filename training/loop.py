"""The one training loop every model of twincast trains in (head, acoustic model, vocoder).

A trainer brings a step function (one optimisation step, returning a flat dict of named
losses such as ``"gen/l1"``) and its state; the loop brings what they all need the same:
resuming from a checkpoint made with the same settings, the wall-time cap (a run stops
there, checkpointed, whatever the step count says), the learning rate set each step from
the step and the share of the cap used, held-out scoring every few steps, the history,
the progress bar, a checkpoint every few minutes (atomic, tensors only, read back with
``weights_only=True``), and at the end ``history.json`` and the curves PNG.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from avatar import atomic
from training.progress import bar
from training.runs import plot_curves

log = logging.getLogger(__name__)

Losses = dict[str, float]


@dataclass(frozen=True)
class LoopConfig:
    """How long and how often: the part of a preset the loop reads."""

    name: str
    """Names the progress bar, the log lines and (with a prefix) the history files."""
    steps: int
    max_minutes: float
    """Wall-time cap of this run, resumed time included."""
    checkpoint_minutes: float = 3.0
    history_every: int = 10
    """Steps between history records (the last step is always recorded)."""


@dataclass
class Progress:
    """Where a run stands; saved in its checkpoint."""

    step: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {"step": self.step, "seconds": self.seconds,
                "history": json.dumps(self.history)}

    def load_state_dict(self, d: dict) -> None:
        self.step, self.seconds = int(d["step"]), float(d["seconds"])
        self.history = json.loads(d["history"])


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file that only resumes a run made with the same settings (``digest``,
    from ``training.runs.config_digest``)."""

    path: Path
    digest: str

    def load(self, device: torch.device) -> dict | None:
        """The saved payload, or None when there is none or it was made otherwise."""
        if not self.path.exists():
            return None
        saved = torch.load(self.path, map_location=device, weights_only=True)
        if saved.get("config_digest") != self.digest:
            log.warning("%s was made with other settings; starting over", self.path)
            return None
        return saved

    def matches(self) -> bool:
        """Whether there is a checkpoint made with these settings."""
        if not self.path.exists():
            return False
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        return saved.get("config_digest") == self.digest

    def save(self, payload: dict) -> None:
        with atomic.atomic_path(self.path, ".pt") as tmp:
            torch.save({**payload, "config_digest": self.digest}, tmp)


@dataclass(frozen=True)
class Every:
    """A hook run after every ``steps``-th step; what it returns joins that step's losses
    (held-out scores, for the curves and the log)."""

    steps: int
    run: Callable[[], Losses]


def set_lr(optimizers: Sequence[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = lr


def train_loop(cfg: LoopConfig, progress: Progress, step: Callable[[], Losses],
               save: Callable[[], None], *,
               lr: Callable[[int, float], float] | None = None,
               optimizers: Sequence[torch.optim.Optimizer] = (),
               hooks: Sequence[Every] = (),
               any_rank: Callable[[bool], bool] = lambda flag: flag,
               agree: Callable[[float], float] | None = None,
               main: bool = True,
               until: Callable[[], bool] | None = None) -> bool:
    """Run ``step`` until ``cfg.steps`` or the cap; returns whether the cap stopped it.

    ``lr(step, share_of_cap_used)``, when given, sets the learning rate of ``optimizers``
    before each step. ``save`` writes the trainer's checkpoint (every
    ``cfg.checkpoint_minutes`` and at the end; only on the ``main`` process). Under data
    parallelism ``any_rank`` makes every process stop at the cap together: one that went
    on alone would wait forever in the next gradient exchange. ``until``, when given, ends
    the run early (not a cap) once it returns True: a trainer that plans its own step count
    from its measured speed (the head) says there when its plan is done. ``agree`` (the
    largest of a value over the processes), where given, replaces ``any_rank``: the share
    of the cap used is agreed on at each step, so the processes stop at the same step and
    set the same learning rate (their clocks differ by milliseconds, and replicas whose
    learning rates differ drift apart though their gradients are averaged).
    """
    start = time.monotonic() - progress.seconds
    deadline = start + cfg.max_minutes * 60
    last_save = time.monotonic()
    capped = False
    with bar(cfg.steps if main else 0, cfg.name, "step", initial=progress.step) as pb:
        while progress.step < cfg.steps:
            if until is not None and until():
                break
            now = time.monotonic()
            used = (now - start) / max(deadline - start, 1e-6)
            if agree is not None:
                used = agree(used)
                over = used > 1.0
            else:
                over = any_rank(now > deadline)
            if over:
                log.warning("%s training stopped at its %.3g-minute cap (step %d of %d)",
                            cfg.name, cfg.max_minutes, progress.step, cfg.steps)
                capped = True
                break
            if lr is not None:
                set_lr(optimizers, lr(progress.step, used))
            losses = step()
            progress.step += 1
            progress.seconds = time.monotonic() - start
            for hook in hooks:
                if progress.step % hook.steps == 0:
                    losses = {**losses, **hook.run()}
            if progress.step % cfg.history_every == 0 or progress.step == cfg.steps:
                progress.history.append({"step": progress.step,
                                         "seconds": round(progress.seconds, 1),
                                         **{k: round(v, 5) for k, v in losses.items()}})
            pb.update(1)
            pb.set_postfix({k.removeprefix(f"{cfg.name}/"): f"{v:.3f}"
                            for k, v in losses.items()}, refresh=False)
            if main and time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                save()
                last_save = time.monotonic()
    progress.seconds = time.monotonic() - start
    return capped


def write_history(progress: Progress, folder: Path, prefix: str = "") -> None:
    """``{prefix}history.json`` and ``{prefix}curves.png`` (one panel per named loss)."""
    atomic.write_json(folder / f"{prefix}history.json", progress.history)
    plot_curves(progress.history, folder / f"{prefix}curves.png")
