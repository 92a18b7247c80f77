"""The invisible marks: the message, the video and audio marks through real encoders, and
``twincast verify`` on files (the figures over minutes of output are ``bench watermark``)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import DATA, run_cli, write_av

from avatar import mark_code
from avatar.audio_mark import AudioMarker, read_audio
from avatar.video_mark import VideoMarker, on_grid, read_video
from bench.watermark import _X264, _codec, _Crop, _Vp8, features_of

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
IDENT = 0x1234ABCD


def _scene(n: int, w: int = 192, h: int = 144, seed: int = 0) -> np.ndarray:
    """A lit backdrop with a head-sized blob that drifts and a little sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    back = 90 + 60 * xx / w + 20 * np.sin(yy / 9.0)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        cx = w / 2 + 12 * np.sin(t / 40) + rng.normal(0, 0.5)
        cy = h / 2 + 6 * np.cos(t / 55)
        blob = 70 * np.exp(-(((xx - cx) / 28) ** 2 + ((yy - cy) / 34) ** 2))
        img = back + blob + rng.normal(0, 2, (h, w))
        out[t] = np.clip(img, 0, 255).astype(np.uint8)[..., None]
    return out


def _through(frames: np.ndarray, stages: list) -> np.ndarray:
    feats = []
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        vf.pts, vf.time_base = i, Fraction(1, 25)
        out = [vf]
        for s in stages:
            out = [o for x in out for o in s.push(x)]
        feats.extend(features_of(o) for o in out)
    pending: list = []
    for s in stages:
        pending = [o for x in pending for o in s.push(x)] + s.flush()
    feats.extend(features_of(o) for o in pending)
    return np.array(feats)


def test_message_round_trips_and_a_flipped_bit_fails_its_crc() -> None:
    bits = mark_code.encode(IDENT, int(T0))
    assert len(bits) == mark_code.MESSAGE_BITS
    assert mark_code.decode(bits) == (IDENT, int(T0))
    for i in (0, 40, 79):
        bad = bits.copy()
        bad[i] ^= 1
        assert mark_code.decode(bad) is None
    # A block that misses by its least certain bits is still read; one far off is not.
    soft = np.where(bits == 1, 5.0, -5.0)
    bad = bits.copy()
    for i in (3, 50):
        bad[i] ^= 1
        soft[i] = 0.2 if bad[i] else -0.2
    assert mark_code._chase(bad, soft) == (IDENT, int(T0))
    bad[10] ^= 1  # a confident bit wrong too: not within reach
    assert mark_code._chase(bad, soft) is None
    # The bundle's id follows its files' digests.
    a = mark_code.mark_id({"head.pt": "aa", "voice.pt": "bb"})
    assert a == mark_code.mark_id({"voice.pt": "bb", "head.pt": "aa"})
    assert a != mark_code.mark_id({"head.pt": "ab", "voice.pt": "bb"})


def test_video_mark_survives_a_crop_and_h264_and_is_not_read_into_unmarked_frames() -> None:
    frames = _scene(660)
    marker = VideoMarker(IDENT, T0, 25)
    marked = np.stack([marker.apply(f, k) for k, f in enumerate(frames)])
    err = marked.astype(np.float64) - frames
    assert 10 * np.log10(255 ** 2 / np.mean(err ** 2)) > 40  # invisible: PSNR over 40 dB
    assert np.abs(err).max() <= 8

    got = read_video(_through(marked, [_Crop(0.10), _X264(600, 25)]), 25)
    assert got.found and got.ident == IDENT
    ok = [b for b in got.blocks if b.ident is not None]
    assert len(ok) >= 2
    for b in ok:  # each block's time code is the UTC second its first frame was made
        assert abs(b.utc_second - (T0 + b.start_s)) <= 1

    plain = read_video(_through(frames, [_X264(600, 25)]), 25)
    assert not plain.found and all(b.ident is None for b in plain.blocks)


