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

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from math import gcd

import numpy as np

from avatar.audio import FACE_MEL, VOICE_RATE, resample


@dataclass(frozen=True)
class SpeechConfig:
    fps: int = 25
    mel_frames: int = 40
    """The face model's audio window, in 10 ms hops, centred on the video frame."""
    out_rate: int = 48000
    audio_frame_ms: int = 20


class GrowingResample:
    """Resampling of audio that only grows (a microphone, a voice's chunks), by redoing
    only its tail: the whole utterance resampled in one piece on every 20 ms of a live
    stream would cost more with each second. The polyphase filter reaches a few dozen input
    samples either side, so outputs more than ``CONTEXT`` input samples away from both ends
    of the recomputed stretch equal those of resampling everything at once."""

    CONTEXT = 256

    def __init__(self, src: int, dst: int):
        g = gcd(src, dst)
        self.src, self.dst, self.up, self.down = src, dst, dst // g, src // g
        self.out = np.zeros(0, np.float32)
        self._n = 0

    def update(self, raw: np.ndarray) -> np.ndarray:
        n = len(raw)
        if n == self._n:
            return self.out
        if self.src == self.dst:
            self.out, self._n = np.asarray(raw, np.float32), n
            return self.out
        # Restart at a multiple of ``down`` input samples, so the recomputed outputs fall
        # on the same output sample grid as the first pass.
        a = max(0, (self._n - 2 * self.CONTEXT) // self.down * self.down)
        tail = resample(raw[a:], self.src, self.dst)
        o_a = a * self.up // self.down
        keep = 0 if a == 0 else o_a + self.CONTEXT * self.up // self.down
        keep = min(keep, len(self.out))
        self.out = np.concatenate([self.out[:keep], tail[keep - o_a:]])
        self._n = n
        return self.out


@functools.cache
def warm_up() -> None:
    """Load what the first sentence would otherwise load on the event loop (scipy's
    resampler, torchaudio's mel: together about a second on a busy CPU). Once per
    process: the server does it at load, a session's start finds it done."""
    sf = SpeechFrames()
    sf.feed(np.zeros(VOICE_RATE // 5, np.float32), VOICE_RATE)
    sf.finish()
    sf.ready_video()
    sf.ready_audio()


def _windows(mel: np.ndarray, h0: int, first: int, last: int, fps: int, width: int,
             hop_s: float) -> np.ndarray:
    """mel_windows for frames first..last-1 of an utterance whose spectrogram is known from
    hop h0 on (``mel[:, 0]`` is hop h0); hops before 0 or past the end are silence."""
    floor = np.float32(np.log(1e-5))
    centre = np.round((np.arange(first, last) + 0.5) / fps / hop_s).astype(int)
    idx = (centre - width // 2 - h0)[:, None] + np.arange(width)[None, :]
    ok = (idx >= 0) & (idx < mel.shape[1]) & (idx + h0 >= 0)
    out = np.full((len(centre), mel.shape[0], width), floor, np.float32)
    rows, cols = np.nonzero(ok)
    out[rows, :, cols] = mel[:, idx[rows, cols]].T
    return out


class SpeechFrames:
    """Accumulates one utterance's audio and hands out what has become ready."""

    EDGE_S = 0.01
    """Resampling filters look this far ahead: samples closer than this to the end of the
    audio received so far may still change, so they wait for more audio (or the end)."""

    def __init__(self, cfg: SpeechConfig | None = None):
        self.cfg = cfg or SpeechConfig()
        self._buf = np.zeros(0, np.float32)
        self._n = 0
        self._rate: int | None = None
        self._resamplers: dict[int, GrowingResample] = {}
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
        audio = np.asarray(audio, np.float32).ravel()
        if self._n + len(audio) > len(self._buf):
            # Doubling keeps a live stream's 20 ms pieces from copying everything each time.
            grown = np.zeros(max(2 * len(self._buf), self._n + len(audio)), np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n: self._n + len(audio)] = audio
        self._n += len(audio)

    @property
    def _raw(self) -> np.ndarray:
        return self._buf[: self._n]

    def finish(self) -> None:
        self.finished = True

    def _at(self, rate: int) -> np.ndarray:
        """The whole utterance so far at ``rate``, resampled in one piece (chunk by chunk
        would leave filter seams at every chunk boundary)."""
        r = self._resamplers.get(rate)
        if r is None:
            r = self._resamplers[rate] = GrowingResample(self._rate or rate, rate)
        return r.update(self._raw)

    @property
    def total_video_frames(self) -> int | None:
        """Frames of the whole utterance, once it has ended."""
        if not self.finished:
            return None
        return int(np.ceil(self.seconds * self.cfg.fps))

    def ready_video(self) -> list[tuple[int, np.ndarray]]:
        """(frame index, raw log-mel window) for every frame that became ready."""
        from avatar.audio import log_mel  # torch: imported on first use

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
        # Only the spectrogram around the new frames is computed (a live utterance grows
        # without end); it starts a few hops early, past the centred STFT's edge effects.
        first = self.video_sent
        hop_s = FACE_MEL.hop / FACE_MEL.rate
        lo = int(np.round((first + 0.5) / c.fps / hop_s)) - c.mel_frames // 2
        h0 = max(0, lo - 4)
        mel = log_mel(self._at(FACE_MEL.rate)[h0 * FACE_MEL.hop:])
        windows = _windows(mel, h0, first, last, c.fps, c.mel_frames, hop_s)
        out = [(n, windows[n - first]) for n in range(first, last)]
        self.video_sent = last
        return out

    def condition(self, n: int) -> None:
        """None: a microphone's frames are conditioned in the render batch (its speech
        arrives 20 ms at a time, on the event loop; see ``PreparedSpeech``)."""
        return None

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


class PreparedSpeech:
    """One utterance's speech made ready on the thread that produces it (a voice's
    synthesis worker): its spectrogram windows and audio frames are computed there, and
    the session's event loop only takes them, through the same interface as
    ``SpeechFrames``.

    Done on the event loop, a sentence's arrival meant a log-mel, a resampling of the whole
    sentence and its audio frames in one go, right when its first frames had the least
    time; with every session sharing that loop, the others' frames waited too (two
    speaking sessions kept the loop 94 % busy, and a third of the frames late at a
    sentence's start had been handed to the renderer after their time).
    """

    def __init__(self, cfg: SpeechConfig | None = None,
                 condition: Callable[[np.ndarray], np.ndarray] | None = None):
        self._frames = SpeechFrames(cfg)  # the producing thread's alone
        self._condition = condition
        """Windows -> each frame's ``FrameRequest.cond`` (``Avatar.condition``), made here
        too; None: the renderer makes it."""
        self._conds: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._video: list[tuple[int, np.ndarray]] = []
        self._audio: list[np.ndarray] = []
        self._seconds = 0.0
        self._finished = False
        self._total: int | None = None
        self._made = 0
        """Video frames made ready so far."""
        self.audio_sent = 0
        """Audio frames taken by ``ready_audio`` so far."""

    # ------------------------------------------------------------ producer's side
    def feed(self, audio: np.ndarray, rate: int) -> None:
        self._frames.feed(audio, rate)
        self._publish()

    def finish(self) -> None:
        self._frames.finish()
        self._publish()

    def abandon(self) -> None:
        """End it with what has been made ready (after a failure while making it)."""
        with self._lock:
            self._finished = True
            self._total = self._made

    def _publish(self) -> None:
        video = self._frames.ready_video()
        audio = self._frames.ready_audio()
        conds = self._condition(np.stack([w for _, w in video])) \
            if video and self._condition is not None else ()
        with self._lock:
            for (n, _), c in zip(video, conds, strict=False):  # () when not conditioned
                self._conds[n] = c
            # One step: a reader that sees the end also sees every frame before it.
            self._video.extend(video)
            self._made += len(video)
            self._audio.extend(audio)
            self._seconds = self._frames.seconds
            self._total = self._frames.total_video_frames
            self._finished = self._frames.finished

    # ------------------------------------------------------------ event loop's side
    @property
    def seconds(self) -> float:
        with self._lock:
            return self._seconds

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._finished

    @property
    def total_video_frames(self) -> int | None:
        with self._lock:
            return self._total

    def ready_video(self) -> list[tuple[int, np.ndarray]]:
        with self._lock:
            out, self._video = self._video, []
        return out

    def condition(self, n: int) -> np.ndarray | None:
        """Frame ``n``'s ``FrameRequest.cond``, taken once (None where not made)."""
        with self._lock:
            return self._conds.pop(n, None)

    def ready_audio(self) -> list[np.ndarray]:
        with self._lock:
            out, self._audio = self._audio, []
        self.audio_sent += len(out)
        return out
