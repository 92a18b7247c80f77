"""Planning the refiner's steps within its wall-time cap, from their measured speed.

The refiner trains on L1 alone for a share of its steps (``gan_from``), then with its
critic, whose steps cost more. Under a fixed step count a slow or busy host ran out of
cap first: on one busy GRID enrolment 693 of the 2,500 steps ran, and since the critic
joined at step 500 of the nominal plan it trained for only 193 of them. Planned from the
measured speed of both kinds of step (as the head's stages are, ``training.head.plan``),
the critic joins at its share of the steps that fit, so a cut plan keeps its proportions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefinePlan:
    steps: int
    """Steps planned in all."""
    critic_from: int
    """The step the critic joins at."""


def plan_refiner(nominal: int, gan_from: float, done: int, joined: int | None,
                 plain_s: float, critic_s: float, left_s: float) -> RefinePlan:
    """The plan for what is left: ``nominal`` steps where they fit, else as many as fit in
    ``left_s`` seconds, the critic joining at ``gan_from`` of them (``joined``: the step it
    joined at, once it has: then it stays). ``plain_s``/``critic_s``: seconds per step
    without and with the critic; ``done``: steps run so far."""
    if joined is not None and done >= joined:
        n = done + int(max(left_s, 0.0) / max(critic_s, 1e-9))
        return RefinePlan(max(done, min(nominal, n)), joined)
    # n steps from here cost (gan_from * n - done) plain steps and (1 - gan_from) * n
    # critic steps.
    per = gan_from * plain_s + (1 - gan_from) * critic_s
    n = int((max(left_s, 0.0) + done * plain_s) / max(per, 1e-9))
    n = max(done, min(nominal, n))
    return RefinePlan(n, min(n, max(done, int(round(gan_from * n)))))
