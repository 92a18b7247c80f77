"""The invisible marks every output carries (the bundle's id and a time code, in the
frames and in the voice) and where their settings live; ``twincast verify`` reads them back.

``avatar.video_mark`` and ``avatar.audio_mark`` say how each is made, ``avatar.mark_code``
what they carry. One ``StreamMarks`` per output timeline: an offline render, a WebRTC
session, a livestream; its clock is that output's frame 0, in UTC.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from avatar.audio_mark import AudioMarkConfig, AudioMarker
from avatar.mark_code import format_id, mark_id
from avatar.video_mark import VideoMarkConfig, VideoMarker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatermarkConfig:
    enabled: bool = True
    video: VideoMarkConfig = VideoMarkConfig()
    audio: AudioMarkConfig = AudioMarkConfig()


class StreamMarks:
    """The video and audio markers for one output whose frame 0 is at UTC ``t0``."""

    def __init__(self, files: dict[str, str], fps: int, audio_rate: int,
                 cfg: WatermarkConfig = WatermarkConfig(), t0: float | None = None):
        self.ident = mark_id(files)
        self.t0 = time.time() if t0 is None else t0
        self.video = VideoMarker(self.ident, self.t0, fps, cfg.video)
        self.audio = AudioMarker(self.ident, self.t0, audio_rate, cfg.audio)

    @property
    def id_text(self) -> str:
        return format_id(self.ident)


def bundle_mark_id(files: dict[str, str]) -> str:
    """The id ``twincast verify`` prints for a bundle (its manifest's ``files``)."""
    return format_id(mark_id(files))


def mark_track(files: dict[str, str], audio: np.ndarray, rate: int,
               cfg: WatermarkConfig = WatermarkConfig(), t0: float | None = None
               ) -> np.ndarray:
    """A whole audio track marked (``twincast say``'s file); the voice's rate must hold a
    whole number of samples per 80 ms chip."""
    marker = AudioMarker(mark_id(files), time.time() if t0 is None else t0, rate, cfg.audio)
    return marker.process(audio, 0)
