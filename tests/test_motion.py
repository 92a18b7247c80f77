"""The motion bank and its walk: states from voice activity, a walk that never plays
backwards, keeps to the state it is asked for and blends every seam; the bank in a real
bundle, in rendering, in a live session, in `eval motion`; old bundles without one."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar.motion import IDLE, LISTENING, SPEAKING, Entry, MotionConfig, MotionGraph, Walker
from tests.conftest import read_frames, run_cli
from training.motion.bank import BankConfig, frame_states


def _index(runs: int = 8, length: int = 120, seed: int = 0, silent: int | None = None
           ) -> dict[str, np.ndarray]:
    """A synthetic bank: ``runs`` stretches, each listening (``silent`` frames, default
    half) then speaking, with features that drift smoothly within a stretch."""
    rng = np.random.default_rng(seed)
    n = runs * length
    quiet = length // 2 if silent is None else silent
    state = np.tile(np.r_[np.full(quiet, LISTENING), np.full(length - quiet, SPEAKING)], runs)
    cont = np.ones(n, bool)
    cont[length - 1::length] = False

    def drift(dims: tuple[int, ...], step: float) -> np.ndarray:
        x = np.cumsum(rng.normal(0, step, (n, *dims)), axis=0)
        return x.astype(np.float32)

    return {"state": state, "cont": cont, "loudness_db": np.where(state == SPEAKING, -20.0, -70.0),
            "opening": np.where(state == SPEAKING, 0.1, 0.01), "iod": np.full(n, 60.0),
            "centre": 200 + drift((2,), 0.3), "euler": drift((3,), 0.2),
            "landmarks": 200 + drift((8, 2), 0.3), "shoulders": 300 + drift((4,), 0.3),
            "thumb": np.clip(128 + drift((24, 24), 0.5), 0, 255).astype(np.uint8)}



def test_a_mouth_that_rests_open_is_not_painted_shut_in_silence() -> None:
    """Silent footage counts as mouthy (painted shut when shown in silence) only where it is
    open beyond the person's own rest: lips that rest apart are this person's still mouth."""
    idx = _index()
    silent = idx["state"] != SPEAKING
    rng = np.random.default_rng(1)
    # Shut at rest (GRID: 0.0015): the fixed threshold; frames opened past it are mouthy.
    idx["opening"] = np.where(silent, 0.001 + rng.uniform(0, 0.001, len(silent)), 0.1)
    idx["opening"][np.flatnonzero(silent)[::10]] = 0.03
    g = MotionGraph(idx, 25)
    assert g.open_mouth == pytest.approx(0.015)
    assert g.mouthy[silent].mean() == pytest.approx(0.1, abs=0.01)
    # Resting apart (the `make demo` sample: 0.117): only what opens beyond that.
    idx["opening"] = np.where(silent, idx["opening"] + 0.11, 0.25)
    g = MotionGraph(idx, 25)
    assert 0.12 < g.open_mouth < 0.14
    assert g.mouthy[silent].mean() == pytest.approx(0.1, abs=0.01)
    assert g.mouthy[~silent].all()

def _walk(walker: Walker, modes: list[str]) -> list[Entry]:
    return [walker.next(m) for m in modes]


def _live(av, frames: int, act, setup=None):  # noqa: ANN001, ANN202
    """A session of avatar ``av`` on a real scheduler, its frames taken at their times for
    ``frames`` frames; ``act(session, k)`` runs before frame k is taken, ``setup(session)``
    once at the start. Returns the closed session."""
    from streaming.scheduler import Lane, Scheduler, SchedulerConfig
    from streaming.session import Session, SessionConfig
    from tests.test_session import FakeVoice

    sch = Scheduler([Lane("cpu0", {"a": av})], SchedulerConfig(max_batch=8))
    sch.start()

    async def run() -> Session:
        s = Session("a", av, FakeVoice(), sch, SessionConfig())
        s.start()
        s.clock.start()
        if setup is not None:
            setup(s)
        for k in range(frames):
            await s.clock.wait_until(k / 25)
            act(s, k)
            s.video_frame(k)
        await s.close()
        return s

    try:
        return asyncio.run(run())
    finally:
        sch.stop()


def test_states_bridge_pauses_and_split_listening_from_idle() -> None:
    fps = 25
    vad = np.zeros(1000, bool)  # 10 s at 100 Hz
    vad[200:300] = True          # 2.0-3.0 s speech
    vad[310:400] = True          # a 0.1 s breath, then speech to 4.0 s
    st = frame_states(vad, 250, fps, BankConfig())
    assert (st[52:98] == SPEAKING).all()           # the breath is bridged
    assert st[40] == LISTENING and st[120] == LISTENING   # within 1.5 s of speech
    assert st[10] == IDLE and st[200] == IDLE


@pytest.mark.parametrize("pixels", [True, False], ids=["pixel-check", "cost-only"])
def test_the_walk_goes_forwards_keeps_its_state_and_blends_seams(pixels: bool) -> None:
    g = MotionGraph(_index(), 25)
    # This bank's stretches drift apart (random walks): the pixel check asks most seams
    # for the longest fade; the cost's estimate alone, for most, the usual one.
    cfg = MotionConfig() if pixels else MotionConfig(pixel_quantile=None)
    w = Walker(g, cfg, seed=1)
    modes = (["silent"] * 90 + ["speaking"] * 160) * 6
    entries = _walk(w, modes)
    a = np.array([e.a for e in entries])
    fading = np.array([e.b >= 0 for e in entries])
    for k in range(1, len(entries)):
        e, p = entries[k], entries[k - 1]
        if e.b < 0 and p.b < 0:
            # Plain frames follow the footage, or jump (a hard cut) only where a stretch ended.
            assert e.a == p.a + 1 or not g.cont[p.a]
        if e.b >= 0:
            assert 0 < e.w < 1 and g.cont[e.a - 1] or e.a == p.a + 1
    assert not np.any((np.diff(a) < 0) & (np.diff(a) > -3))  # never a step backwards
    # Outside cross-fades, the footage shown is in the state asked for (a mode switch
    # is followed by at most one fade into the new state).
    want = np.array([m == "speaking" for m in modes])
    plain = ~fading
    agree = (g.state[a] == SPEAKING) == want
    assert agree[plain].mean() > 0.95
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, fading.astype(int), 0])))[::2]
    # One fade at a time, most within the longest fade; longer where no match was within
    # the budget (``forced_fade_scale``), two back to back only where the mode changed
    # during the first.
    forced = round(cfg.forced_fade_scale * cfg.fade)
    assert runs.max() <= 2 * forced
    if not pixels:
        assert np.mean(runs <= cfg.fade) > 0.85
    assert w.transitions >= 10


def test_a_transition_nothing_matched_gets_a_longer_fade_holding_what_it_leaves() -> None:
    """Where no frame was within the budget, the change is spread over up to
    ``forced_fade_scale`` times the longest fade; where the stretch left ends first, its
    last frame is held for the rest of the fade instead of cutting the fade short."""
    from avatar.motion import WANTS

    g = MotionGraph(_index(), 25)
    want = WANTS["speaking"]
    nxt, target = 117, 305  # three frames before stretch 0 ends, into stretch 2's speech

    def fade(cfg: MotionConfig, cost_of: float) -> list[Entry]:
        w = Walker(g, cfg, seed=0)
        w.s.cur = nxt - 1
        cost = w.step_cost * cost_of ** 2
        first = w._transition(nxt, target, cost, want)
        return [first, *w.s.pending]

    cfg = MotionConfig(pixel_quantile=None)  # the cost's estimate alone
    cap = cfg.fade
    # Within the budget: the longest fade at most, and it ends with the stretch it leaves.
    assert [e.a for e in fade(cfg, cap + 1)] == [117, 118, 119]
    # Nothing within it: twice the fade, stretch 0's last frame held to the end of it.
    long = fade(cfg, 2 * cap + 1)
    assert len(long) == 2 * cap
    assert [e.a for e in long] == [117, 118, 119] + [119] * (2 * cap - 3)
    assert [e.b for e in long] == list(range(target, target + 2 * cap))
    assert np.all(np.diff([e.w for e in long]) > 0) and 0 < long[0].w < long[-1].w < 1
    # Without holding, the stretch's end still ends the fade; the scale bounds it.
    assert len(fade(MotionConfig(hold_leaving=False, pixel_quantile=None), 2 * cap + 1)) == 3
    assert len(fade(MotionConfig(forced_fade_scale=1.0, pixel_quantile=None),
                    2 * cap + 1)) == cap


def _checkers(runs: int = 8, length: int = 120, contrast: float = 1.0, seed: int = 0
              ) -> dict[str, np.ndarray]:
    """A synthetic bank whose stretches show the face area as a fine checkerboard, in
    turn one way and the other (``contrast`` grey levels each side of 128), each frame
    noisy about it: every stretch pools into the same blocks (the cost sees no
    difference), but a change between two of opposite phase is a jump."""
    idx = _index(runs, length, seed)
    rng = np.random.default_rng(seed + 1)
    phase = np.repeat(np.resize([1.0, -1.0], runs), length)[:, None, None]
    board = np.indices((24, 24)).sum(0) % 2 * 2 - 1.0
    idx["thumb"] = (128 + contrast * phase * board
                    + rng.normal(0, 0.3, (runs * length, 24, 24))).astype(np.float32)
    # Landmarks as alike in every stretch as from frame to frame: the face area decides.
    idx["landmarks"] = (200 + rng.normal(0, 0.3, (runs * length, 8, 2))).astype(np.float32)
    return idx


def _thumb_changes(g: MotionGraph, entries: list[Entry]) -> np.ndarray:
    """Each output frame's change of the face area's thumbnail from the frame before (0 for
    the first), with cross-fades blended as shown."""
    t = g.thumb.astype(np.float32)
    out = np.stack([t[e.a] if e.b < 0 else (1 - e.w) * t[e.a] + e.w * t[e.b]
                    for e in entries])
    return np.r_[0.0, np.abs(np.diff(out, axis=0)).mean((1, 2))]


def test_a_fade_is_as_long_as_keeps_each_frame_s_change_of_the_face_within_the_footage_s(
        ) -> None:
    """A transition whose cost asks for a short fade, into a stretch whose face area is
    unlike the one left, gets the shortest fade whose every frame changes the picture no
    more than the footage's own 95th percentile, computed here again from the entries."""
    from avatar.motion import WANTS

    g = MotionGraph(_checkers(contrast=0.75), 25)
    want = WANTS["speaking"]
    src, target = 70, 185  # speaking in stretch 0, into stretch 1 (the other phase)
    assert np.abs(g.thumb[target] - g.thumb[src]).mean() > 2.5 * g.pixel_change.max()

    def fade(cfg: MotionConfig) -> tuple[Walker, list[Entry]]:
        w = Walker(g, cfg, seed=0)
        w.s.cur = src
        first = w._transition(src + 1, target, w.step_cost * 3 ** 2, want)  # cost: 2 frames
        return w, [Entry(src), first, *w.s.pending, Entry(target + len(w.s.pending) + 1)]

    step = float(np.percentile(g.pixel_change, 95))
    w, by_cost = fade(MotionConfig(pixel_quantile=None))
    assert len(by_cost) - 2 == 2
    assert _thumb_changes(g, by_cost).max() > 1.2 * step
    w, by_pixels = fade(MotionConfig())
    assert w.pixel_step == pytest.approx(step)
    n = len(by_pixels) - 2
    assert 2 < n <= round(MotionConfig().forced_fade_scale * MotionConfig().fade)
    assert _thumb_changes(g, by_pixels).max() <= step
    # ...and no shorter fade would have done.
    w2 = Walker(g, MotionConfig(), seed=0)
    w2.s.cur = src
    assert w2._fade_worst(src + 1, target, n - 1) > 1.0


