"""The render scheduler with a fake clock and fake renderers: deadline order, batching
across sessions, the deadline bound on a batch, dropping late frames, two lanes, barge-in,
a failing render, admission."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from avatar.avatar import FrameRequest
from streaming.scheduler import Cost, Job, Lane, Scheduler, SchedulerConfig


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeRenderer:
    def __init__(self, seconds: float = 0.0, fail_on: str | None = None):
        self.seconds, self.fail_on = seconds, fail_on
        self.calls: list[list[str]] = []

    def render(self, requests: list[FrameRequest]) -> list[np.ndarray]:
        self.calls.append([r.session for r in requests])
        if self.fail_on and any(r.session == self.fail_on for r in requests):
            raise RuntimeError("boom")
        if self.seconds:
            time.sleep(self.seconds)
        return [np.full((2, 2, 3), r.idle_index, np.uint8) for r in requests]


class Results:
    def __init__(self) -> None:
        self.items: list[tuple[str, float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, job: Job, frame: np.ndarray | None, status: str) -> None:
        with self.lock:
            self.items.append((job.session, job.deadline, status))


def req(session: str, deadline: float, i: int = 0) -> FrameRequest:
    return FrameRequest(idle_index=i, mel=np.zeros((80, 40), np.float32), session=session,
                        deadline=deadline)


def make(max_batch: int = 8, lanes: int = 1, seconds: float = 0.0, **kw):  # noqa: ANN201
    clock = FakeClock()
    ls = [Lane(f"cpu{i}", {"a": FakeRenderer(seconds, **kw), "b": FakeRenderer(seconds)},
               Cost(fixed=0.01, per_frame=0.01)) for i in range(lanes)]
    return Scheduler(ls, SchedulerConfig(max_batch=max_batch), clock), clock, ls


def test_earliest_deadline_first_and_batching_across_sessions() -> None:
    sch, clock, (lane,) = make(max_batch=8)
    res = Results()
    for s, d in (("x", 3.0), ("y", 1.0), ("z", 2.0)):
        sch.submit("a", req(s, d), res)
    batch = sch.take_batch(lane)
    assert [j.session for j in batch] == ["y", "z", "x"]  # three sessions, one call
    sch.render_batch(lane, batch)
    assert lane.renderers["a"].calls == [["y", "z", "x"]] and lane.stats.batches == 1


def test_batch_stops_where_the_earliest_deadline_would_be_missed() -> None:
    sch, clock, (lane,) = make(max_batch=8)
    res = Results()
    for k in range(6):
        sch.submit("a", req(f"s{k}", 0.035 + k), res)
    # Cost 0.01 + 0.01/frame: two frames take 0.03 s and fit before 0.035, three do not.
    assert len(sch.take_batch(lane)) == 2
    assert sch.pending == 4


def test_late_frames_are_dropped_not_queued() -> None:
    sch, clock, (lane,) = make()
    res = Results()
    sch.submit("a", req("old", 0.005), res)
    sch.submit("a", req("new", 1.0), res)
    clock.t = 0.0
    batch = sch.take_batch(lane)
    assert [j.session for j in batch] == ["new"]
    assert res.items == [("old", 0.005, "late")] and lane.stats.late == 1


def test_dropped_frames_are_counted_by_cause_and_in_bursts() -> None:
    """A frame handed over with less time than the batch in flight and a batch of one
    take is the session's lateness; one dropped after a batch took twice its prediction is
    the host's; one that waited behind others is load. Drops half a second apart are two
    bursts."""
    sch, clock, (lane,) = make()
    res = Results()
    sch.submit("a", req("tight", 0.015), res)  # 15 ms: a batch of one takes 20
    clock.t = 0.001
    sch.take_batch(lane)
    assert lane.stats.late_by_cause == {"handed_over_late": 1, "renderer_overran": 0,
                                        "queued_behind": 0}
    clock.t = 1.0
    sch.submit("a", req("waits", 1.2), res)
    lane.last_batch = (8, 0.3, 0.09)  # the batch the lane just rendered overran
    clock.t = 1.195
    sch.take_batch(lane)
    sch.submit("a", req("queued", 1.4), res)
    lane.last_batch = (8, 0.1, 0.09)
    clock.t = 1.39
    sch.take_batch(lane)
    assert lane.stats.late_by_cause == {"handed_over_late": 1, "renderer_overran": 1,
                                        "queued_behind": 1}
    # 100 ms before its deadline, with a 90-ms batch out: only an idle lane makes it.
    clock.t = 3.0
    sch.submit("a", req("behind", 3.1), res)
    clock.t = 3.095
    sch.take_batch(lane)
    assert lane.stats.late_by_cause["handed_over_late"] == 2
    assert lane.stats.late == 4 and lane.stats.late_bursts == 3
    assert [status for _, _, status in res.items] == ["late"] * 4


def test_batches_hold_one_avatar() -> None:
    sch, clock, (lane,) = make()
    res = Results()
    sch.submit("a", req("x", 1.0), res)
    sch.submit("b", req("y", 1.1), res)
    sch.submit("a", req("z", 1.2), res)
    assert [j.session for j in sch.take_batch(lane)] == ["x", "z"]
    assert [j.session for j in sch.take_batch(lane)] == ["y"]


def test_cancel_flushes_one_session_only() -> None:
    sch, clock, (lane,) = make()
    res = Results()
    for k in range(5):
        sch.submit("a", req("talker", 1.0 + k), res)
        sch.submit("a", req("other", 1.0 + k), res)
    assert sch.cancel("talker") == 5
    assert sum(1 for s, _, st in res.items if st == "cancelled" and s == "talker") == 5
    assert all(j.session == "other" for j in sch.take_batch(lane))


def test_cancel_from_a_frame_on_keeps_the_frames_before_it() -> None:
    """Speech placed at frame 3: the session's silent frames queued from there on are
    dropped, those before it and other sessions' are kept."""
    sch, clock, (lane,) = make(max_batch=16)
    res = Results()
    for k in range(6):
        sch.submit("a", req("talker", 1.0 + k, i=k), res)
        sch.submit("a", req("other", 1.0 + k, i=k), res)
    assert sch.cancel("talker", since=3) == 3
    left = [(j.session, j.request.idle_index) for j in sch.take_batch(lane)]
    assert sorted(i for s, i in left if s == "talker") == [0, 1, 2]
    assert sorted(i for s, i in left if s == "other") == list(range(6))


