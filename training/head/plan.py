"""Planning the head's three stages within the wall-time cap, from their measured speed.

A preset's step counts are what its stages need (lip predictor, sync expert, generator);
whether they fit in the cap depends on the host. A slower CPU, or another process busy on
one of two cores, makes a generator step take twice as long or more, and a fixed step
count under a cap then cuts the last stage short: the generator, whose sync loss joins
late (on such a host 1,720 of 4,000 generator steps ran, 520 of them with the sync loss,
and the mouth barely opened). Instead the plan is remade from step times measured on this
host, before training and every few dozen steps: the lip predictor and the expert keep at
most a fixed share of the cap each, the generator gets the rest, and the sync loss keeps
its part of the generator's steps. Where everything fits, the preset's counts run
unchanged.

On a CPU the planner also picks the thread count per kind of step, by timing both: with
another process busy on one of two cores, two threads wait on each other at every
operation and one thread can be faster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from training.threads import ThreadClock

log = logging.getLogger(__name__)

STAGES = ("lips", "expert", "gen")
KINDS = ("lips", "expert", "gen", "sync")
"""Kinds of step, each with its own speed: ``gen`` is a generator step before the sync loss
joins, ``sync`` one with it (it adds the expert's forward and backward)."""


@dataclass(frozen=True)
class PlanConfig:
    lips_share: float = 0.06
    """Most of the cap the lip predictor's own stage may take when time is short (it keeps
    learning alongside the generator afterwards)."""
    expert_share: float = 0.10
    margin: float = 0.97
    """Share of the cap the plan fills; the rest is left for calibration and the last
    checkpoint, so the cap itself never has to cut a stage."""
    replan_steps: int = 50
    """Steps between re-plans. Counted in steps, not seconds: under data parallelism every
    process must re-plan at the same step to reach the same plan."""
    thread_check_seconds: float = 300.0
    """How often (CPU) the other thread count is tried again for a few steps: the load of
    the host can change during the hour."""
    thread_check_steps: int = 4


@dataclass
class Allocation:
    """Planned step counts of the three stages and the generator step the sync loss joins
    at."""

    lips: int
    expert: int
    gen: int
    sync_at: int

    def to_dict(self) -> dict[str, int]:
        return {"lips": self.lips, "expert": self.expert, "gen": self.gen,
                "sync_at": self.sync_at}


def allocate(nominal: dict[str, int], sync_from: float, done: dict[str, int],
             spent: dict[str, float], speed: dict[str, float], cap: float,
             elapsed: float, fixed: dict[str, int], sync_at: int | None,
             cfg: PlanConfig = PlanConfig()) -> Allocation:
    """The plan for what is left.

    ``done``: steps run per stage; ``spent``: seconds spent per stage; ``fixed``: stages that
    are over, with their final counts; ``sync_at``: the generator step the sync loss joined
    at, once it has (it then stays). ``speed``: seconds per step of each kind; ``cap`` and
    ``elapsed``: the wall-time cap and the time used, in seconds.
    """
    left = max(cfg.margin * cap - elapsed, 0.0)
    shares = {"lips": cfg.lips_share, "expert": cfg.expert_share}
    counts: dict[str, int] = {}
    # The lip predictor and the expert: their nominal steps, within their share of the cap.
    for stage in ("lips", "expert"):
        if stage in fixed:
            counts[stage] = fixed[stage]
            continue
        allowance = max(shares[stage] * cap - spent.get(stage, 0.0), 0.0)
        fit = done.get(stage, 0) + int(allowance / max(speed[stage], 1e-9))
        counts[stage] = max(done.get(stage, 0), min(nominal[stage], fit))
    # What they still need comes off the time left; the generator gets the rest.
    for stage in ("lips", "expert"):
        if stage not in fixed:
            left -= (counts[stage] - done.get(stage, 0)) * speed[stage]
    g = done.get("gen", 0)
    n_nom = nominal["gen"]
    s_gen, s_sync = speed["gen"], speed["sync"]
    if sync_at is not None and g >= sync_at:
        n = g + int(max(left, 0.0) / max(s_sync, 1e-9))
        n = max(g, min(n_nom, n))
        return Allocation(counts["lips"], counts["expert"], n, sync_at)
    # Not syncing yet: n steps cost (sync_from * n - g) plain steps and (1 - sync_from) * n
    # sync steps.
    per = sync_from * s_gen + (1 - sync_from) * s_sync
    n = int((max(left, 0.0) + g * s_gen) / max(per, 1e-9))
    n = max(g, min(n_nom, n))
    at = max(g, int(round(sync_from * n)))
    return Allocation(counts["lips"], counts["expert"], n, min(at, n))


@dataclass
class Planner(ThreadClock):
    """Keeps the measured speeds (and thread counts, see ``training.threads``) and the
    current plan of one head training."""

    nominal: dict[str, int]
    sync_from: float
    cap_seconds: float
    cfg: PlanConfig = field(default_factory=PlanConfig)
    plan: Allocation | None = None

    def __post_init__(self) -> None:
        ThreadClock.__init__(self, self.cfg.thread_check_seconds, self.cfg.thread_check_steps)
        self.spent.update({s: 0.0 for s in STAGES})

    def replan(self, done: dict[str, int], elapsed: float, fixed: dict[str, int],
               sync_at: int | None, speed: dict[str, float] | None = None) -> Allocation:
        """A new plan from the figures now; ``speed`` overrides the planner's own (under
        data parallelism: the slowest process's)."""
        speed = speed or {k: self.speed(k) for k in KINDS}
        self.plan = allocate(self.nominal, self.sync_from, done, self.spent, speed,
                             self.cap_seconds, elapsed, fixed, sync_at, self.cfg)
        return self.plan

    # --------------------------------------------------------------- reporting
    def summary(self, ran: dict[str, int], sync_steps: int, sync: bool = True) -> dict:
        """What the manifest and the end of enrolment say: the nominal plan, what ran, and
        the measured speeds. ``sync``: the preset has a sync loss at all."""
        nominal_sync = (self.nominal["gen"] - int(round(self.sync_from * self.nominal["gen"]))
                        if sync else 0)
        gen_share = ran["gen"] / max(self.nominal["gen"], 1)
        total = sum(self.nominal.values())
        return {
            "nominal": dict(self.nominal),
            "ran": dict(ran),
            "sync_steps": sync_steps,
            "nominal_sync_steps": nominal_sync,
            "share": round(sum(ran.values()) / max(total, 1), 4),
            "generator_share": round(gen_share, 4),
            "seconds_per_step": {k: round(self.speed(k), 4) for k in KINDS
                                 if self.speed(k) > 0},
            "threads": dict(self.threads),
        }


def describe(summary: dict) -> str:
    """One line for the end of enrolment: how much of the plan ran and what that costs."""
    gen, nominal = summary["ran"]["gen"], summary["nominal"]["gen"]
    share = summary["generator_share"]
    expert = summary.get("expert") or {}
    weak = ""
    if expert.get("sync_loss") is False:
        weak = (f"; no sync loss: the sync expert told in-sync from shifted audio on "
                f"held-out windows only at AUC {expert['held_out_auc']:.2f} (below "
                f"{expert['min_auc']:.2f})")
    if share >= 0.999:
        return (f"head training ran its whole plan ({gen} generator steps, "
                f"{summary['sync_steps']} with the sync loss){weak}")
    cost = ("expect a mouth close to the preset's figures" if share >= 0.8 else
            "expect a mouth that follows the speech less closely and opens less than the "
            "preset's figures" if share >= 0.4 else
            "expect a weak mouth: too few generator steps for this preset")
    with_sync = (f", {summary['sync_steps']} of {summary['nominal_sync_steps']} with the "
                 "sync loss" if summary["nominal_sync_steps"] else "")
    return (f"head training ran {share:.0%} of the generator's plan ({gen} of {nominal} "
            f"steps{with_sync}) within its cap on this host; {cost}. More time (twincast "
            f"train head --max-minutes N) or a GPU runs all of it{weak}")