def test_a_walk_picks_stretches_a_fade_brings_in_without_a_jump() -> None:
    """Where the cost cannot tell stretches apart that differ to the eye, the walk draws
    one that a fade brings in within the footage's own change: seam frames changing the
    face area more than the footage's 99th percentile fall from a quarter or more to
    almost none."""
    from training.evaluate_motion import seams

    g = MotionGraph(_checkers(runs=12, length=100), 25)
    p99 = float(np.percentile(g.pixel_change, 99))
    modes = (["silent"] * 80 + ["speaking"] * 120) * 8
    over = {}
    for name, cfg in (("cost", MotionConfig(pixel_quantile=None)), ("pixels", MotionConfig())):
        w = Walker(g, cfg, seed=3)
        entries = _walk(w, modes)
        at = seams(entries)
        over[name] = float(np.mean(_thumb_changes(g, entries)[at] > p99))
        assert w.transitions >= 30
    assert over["pixels"] < 0.02 and over["cost"] > 0.2


def test_short_silences_get_a_short_stay_and_long_ones_keep_the_full_one() -> None:
    from avatar.motion import silent_stay

    cfg = MotionConfig()
    # Stretches of 120 frames, half listening: 60 silent frames each, room for a full stay.
    long = MotionGraph(_index(runs=8, length=120), 25)
    assert silent_stay(long, cfg) == round(cfg.min_stay_s * 25)
    assert Walker(long, cfg).min_stay_silent == round(cfg.min_stay_s * 25)
    assert Walker(long, cfg).silent_fade == cfg.silent_fade
    # GRID-like: 3-second stretches opening with 18 silent frames, too short for a
    # 0.6 s stay and a fade: the walk stays 0.2 s, and it enters such stretches.
    idx = _index(runs=40, length=75)
    state = idx["state"].reshape(40, 75)
    state[:, :18], state[:, 18:] = LISTENING, SPEAKING
    idx["state"] = state.reshape(-1)
    # One face in one place, the same picture give or take noise: what the fades' pixel
    # check sees as smooth anywhere (this synthetic bank's random walks drift apart).
    rng = np.random.default_rng(7)
    idx["thumb"] = (128 + rng.normal(0, 0.3, idx["thumb"].shape)).astype(np.float32)
    idx["landmarks"] = (200 + rng.normal(0, 0.3, idx["landmarks"].shape)).astype(np.float32)
    short = MotionGraph(idx, 25)
    stay = silent_stay(short, cfg)
    assert stay == round(cfg.shortest_silent_stay_s * 25) < round(cfg.min_stay_s * 25)
    # ...and a shorter cross-fade in silence, so a stay and a fade fit in more of them.
    assert Walker(short, cfg).silent_fade == cfg.short_silent_fade < cfg.silent_fade
    entries = _walk(Walker(short, cfg, seed=2), ["silent"] * 400)
    entered = {e.a // 75 for e in entries if e.b < 0}
    assert len(entered) > 10  # many stretches, not the few a full stay would allow
    fades = [e.w for e in entries if e.b >= 0]
    # Within the short fade, or within its forced length where nothing matched well.
    assert fades and min(fades) >= 1 / (round(cfg.forced_fade_scale * cfg.short_silent_fade)
                                        + 1) - 1e-9
    held = MotionConfig(forced_fade_scale=1.0)
    fades = [e.w for e in _walk(Walker(short, held, seed=2), ["silent"] * 400) if e.b >= 0]
    assert fades and min(fades) >= 1 / (cfg.short_silent_fade + 1) - 1e-9
    # An explicit stay is kept as given.
    assert Walker(short, MotionConfig(silent_min_stay_s=0.6)).min_stay_silent == 15


def test_a_replan_resumes_from_the_snapshot() -> None:
    g = MotionGraph(_index(), 25)
    w = Walker(g, seed=2)
    _walk(w, ["silent"] * 30)
    snap = w.snapshot()
    first = _walk(w, ["silent"] * 5)
    w.restore(snap)
    again = _walk(w, ["silent"] * 5)
    assert first[0] == again[0]  # the same frame follows: the walk resumed where it was
    w.restore(snap)
    speaking = _walk(w, ["speaking"] * 40)
    assert any(g.state[e.a] == SPEAKING for e in speaking[-20:])


def test_the_walk_does_not_repeat_within_a_minute_when_the_bank_allows() -> None:
    from training.evaluate_motion import repetition

    g = MotionGraph(_index(runs=40, length=150), 25)   # 4 minutes of footage
    w = Walker(g, seed=3)
    modes = (["silent"] * 100 + ["speaking"] * 200) * 10  # 2 minutes
    rep = repetition(_walk(w, modes), 25, 2.0, 60.0)
    assert rep["reversed_steps"] == 0
    assert rep["repeated_share"] <= 0.02, rep


def test_the_walk_never_loops_back_into_footage_it_just_showed() -> None:
    """Footage like GRID's (3-second clips, under a second of silence each) driven with
    silences of 2.8 s: the walk had gone back to the start of the stretch it was in again
    and again (its nearest match), a loop each time within the share of reused frames a
    target may hold. No frame is entered twice within the minute, so no 2-second window
    comes back."""
    from training.evaluate_motion import repetition

    for seed in range(4):
        g = MotionGraph(_index(runs=60, length=75, seed=seed, silent=20), 25)
        modes = (["silent"] * 70 + ["speaking"] * 50) * 25   # 2 minutes
        entries = _walk(Walker(g, seed=seed), modes)
        assert repetition(entries, 25, 2.0, 60.0)["repeated_share"] == 0, seed
        entered: dict[int, int] = {}
        for k, e in enumerate(entries):
            if e.b >= 0 and (k == 0 or entries[k - 1].b < 0):  # a cross-fade begins
                assert k - entered.get(e.b, -10**9) >= 25 * 60, (seed, k, e)
                entered[e.b] = k


def test_the_bundle_has_a_bank_and_renders_over_it(bundle: Path, sample) -> None:
    from avatar.audio import load_audio
    from avatar.avatar import Avatar, FrameRequest
    from avatar.motion import plan_walk, speech_activity

    manifest = json.loads((bundle / "manifest.json").read_text())
    motion = manifest["motion"]
    assert motion["frames"] > 50 and motion["files"]
    for f in motion["files"] + [motion["index"]]:
        assert f in manifest["files"] and (bundle / f).is_file()
    assert motion["seconds"]["speaking"] > 0 and motion["bytes"] > 0
    # Chunks keep x264's deblocking by default (``BankConfig.tune``): x264's own record
    # of its settings, in the stream, says so.
    assert b"deblock=1" in (bundle / motion["files"][0]).read_bytes()
    av = Avatar.load(bundle)
    assert av.bank is not None and av.bank.n == motion["frames"]
    audio = load_audio(sample.video, 16000)[: 16000 * 4]
    windows = av.mel_windows(audio)
    active, db = speech_activity(audio, len(windows), av.fps)
    assert active.any() and not active.all()
    entries = plan_walk(av.walker(0), active, db)
    state = av.bank.graph.state
    plain = np.array([e.b < 0 for e in entries])
    agree = (state[[e.a for e in entries]] == SPEAKING) == active
    assert agree[plain].mean() > 0.8
    frames = av.render([FrameRequest(i, windows[i], base=entries[i]) for i in range(0, 40, 4)])
    w, h = manifest["frame_size"]
    assert all(f.shape == (h, w, 3) for f in frames)
    # Speech after silence is a transition: its frames are made from both sides.
    fade = next(e for e in entries if e.b >= 0)
    mixed = av.base_frame(fade)
    assert not np.array_equal(mixed, av.bank.rgb(fade.a))
    assert not np.array_equal(mixed, av.bank.rgb(fade.b))


def test_a_bundle_without_a_bank_plays_its_idle_loop(bundle: Path, sample,
                                                      tmp_path: Path) -> None:
    from avatar.avatar import Avatar

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    motion = m.pop("motion")
    for f in motion["files"] + [motion["index"]]:
        m["files"].pop(f)
        (old / f).unlink()
    (old / "manifest.json").write_text(json.dumps(m))
    assert Avatar.load(old).bank is None
    out = tmp_path / "o.mp4"
    proc = run_cli("render", old, "--audio", sample.video, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert len(read_frames(out)) > 100
    proc = run_cli("eval", "motion", old, "--footage", sample.video, "-o", tmp_path / "e")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no motion bank" in proc.stderr and "train motion" in proc.stderr


def test_train_motion_rebuilds_the_bank_in_place(bundle: Path, tmp_path: Path) -> None:
    from avatar.avatar import Avatar

    work = tmp_path / "w"
    (work / "avatars").mkdir(parents=True)
    shutil.copytree(bundle, work / "avatars" / bundle.name)
    (work / "features").symlink_to(bundle.parent.parent / "features")
    before = json.loads((work / "avatars" / bundle.name / "manifest.json").read_text())
    proc = run_cli("train", "motion", work)
    assert proc.returncode == 0, proc.stderr
    after = json.loads((work / "avatars" / bundle.name / "manifest.json").read_text())
    assert after["motion"]["index"] != before["motion"]["index"]
    assert after["motion"]["frames"] == before["motion"]["frames"]
    for f in before["motion"]["files"]:
        assert not (work / "avatars" / bundle.name / f).exists()  # the old bank is gone
    assert Avatar.load(work / "avatars" / bundle.name).bank is not None
    # Seven seconds of footage hold too few nods for a nod model: none, and the report
    # says why (the walk then ignores nods).
    report = after["motion"]["cue_report"]
    assert after["motion"]["cues"] is None and report["used"] is False
    assert "nods in the footage" in report["why"]


def test_eval_motion_report(bundle: Path, sample, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    proc = run_cli("eval", "motion", bundle, "--footage", sample.video, "--passes", "1",
                   "--no-video", "-o", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "report.json").read_text())
    assert r["frames"] > 100 and r["face_found"] > 0.9
    assert 0 <= r["seams"]["over_p99_share"] <= 1 and r["seams"]["mad_p99_footage"] > 0
    # The footage's own frames pass its 99th percentile now and then, but not wholesale.
    assert 0 <= r["seams"]["over_p99_share_plain"] < 0.5
    assert r["repetition"]["reversed_steps"] == 0
    for ref in ("behaviour_vs_held_out", "behaviour_vs_enrolment"):
        assert 0 <= r[ref]["ks_speaking"] <= 1 and 0 <= r[ref]["ks_silent"] <= 1
    assert np.isfinite(r["lips_corr"])
    assert (out / "head_angles.png").stat().st_size > 1000


def test_a_live_session_walks_the_bank(bundle: Path) -> None:
    """A real avatar and scheduler: silent frames come from listening footage, speech is
    painted over speaking footage, and barge-in walks back to silence at once."""
    from avatar.avatar import Avatar
    from streaming.scheduler import Lane, Scheduler, SchedulerConfig
    from streaming.session import Session, SessionConfig
    from tests.test_session import FakeVoice

    av = Avatar.load(bundle)
    sch = Scheduler([Lane("cpu0", {"a": av})], SchedulerConfig(max_batch=8))
    sch.start()
    state = av.bank.graph.state

    async def run() -> tuple[list[Entry], Session]:
        s = Session("a", av, FakeVoice(), sch, SessionConfig())
        s.start()
        s.clock.start()
        shown: list[Entry] = []
        said = False
        for k in range(100):
            await s.clock.wait_until(k / 25)
            if k == 10 and not said:
                s.say("one two three four five six seven eight nine ten eleven twelve")
                said = True
            frame = s.video_frame(k)
            assert frame.shape[2] == 3
            shown.append(s.motion.entries[k])
        s.interrupt()
        after = []
        for k in range(100, 130):
            await s.clock.wait_until(k / 25)
            s.video_frame(k)
            after.append(s.motion.entries[k])
        await s.close()
        return shown + after, s

    try:
        entries, s = asyncio.run(run())
    finally:
        sch.stop()
    plain = [e for e in entries[:10] if e.b < 0]
    assert all(state[e.a] != SPEAKING for e in plain)     # silent before speech
    speaking = [e for e in entries[30:90] if e.b < 0]
    assert np.mean([state[e.a] == SPEAKING for e in speaking]) > 0.7
    assert s.stats["frames_rendered"] > 30
    tail = [e for e in entries[100 + MotionConfig().fade + 2:] if e.b < 0]
    assert tail and all(state[e.a] != SPEAKING for e in tail)  # barge-in: silent footage


def test_a_cut_in_the_footage_is_never_played_through(sample, tmp_path: Path) -> None:
    """An edited clip: the second half is the same presenter moved sideways (a jump cut).
    The bank detects the cut and never treats the two sides as consecutive frames."""
    from tests.conftest import read_audio, write_av
    from training.config import features_preset
    from training.enrol import enrol_features
    from training.motion.bank import build_bank

    frames = read_frames(sample.video)[:150]
    half = len(frames) // 2
    cut = frames[:half] + [np.roll(f, 24, axis=1) for f in frames[half:]]
    video = write_av(tmp_path / "cut.mp4", cut, audio=read_audio(sample.video)[: 16000 * 6])
    feats = enrol_features([video], tmp_path / "w", features_preset("ci", workers=1))
    res = build_bank(feats.dir, tmp_path / "b", (256, 256), 25)
    assert res.dropped["cut"] >= 1
    with np.load(tmp_path / "b" / "motion.npz") as z:
        src, cont = z["source_frame"], z["cont"]
    at = int(np.flatnonzero(src == half - 1)[0]) if (src == half - 1).any() else None
    assert at is None or not cont[at]      # the frame before the cut does not continue
    assert all(not c or b == a + 1 for a, b, c in zip(src[:-1], src[1:], cont[:-1],
                                                       strict=True))


def test_a_change_of_mode_meets_the_footage_s_own_change() -> None:
    """Speech starting or ending is met, where the bank allows, by footage where the
    person starts or stops speaking at that frame: no seam at the change itself."""
    from avatar.motion import plan_walk

    base = _index(runs=30, length=300, seed=7)
    # A person's head keeps coming back to where it was: features that wander about a
    # rest position (not away for ever), so far-apart frames can match.
    rng = np.random.default_rng(8)
    for key, rest, spread in (("centre", 200, 3), ("euler", 0, 2), ("landmarks", 200, 3),
                              ("shoulders", 300, 3)):
        x = np.zeros_like(base[key], dtype=np.float32)
        for i in range(1, len(x)):
            x[i] = 0.97 * x[i - 1] + rng.normal(0, spread * 0.25, x.shape[1:])
        base[key] = rest + x
    # Each stretch: listening, speaking, listening (the person's own way in and out).
    third = np.r_[np.full(100, LISTENING), np.full(100, SPEAKING), np.full(100, LISTENING)]
    base["state"] = np.tile(third, 30)
    base["loudness_db"] = np.where(base["state"] == SPEAKING, -20.0, -70.0)
    base["opening"] = np.where(base["state"] == SPEAKING, 0.1, 0.01)
    g = MotionGraph(base, 25)
    n = 1200
    active = np.zeros(n, bool)
    for a in range(60, n - 150, 220):
        active[a: a + 120] = True
    db = np.where(active, -20.0, -80.0)
    changes = np.flatnonzero(np.diff(active.astype(int))) + 1

    def seamless(cfg: MotionConfig) -> float:
        entries = plan_walk(Walker(g, cfg, seed=3), active, db)
        ok = [entries[k].b < 0 and entries[k - 1].b < 0 and entries[k].a == entries[k - 1].a + 1
              for k in changes]
        return float(np.mean(ok))

    planned = seamless(MotionConfig())
    assert planned >= 0.8
    assert planned > seamless(MotionConfig(switch_window=-100)) + 0.3  # switches not planned


def test_the_walk_turns_no_sooner_than_the_bank_can_ready_new_footage(bundle: Path) -> None:
    """Speech placed, and its end becoming known, re-plan the walk only from frames the
    bank's thread has time to decode, cross-fade and the renderer to paint before they are
    shown (``MotionBank.lead_s``, here said to be 0.6 s): turned sooner, the frames waited
    for their footage past their time."""
    from avatar.avatar import Avatar

    av = Avatar.load(bundle)
    av.bank.lead_s = lambda: 0.6
    replans: list[tuple[int, int]] = []

    def setup(s) -> None:  # noqa: ANN001
        real = s.motion.replan

        def spy(k: int) -> None:
            if s.state != "closed":  # closing walks back at once, as a barge-in does
                replans.append((k, int(s.clock.now() * 25)))
            real(k)

        s.motion.replan = spy

    s = _live(av, 90, lambda s, k: k == 10 and s.say("one two three four"), setup)
    assert len(replans) >= 2, replans  # the start, and the way back once its length is known
    assert all(k - now >= 15 for k, now in replans), replans  # 0.6 s at 25 fps
    assert s.stats["frames_rendered"] > 20


def test_the_bank_s_lead_follows_its_measured_work() -> None:
    """The time new footage takes is what the bank's thread took lately: a chunk's decode
    for each chunk queued and its own, a piece in flight, a cross-fade; a bank decoded
    whole needs no decoding."""
    import threading

    from avatar.bank import MotionBank

    bank = MotionBank.__new__(MotionBank)  # its timing state alone: no bundle needed
    bank._lock, bank._resident, bank._queued = threading.Lock(), False, {}
    bank._took = {"decode": [], "mix": [], "prepare": []}
    assert bank.lead_s() == 0.0
    bank._took = {"decode": [0.2] * 10, "mix": [0.01] * 10, "prepare": [0.005] * 10}
    assert abs(bank.lead_s() - (0.2 + 0.01 + 0.01)) < 1e-9
    bank._queued = {3: 96, 5: 160}
    assert abs(bank.lead_s() - (0.6 + 0.02)) < 1e-9
    bank._resident = True
    assert abs(bank.lead_s() - 0.02) < 1e-9


def test_the_event_loop_never_decodes_bank_video(bundle: Path) -> None:
    """Frames shown unrendered come from the bank's cache; a chunk not decoded yet is
    never decoded on the event loop that every session shares (tens of milliseconds a
    chunk): the last frame is shown again until the bank's thread has it."""
    import threading

    from avatar.avatar import Avatar

    av = Avatar.load(bundle)
    decoded_on: list[str] = []
    real = av.bank._decode

    def spy(i: int) -> None:
        decoded_on.append(threading.current_thread().name)
        real(i)

    av.bank._decode = spy

    def act(s, k: int) -> None:  # noqa: ANN001
        if k == 10:
            s.say("one two three four five six seven eight")
        if k == 60:
            s.interrupt()  # a re-plan: new footage wanted at once

    s = _live(av, 150, act)
    loop_thread = threading.main_thread().name
    assert decoded_on and loop_thread not in decoded_on, decoded_on
    assert s.stats["frames_repeated"] <= 15, s.stats  # a stall now and then, not a freeze


def test_prefetch_readies_frames_off_the_caller_s_thread(bundle: Path, monkeypatch) -> None:
    """What a session will show is decoded, cross-faded and (for frames to be painted)
    prepared for compositing on the bank's thread ahead of time, so a render batch does
    none of it; and the frames rendered are the ones rendered without prefetching."""
    import threading

    import avatar.bank
    from avatar.avatar import Avatar, FrameRequest

    av, fresh = Avatar.load(bundle), Avatar.load(bundle)
    walker = av.walker(0)
    entries = [walker.next("speaking" if 10 <= k < 50 else "silent") for k in range(60)]
    assert any(e.b >= 0 for e in entries)  # a cross-fade among them
    painted = entries[10:50]
    threads: dict[str, list[str]] = {"prepare": [], "decode": []}
    real_prepare, real_decode = avatar.bank.prepare_frames, av.bank._decode
    niceness: list[int] = []
    av.bank.thread_nice = 5  # as a server sets it (ServerConfig.bank_nice)

    def prepare(*args):  # noqa: ANN002, ANN202
        threads["prepare"].append(threading.current_thread().name)
        return real_prepare(*args)

    def decode(i: int) -> None:
        threads["decode"].append(threading.current_thread().name)
        if sys.platform.startswith("linux"):
            niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        real_decode(i)

    monkeypatch.setattr(avatar.bank, "prepare_frames", prepare)
    av.bank._decode = decode
    av.bank.prefetch(entries, painted)
    av.bank.wait_prefetched()
    assert all(av.bank.ready(e) for e in entries)
    assert len(threads["prepare"]) == len(set(painted))
    assert threads["decode"]
    assert all(name.startswith("bank") for v in threads.values() for name in v), threads
    # At a lower priority than the caller's (the renderer's lane keeps its core).
    assert all(n >= 5 for n in niceness), niceness
    windows = np.zeros((len(painted), av.gen.cfg.mel_bins, av.mel_frames), np.float32)
    reqs = [FrameRequest(i, windows[i], base=e) for i, e in enumerate(painted)]
    out = av.render(reqs)
    # The batch found every background ready: nothing more decoded or prepared.
    assert len(threads["prepare"]) == len(set(painted))
    assert all(name.startswith("bank") for v in threads.values() for name in v), threads
    expected = fresh.render(reqs)
    assert all(np.array_equal(x, y) for x, y in zip(out, expected, strict=True))


def test_prefetch_queues_each_frame_s_work_in_the_order_shown(bundle: Path) -> None:
    """A cross-fade is mixed right after its own frames are decoded, not after every
    decode the second ahead needs: a walk's turn at a sentence's start waited behind the
    next chunk's decode and came too late to be painted."""
    from avatar.avatar import Avatar
    from avatar.bank import PREPARE, READY

    bank = Avatar.load(bundle).bank
    c = bank.chunk
    assert bank.n >= 3 * c  # three chunks, none decoded yet
    queued: list[tuple[int, str, object]] = []

    class Recorder:
        def submit(self, kind: int, fn, arg) -> None:  # noqa: ANN001
            queued.append((kind, fn.__name__, arg))

    bank._worker = Recorder()
    fade = Entry(c + 1, 2, 0.5)  # chunk 1 cross-faded into chunk 0
    entries = [Entry(c), fade, Entry(2 * c + 3)]  # then on into chunk 2
    bank.prefetch(entries, [fade])
    assert queued == [(READY, "_safe_decode", c), (READY, "_safe_decode", 2),
                      (READY, "_safe_mix", fade), (READY, "_safe_decode", 2 * c + 3),
                      (PREPARE, "_safe_prepare", fade)]


def test_a_render_takes_its_prepared_frame_and_the_bank_skips_what_was_painted(
        bundle: Path, monkeypatch) -> None:
    """A frame is painted once: the render takes its prepared entry out of the cache (kept,
    the painted entries were the most recent and the bound let go of the ones prepared
    ahead first), and work still queued on the bank's thread for a frame a render has
    already taken is skipped, so a bank thread that fell behind catches up instead of
    making frames nobody paints."""
    import avatar.bank
    from avatar.avatar import Avatar, FrameRequest

    av = Avatar.load(bundle)
    bank = av.bank
    walker = av.walker(0)
    entries = [walker.next("speaking") for _ in range(40)]
    ahead, behind = entries[:20], entries[20:]
    bank.prefetch(ahead, ahead)
    bank.wait_prefetched()
    assert all(e in bank._prepared for e in ahead)
    windows = np.zeros((len(entries), av.gen.cfg.mel_bins, av.mel_frames), np.float32)
    av.render([FrameRequest(i, windows[i], base=e) for i, e in enumerate(ahead)])
    assert not any(e in bank._prepared for e in ahead)  # taken: room for the next
    # The bank's thread behind: its work for ``behind`` is queued but not yet run when
    # the render paints those frames.
    queued: list[tuple] = []

    class Recorder:
        def submit(self, kind: int, fn, arg) -> None:  # noqa: ANN001
            queued.append((fn, arg))

    bank._worker = Recorder()
    bank.prefetch(behind, behind)
    assert any(fn.__name__ == "_safe_prepare" for fn, _ in queued)
    av.render([FrameRequest(i, windows[i], base=e) for i, e in enumerate(behind)])
    made: list[int] = []
    real = avatar.bank.prepare_frames
    monkeypatch.setattr(avatar.bank, "prepare_frames",
                        lambda *a: made.append(1) or real(*a))
    mixed_before = len(bank._mixed)
    for fn, arg in queued:
        fn(arg)
    assert not made  # every one already painted: nothing prepared again
    assert not any(e in bank._prepared for e in behind)
    assert len(bank._mixed) == mixed_before  # the render's cross-fades were cached


def test_bank_caches_are_bounded_in_bytes() -> None:
    from avatar.bank import _Lru
    from avatar.motion import Entry

    lru = _Lru(1000, lambda k, v: v.nbytes)
    for i in range(10):
        lru.put(Entry(i), np.zeros(300, np.uint8))
    assert lru.bytes <= 1000 and len(lru) == 3
    assert Entry(9) in lru and Entry(6) not in lru
    assert lru.get(Entry(7)) is not None  # used: the next to go is 8
    lru.put(Entry(10), np.zeros(300, np.uint8))
    assert Entry(7) in lru and Entry(8) not in lru
    lru.put(Entry(11), np.zeros(5000, np.uint8))  # larger than the bound: kept alone
    assert len(lru) == 1 and Entry(11) in lru


def test_bank_caches_let_go_of_what_is_not_used_for_a_while() -> None:
    """Prepared frames and cross-fades are made a second ahead for one showing: unused for
    ``keep_s`` they go, so a server whose bytes' bound is far off still stops growing once
    its sessions' walks have run for that long."""
    from avatar.bank import _Lru
    from avatar.motion import Entry

    now = [0.0]
    lru = _Lru(10**9, lambda k, v: v.nbytes, keep_s=30.0, clock=lambda: now[0])
    for i in range(100):  # one new item a second for 100 s
        now[0] = float(i)
        lru.put(Entry(i), np.zeros(10, np.uint8))
        if i % 10 == 0:
            assert lru.get(Entry(0)) is not None  # used all along: kept
    assert Entry(0) in lru and Entry(5) not in lru and Entry(69) in lru
    assert len(lru) == 32 and lru.bytes == 320  # the last 31 s, and the one in use
    now[0] = 1000.0
    lru.get(Entry(99))
    assert len(lru) == 1 and lru.bytes == 10  # the newest is always kept


def test_prepared_frames_count_the_frames_they_hold(bundle: Path) -> None:
    """A prepared cross-fade keeps its mixed frame alive after the cross-fade cache lets it
    go, so the prepared cache's bound counts that frame: everything its entries hold stays
    within it (uncounted, every new cross-fade painted kept a frame for good)."""
    from avatar.avatar import Avatar
    from avatar.motion import Entry

    av = Avatar.load(bundle)
    bank = av.bank
    assert bank.preload()
    n = min(bank.n - 1, 40)
    fades = [Entry(a, a + 1, 0.5) for a in range(n)]
    one = bank.background(fades[0])
    per = one.region.nbytes + one.blend.nbytes + one.frame.nbytes
    bank._prepared.limit = bank._mixed.limit = 5 * per
    for e in fades:
        bank.background(e)
        bank.background(Entry(e.a))  # a plain frame: the preloaded bank owns it
    held: dict[int, int] = {}
    for p, *_ in bank._prepared._items.values():
        for arr in (p.region, p.blend, p.frame):
            held[id(arr)] = arr.nbytes
    resident = {id(f) for f in bank._frames.values()}
    own = sum(b for k, b in held.items() if k not in resident)
    assert own <= bank._prepared.limit
    assert bank._prepared.bytes <= bank._prepared.limit
    assert any(e.b >= 0 for e in bank._prepared._items)  # cross-fades were kept, not just plain


def test_a_large_frame_s_cross_fade_is_bilinear_around_the_face() -> None:
    """Beyond SHARP_AREA the morph's warp is bilinear in the face's box (as before, to the
    level) and nearest-neighbour around it (a fraction of the cost on a 720p frame)."""
    from avatar.bank import _warp

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (360, 640, 3), np.uint8), (0, 0), 2)
    th = np.deg2rad(1.5)
    m = np.array([[np.cos(th), -np.sin(th), 3.4], [np.sin(th), np.cos(th), -2.3], [0, 0, 1]])
    full = _warp(img, m, (640, 360))
    box = (200, 80, 420, 300)
    mixed = _warp(img, m, (640, 360), box)
    x0, y0, x1, y1 = box
    inside = np.abs(mixed[y0:y1, x0:x1].astype(int) - full[y0:y1, x0:x1]).max()
    assert inside <= 1
    nearest = cv2.warpAffine(img, m[:2], (640, 360), flags=cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_REPLICATE)
    outside = np.ones((360, 640), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(mixed[outside], nearest[outside])
    assert not np.array_equal(mixed[outside], full[outside])
    assert _warp(img, np.eye(3), (640, 360), box) is img  # no move: the frame itself


def test_a_writer_tuned_for_fast_decoding_says_so_in_its_stream(tmp_path: Path) -> None:
    from avatar.video_io import VideoWriter

    for tune, want in ((None, (b"cabac=1", b"deblock=1")),
                       ("fastdecode", (b"cabac=0", b"deblock=0"))):
        out = tmp_path / f"{tune}.mp4"
        w = VideoWriter(out, 25, 64, 64, tune=tune)
        for k in range(5):
            w.write(np.full((64, 64, 3), 40 * k, np.uint8))
        w.close()
        data = out.read_bytes()
        assert all(x in data for x in want), tune


def test_the_bank_thread_readies_footage_before_it_prepares() -> None:
    """Decoding and cross-fades gate a frame's hand-over to the renderer; preparing does
    not: queued behind a second's preparing, a turn of the walk came too late to paint."""
    import threading

    from avatar.bank import PREPARE, READY, _Worker

    worker, ran, gate = _Worker("bank_test"), [], threading.Event()
    worker.submit(PREPARE, lambda _: gate.wait(), None)  # holds the thread meanwhile
    for i in range(3):
        worker.submit(PREPARE, ran.append, f"prepare {i}")
    worker.submit(READY, ran.append, "decode 0")
    worker.submit(READY, ran.append, "mix 0")
    gate.set()
    worker.wait()
    assert ran == ["decode 0", "mix 0", "prepare 0", "prepare 1", "prepare 2"]


def test_the_bank_thread_ends_when_idle_and_starts_again() -> None:
    """A bank let go of (a reloaded avatar) leaves no thread waiting for ever."""
    import time

    from avatar.bank import READY, _Worker

    worker, ran = _Worker("bank_idle", idle_s=0.05), []
    worker.submit(READY, ran.append, 1)
    worker.wait()
    deadline = time.monotonic() + 5
    while worker._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker._thread is None
    worker.submit(READY, ran.append, 2)
    worker.wait()
    assert ran == [1, 2]


def test_the_render_benchmark_runs_the_bank_as_a_server_does(bundle: Path) -> None:
    """``bench render --motion`` decodes the bank whole beforehand where it fits (as
    ``serve`` does) and says so; ``--threads`` sets the model's CPU threads (``serve``
    gives its lane half the cores) and puts torch's own count back; a negative count is a
    one-line usage error."""
    import torch

    from bench.runtime import bench_render

    before = torch.get_num_threads()
    asked = 1 if before != 1 else 2  # not the count it had: the setting shows
    out = bench_render(bundle, batches=(1,), seconds=0.2, motion=True, threads=asked)
    assert out["threads"] == asked and out["bank"] == "decoded whole beforehand"
    assert out["chunks_decoded_per_frame"]["1"] == 0  # nothing left to decode
    assert torch.get_num_threads() == before
    bad = run_cli("bench", "render", bundle, "--threads", "-1")
    assert bad.returncode == 2 and "0 or more" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_render_benchmark_hands_walks_to_the_bank_a_second_ahead(bundle: Path) -> None:
    """``bench render --motion`` plans each walk ahead and hands it to the bank's thread
    as a server's session does, so a batch's footage was on its way well before it: each
    frame rendered was handed over ``ahead - 1`` batches earlier (the first few aside),
    and the frames are the walks' own, in order."""
    import numpy as np

    from avatar.avatar import Avatar
    from bench.runtime import _Feed

    av = Avatar.load(bundle)
    handed: list[list] = []
    real = av.bank.prefetch
    av.bank.prefetch = lambda entries, paint=(): (handed.append(list(entries)),
                                                   real(entries, paint))
    mel = np.zeros((4, av.gen.cfg.mel_bins, av.mel_frames), np.float32)
    feed = _Feed(av, mel, 2, [av.walker(0), av.walker(1)], ahead=6)
    batches = [feed.batch() for _ in range(10)]
    assert len(handed[0]) == 12 and all(len(h) == 2 for h in handed[1:])
    when = {}
    for n, h in enumerate(handed):
        for e in h:
            when.setdefault(e, n)
    for n, reqs in enumerate(batches):
        for r in reqs:
            assert when[r.base] <= max(0, n - 5), (n, r.base)
    plain = [av.walker(0), av.walker(1)]
    assert [[r.base for r in reqs] for reqs in batches] == \
        [[w.next("speaking") for w in plain] for _ in range(10)]
