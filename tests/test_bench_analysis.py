"""The serving benchmark's audio-visual offset: found on synthetic speech and mouths."""

from __future__ import annotations

import numpy as np
import pytest

from bench.serve import av_lag


def _session(shift: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """30 s of sentences and pauses: loudness at 50 Hz with dips inside words, and a mouth
    at 25 fps that moves during speech, closes now and then, and trails it by ``shift``."""
    rng = np.random.default_rng(seed)
    at = np.arange(0, 30, 0.02) + 0.01
    speaking = np.zeros(len(at), bool)
    t = 1.0
    while t < 28:
        n = rng.uniform(1.0, 3.0)
        speaking[(at >= t) & (at < t + n)] = True
        t += n + rng.uniform(0.5, 1.5)
    rms = np.where(speaking, rng.uniform(0.02, 0.2, len(at)), rng.uniform(0, 0.004, len(at)))
    rms[speaking & (rng.random(len(at)) < 0.15)] = 0.005  # stops and closures
    vt = np.arange(0, 30, 0.04) + 0.02
    talk = np.interp(vt - shift * 0.04, at, speaking.astype(float)) > 0.5
    rest = 0.05
    opening = np.where(talk, rest + rng.uniform(0.03, 0.12, len(vt)),
                       rest - rng.uniform(0, 0.01, len(vt)))
    opening[talk & (rng.random(len(vt)) < 0.2)] = rest  # lips together on /m/, /b/, /p/
    opening[rng.random(len(vt)) < 0.02] = np.nan  # the face mesh missed a frame
    return vt, opening, at, rms, rest


@pytest.mark.parametrize("shift", [-2, 0, 1, 3])
def test_av_lag_finds_a_known_offset(shift: int) -> None:
    vt, opening, at, rms, rest = _session(shift)
    assert av_lag(vt, opening, at, rms, rest) == shift


def test_av_lag_of_a_still_mouth_is_zero() -> None:
    vt, opening, at, rms, rest = _session(0)
    assert av_lag(vt, np.full(len(vt), rest), at, rms, rest) == 0


@pytest.mark.parametrize("shift", [0, 2])
def test_av_lag_of_a_video_that_skipped_frames(shift: int) -> None:
    """A busy host skips video frames to keep time: a third of them missing, in runs."""
    vt, opening, at, rms, rest = _session(shift, seed=1)
    rng = np.random.default_rng(5)
    kept = np.ones(len(vt), bool)
    for start in rng.choice(len(vt) - 8, 60, replace=False):
        kept[start:start + rng.integers(2, 8)] = False
    assert 0.2 < 1 - kept.mean() < 0.5
    assert av_lag(vt[kept], opening[kept], at, rms, rest) == shift


def test_the_first_words_frame_is_found_by_its_timestamp() -> None:
    """A viewer's frames are told apart by their RTP timestamps (a random origin, wrapping
    at 2**32): the one at the first word's stream instant is found across a wrap, a skip
    after the first frame and two frames the session skipped before it."""
    from bench.viewer import TimedViewer, frame_indices

    origin = 2**32 - 5 * 3600  # wraps five frames in
    sent = [k for k in range(2, 200) if k not in (50, 51, 52)]  # 0-1 and 50-52 skipped
    v = TimedViewer()
    v.pts = [(origin + k * 3600) % 2**32 for k in sent]
    v.video = [(100.0 + k * 0.04 + 0.013, np.zeros((2, 2), np.uint8)) for k in sent]
    v.skipped = (100.0 + 60 * 0.04, 5)  # two before the first, three at 50-52, by k=60
    v.events = [(0.0, {"type": "speech_started", "utterance": "u", "stream_time": 2.4}),
                (0.0, {"type": "words", "utterance": "u",
                       "words": [{"text": "b", "start": 0.4, "end": 0.6}]}),
                (0.0, {"type": "words", "utterance": "u",
                       "words": [{"text": "a", "start": 0.12, "end": 0.3}]})]
    assert list(frame_indices(np.array(v.pts[:7], np.int64), 25)) == list(range(7))
    # Stream instant 2.4 + 0.12 s is frame 63; frame 63 arrived 13 ms after its time.
    assert v.word_frames(25) == {"u": pytest.approx(100.0 + 63 * 0.04 + 0.013)}
    v.skipped = (100.0 + 60 * 0.04, 3)  # none before the first: everything two earlier
    assert v.word_frames(25) == {"u": pytest.approx(100.0 + 65 * 0.04 + 0.013)}


def test_frames_are_timed_when_their_last_packet_came_in() -> None:
    """aiortc numbers a frame's pts from the first packet's RTP timestamp; the viewer
    finds each handed-over frame's packets by it, across the timestamp's wrap, and times
    the first word's frame and the first loud sound by them."""
    from bench.viewer import TimedViewer

    v = TimedViewer()
    first = 2**32 - 2 * 3600  # wraps two frames in
    v.pts = [k * 3600 for k in range(10)]
    v.video = [(50.0 + k * 0.04 + 0.045, np.zeros((2, 2), np.uint8)) for k in range(10)]
    v._origin = {"video": first, "audio": 7}
    # Each frame's packets: the last one 5 ms after its time; frame 6's never seen.
    v._packets["video"] = {(first + k * 3600) % 2**32: 50.0 + k * 0.04 + 0.005
                           for k in range(10) if k != 6}
    v.skipped = (50.0, 0)
    v.events = [(0.0, {"type": "speech_started", "utterance": "u", "stream_time": 0.12}),
                (0.0, {"type": "words", "utterance": "u",
                       "words": [{"text": "a", "start": 0.04, "end": 0.3}]})]
    assert np.isnan(v.packet_times("video")[6])
    assert v.word_frames(25) == {"u": pytest.approx(50.0 + 4 * 0.04 + 0.045)}
    assert v.word_frames(25, packets=True) == {"u": pytest.approx(50.0 + 4 * 0.04 + 0.005)}
    v.events[0][1]["stream_time"] = 0.2  # frame 6: no packet time, no figure
    assert v.word_frames(25, packets=True) == {}
    v.audio = [(60.0 + j * 0.02 + 0.08, 0.02 if j >= 3 else 0.0) for j in range(6)]
    v.audio_pts = [j * 960 for j in range(6)]
    v._packets["audio"] = {7 + j * 960: 60.0 + j * 0.02 + 0.001 for j in range(6)}
    assert v.first_sound(60.0, 0.01) == pytest.approx(60.0 + 3 * 0.02 + 0.08)
    assert v.first_sound(60.0, 0.01, packets=True) == pytest.approx(60.0 + 3 * 0.02 + 0.001)


def test_a_streams_first_word_is_found_by_its_flv_timestamp() -> None:
    """``bench stream``: the push connection began at session time 1.0 s, so the frame
    with FLV time 1.6 s was shown at 2.6 s; the word starting 0.24 s after a start at 2.4 s
    is painted by that frame (frame 66), whose arrival is timed from the say. An
    utterance that never started gives no figure; sound is the first loud frame after the
    say."""
    from bench.stream import first_sounds, word_frame_arrivals

    pts = np.arange(0, 4, 0.04).round(3)  # FLV keeps milliseconds
    arrived = 100.0 + pts + 0.3  # each frame reached the viewer 0.3 s after its time
    events = [{"type": "speech_started", "utterance": "u", "stream_time": 2.4},
              {"type": "words", "utterance": "u",
               "words": [{"text": "b", "start": 0.4, "end": 0.6}]},
              {"type": "words", "utterance": "u",
               "words": [{"text": "a", "start": 0.24, "end": 0.4}]}]
    said = {"u": 100.5, "never": 100.6}
    got = word_frame_arrivals(arrived, pts, 1.0, events, said, 25)
    assert set(got) == {"u"}
    # Frame 66 of the session is FLV time 1.64 s: it arrived at 101.94.
    assert got["u"] == pytest.approx(1000 * (101.94 - 100.5), abs=0.2)
    # A connection that began later shifts which frame that is.
    later = word_frame_arrivals(arrived, pts, 1.2, events, said, 25)
    assert later["u"] == pytest.approx(got["u"] - 200, abs=0.2)

    at = 100.0 + np.arange(0, 4, 0.02)
    rms = np.where((at > 101.2) & (at < 101.5), 0.1, 0.001)
    rms[3] = 0.5  # loud, but before any say
    sounds = first_sounds(at, rms, said)
    assert sounds["u"] == pytest.approx(720, abs=20)
    assert sounds["never"] == pytest.approx(620, abs=20)
