"""Admission by what the open sessions lose (``streaming.strain``)."""

from __future__ import annotations

import pytest

from streaming.registry import Full, Registry
from streaming.strain import FrameStrain, Strain


class Counted:
    def __init__(self):
        self.stats = {"frames_shown": 0, "frames_late": 0, "frames_skipped": 0}

    def play(self, shown: int, late: int = 0, skipped: int = 0) -> None:
        self.stats["frames_shown"] += shown
        self.stats["frames_late"] += late
        self.stats["frames_skipped"] += skipped


def test_the_strain_is_the_share_lost_over_its_window() -> None:
    now = [0.0]
    fs = FrameStrain(window_s=30.0, min_frames=250, clock=lambda: now[0])
    a, b = Counted(), Counted()
    fs.sample({"a": a, "b": b})
    assert fs.strain() is None
    now[0] = 4.0
    a.play(100)
    b.play(90, late=5, skipped=10)
    fs.sample({"a": a, "b": b})
    assert fs.strain() is None  # 200 frames due: too few to judge
    now[0] = 10.0
    a.play(150, late=15)
    fs.sample({"a": a, "b": b})
    got = fs.strain()
    # Due: 100 + 90 + 10 skipped + 150 = 350; lost: 5 late + 10 skipped + 15 late = 30.
    assert got is not None and got.frames == 350 and got.lost == pytest.approx(30 / 350)
    # b closes: its frames stay counted; a keeps playing cleanly and the window moves on.
    for t in range(12, 60, 2):
        now[0] = float(t)
        a.play(50)
        fs.sample({"a": a})
    got = fs.strain()
    assert got is not None and got.lost == 0.0 and got.seconds == pytest.approx(30.0)
    assert got.frames == 15 * 50


def test_sessions_losing_frames_refuse_another_but_never_the_first() -> None:
    from test_requests import FakeOutput, FakeSession

    losing = Strain(lost=0.153, frames=4000, seconds=30.0)
    reg = Registry(max_sessions=8, capacity_share=0.9, host_share=0.9, lost_share=0.05)
    with reg.reserve(25, 1000.0, None, losing):  # an idle server admits one
        reg.add(FakeSession("a"), FakeOutput("webrtc"))
    with pytest.raises(Full) as e, reg.reserve(25, 1000.0, None, losing):
        pass
    assert e.value.status == 503 and "lost 15.3% of their frames over the last 30 s" in \
        str(e.value)
    with reg.reserve(25, 1000.0, None, Strain(lost=0.01, frames=4000, seconds=30.0)):
        pass
    with reg.reserve(25, 1000.0, None, None):  # nothing to judge by yet
        pass
    unchecked = Registry(max_sessions=8, capacity_share=0.9, host_share=0.9)
    unchecked.add(FakeSession("c"), FakeOutput("webrtc"))
    with unchecked.reserve(25, 1000.0, None, losing):
        pass
