"""Planning the head's stages from measured step speed (training.head.plan)."""

from __future__ import annotations

import pytest

from training.head.plan import Allocation, PlanConfig, Planner, allocate, describe

NOMINAL = {"lips": 6000, "expert": 1500, "gen": 4000}
CAP = 55 * 60.0


def fresh(speed: dict[str, float], **kw) -> Allocation:
    return allocate(NOMINAL, 0.3, {}, {}, speed, CAP, 0.0, {}, None, **kw)


def test_a_host_fast_enough_runs_the_preset_unchanged():
    a = fresh({"lips": 0.02, "expert": 0.12, "gen": 0.55, "sync": 0.7})
    assert (a.lips, a.expert, a.gen, a.sync_at) == (6000, 1500, 4000, 1200)


def test_a_slow_host_keeps_the_generator_and_its_sync_share():
    # About 2.5 times slower than the reference host: 1.4 s a generator step.
    speed = {"lips": 0.05, "expert": 0.3, "gen": 1.4, "sync": 1.8}
    a = fresh(speed)
    assert a.gen < NOMINAL["gen"]
    # The first two stages keep at most their shares of the cap.
    assert a.lips * speed["lips"] <= 0.06 * CAP + speed["lips"]
    assert a.expert * speed["expert"] <= 0.10 * CAP + speed["expert"]
    # The plan fills the cap's margin and no more.
    total = (a.lips * speed["lips"] + a.expert * speed["expert"]
             + a.sync_at * speed["gen"] + (a.gen - a.sync_at) * speed["sync"])
    assert 0.9 * 0.97 * CAP < total <= 0.97 * CAP
    # The sync loss keeps its 70 % of the generator's steps.
    assert (a.gen - a.sync_at) / a.gen == pytest.approx(0.7, abs=0.01)
    # Where a fixed count under the cap left the sync loss 520 of the generator's 1,720
    # steps, planning gives it twice as many of about as many.
    assert a.gen > 1500 and a.gen - a.sync_at > 2 * 520


def test_a_slowdown_during_the_generator_shortens_what_is_left():
    speed = {"lips": 0.02, "expert": 0.12, "gen": 0.55, "sync": 0.7}
    fixed = {"lips": 6000, "expert": 1500}
    done = {"lips": 6000, "expert": 1500, "gen": 2000}
    spent = {"lips": 120.0, "expert": 180.0, "gen": 1300.0}
    ok = allocate(NOMINAL, 0.3, done, spent, speed, CAP, 1600.0, fixed, 1200)
    assert ok.gen == 4000 and ok.sync_at == 1200
    slow = {**speed, "sync": 2.0}
    late = allocate(NOMINAL, 0.3, done, spent, slow, CAP, 1600.0, fixed, 1200)
    assert 2000 < late.gen < 4000
    assert late.sync_at == 1200  # the sync loss, once joined, stays where it joined
    assert (late.gen - 2000) * 2.0 <= 0.97 * CAP - 1600.0


def test_a_plan_never_goes_back_before_what_ran():
    speed = {"lips": 1.0, "expert": 1.0, "gen": 10.0, "sync": 10.0}
    done = {"lips": 6000, "expert": 1500, "gen": 300}
    a = allocate(NOMINAL, 0.3, done, {}, speed, CAP, CAP, {"lips": 6000, "expert": 1500},
                 None)
    assert a.gen == 300 and a.sync_at == 300  # out of time: stop here


def test_threads_one_thread_must_be_clearly_faster():
    p = Planner(NOMINAL, 0.3, CAP)
    p.set_probe("gen", 2, 1.0)
    p.set_probe("gen", 1, 0.95)
    p.set_probe("sync", 2, 2.0)
    p.set_probe("sync", 1, 1.2)
    p.choose_threads()
    assert p.threads == {"gen": 2, "sync": 1}
    assert p.speed("sync") == pytest.approx(1.2)


def test_a_thread_check_switches_when_the_host_gets_busy():
    p = Planner(NOMINAL, 0.3, CAP, PlanConfig(thread_check_seconds=10, thread_check_steps=2))
    p.set_probe("gen", 2, 0.5)
    p.set_probe("gen", 1, 0.8)
    p.choose_threads()
    now = 0.0
    assert p.threads_for("gen", now, 2) == 2
    # The host gets busy: two threads now take 1.5 s a step.
    for _ in range(40):
        p.after_step("gen", 2, 1.5, "gen", now)
    now = 11.0
    tried = [p.threads_for("gen", now, 2) for _ in range(3)]
    assert tried == [1, 1, 1]
    for t in tried:
        p.after_step("gen", t, 0.8, "gen", now)
    assert p.threads["gen"] == 1
    assert p.threads_for("gen", now + 1, 2) == 1


def test_describe_says_what_ran_and_what_it_costs():
    p = Planner(NOMINAL, 0.3, CAP)
    for k in ("lips", "expert", "gen", "sync"):
        p.set_probe(k, 2, 0.1)
    whole = describe(p.summary({"lips": 6000, "expert": 1500, "gen": 4000}, 2800))
    assert "whole plan" in whole
    part = describe(p.summary({"lips": 6000, "expert": 1500, "gen": 2000}, 1400))
    assert "50%" in part and "2000 of 4000" in part and "--max-minutes" in part


def test_a_far_slower_thread_count_is_dropped_after_one_step():
    p = Planner(NOMINAL, 0.3, CAP, PlanConfig(thread_check_seconds=10, thread_check_steps=4))
    p.set_probe("gen", 1, 0.8)
    p.set_probe("gen", 2, 16.0)  # another process busy on the second core
    p.choose_threads()
    assert p.threads_for("gen", 0.0, 2) == 1
    p.after_step("gen", 1, 0.8, "gen", 0.0)
    assert p.threads_for("gen", 11.0, 2) == 2  # the periodic check
    p.after_step("gen", 2, 16.0, "gen", 11.0)
    assert p.threads_for("gen", 11.5, 2) == 1  # one slow step ended it
    assert p.threads["gen"] == 1
