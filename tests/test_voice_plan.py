"""The voice's budget: steps that fit the cap, the refusal before training, the summary."""

from __future__ import annotations

import time

import pytest

from avatar.errors import TwincastError
from training.threads import ThreadClock
from training.voice import plan


def test_steps_that_fit_count_what_ran_and_leave_a_margin():
    assert plan.steps_that_fit(0.5, 100.0) == int(97.0 / 0.5)
    assert plan.steps_that_fit(0.5, 100.0, done=40, used_seconds=20.0) == 40 + int(77.0 / 0.5)
    assert plan.steps_that_fit(0.5, 100.0, done=40, used_seconds=500.0) == 40


def test_check_fits_plans_at_most_the_preset_and_refuses_a_cap_too_short():
    assert plan.check_fits(0.37, 33.0, 8000, 0.35) == int(0.97 * 33 * 60 / 0.37)  # idle EPYC
    assert plan.check_fits(0.01, 33.0, 8000, 0.35) == 8000
    with pytest.raises(TwincastError) as e:
        plan.check_fits(0.95, 33.0, 8000, 0.35)  # the busy Xeon's speed
    msg = str(e.value)
    assert "\n" not in msg
    assert "fits 2021 of the preset's 8000 steps" in msg and "the 2800 a usable" in msg
    # 2800 steps at 0.95 s, over the margin: 45.7 minutes.
    assert "about 46 minutes" in msg and "--max-minutes 46" in msg


def test_a_stage_cap_is_lengthened_to_its_floor_and_no_further():
    # The busy Xeon's vocoder: 0.26 s a step, 15 minutes fit 3357 of 10000 steps.
    assert plan.stage_minutes(0.26, 15.0, 10000, 0.3) == 15.0
    m = plan.stage_minutes(0.26, 15.0, 10000, 0.55)
    assert m == pytest.approx(5500 * 0.26 / 0.97 / 60)
    assert plan.steps_that_fit(0.26, m * 60) >= 5499
    # Steps already run (a resumed stage) count, and the stretch is bounded.
    assert plan.stage_minutes(0.26, 15.0, 10000, 0.55, done=3000, used_seconds=780.0) == \
        pytest.approx((780 + 2500 * 0.26) / 0.97 / 60)
    assert plan.stage_minutes(2.6, 15.0, 10000, 0.55) == 30.0


def test_stage_summary_and_describe():
    clock = ThreadClock()
    clock.set_probe("acoustic", 2, 0.4)
    clock.set_probe("acoustic", 1, 0.3)
    clock.choose_threads()
    whole = {"acoustic": plan.stage_summary(8000, 8000, clock, "acoustic"),
             "vocoder": plan.stage_summary(100, 100, ThreadClock(), "vocoder")}
    assert whole["acoustic"] == {"nominal": 8000, "ran": 8000, "share": 1.0,
                                 "seconds_per_step": 0.3, "threads": 1}
    assert "whole plan" in plan.describe(whole)
    part = {**whole, "acoustic": plan.stage_summary(8000, 4000, clock, "acoustic")}
    line = plan.describe(part)
    assert "50% of the acoustic model's plan" in line and "4000 of 8000" in line
    assert "less clear" in line and "--max-minutes" in line


def test_a_clock_started_without_probe_tries_the_other_count_soon():
    clock = ThreadClock(check_seconds=300, check_steps=2)
    clock.start("vocoder", 2, first_check_after=30)
    now = time.monotonic()
    assert clock.threads_for("vocoder", now, 2) == 2
    clock.after_step("vocoder", 2, 1.0, "vocoder", now)
    assert [clock.threads_for("vocoder", now + 31, 2) for _ in range(3)] == [1, 1, 1]
    for _ in range(3):
        clock.after_step("vocoder", 1, 0.5, "vocoder", now + 31)
    assert clock.threads["vocoder"] == 1


def test_enrolment_checks_the_voice_fits_before_training_the_head(
        sample, bundle, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import shutil

    from training import enrol
    from training.voice import train as voice_train

    work = tmp_path / "w"
    shutil.copytree(bundle.parent.parent / "features", work / "features")
    # Far more steps than the ci cap can fit on any host: the voice cannot be trained here.
    slow = dataclasses.replace(voice_train.voice_preset("ci"), steps=100_000)
    monkeypatch.setattr(voice_train, "voice_preset", lambda name: slow)

    def head_trained(*args, **kwargs):
        raise AssertionError("the head trained")

    monkeypatch.setattr("training.head.train.train_head", head_trained)
    with pytest.raises(TwincastError, match=r"run the enrolment again with --voice-minutes \d+"):
        enrol.enrol([sample.video], work, "ci", workers=0, transcript=sample.transcript)
    assert not (work / "voice" / "checkpoint.pt").exists()
    # A cap the user chose only warns: the enrolment goes on, to the head first.
    with pytest.raises(AssertionError, match="the head trained"):
        enrol.enrol([sample.video], work, "ci", workers=0, transcript=sample.transcript,
                    voice_minutes=0.01)


def test_a_host_too_slow_for_the_presets_model_trains_its_lighter_one(
        bundle, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import torch

    from training.voice import train as voice_train

    ci = voice_train.voice_preset("ci")
    light = dataclasses.replace(ci.model, dec_dim=64)
    cfg = dataclasses.replace(ci, lighter=light, steps=20)
    # The measured speed, by model: the preset's far too slow for its cap, the lighter fast.
    speeds = {ci.model: 10.0, light: 0.001}
    probed = []

    def probe(clock, state, *args):
        probed.append(state.model.cfg)
        clock.set_probe("acoustic", 1, speeds[state.model.cfg])
        clock.choose_threads()
        return clock.speed("acoustic")

    monkeypatch.setattr(voice_train, "probe_acoustic", probe)
    features = bundle.parent.parent / "features"
    out = tmp_path / "voice"
    voice = voice_train.train_voice(features, out, cfg)
    assert probed == [ci.model, light]
    assert voice.model.cfg == light and voice.plan["acoustic"]["model"] == "lighter"
    # The manifest says which precision it trained in: this CPU's own choice.
    from avatar.devices import compute_dtype
    native = compute_dtype(torch.device("cpu"), cfg.precision) == torch.bfloat16
    assert voice.plan["acoustic"]["precision"] == ("bf16" if native else "fp32")
    assert "lighter acoustic model" in plan.describe(voice.plan)
    # Resuming keeps the model the run began with, without timing the preset's again.
    probed.clear()
    assert voice_train.train_voice(features, out, cfg).model.cfg == light
    assert ci.model not in probed
    # Neither fits: the refusal asks for the time the lighter model needs.
    speeds[light] = 8.0
    with pytest.raises(TwincastError, match=r"step in 8\.00 s.*--max-minutes \d+"):
        voice_train.train_voice(features, tmp_path / "other", cfg)
    # A cap the user set trains the preset's own model, however little of it fits.
    user = dataclasses.replace(cfg, refuse_short=False, max_minutes=0.02)
    assert voice_train.train_voice(features, tmp_path / "user", user).model.cfg == ci.model
