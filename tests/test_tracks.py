"""The WebRTC tracks on their own: the video keeps time with the clock when frames come
slowly, and the sound leaves as Opus packets on the 48 kHz RTP clock."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError

from streaming.session import SessionClock, SessionConfig
from streaming.tracks import AvatarAudioTrack, AvatarVideoTrack


class FakeSession:
    """What the tracks use of a session: its clock, config, stats and frames."""

    def __init__(self, now: list[float]):
        self.id = "fake"
        self.cfg = SessionConfig()
        self.clock = SessionClock(lambda: now[0])
        self.stats = {"frames_skipped": 0}
        self.shown: list[int] = []

    def video_frame(self, k: int) -> np.ndarray:
        self.shown.append(k)
        return np.full((16, 16, 3), k % 256, np.uint8)

    def marks(self) -> None:
        return None

    def audio_frame(self, j: int) -> np.ndarray:
        t = (j * 960 + np.arange(960)) / 48000
        return (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def test_video_behind_its_clock_skips_to_the_present_frame() -> None:
    now = [100.0]
    session = FakeSession(now)
    track = AvatarVideoTrack(session)  # type: ignore[arg-type]

    async def run() -> list[int]:
        pts = []
        for _ in range(3):  # on time: frames 0, 1, 2 at their times
            pts.append((await track.recv()).pts)
            now[0] += 0.04
        now[0] += 0.1  # a little behind (under video_behind_s): no skip
        pts.append((await track.recv()).pts)
        now[0] += 2.0  # two seconds lost (a starved host): the present frame comes next
        pts.append((await track.recv()).pts)
        pts.append((await track.recv()).pts)
        return pts

    try:
        pts = asyncio.run(run())
    finally:
        track.stop()
    frames = [p * 25 // 90000 for p in pts]
    assert frames[:4] == [0, 1, 2, 3], frames
    present = int(session.clock.now() * 25)
    assert frames[4] == present and frames[5] == present + 1, (frames, present)
    assert session.shown == frames  # the skipped frames were never asked for
    assert session.stats["frames_skipped"] == present - 4


def test_audio_leaves_as_opus_packets_on_the_48k_clock() -> None:
    now = [5.0]
    session = FakeSession(now)
    track = AvatarAudioTrack(session)  # type: ignore[arg-type]

    async def run() -> list:
        out = []
        for _ in range(50):
            out.append(await track.recv())
            now[0] += 0.02
        return out

    packets = asyncio.run(run())
    assert all(isinstance(p, av.Packet) for p in packets)
    assert [p.pts for p in packets] == [j * 960 for j in range(50)]
    assert all(p.time_base == Fraction(1, 48000) for p in packets)
    # What a viewer hears: the tone back, at its level.
    dec = av.CodecContext.create("libopus", "r")
    dec.format, dec.layout, dec.sample_rate = "s16", "mono", 48000
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for p in packets
                          for f in dec.decode(av.Packet(bytes(p)))]).astype(np.float32)
    sent = np.concatenate([session.audio_frame(j) for j in range(50)]).astype(np.float32)
    rms = float(np.sqrt(np.mean(pcm[4800:] ** 2)))
    assert 0.7 < rms / float(np.sqrt(np.mean(sent ** 2))) < 1.3, rms
    spectrum = np.abs(np.fft.rfft(pcm[4800:]))
    peak_hz = np.argmax(spectrum) * 48000 / len(pcm[4800:])
    assert abs(peak_hz - 220) < 5, peak_hz


class _Encoder:
    """Stands in for libopus: hands back the packets it is told to, frame by frame."""

    def __init__(self, counts: list[int]):
        self.counts = counts

    def encode(self, frame: av.AudioFrame) -> list[av.Packet]:
        return [av.Packet(b"\x00" * 10) for _ in range(self.counts.pop(0))]


def test_audio_keeps_one_encoder_and_ends_rather_than_mix_in_another() -> None:
    """An encoder giving two packets for a frame: both sent, in order, on the 48 kHz clock;
    one giving none: the track ends (never a frame for aiortc's own encoder mixed in)."""
    now = [5.0]
    track = AvatarAudioTrack(FakeSession(now))  # type: ignore[arg-type]
    track._opus = _Encoder([1, 2, 1, 0, 0])  # type: ignore[assignment]

    async def run() -> tuple[list, bool]:
        out = []
        try:
            for _ in range(6):
                out.append(await track.recv())
                now[0] += 0.02
        except MediaStreamError:
            return out, True
        return out, False

    out, ended = asyncio.run(run())
    assert all(isinstance(p, av.Packet) for p in out)
    # Frames 0-2 gave four packets; frame 3 (none) sends the one waiting; frame 4 (none)
    # ends the track.
    assert [p.pts for p in out] == [0, 960, 1920, 2880]
    assert ended and track.readyState == "ended"


def test_frames_leave_as_4_2_0_the_picture_ffmpeg_would_have_made() -> None:
    """The track hands the encoder YUV 4:2:0 (no conversion left for it to do) that
    decodes back to what FFmpeg's own conversion of the RGB picture gives, within the
    rounding of the two; a size 4:2:0 cannot hold whole stays RGB."""
    from avatar.video_io import video_frame

    rng = np.random.default_rng(3)
    # A smooth picture with an edge, as frames are (noise would measure chroma averaging).
    y, x = np.mgrid[0:72, 0:128]
    rgb = np.stack([x * 2, y * 3, 255 - x - y], -1).astype(np.uint8)
    rgb[20:50, 40:90] = rng.integers(0, 256, 3, dtype=np.uint8)
    ours = video_frame(rgb)
    assert ours.format.name == "yuv420p" and (ours.width, ours.height) == (128, 72)
    theirs = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    a = ours.to_ndarray().astype(int)
    b = theirs.to_ndarray().astype(int)
    # Luma to rounding; chroma within a level or so (OpenCV averages each 2x2 block,
    # swscale samples it sited a little to the left: a level on a steep colour ramp).
    assert np.abs(a[:72] - b[:72]).max() <= 2
    assert np.abs(a[72:] - b[72:]).mean() < 1.5
    # Not a different colour space or range: back to RGB as near the picture as FFmpeg's.
    def error(f: av.VideoFrame) -> float:
        return float(np.abs(f.to_ndarray(format="rgb24").astype(int) - rgb).mean())
    assert error(ours) <= error(theirs) + 0.5

    assert video_frame(rgb[:71, :127]).format.name == "rgb24"

    now = [100.0]
    session = FakeSession(now)
    track = AvatarVideoTrack(session)  # type: ignore[arg-type]
    try:
        frame = asyncio.run(track.recv())
    finally:
        track.stop()
    assert frame.format.name == "yuv420p"
