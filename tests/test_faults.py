"""Faults cost the faulted session's current utterance and nothing else (bench/faults.py
drives real aiortc viewers with data channels against a real server)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_renderer_and_voice_faults_drop_only_the_victims_utterance(bundle: Path) -> None:
    from bench.faults import bench_faults

    r = bench_faults(bundle, ["renderer", "tts"], Path("."))
    for f in r["faults"]:
        # The victim is told, its utterance is dropped, and its next one is said in full.
        assert f["victim_outcome"] == "error", f
        assert f["victim_told"] and f["victim_next_outcome"] == "speech_ended", f
        # The other session, sharing the renderer's batches and the synthesis pool, loses
        # nothing and hears of no error.
        assert f["bystander_outcome"] == "speech_ended", f
        assert f["bystander_next_outcome"] == "speech_ended", f
        assert f["bystander_errors"] == [] and f["server_healthy_after"], f
        assert f["lost"] == ["the victim's current utterance"], f
    renderer = r["faults"][0]
    assert renderer["victim_started"], renderer  # armed while the victim was speaking
    assert renderer["victim_frames_failed"] > 0 and "rendering" in renderer["victim_told"][0]


def test_sigterm_tells_viewers_and_exits_cleanly(bundle: Path, tmp_path: Path) -> None:
    from bench.faults import _sigterm

    r = _sigterm(bundle, tmp_path)
    assert r["exit_code"] == 0 and r["exit_after_s"] < 20, r
    assert r["viewer_told"] and "shutting down" in r["viewer_told"], r
    assert r["viewer_last_event"] == "closing", r
    assert not r["traceback_in_log"] and not r["token_in_log"], r
    if r["stream_started"]:  # nginx with its RTMP module is installed (make test does)
        assert r["stream_was_live"] and r["stream_flushed"], r


def test_a_full_disk_during_enrolment_is_one_line_and_resumes(grid_train: Path,
                                                               tmp_path: Path) -> None:
    from bench.faults import _disk_full

    r = _disk_full(grid_train, tmp_path, clips_n=4)
    if "skipped" in r:
        pytest.skip(r["skipped"])
    assert r["exit_code"] == 2 and not r["traceback"], r
    assert r["error_line"] and "disk is full" in r["error_line"], r
    assert r["scraps_left"] == 0, r  # nothing half-written left taking the space
    # Given the space, the same command finishes, reusing what was done before the fault.
    assert r["rerun_exit_code"] == 0 and r["finished"], r
    assert r["rerun_reused"] >= r["segments_kept"] > 0, r
