"""Speech as it streams in -> what a session plays: per-video-frame audio windows for the
face and 20 ms audio frames for the ear, on one timeline.

Audio arrives in chunks (from ``Voice.speak`` or a microphone) at any rate. Video frame n
covers [n / fps, (n + 1) / fps) of the speech; its mouth depends on ~0.2 s of audio after its
centre (the model's window), so a frame is ready once that much audio is in, or once the
speech has ended (then silence fills the window). Audio frames are ready as soon as their
samples are in. Both count from the same zero, the start of the speech, so a session that
plays audio frame k at start + k * 0.02 s and video frame n at start + n / fps keeps them in
sync by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar.audio import resample


@dataclass(frozen=True)
class SpeechConfig:
    fps: int = 25
    mel_frames: int = 40
    """The face model's audio window, in 10 ms hops, centred on the video frame."""
    out_rate: int = 48000
    audio_frame_ms: int = 20


def warm_up() -> None:
    """Load what the first sentence would otherwise load on the event loop (scipy's
    resampler, torchaudio's mel: together about a second on a busy CPU)."""
    sf = SpeechFrames()
    sf.feed(np.zeros(4410, np.float32), 22050)
    sf.finish()
    sf.ready_video()
    sf.ready_audio()


class SpeechFrames:
    """Accumulates one utterance's audio and hands out what has become ready."""

    EDGE_S = 0.01
    """Resampling filters look this far ahead: samples closer than this to the end of the
    audio received so far may still change, so they wait for more audio (or the end)."""

    def __init__(self, cfg: SpeechConfig | None = None):
        self.cfg = cfg or SpeechConfig()
        self._raw = np.zeros(0, np.float32)
        self._rate: int | None = None
        self._cache: dict[int, tuple[int, np.ndarray]] = {}
        self.finished = False
        self.video_sent = 0
        self.audio_sent = 0

    @property
    def seconds(self) -> float:
        """Audio received so far."""
        return len(self._raw) / self._rate if self._rate else 0.0

    def feed(self, audio: np.ndarray, rate: int) -> None:
        if self.finished:
            raise RuntimeError("this utterance has ended")
        if self._rate is None:
            self._rate = rate
        elif rate != self._rate:
            audio = resample(audio, rate, self._rate)
        self._raw = np.concatenate([self._raw, np.asarray(audio, np.float32)])

    def finish(self) -> None:
        self.finished = True

    def _at(self, rate: int) -> np.ndarray:
        """The whole utterance so far at ``rate``, resampled in one piece (chunk by chunk
        would leave filter seams at every chunk boundary)."""
        n = len(self._raw)
        hit = self._cache.get(rate)
        if hit is None or hit[0] != n:
            self._cache[rate] = (n, resample(self._raw, self._rate or rate, rate))
        return self._cache[rate][1]

    @property
    def total_video_frames(self) -> int | None:
        """Frames of the whole utterance, once it has ended."""
        if not self.finished:
            return None
        return int(np.ceil(self.seconds * self.cfg.fps))

    def ready_video(self) -> list[tuple[int, np.ndarray]]:
        """(frame index, raw log-mel window) for every frame that became ready."""
        from avatar.audio import log_mel, mel_windows

        c = self.cfg
        # The window reaches mel_frames / 2 hops past the frame's centre, and the last of
        # those hops needs half an FFT (16 ms) of audio beyond it to be final.
        lookahead = c.mel_frames / 2 / 100 + 0.02 + self.EDGE_S
        if self.finished:
            last = self.total_video_frames or 0
        else:
            # Frame n is ready when audio reaches its centre plus the lookahead.
            last = int(np.floor((self.seconds - lookahead) * c.fps - 0.5)) + 1
        if last <= self.video_sent or len(self._raw) == 0:
            return []
        windows = mel_windows(log_mel(self._at(16000)), last, c.fps, c.mel_frames)
        out = [(n, windows[n]) for n in range(self.video_sent, last)]
        self.video_sent = last
        return out

    def ready_audio(self) -> list[np.ndarray]:
        """20 ms int16 mono frames that became ready (the last one zero-padded at the end)."""
        size = self.cfg.out_rate * self.cfg.audio_frame_ms // 1000
        out = self._at(self.cfg.out_rate) if len(self._raw) else np.zeros(0, np.float32)
        if self.finished:
            n_ready = int(np.ceil(len(out) / size))
        else:
            n_ready = max(0, len(out) - int(self.EDGE_S * self.cfg.out_rate)) // size
        frames = []
        for k in range(self.audio_sent, n_ready):
            seg = out[k * size: (k + 1) * size]
            if len(seg) < size:
                seg = np.pad(seg, (0, size - len(seg)))
            frames.append((np.clip(seg, -1, 1) * 32767).astype(np.int16))
        self.audio_sent = max(self.audio_sent, n_ready)
        return frames