def test_lead_time_counts_what_is_left_of_the_batch_on_the_lane() -> None:
    """Frames merely queued are not a batch in flight; a batch rendering now counts for
    the time it has left."""
    sch, clock, (lane,) = make()  # 10 ms a batch plus 10 ms a frame
    res = Results()
    assert sch.lead_time(2) == pytest.approx(0.03)
    for k in range(4):  # queued, the lane idle (held for a larger batch)
        sch.submit("a", req("s", 1.0 + k, i=k), res)
    assert sch.lead_time(2) == pytest.approx(0.07)
    lane.busy_until = clock.t + 0.05  # a batch on the lane, 50 ms left of it
    assert sch.lead_time(2) == pytest.approx(0.12)
    clock.t += 0.2  # running over its prediction: nothing more is known of it
    assert sch.lead_time(2) == pytest.approx(0.07)

def test_admission_refuses_beyond_max_pending() -> None:
    clock = FakeClock()
    lane = Lane("cpu0", {"a": FakeRenderer()})
    sch = Scheduler([lane], SchedulerConfig(max_pending=3), clock)
    res = Results()
    assert all(sch.submit("a", req("s", 1.0), res) for _ in range(3))
    assert sch.submit("a", req("s", 1.0), res) is None


def test_two_lanes_share_the_work_and_a_failure_stays_local() -> None:
    lanes = [Lane(f"cpu{i}", {"a": FakeRenderer(0.01, fail_on="bad")}) for i in range(2)]
    sch = Scheduler(lanes, SchedulerConfig(max_batch=4, hold_s=0.0))
    res = Results()
    sch.start()
    try:
        now = time.monotonic()
        for k in range(80):
            sch.submit("a", req("bad" if k == 7 else f"s{k % 5}", now + 5.0, k), res)
        t0 = time.monotonic()
        while len(res.items) < 80 and time.monotonic() - t0 < 20:
            time.sleep(0.01)
    finally:
        sch.stop()
    statuses = [st for _, _, st in res.items]
    assert len(statuses) == 80 and statuses.count("ok") == 79
    # The failed batch was rendered again one session at a time: only the bad session's
    # frame is lost, not the other sessions' frames that shared its batch.
    assert [s for s, _, st in res.items if st == "error"] == ["bad"]
    assert all(lane.stats.frames > 0 for lane in lanes)


