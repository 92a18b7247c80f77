"""The voice's budget on this host: how many acoustic-model steps its cap fits (measured
before training, which stops at once when too few fit), and what share of each stage's
planned steps ran (acoustic model, vocoder, the vocoder's adaptation), for the end of
enrolment and the manifest.

The steps a stage runs are whichever comes first of its preset's count and its wall-time
cap; the learning rates anneal by whichever of the two is nearer its end, so a stage its cap
stops has annealed too. How fast a step runs depends on the host: the same cpu enrolment ran
5,386 acoustic steps in 33 minutes on an idle 2-core EPYC and 2,093 on a slower Xeon with a
second process busy on one core, and the latter's voice was much less intelligible (its
WER on ljspeech/eval 24.5 points above the real recordings', against 0-4.2 on the EPYC);
since the learning rate anneals by the cap too, an AMX Xeon's 2,288 steps (one core busy)
came within 6.5 points.
"""

from __future__ import annotations

import logging
import math

from avatar.errors import TwincastError
from training.threads import ThreadClock

log = logging.getLogger(__name__)

RETRY_TRAIN = "'twincast train voice WORKDIR --max-minutes {minutes}' resumes from the \
enrolment cache"
RETRY_ENROL = "run the enrolment again with --voice-minutes {minutes}"
"""What a refusal tells the user to do, by where it came from (``{minutes}``: the time the
voice needs)."""

CAP_MARGIN = 0.97
"""Share of the cap that steps fill (the rest: held-out scoring and checkpoints)."""


def steps_that_fit(seconds_per_step: float, cap_seconds: float, done: int = 0,
                   used_seconds: float = 0.0) -> int:
    """Steps run by the end of the cap at this speed, counting those already run."""
    left = max(CAP_MARGIN * cap_seconds - used_seconds, 0.0)
    return done + int(left / max(seconds_per_step, 1e-9))


def fits(seconds_per_step: float, cap_minutes: float, nominal: int, min_share: float,
         done: int = 0, used_seconds: float = 0.0) -> bool:
    """Whether the cap fits at least ``min_share`` of the steps at this speed."""
    return steps_that_fit(seconds_per_step, cap_minutes * 60, done, used_seconds) >= \
        math.ceil(min_share * nominal)


def check_fits(seconds_per_step: float, cap_minutes: float, nominal: int, min_share: float,
               done: int = 0, used_seconds: float = 0.0, refuse: bool = True,
               retry: str = RETRY_TRAIN) -> int:
    """The acoustic model's planned steps on this host; a one-line error, before any
    training, when fewer than ``min_share`` of the preset's steps fit in the cap (only a
    warning with ``refuse=False``: the user set that cap themselves)."""
    fit = steps_that_fit(seconds_per_step, cap_minutes * 60, done, used_seconds)
    need = math.ceil(min_share * nominal)
    if fit >= need:
        return min(fit, nominal)
    minutes = (used_seconds + (need - done) * seconds_per_step) / CAP_MARGIN / 60
    msg = (
        f"this host runs a voice training step in {seconds_per_step:.2f} s: the "
        f"{cap_minutes:g}-minute cap fits {fit} of the preset's {nominal} steps, fewer than "
        f"the {need} a usable voice needs; give it about {math.ceil(minutes)} minutes "
        f"({retry.format(minutes=math.ceil(minutes))}), free the host, or train on a GPU")
    if refuse:
        raise TwincastError(msg)
    log.warning("%s", msg.replace("this host", "with the cap given, this host", 1))
    return fit


def stage_minutes(seconds_per_step: float, cap_minutes: float, nominal: int,
                  min_share: float, done: int = 0, used_seconds: float = 0.0,
                  most: float = 2.0) -> float:
    """A stage's wall-time cap on this host: its preset's cap, lengthened (to at most
    ``most`` times it) where that cap fits fewer than ``min_share`` of its steps at the
    measured speed. A step floor rather than a fixed cap for the vocoder, whose steps set
    the voice's likeness: on an AMX Xeon with one core busy its 15 minutes ran 38 % of the
    first stage and 25 % of the adaptation, and the likeness on ljspeech/eval fell from
    0.881 to 0.849; the busy run's acoustic model with the idle run's vocoder scored 0.879,
    the idle acoustic model with the busy vocoder 0.852."""
    need = math.ceil(min_share * nominal)
    if steps_that_fit(seconds_per_step, cap_minutes * 60, done, used_seconds) >= need:
        return cap_minutes
    seconds = (used_seconds + (need - done) * seconds_per_step) / CAP_MARGIN
    return min(seconds / 60, most * cap_minutes)


def stage_summary(nominal: int, ran: int, clock: ThreadClock, kind: str,
                  minutes: float | None = None) -> dict:
    """One stage's line in the manifest's ``voice.plan`` (``minutes``: its cap on this
    host, where it is planned by speed)."""
    out: dict = {"nominal": nominal, "ran": ran, "share": round(ran / max(nominal, 1), 4)}
    if minutes is not None:
        out["minutes"] = round(minutes, 2)
    if clock.speed(kind) > 0:
        out["seconds_per_step"] = round(clock.speed(kind), 4)
    if kind in clock.threads:
        out["threads"] = clock.threads[kind]
    return out


def describe(plan: dict) -> str:
    """One line for the end of enrolment: how much of each stage's plan ran and what that
    is likely to cost."""
    parts = [f"{name.replace('_', ' ')} {s['ran']} of {s['nominal']} steps"
             for name, s in plan.items()]
    acoustic = plan.get("acoustic", {}).get("share", 1.0)
    worst = min(s["share"] for s in plan.values()) if plan else 1.0
    light = ("; the preset's lighter acoustic model, its own being too slow for the cap on "
             "this host" if plan.get("acoustic", {}).get("model") == "lighter" else "")
    if worst >= 0.999:
        return "voice training ran its whole plan (" + ", ".join(parts) + ")" + light
    cost = ("expect a voice close to the preset's figures" if acoustic >= 0.6 else
            "expect a voice less clear on new sentences than the preset's figures")
    return (f"voice training ran {acoustic:.0%} of the acoustic model's plan within its cap on "
            f"this host (" + ", ".join(parts) + f"){light}; {cost}. More time (twincast "
            "train voice --max-minutes N) or a GPU runs all of it")