def test_video_mark_adds_its_rounded_shading_and_both_frames_of_a_chip_get_the_same() -> None:
    from avatar.video_mark import FRAMES_PER_CHIP, patterns

    marker = VideoMarker(IDENT, T0, 25)
    frame = np.full((72, 128, 3), 128, np.uint8)
    for k in range(0, 12, FRAMES_PER_CHIP):
        got = marker.apply(frame, k).astype(np.int64) - 128
        assert np.array_equal(got, marker.apply(frame, k + 1).astype(np.int64) - 128)
        # The shading by its definition: the chips' patterns worked out at a quarter of
        # the size, scaled up, rounded to whole levels; grey, so equal in R, G and B.
        small = patterns(32, 18)
        gain = marker.cfg.strength / np.sqrt(float((small ** 2).mean(axis=(1, 2)).sum()))
        chips = marker.source.chips(k // FRAMES_PER_CHIP).astype(np.float32) * gain
        d = cv2.resize(np.tensordot(chips, small, axes=1), (128, 72),
                       interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(got, np.repeat(np.rint(d)[..., None], 3, axis=2))


def test_video_mark_survives_aiortcs_vp8_at_its_floor_rate() -> None:
    from aiortc.codecs.vpx import MIN_BITRATE

    frames = _scene(600, 320, 240, seed=1)
    marker = VideoMarker(IDENT, T0, 25)
    marked = np.stack([marker.apply(f, k) for k, f in enumerate(frames)])
    got = read_video(_through(marked, [_Vp8(MIN_BITRATE)]), 25)
    assert got.found and got.ident == IDENT


def test_video_mark_is_read_from_a_copy_that_skipped_frames() -> None:
    """A session on a busy host skips frames to keep time; a recording of it has gaps.
    Placed by their times, the frames that came still carry the mark and its time code."""
    frames = _scene(600, seed=2)
    marker = VideoMarker(IDENT, T0, 25)
    feats = _through(np.stack([marker.apply(f, k) for k, f in enumerate(frames)]), [])
    times = np.arange(len(feats)) / 25
    assert np.array_equal(on_grid(times, feats, 25), feats)  # a steady copy: as it was
    rng = np.random.default_rng(3)
    kept = np.sort(rng.choice(len(feats), int(0.6 * len(feats)), replace=False))
    got = read_video(on_grid(times[kept], feats[kept], 25), 25)
    assert got.found and got.ident == IDENT
    for b in got.blocks:
        if b.utc_second is not None:  # the grid starts at the first frame kept
            assert abs(b.utc_second - (T0 + times[kept[0]] + b.start_s)) <= 1


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    from avatar.audio import load_audio

    folder = DATA / "ljspeech" / "train"
    if not folder.is_dir():
        pytest.skip("../shared/data/ljspeech is not present")
    parts, total = [], 0
    for f in sorted(folder.glob("*.flac")):
        parts.append(load_audio(f, 48000))
        total += len(parts[-1])
        if total > 48000 * 25:
            break
    return np.clip(np.concatenate(parts)[:48000 * 25], -1, 1)


def test_audio_mark_marked_as_the_server_does_survives_opus(speech: np.ndarray) -> None:
    marker = AudioMarker(IDENT, T0, 48000)
    # The server marks each 20 ms frame as it is made, int16 in and out.
    pcm = (speech * 32767).astype(np.int16)
    marked = np.concatenate([marker.process_int16(pcm[i:i + 960], i)
                             for i in range(0, len(pcm), 960)]).astype(np.float32) / 32768
    noise = marked - pcm.astype(np.float32) / 32768
    snr = 10 * np.log10(np.mean((pcm / 32768.0) ** 2) / np.mean(noise ** 2))
    assert snr > 30, snr  # the mark sits over 30 dB under the voice
    got = read_audio(_codec(marked, 48000, "libopus", 32, 48000), 16000)
    assert got.found and got.ident == IDENT
    assert any(b.utc_second == int(T0 + 10.24) for b in got.blocks)
    plain = read_audio(_codec(speech, 48000, "libopus", 32, 48000), 16000)
    assert not plain.found


def test_verify_reads_a_marked_file_and_says_so_plainly_of_an_unmarked_one(
        tmp_path: Path, speech: np.ndarray) -> None:
    from avatar.audio import resample

    frames = _scene(560, seed=2)
    marker = VideoMarker(IDENT, T0, 25)
    voice = resample(speech[:48000 * 22], 48000, 16000)
    marked_voice = AudioMarker(IDENT, T0, 16000).process(voice, 0)
    marked = [marker.apply(f, k) for k, f in enumerate(frames)]
    good = write_av(tmp_path / "marked.mp4", marked, audio=marked_voice)
    write_av(tmp_path / "marked.ts", marked, audio=marked_voice, fmt="mpegts")
    proc = run_cli("verify", good)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("video: twincast mark, avatar 1234abcd, made 2026-01-01T00:00")
    assert lines[1].startswith("audio: twincast mark, avatar 1234abcd")

    # A recorded stream fetched from a URL (MPEG-TS, as live streams are cut for the web;
    # the test's server cannot seek, which an MP4 with its index at the end would need).
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        proc = run_cli("verify", f"http://127.0.0.1:{httpd.server_address[1]}/marked.ts")
    finally:
        httpd.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("video: twincast mark, avatar 1234abcd")

    plain = write_av(tmp_path / "plain.mp4", list(frames), audio=voice)
    proc = run_cli("verify", plain)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        f"twincast: no twincast mark found in {plain}"
    assert "Traceback" not in proc.stderr

    short = write_av(tmp_path / "short.mp4", list(frames[:50]), audio=None)
    proc = run_cli("verify", short)
    assert proc.returncode == 1 and "too short" in proc.stdout


@pytest.mark.parametrize("name,content,message", [
    ("missing.mp4", None, "no such file"),
    ("notes.mp4", b"this is not a video", "cannot be read as video or audio"),
])
def test_verify_bad_input_is_one_line(tmp_path: Path, name: str, content: bytes | None,
                                      message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    proc = run_cli("verify", path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_rtmp_output_marks_the_frame_it_sends_after_scaling_and_keying() -> None:
    """The livestream lays the mark over the finished frame, at the ingest's size, on the
    session's frame clock (so WebRTC and RTMP copies of a session read the same)."""
    from streaming.rtmp import RtmpConfig, RtmpOutput

    cfg = RtmpConfig(url="rtmp://example.invalid/live/key", width=320, height=240)
    marker = VideoMarker(IDENT, T0, 25)
    plain = RtmpOutput(cfg, 25, 48000)
    marked = RtmpOutput(cfg, 25, 48000, mark=marker)
    rgb = np.full((144, 192, 3), 120, np.uint8)
    pcm = [np.zeros(960, np.int16)] * 2
    luma = 320 * 240
    a = np.frombuffer(plain._record(rgb, pcm, 0.0), np.uint8)[:luma].astype(int)
    b = np.frombuffer(marked._record(rgb, pcm, 0.0), np.uint8)[:luma].astype(int)
    c = np.frombuffer(marked._record(rgb, pcm, 4.0), np.uint8)[:luma].astype(int)
    assert 0 < np.abs(b - a).max() <= 8
    expected = marker.apply(np.full((240, 320, 3), 120, np.uint8), 100)[..., 0].astype(int)
    assert np.abs((c - a).reshape(240, 320) - (expected - 120)).max() <= 1


def test_video_mark_is_read_after_a_platform_converts_25_to_30_fps() -> None:
    frames = _scene(600, seed=3)
    marker = VideoMarker(IDENT, T0, 25)
    marked = np.stack([marker.apply(f, k) for k, f in enumerate(frames)])
    n30 = len(marked) * 30 // 25  # each frame shown at 30 fps: some twice
    at30 = marked[np.minimum(np.arange(n30) * 25 // 30, len(marked) - 1)]
    got = read_video(_through(at30, [_X264(800, 30)]), 30)
    assert got.found and got.ident == IDENT
