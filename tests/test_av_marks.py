"""The A/V offset read from the marks (``bench.av_marks``): a recording with a known
offset between its tracks, arrival jitter and skipped frames reads back that offset."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import LJ, read_audio

FPS, RATE, SECONDS = 25, 48000, 22.0


def _recording(video_late_s: float, seed: int = 0) -> dict:
    """A marked stream as a viewer receives it: the video's frames arrive
    ``video_late_s`` after the sound of the same instant, each with 0-30 ms of jitter,
    one in ten skipped by the sender (a busy host)."""
    import cv2

    from avatar.video_mark import thumbnail_features
    from avatar.watermark import StreamMarks

    rng = np.random.default_rng(seed)
    marks = StreamMarks({"face.pt": "0" * 64}, FPS, RATE, t0=1_764_547_200.0)
    voice = np.concatenate([read_audio(p, RATE) for p in sorted((LJ / "train").iterdir())[:6]])
    voice = voice[: int(SECONDS * RATE)]
    assert len(voice) == int(SECONDS * RATE)
    sound = marks.audio.process(voice, 0)
    pieces = np.split(sound, len(sound) // 960)
    base = np.full((96, 128, 3), 90, np.uint8)
    cv2.circle(base, (64, 48), 30, (200, 160, 140), -1)
    video_t, feats, video_pts = [], [], []
    for k in range(int(SECONDS * FPS)):
        if k > 0 and rng.random() < 0.1:
            continue
        # A face-like disc that sways: content the reader must see through.
        frame = np.roll(base, int(6 * np.sin(k / 9)), axis=1)
        feats.append(thumbnail_features(marks.video.apply(frame, k)))
        video_t.append(100 + k / FPS + video_late_s + rng.uniform(0, 0.03))
        video_pts.append(k * 90000 // FPS)
    audio_t = [100 + j * 0.02 + rng.uniform(0, 0.03) for j in range(len(pieces))]
    return {"video_times": np.array(video_t), "video_feats": np.array(feats),
            "audio_times": np.array(audio_t), "audio_pieces": pieces, "audio_rate": RATE,
            "video_pts": np.array(video_pts) - video_pts[0],
            "audio_pts": np.arange(len(pieces)) * 960}


@pytest.mark.parametrize("late_s", [0.12, -0.06])
def test_a_known_offset_reads_back(late_s: float) -> None:
    from bench.av_marks import mark_skew

    rec = _recording(late_s)
    got = mark_skew(**rec)
    assert got.skew_ms is not None and got.pairs >= 2, got
    assert abs(got.skew_ms - late_s * 1000) < 5, got
    assert got.codes_agree >= 1 and got.codes_disagree == 0, got
    # Without the timestamps (a copy from elsewhere): placed by arrival, to about a frame.
    rough = mark_skew(**{k: v for k, v in rec.items() if not k.endswith("_pts")})
    assert rough.skew_ms is not None and abs(rough.skew_ms - late_s * 1000) < 45, rough


def test_unmarked_tracks_give_no_figure() -> None:
    from bench.av_marks import mark_skew

    rec = _recording(0.0)
    rng = np.random.default_rng(1)
    # Same arrivals, but neither track carries a mark: nothing to line up.
    rec["video_feats"] = rng.normal(size=rec["video_feats"].shape)
    rec["audio_pieces"] = [rng.normal(scale=0.05, size=960).astype(np.float32)
                           for _ in rec["audio_pieces"]]
    got = mark_skew(**rec)
    assert got.skew_ms is None and got.pairs == 0, got


def test_timestamps_that_jump_are_not_trusted() -> None:
    """A stream whose timestamps jumped (a sender restarted its clock) is laid out by
    arrival, not on a grid hours long."""
    from bench.av_marks import mark_skew

    rec = _recording(0.12)
    pts = rec["video_pts"].copy()
    pts[len(pts) // 2:] += 2**31
    rec["video_pts"] = pts
    got = mark_skew(**rec)
    assert got.skew_ms is not None and abs(got.skew_ms - 120) < 45, got