def test_a_lane_holds_for_a_fuller_batch_while_the_earliest_frame_can_wait() -> None:
    sch, clock, (lane,) = make(max_batch=8)
    res = Results()
    with sch._cv:
        assert sch.hold(lane) == 0.0  # nothing queued
    sch.submit("a", req("s1", 0.5), res)
    with sch._cv:
        # Done at 0.02 s, due at 0.5: it may wait until 0.5 - 0.02 - hold_s.
        assert sch.hold(lane) == pytest.approx(0.5 - 0.02 - sch.cfg.hold_s)
    clock.t = 0.38
    with sch._cv:
        assert sch.hold(lane) == 0.0
    for k in range(7):
        sch.submit("a", req("s2", 9.0, k), res)
    clock.t = 0.0
    with sch._cv:
        assert sch.hold(lane) == 0.0  # a full batch goes at once


def test_a_held_lane_renders_the_frames_that_came_meanwhile_in_one_batch() -> None:
    renderer = FakeRenderer()
    sch = Scheduler([Lane("cpu", {"a": renderer}, Cost(fixed=0.01, per_frame=0.001))],
                    SchedulerConfig(max_batch=16, hold_s=0.1))
    res = Results()
    sch.start()
    try:
        now = time.monotonic()
        # Frames a session hands over one at a time, 40 ms apart, each due 0.3 s later.
        for k in range(4):
            sch.submit("a", req("s", now + 0.3 + 0.04 * k, k), res)
            time.sleep(0.04)
        t0 = time.monotonic()
        while len(res.items) < 4 and time.monotonic() - t0 < 5:
            time.sleep(0.01)
    finally:
        sch.stop()
    assert [st for _, _, st in res.items] == ["ok"] * 4
    # Without the hold each frame would have been a model call of its own.
    assert len(renderer.calls) < 4, renderer.calls


def test_a_lane_whose_batches_overran_leaves_its_next_batch_room() -> None:
    """Batches that recently took longer than predicted (the host's cores taken in bursts)
    make the next batch smaller, so its first frame is back in time even if it overruns as
    they did; a frame that fits only without room is still rendered alone."""
    sch, clock, (lane,) = make(max_batch=8)
    res = Results()
    for k in range(6):
        sch.submit("a", req(f"s{k}", 0.08 + k), res)
    # Cost 0.01 + 0.01/frame: six frames take 0.07 s and fit before 0.08.
    assert lane.cost.spread() == 1.0
    assert len(sch.take_batch(lane)) == 6
    for _ in range(16):  # batches took half as long again as predicted
        lane.cost.observe(4, 1.5 * lane.cost.predict(4))
    lane.cost.fixed, lane.cost.per_frame = 0.01, 0.01  # the same mean cost as before
    assert lane.cost.spread() == pytest.approx(1.5, rel=0.01)
    for k in range(6):
        sch.submit("a", req(f"t{k}", 0.08 + k), res)
    assert len(sch.take_batch(lane)) == 4  # 0.05 s predicted, 0.075 with the overrun
    sch.submit("a", req("alone", 0.025), res)
    assert [j.session for j in sch.take_batch(lane)] == ["alone"]  # 0.02 fits, 0.03 not


