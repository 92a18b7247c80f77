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
