"""The session's two WebRTC tracks. ``recv`` only waits for the frame's time on the session
clock and takes the frame the session has for it: rendering happens elsewhere, ahead."""

from __future__ import annotations

from fractions import Fraction

import av
from aiortc import MediaStreamTrack

from avatar.label import Label
from streaming.session import Session


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session: Session, label: Label | None = None):
        super().__init__()
        self.session = session
        self.label = label
        """The disclosure drawn on every frame sent (``avatar.label``); None: none."""
        self._k = 0

    async def recv(self) -> av.VideoFrame:
        k, fps = self._k, self.session.cfg.fps
        self._k += 1
        await self.session.clock.wait_until(k / fps)
        rgb = self.session.video_frame(k)
        if self.label is not None:
            rgb = self.label.apply(rgb)
        marks = self.session.marks()
        if marks is not None:
            rgb = marks.video.apply(rgb, k)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = k * 90000 // fps, Fraction(1, 90000)
        return frame


class AvatarAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, session: Session):
        super().__init__()
        self.session = session
        self._j = 0

    async def recv(self) -> av.AudioFrame:
        j, rate = self._j, self.session.cfg.audio_rate
        self._j += 1
        await self.session.clock.wait_until(j * 0.02)
        pcm = self.session.audio_frame(j)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate, j * len(pcm)
        frame.time_base = Fraction(1, rate)
        return frame
