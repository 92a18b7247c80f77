"""The session's two WebRTC tracks. ``recv`` only waits for the frame's time on the session
clock and takes the frame the session has for it: rendering happens elsewhere, ahead."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from avatar.label import Label
from avatar.video_io import video_frame
from avatar.video_mark import VideoMarker
from streaming.session import Session

log = logging.getLogger(__name__)


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session: Session, label: Label | None = None):
        super().__init__()
        self.session = session
        self.label = label
        """The disclosure drawn on every frame sent (``avatar.label``); None: none."""
        self._k = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="frame")
        """The track's own thread: the shared executor also runs syntheses, which take
        seconds; a frame queued behind them would be late."""

    def stop(self) -> None:
        super().stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def recv(self) -> av.VideoFrame:
        k, fps = self._k, self.session.cfg.fps
        await self.session.clock.wait_until(k / fps)
        # Behind the clock (frames came slower than they are due): the present frame is
        # sent next, so the picture keeps time with the sound at a lower frame rate.
        present = int(self.session.clock.now() * fps)
        if present - k >= self.session.cfg.video_behind_s * fps:
            self.session.stats["frames_skipped"] += present - k
            k = present
        self._k = k + 1
        if self.readyState != "live":  # stopped with its session: the sender ends
            raise MediaStreamError
        rgb = self.session.video_frame(k)
        marks = self.session.marks()
        # Drawing the label and the mark and wrapping the frame is per-pixel work (~14 %
        # of the event loop with two sessions): done on a worker thread, so the loop that
        # every session's packets and frames go through stays free.
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._finish, rgb, k, marks.video if marks is not None else None)
        except RuntimeError:  # the pool shut down meanwhile (stopped)
            raise MediaStreamError from None

    def _finish(self, rgb: np.ndarray, k: int, marker: VideoMarker | None) -> av.VideoFrame:
        if self.label is not None:
            rgb = self.label.apply(rgb)
        if marker is not None:
            rgb = marker.apply(rgb, k)
        frame = video_frame(rgb)  # 4:2:0 here, so the VP8 encoder need not convert it
        fps = self.session.cfg.fps
        frame.pts, frame.time_base = k * 90000 // fps, Fraction(1, 90000)
        return frame


class AvatarAudioTrack(MediaStreamTrack):
    """The session's sound, sent as Opus packets encoded here, 20 ms at a time.

    aiortc would encode each frame on the shared executor: a hop to another thread and
    back 50 times a second per session, and on a host short of CPU (two speaking sessions
    on two cores with a third stolen) the sound came at 31-43 frames a second and fell
    behind its clock. Encoding a 20 ms frame takes about a millisecond on the loop."""

    kind = "audio"

    def __init__(self, session: Session):
        super().__init__()
        self.session = session
        self._j = 0
        self._opus: av.CodecContext | None = None
        self._packets: deque[av.Packet] = deque()
        """Packets encoded and not sent yet (libopus gives one per 20 ms frame; more
        would wait here rather than be dropped)."""
        self._sent = 0

    async def recv(self) -> av.Packet | av.AudioFrame:
        j, rate = self._j, self.session.cfg.audio_rate
        self._j += 1
        await self.session.clock.wait_until(j * 0.02)
        if self.readyState != "live":
            raise MediaStreamError
        pcm = self.session.audio_frame(j)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate, j * len(pcm)
        frame.time_base = Fraction(1, rate)
        # One encoder for the whole track, chosen by its rate: frames for aiortc to
        # encode (on its executor, resampled to 48 kHz) where libopus cannot take the
        # rate, packets from this track's own encoder otherwise. Never both: two encoders
        # in one stream would each have their own state and timestamps.
        if rate not in OPUS_RATES:
            return frame
        if self._opus is None:
            self._opus = _opus_encoder(rate)
        self._packets.extend(self._opus.encode(frame))
        if not self._packets:
            # The encoder kept this frame back: there is nothing to send for its time,
            # and the track cannot make a packet up. Ended, loudly, not filled with a
            # frame from a second encoder.
            log.error("session %s: the Opus encoder gave no packet for 20 ms of sound; "
                      "its audio track ends", self.session.id)
            self.stop()
            raise MediaStreamError
        packet = self._packets.popleft()
        # The RTP clock of Opus is 48 kHz whatever the rate it was fed at; every packet
        # holds 20 ms.
        packet.pts, packet.time_base = self._sent * 960, Fraction(1, 48000)
        self._sent += 1
        return packet


OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
"""Sample rates libopus takes as they are."""


def _opus_encoder(rate: int) -> av.CodecContext:
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = 64000  # a voice, mono: aiortc's 96 kb/s is for stereo music
    codec.format, codec.layout, codec.sample_rate = "s16", "mono", rate
    codec.time_base = Fraction(1, rate)
    codec.options = {"application": "voip"}
    return codec