def test_cost_model_learns_fixed_and_per_frame_parts() -> None:
    cost = Cost(fixed=0.05, per_frame=0.05)
    for _ in range(400):
        for size in (1, 4, 16):
            cost.observe(size, 0.02 + 0.003 * size)
    assert cost.predict(16) == pytest.approx(0.02 + 0.048, rel=0.1)
    assert cost.predict(1) == pytest.approx(0.023, rel=0.25)
    assert cost.capacity_fps(16) == pytest.approx(16 / 0.068, rel=0.1)


def test_lanes_must_hold_the_same_avatars() -> None:
    with pytest.raises(ValueError, match="same avatars"):
        Scheduler([Lane("a", {"x": FakeRenderer()}), Lane("b", {"y": FakeRenderer()})])


class FirstCallSlowRenderer:
    """2 ms + 1 ms a frame, and 30 ms more the first time a batch size is seen (as oneDNN
    plans kernels for each new shape)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def render(self, requests: list[FrameRequest]) -> list[np.ndarray]:
        n = len(requests)
        time.sleep(0.002 + 0.001 * n + (0.03 if n not in self.sizes else 0.0))
        self.sizes.append(n)
        return [np.zeros((2, 2, 3), np.uint8) for _ in requests]


def test_warm_up_renders_every_batch_size_and_times_the_second_pass() -> None:
    renderers = [FirstCallSlowRenderer(), FirstCallSlowRenderer()]
    lanes = [Lane(f"cpu{i}", {"a": r}, Cost(fixed=0.01, per_frame=0.01))
             for i, r in enumerate(renderers)]
    sch = Scheduler(lanes, SchedulerConfig(max_batch=64))
    asked: list[tuple[str, int]] = []

    def requests(avatar: str, n: int) -> list[FrameRequest]:
        asked.append((avatar, n))
        return [req("warm", 0.0, i) for i in range(n)]

    sch.warm_up(requests)
    sizes = [*range(1, 17), 32, 64]
    for r in renderers:  # each size twice, on every lane
        assert sorted(set(r.sizes)) == sizes and all(r.sizes.count(n) == 2 for n in sizes)
    assert {n for _, n in asked} == set(sizes) and {a for a, _ in asked} == {"a"}
    for lane in lanes:
        # The second pass's timings, not the first calls' 30 ms, nor the initial guess.
        assert lane.cost.predict(1) < 0.012
        assert lane.cost.predict(64) == pytest.approx(0.002 + 0.064, rel=0.3)


def test_start_delay_is_the_recent_starts_90th_percentile() -> None:
    sch, _, _ = make()
    for s in (0.1, 0.1, 0.1):
        sch.note_start(s)
    assert sch.start_delay() == 0.0  # too few to go on
    sch.note_start(0.5)
    assert sch.start_delay() == pytest.approx(np.percentile([0.1, 0.1, 0.1, 0.5], 90))
    for _ in range(40):  # only the recent ones count
        sch.note_start(0.2)
    assert sch.start_delay() == pytest.approx(0.2)


def test_a_start_s_lead_is_the_prediction_or_the_measured_starts() -> None:
    sch, clock, (lane,) = make()  # 10 ms a batch plus 10 ms a frame
    assert sch.start_lead(2) == pytest.approx(0.03)  # nothing measured yet
    for _ in range(4):
        sch.note_start(0.02)
    assert sch.start_lead(2) == pytest.approx(0.03)  # the prediction, longer than 0.02
    for _ in range(4):
        sch.note_start(0.1)
    assert sch.start_lead(2) == pytest.approx(0.1)
    # Batches running 1.5 times over their prediction stretch it.
    lane.cost._ratios.extend([1.5] * 10)
    assert sch.lead_time(2) == pytest.approx(0.03 * 1.5)
