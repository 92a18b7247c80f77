"""``twincast bench lanes``: sessions a render lane holds, through the real scheduler."""

from __future__ import annotations

from pathlib import Path

from avatar.avatar import Avatar
from bench.lanes import LanesConfig, bench_lanes
from tests.conftest import run_cli


def test_a_lane_holds_one_session_and_not_fifty(bundle: Path) -> None:
    cfg = LanesConfig(sessions=(1, 50), seconds=1.5, max_batch=4, refine=1)
    out = bench_lanes(bundle, cfg)
    by = {r["sessions"]: r for r in out["by_sessions"]}
    one, fifty = by[1], by[50]
    # Every frame handed over is accounted for: rendered in time or counted late.
    for r in out["by_sessions"]:
        assert r["rendered"] + r["late"] == r["frames"] > 0
    # 25 frames/s for 1.5 s, give or take the frames handed over ahead.
    assert 37 <= one["frames"] <= 37 + 13
    assert one["late_pct"] < 1 and fifty["late_pct"] >= 5
    assert out["sessions_held"] >= 1 and out["sessions_held"] < 50
    # One refinement between the last held count and the first not held.
    assert len(by) == 3 and 1 < min(k for k in by if k > 1) < 50
    assert fifty["capacity_fps"] > 0 and fifty["admitted_by_rule"] < 50


def test_encoding_counts_each_shown_frame(bundle: Path) -> None:
    out = bench_lanes(bundle, LanesConfig(sessions=(2,), seconds=1.0, encode=True))
    r = out["by_sessions"][0]
    assert out["encoded"].startswith("VP8")
    assert 2 * 20 <= r["encoded"] <= 2 * 25 and 0 <= r["encode_late_pct"] <= 100


def test_bad_counts_are_one_line_errors(bundle: Path) -> None:
    for args in (("--sessions", "0,2"), ("--sessions", "two"), ("--devices", ",")):
        proc = run_cli("bench", "lanes", bundle, *args)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_sessions_can_walk_the_motion_bank(bundle: Path, monkeypatch) -> None:
    # Each frame's footage reads as not ready the first time it is asked about, as under
    # load: the frame waits for the next tick (or is late), never lost or asked twice over.
    asked: set = set()
    ready = Avatar.base_frame_ready

    def slow(self, e) -> bool:  # noqa: ANN001
        if e not in asked:
            asked.add(e)
            return False
        return ready(self, e)

    monkeypatch.setattr(Avatar, "base_frame_ready", slow)
    out = bench_lanes(bundle, LanesConfig(sessions=(2,), seconds=1.5, motion=True))
    r = out["by_sessions"][0]
    assert out["background"] == "motion bank walk"
    # A frame is rendered, late at the lane, or late because its footage was not ready.
    assert r["rendered"] + r["late"] == r["frames"] > 0
    assert 0 <= r["footage_not_ready"] <= r["late"]
