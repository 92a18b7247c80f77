"""One viewer's session: a clock, what the avatar is saying, and the frames that show it.

The session owns one timeline that starts when its media starts flowing: video frame k is
shown at k / fps, audio frame j (20 ms) at j * 0.02 s. Speech is placed on that timeline
when its first audio is ready, a little in the future so its first frames can be rendered in
time; its audio frames and its video frames then follow from the same start (see
``streaming.speech``), so sound and mouth cannot drift apart. Frames to render go to the
shared scheduler with their display time as deadline; a frame that is not back in time is
shown as the plain idle frame (the mouth closed), never waited for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from avatar.avatar import Avatar, FrameRequest
from avatar.cues import AFTER, BEFORE, frame_rows
from avatar.errors import TwincastError
from avatar.motion import NOD_HORIZON_S, Entry
from avatar.watermark import StreamMarks, WatermarkConfig
from streaming.events import (
    Closing,
    Interrupted,
    SessionEvent,
    SpeechEnded,
    SpeechFailed,
    SpeechStarted,
    Words,
)
from streaming.requests import BadRequest
from streaming.scheduler import Job, Scheduler
from streaming.speech import PreparedSpeech, SpeechConfig, SpeechFrames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionConfig:
    fps: int = 25
    audio_rate: int = 48000
    start_margin_s: float = 0.08
    """Speech starts at least this long after its first audio is ready: time to render its
    first frames. When other sessions keep the renderer busy it starts later, by what the
    scheduler predicts it needs for the first frames (see ``first_frames``)."""
    first_frames: int = 2
    """A start's first frames: handed to the renderer alone, and the time until they are
    back sets how soon later starts are placed (``Scheduler.start_delay``). Handed over with
    the rest of the first chunk's frames, they made a batch of eight that the lane sized to
    the margin and that took twice its predicted time beside synthesis, so the margin grew
    with every start (to 0.23 s on a 2-core EPYC; 0.09-0.11 s with four and the pause below).
    Two, not four: the margin waits for all of them, and the ``demo`` enrolment's larger
    face model took about 100 ms longer over four (``bench ask``, same host: the first
    word's frame in 230-260 ms with two, 290-360 with four; ``bench serve``, one session:
    232-255 against 304-401). One alone left the next frames too little time with two
    sessions on the ``ci`` one (18-26 frames late at starts in 30 s, against 0-6 with two
    or four)."""
    start_safety_s: float = 0.06
    """Added to the start's lead (``Scheduler.start_lead``). Since that lead follows the
    lane's state (it used to count queued frames as a batch in flight, which placed starts
    60-100 ms later than they needed), 0.03 s left a sentence's first five frames late
    more often on the `make demo` bundle (`bench serve --sessions 1`, 2-core EPYC: 2-6 a
    20-s run against 0-1 before); 0.06 s: 1-3."""
    render_ahead_frames: int = 12
    """Frames handed to the scheduler ahead of their display time (see
    ``SchedulerConfig.hold_s``)."""
    deadline_margin_s: float = 0.008
    """A rendered frame must be back this long before it is shown."""
    late_hold_frames: int = 3
    """A frame the renderer did not give back in time shows the last painted frame again
    if it was shown at most this many frames before (a stutter), not the footage under
    it: that footage has the recorded mouth of another moment, and on a host short of CPU
    (one 720p session on a 2-core AVX2 EPYC: a quarter to a third of the speech frames
    late) the mouth then flickered between the voice's shape and the footage's several
    times a second. Longer gaps show the footage (a frozen face reads as a stall). Counted
    as late all the same (``frames_late``), and in ``frames_held``."""
    video_behind_s: float = 0.16
    """A viewer's video that has fallen this far behind the session's clock (a host short
    of CPU: each frame is asked for only once the one before is encoded) skips to the
    present frame; followed frame by frame, two sessions' video on a 2-core host with a
    third of its CPU stolen fell seconds behind their sound."""
    max_events: int = 256
    live_margin_s: float = 0.32
    """Microphone speech starts this long after its first audio arrived: the face model
    needs 0.23 s of audio past each frame's centre, and the frame still has to be rendered."""
    live_gate_db: float = -45.0
    """Microphone audio louder than this (RMS, dB full scale) starts speech."""
    live_preroll_s: float = 0.1
    """Audio kept from before the gate opened, so a word's soft start is not cut off."""
    live_hangover_s: float = 0.6
    """Microphone speech ends after this long below the gate."""
    live_max_s: float = 30.0
    """A longer stretch of microphone speech is ended and the next one begins."""
    motion_lead_in: int = 4
    """Frames of speech shown over the footage already planned before the walk turns to
    speaking footage (avatars with a motion bank): at least these, more where the bank's
    thread needs longer to make new footage ready (``Session._footage_lead``)."""
    max_queued: int = 8
    max_queued_chars: int = 10000
    """A session takes at most this many utterances, and characters (two of the longest
    ``say``), waiting to be said: more is refused (429) until some is spoken, so one caller
    cannot fill the shared synthesis pool (16 say calls of 5,000 characters were all
    synthesised at once)."""
    start_pause_s: float = 0.15
    """After a sentence's first chunk, its synthesis waits this long at most for the
    first frames of a start to be rendered: Griffin-Lim's later chunks on the other core
    made those frames take twice as long, and the start margin follows how long they
    take. The second chunk is needed a third of a second after the start, at the soonest."""
    synthesis_threads: int = 1
    """CPU threads each sentence's synthesis may use. One leaves the cores to the renderer:
    with the default two on this 2-core machine (``bench serve``, GRID voice, six runs each)
    the first moving mouth came at a median of 277 ms against 243 ms with one, and the first
    audio at 238 against 228 ms; two sessions were late on 0.42 % of frames in three runs
    against 0.13-0.76 %."""


class SessionClock:
    """Seconds since the session's media started; ``start`` is idempotent."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.t0: float | None = None

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = self._clock()

    def now(self) -> float:
        return 0.0 if self.t0 is None else self._clock() - self.t0

    def absolute(self, t: float) -> float:
        """Session time -> the scheduler's clock."""
        return (self.t0 or self._clock()) + t

    async def wait_until(self, t: float) -> None:
        self.start()
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class SpeechBacklog(BadRequest):
    """Too much speech queued in one session (429, with Retry-After)."""

    retry_after_s = 2

    def __init__(self, message: str):
        super().__init__(message, 429)


@dataclass
class Utterance:
    id: str
    text: str
    speech: SpeechFrames | PreparedSpeech
    """A microphone's speech is made ready on the event loop as it comes (20 ms at a time);
    a voice's on its synthesis thread."""
    start_frame: int | None = None
    windows: dict[int, np.ndarray] = field(default_factory=dict)
    audio: dict[int, np.ndarray] = field(default_factory=dict)
    submitted: int = 0
    started_event: bool = False
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    margin_s: float | None = None
    """How long after its first audio this speech starts (None: the session's default)."""
    placed_at: float | None = None
    """When it was placed to start as soon as it could (session clock), until its first
    frames are back: how long they took is ``Scheduler.note_start``'s sample."""
    pace: float = 1.0
    asked_at: float = field(default_factory=time.monotonic)
    """When it was asked for (``say``): its start's delay is logged from here."""
    started: threading.Event = field(default_factory=threading.Event)
    """Set once its first frames are rendered, or it follows speech already being said:
    until then its synthesis leaves the cores to the renderer after the first chunk."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once it has been spoken, or dropped."""
    planned_end: bool = False
    """Whether the walk back to silent footage has been planned (once its length is known)."""
    rows: list[np.ndarray] = field(default_factory=list)
    """Each frame's speech summary for the nod cues (``avatar.cues.frame_rows``), in order."""
    nods: np.ndarray | None = None
    """Frames (from its start) where the person would nod, as far as settled."""
    nod_prob: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """The nod model's probability for each settled frame."""

    def drop(self) -> None:
        """Not to be said (barge-in, failure): its synthesis stops at its next step, now
        rather than after the start pause, and whoever waits for it is let go."""
        self.cancel.set()
        self.started.set()
        self.done.set()


class Session:
    def __init__(self, avatar_name: str, avatar: Avatar, voice: object | None,
                 scheduler: Scheduler, cfg: SessionConfig | None = None,
                 clock: SessionClock | None = None):
        self.id = uuid.uuid4().hex[:12]
        self.avatar_name = avatar_name
        self.avatar = avatar
        self.voice = voice
        self.scheduler = scheduler
        self.cfg = cfg or SessionConfig()
        self.clock = clock or SessionClock()
        self.state = "new"
        self.queue: deque[Utterance] = deque()
        self.rendered: dict[int, np.ndarray] = {}
        self._cut_at = -math.inf
        """When (the scheduler's clock) the last barge-in was: frames handed over before it
        that come back after it (a batch in flight then) are the dropped speech's."""
        self.events: deque[SessionEvent] = deque(maxlen=self.cfg.max_events)
        self.listeners: list[Callable[[SessionEvent], None]] = []
        self.stats = {"frames_shown": 0, "frames_rendered": 0, "frames_late": 0,
                      "frames_late_at_start": 0, "frames_dropped_late": 0, "frames_failed": 0,
                      "frames_repeated": 0, "frames_skipped": 0, "frames_held": 0,
                      "utterances": 0, "interrupts": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._speech_cfg = SpeechConfig(fps=self.cfg.fps, mel_frames=avatar.mel_frames,
                                        out_rate=self.cfg.audio_rate)
        self._silence = np.zeros(self.cfg.audio_rate // 50, np.int16)
        self._live: Utterance | None = None
        self.describe_extra: Callable[[], dict] | None = None
        """More state for ``describe`` (an RTMP output's, for a stream)."""
        self._preroll: deque[tuple[np.ndarray, int]] = deque()
        self._quiet_s = 0.0
        self.motion = MotionTimeline(avatar, int(self.id, 16) % 2**31) \
            if getattr(avatar, "bank", None) is not None else None
        """The walk through the avatar's own footage (avatars with a motion bank)."""
        if self.motion is not None and getattr(avatar, "cues", None) is not None:
            self.motion.nods = self._nods
        self._silent: FrameRequest | None = None
        """A request of silence (its mel and condition), made once."""
        self._painted: set[int] = set()
        self.mark_cfg: WatermarkConfig | None = None
        """Set by the server: the invisible marks (``avatar.watermark``) in everything this
        session sends; None: none."""
        self._marks: StreamMarks | None = None
        self.synthesis_pool: Executor | None = None
        """Set by the server: where this session's syntheses run (shared by its sessions);
        None: the event loop's default executor."""
        self._to_synthesise: deque[Utterance] = deque()
        self._synthesising = False
        self._told_closing = False
        self._last_frame: np.ndarray | None = None
        """The frame shown last (shown again where a motion frame is not decoded yet)."""
        self._last_painted: tuple[int, np.ndarray] | None = None
        """The last rendered frame shown and its index (``late_hold_frames``)."""
        self.on_close: list[Callable[[], None]] = []
        self.on_interrupt: list[Callable[[], None]] = []
        """Called at every barge-in (a conversation drops the answer it is giving)."""
        self.may_say = True
        """Whether its viewer's data channel may make the avatar speak (a viewer token's
        grant; the API's say is checked by the token itself)."""

    # ------------------------------------------------------------ control
    def start(self) -> None:
        from streaming.speech import warm_up

        warm_up()  # not on the first sentence, in the middle of the stream
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._produce(), name=f"session-{self.id}")
        self.state = "connected"

    def tell_closing(self, reason: str, retry: bool = False) -> None:
        """Tell the listeners (the viewer's data channel) the session is closing, and
        why (``retry``: for the server's sake; a new session will do): once, and the last
        event they get."""
        if not self._told_closing and self.state != "closed":
            self._told_closing = True
            self._emit(Closing, None, reason=reason, retry=retry)

    async def close(self, reason: str = "closed") -> None:
        self.tell_closing(reason)
        self.state = "closed"
        self.interrupt(emit=False)
        for fn in list(self.on_close):
            fn()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def say(self, text: str, interrupt: bool = False, pace: float = 1.0) -> str:
        """Queue ``text``; its synthesis starts now in a worker thread. Returns its id."""
        if self.voice is None:
            raise TwincastError(f"avatar {self.avatar_name!r} has no voice; send audio "
                                "instead")
        if self.state == "closed":
            raise TwincastError("this session is closed")
        if interrupt:
            self.interrupt()
        queued = sum(len(u.text) for u in self.queue)
        if len(self.queue) >= self.cfg.max_queued or \
                queued + len(text) > self.cfg.max_queued_chars:
            raise SpeechBacklog(
                f"this session already has {len(self.queue)} utterances ({queued} "
                f"characters) waiting to be said (at most {self.cfg.max_queued}, "
                f"{self.cfg.max_queued_chars} characters); wait for some to be spoken, or "
                "say with interrupt")
        # Check the text now, so a bad one is refused with a clear error, not mid-stream.
        self.voice.frontend.check(text)  # type: ignore[attr-defined]
        u = Utterance(uuid.uuid4().hex[:8], text,
                      PreparedSpeech(self._speech_cfg, self._condition), pace=pace)
        self.queue.append(u)
        self.stats["utterances"] += 1
        self._to_synthesise.append(u)
        self._next_synthesis(self._loop or asyncio.get_running_loop())
        return u.id

    def _next_synthesis(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the next queued utterance's synthesis unless one of this session's is
        running: one at a time per session, so a session with a long queue takes one
        worker of the shared pool, not all of them (it is still made faster than it is
        said)."""
        if self._synthesising:
            return
        while self._to_synthesise:
            u = self._to_synthesise.popleft()
            if u.cancel.is_set():
                continue
            self._synthesising = True

            def done(_f: object) -> None:
                self._synthesising = False
                if self.state != "closed":
                    self._next_synthesis(loop)

            loop.run_in_executor(self.synthesis_pool, self._synthesise, u,
                                 loop).add_done_callback(done)
            return

    async def wait_spoken(self, uid: str) -> None:
        """Until utterance ``uid`` has been spoken (or dropped by an interrupt)."""
        for u in list(self.queue):
            if u.id == uid:
                await u.done.wait()
                return

    def hear(self, audio: np.ndarray, rate: int) -> None:
        """Audio-driven mode: a piece of the client's microphone (mono float). Loud audio
        starts speech that the avatar says with its own mouth, live; it interrupts what the
        avatar was saying, as a person talking over it would."""
        c = self.cfg
        loud = 20 * np.log10(float(np.sqrt(np.mean(np.square(audio)))) + 1e-9) > c.live_gate_db
        u = self._live
        if u is None:
            self._preroll.append((audio, rate))
            while sum(len(a) / r for a, r in self._preroll) > c.live_preroll_s + 0.02:
                self._preroll.popleft()
            if not loud or self.state == "closed":
                return
            self.interrupt()
            u = Utterance(uuid.uuid4().hex[:8], "(microphone)",
                          SpeechFrames(self._speech_cfg), margin_s=c.live_margin_s)
            self.queue.append(u)
            self.stats["utterances"] += 1
            for a, r in self._preroll:
                u.speech.feed(a, r)
            self._preroll.clear()
            self._live, self._quiet_s = u, 0.0
            return
        u.speech.feed(audio, rate)
        self._quiet_s = 0.0 if loud else self._quiet_s + len(audio) / rate
        if self._quiet_s >= c.live_hangover_s or u.speech.seconds >= c.live_max_s:
            u.speech.finish()
            self._live = None

    def interrupt(self, emit: bool = True) -> int:
        """Barge-in: stop speaking at once. Everything queued or in flight for this session
        is dropped; from the next frame the mouth is the idle one and the audio silent."""
        dropped = len(self.queue)
        self._live = None
        for u in self.queue:
            u.drop()
        self.queue.clear()
        self._to_synthesise.clear()
        self._cut_at = self.scheduler.clock()
        self.scheduler.cancel(self.id)
        self.rendered.clear()
        self._painted.clear()
        if self.motion is not None:
            # The frames planned as speech were never rendered: walk to silence from the
            # next frame (its first frames are painted shut, see _paint_silence).
            self.motion.replan(self.motion.shown + 1)
        for fn in list(self.on_interrupt):
            fn()
        if emit and dropped:
            self.stats["interrupts"] += 1
            self._emit(Interrupted, None)
        return dropped

    def emit(self, kind: type[SessionEvent], utterance: str | None = None,
             at: float | None = None, **extra: object) -> None:
        """Tell the listeners of an event (at ``at`` on the stream clock; default now).
        Nothing follows ``closing``: it is the last event a viewer gets (a voice thread's
        word timings can still arrive on the loop after it)."""
        if self._told_closing and kind is not Closing:
            return
        ev = kind(session=self.id, utterance=utterance,
                  stream_time=round(self.clock.now() if at is None else at, 3), **extra)
        self.events.append(ev)
        for fn in list(self.listeners):
            fn(ev)

    def _fail_current(self, message: str) -> None:
        """The utterance being said cannot go on (its synthesis or its rendering failed):
        it is dropped as a barge-in would drop it, with an error event saying why; what is
        queued after it is said as usual."""
        if not self.queue:
            return
        u = self.queue.popleft()
        u.drop()
        if self._live is u:
            self._live = None
        # The next utterance may be placed right after it, its first frames handed to the
        # renderer already: those are kept (it starts when it was going to).
        nxt = self.queue[0] if self.queue and self.queue[0].start_frame is not None \
            else None
        until = nxt.start_frame if nxt is not None else None
        self.scheduler.cancel(self.id, before=until)
        if until is None:
            self.rendered.clear()
            self._painted.clear()
        else:
            self.rendered = {k: f for k, f in self.rendered.items() if k >= until}
            self._painted = {k for k in self._painted if k >= until}
        if self.motion is not None and u.start_frame is not None:
            self.motion.replan(self.motion.shown + 1 if nxt is None else max(
                self.motion.shown + 1, until + nxt.submitted))  # type: ignore[operator]
        log.warning("session %s: utterance %s dropped: %s", self.id, u.id, message,
                    extra={"session": self.id})
        self._emit(SpeechFailed, u, message=message)

    # ------------------------------------------------------------ media side
    def video_frame(self, k: int) -> np.ndarray:
        """The frame shown at index k (called by the video track at its time)."""
        self.stats["frames_shown"] += 1
        if self.motion is not None:
            self.motion.shown = max(self.motion.shown, k)  # never re-planned from now on
        frame = self.rendered.pop(k, None)
        for old in [i for i in self.rendered if i < k]:
            del self.rendered[old]
        if frame is not None:
            self._last_frame = frame
            self._last_painted = (k, frame)
            return frame
        u = self._at(k)
        speech = u is not None and u.start_frame is not None
        if speech:
            # A speech frame shown without its mouth: late, whether the renderer was late
            # or it was never handed over (its audio or its footage not ready in time).
            self.stats["frames_late"] += 1
            if k - u.start_frame < 5:
                self.stats["frames_late_at_start"] += 1
        if (speech or k in self._painted) and self._last_painted is not None and \
                0 < k - self._last_painted[0] <= self.cfg.late_hold_frames:
            self.stats["frames_held"] += 1
            return self._last_painted[1]
        if self.motion is not None:
            e = self.motion.at(k, self._mode)
            # This runs on the event loop, which every session shares: a bank chunk not
            # decoded yet (the bank's thread is behind) would stop them all for tens of
            # milliseconds. The last frame is shown again instead until it is (the
            # session's very first: the idle loop's, in memory); the bank is asked for
            # it in case its decode was never queued.
            if not self.avatar.base_frame_ready(e):
                self.stats["frames_repeated"] += 1
                self.motion.bank.prefetch([e])
                return self._last_frame if self._last_frame is not None else \
                    self.avatar.idle_frame(k)
            self._last_frame = self.avatar.base_frame(e)
            return self._last_frame
        return self.avatar.idle_frame(k)

    def marks(self) -> StreamMarks | None:
        """The session's markers, made on first use with its stream time 0 in UTC."""
        if self.mark_cfg is None:
            return None
        if self._marks is None:
            self._marks = StreamMarks(self.avatar.manifest.files, self.cfg.fps,
                                      self.cfg.audio_rate, self.mark_cfg,
                                      t0=time.time() - self.clock.now())
        return self._marks

    def audio_frame(self, j: int) -> np.ndarray:
        """20 ms of int16 mono at ``audio_rate`` for audio frame j."""
        # The utterance whose video frame this is first: the one ending may hold padding
        # past its last frame, where the next one, placed right after it, begins.
        first = self._at(j * self.cfg.fps // 50)
        for u in ([first] if first is not None else []) + self._placed():
            pcm = u.audio.pop(j, None)
            if pcm is not None:
                return pcm
        return self._silence

    # ------------------------------------------------------------ internals
    def _emit(self, kind: type[SessionEvent], u: Utterance | None, at: float | None = None,
              **extra: object) -> None:
        self.emit(kind, u.id if u else None, at, **extra)

    def _words(self, u: Utterance, words: tuple) -> None:
        if not u.cancel.is_set():
            self._emit(Words, u, words=words)

    def _synthesise(self, u: Utterance, loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: the voice's chunks are made ready for the session (windows for
        the face, audio frames) here, and the event loop takes them as they come."""
        import torch

        # Per thread (an OpenMP setting): the renderer's lane keeps all its threads. The
        # executor's thread gets its own count back for whatever it runs next.
        threads = torch.get_num_threads()
        torch.set_num_threads(self.cfg.synthesis_threads)
        try:
            self._speak(u, loop)
        finally:
            torch.set_num_threads(threads)

    def _speak(self, u: Utterance, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for n, chunk in enumerate(self.voice.speak(u.text, u.pace)):  # type: ignore[attr-defined]
                if u.cancel.is_set():
                    return
                u.speech.feed(chunk.audio, chunk.rate)  # made ready here, off the loop
                timed = getattr(chunk, "words", None)  # a voice may not time its words
                if timed:
                    words = tuple({"text": w, "start": a, "end": b} for w, a, b in timed)
                    loop.call_soon_threadsafe(self._words, u, words)
                if n == 0:
                    u.started.wait(self.cfg.start_pause_s)
        except TwincastError as e:
            u.error = str(e)
        except Exception as e:  # noqa: BLE001 - reported as the utterance's error event
            log.exception("synthesis failed in session %s", self.id)
            u.error = f"synthesis failed: {e}"
        try:
            u.speech.finish()
        except Exception as e:  # noqa: BLE001 - the utterance ends with what it has
            log.exception("preparing speech failed in session %s", self.id)
            u.error = u.error or f"synthesis failed: {e}"
            u.speech.abandon()  # type: ignore[union-attr]

    def _condition(self, windows: np.ndarray) -> np.ndarray:
        """The render requests' audio part, made on the synthesis thread (see
        ``Avatar.condition``)."""
        return self.avatar.condition(windows)

    def _on_rendered(self, job: Job, frame: np.ndarray | None, status: str) -> None:
        """Scheduler thread -> event loop."""
        if self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._store, job.request.idle_index, frame, status,
                                        job.request.base, job.submitted)

    def _store(self, k: int, frame: np.ndarray | None, status: str,
               base: Entry | None = None, submitted: float | None = None) -> None:
        if status == "late":  # the scheduler gave up on it: it could not be in time
            self.stats["frames_dropped_late"] += 1
        if submitted is not None and submitted < self._cut_at:
            # Rendered for speech a barge-in dropped while its batch was on the lane (the
            # scheduler cancels only what is queued): shown, it kept the mouth talking for
            # 0.1-0.4 s after the interrupt on a busy host. Its failure is not the next
            # utterance's either.
            return
        if status == "error":
            self.stats["frames_failed"] += 1
            u = self._at(k)
            message = "rendering failed; the next utterance is rendered afresh"
            if u is not None and self.queue and u is self.queue[0]:
                self._fail_current(message)
            elif u is not None:  # the next one, placed already: dropped when its turn comes
                u.error = message
            return
        if self.motion is not None and base is not None and \
                self.motion.entries.get(k, base) != base:
            return  # painted over a plan that has changed since (speech placed, barge-in)
        if frame is not None and self.state != "closed":
            self.stats["frames_rendered"] += 1
            u = self.queue[0] if self.queue else None
            if u is not None and u.placed_at is not None and u.start_frame is not None \
                    and k >= u.start_frame + self.cfg.first_frames - 1:
                self.scheduler.note_start(self.clock.now() - u.placed_at)
                log.debug("utterance %s: first frames back %.0f ms after it was placed",
                          u.id, 1000 * (self.clock.now() - u.placed_at))
                u.started.set()
                u.placed_at = None
            # Frames are taken by the video track at their time; with no one taking them
            # (an offer with no video), those whose time has passed would pile up.
            stale = int(self.clock.now() * self.cfg.fps) - self.cfg.fps \
                if self.clock.t0 is not None else -1
            if k >= stale:
                self.rendered[k] = frame
            for old in [i for i in self.rendered if i < stale]:
                del self.rendered[old]

    def _mode(self, k: int) -> str:
        """Whether frame ``k`` is planned as speech: from a placed utterance's start to a
        cross-fade's length before its end (so the walk is back in silent footage by the
        time the painted mouth stops), or on while its length is unknown; straight on into
        the next utterance where that one follows at once."""
        fade = self.motion.fade if self.motion is not None else 0
        follows = False
        for v in self._placed():
            assert v.start_frame is not None
            # The walk turns to speaking footage a few frames into the speech: the mouth
            # is painted from the first frame whatever the footage, and those frames give
            # the bank's thread time to decode the speaking stretch before it is needed.
            if k < v.start_frame + (0 if follows else self.cfg.motion_lead_in):
                return "speaking" if follows else "silent"
            total = v.speech.total_video_frames
            if total is None:
                return "speaking"
            end = v.start_frame + total
            follows = self._follower(v) is not None
            lead = 0 if follows else fade if total > 3 * fade else 0
            if k < end - lead:
                return "speaking"
        return "silent"

    def _nods(self, k: int, horizon: int) -> np.ndarray | None:
        """Whether the person would nod at frame ``k`` and each of the ``horizon - 1``
        after it, as far as the speech being said is known."""
        placed = [u for u in self._placed() if u.nods is not None]
        if not placed:
            return None
        out = np.zeros(horizon, bool)
        for u in placed:
            assert u.start_frame is not None and u.nods is not None
            n0 = k - u.start_frame
            lo, hi = max(0, n0), min(len(u.nods), n0 + horizon)
            if hi > lo:
                out[lo - n0: hi - n0] |= u.nods[lo:hi]
        return out

    def _update_nods(self, u: Utterance) -> None:
        """Call the nods of the speech known so far: a frame's call needs the speech a
        quarter second after it, so the last few wait for more unless the speech is
        complete."""
        cues = self.avatar.cues
        if cues is None or not u.rows:
            return
        settled = len(u.rows) if u.speech.finished else len(u.rows) - AFTER - 1
        done = len(u.nod_prob)
        if settled <= done:
            return
        # Only the newly settled frames go through the network (this runs on the event
        # loop as a live utterance's audio arrives); a frame's peak needs the next one.
        rows = np.stack(u.rows[max(0, done - BEFORE):])
        first = min(done, BEFORE)
        new = cues.probability(rows, first, first + settled - done)
        u.nod_prob = np.concatenate([u.nod_prob, new])
        u.nods = cues.peaks(u.nod_prob, self.cfg.fps)

    def _placed(self) -> list[Utterance]:
        """The utterances with a place on the timeline: the one being said, and the next
        one where it is placed already (to follow it without a gap)."""
        out = []
        for u in list(self.queue)[:2]:
            if u.start_frame is None:
                break
            out.append(u)
        return out

    def _at(self, k: int) -> Utterance | None:
        """The placed utterance whose speech frame ``k`` is, if any."""
        for u in self._placed():
            assert u.start_frame is not None
            total = u.speech.total_video_frames
            if k >= u.start_frame and (total is None or k < u.start_frame + total):
                return u
        return None

    def _speech_frame(self, k: int) -> bool:
        """Whether frame ``k`` belongs to speech being said or placed (rendered with it)."""
        return self._at(k) is not None

    def _paint_silence(self, current: int) -> None:
        """Frames about to be shown whose footage has a talking mouth (a speaking stretch
        fading out, or a listener's open mouth) get a closed mouth painted, like speech."""
        assert self.motion is not None
        fps = self.cfg.fps
        for k in range(current + 1, current + 1 + self.cfg.render_ahead_frames):
            if k in self._painted or self._speech_frame(k):
                continue
            e = self.motion.at(k, self._mode)
            if not self.motion.mouthy(e) or not self.avatar.base_frame_ready(e):
                continue  # (not decoded yet: asked again at the next turn, as in _advance)
            if self._silent is None:
                self._silent = self.avatar.silent_requests(1)[0]
            req = FrameRequest(k, self._silent.mel, self.id,
                               self.clock.absolute(k / fps - self.cfg.deadline_margin_s),
                               base=e, cond=self._silent.cond)
            self._painted.add(k)
            self.scheduler.submit(self.avatar_name, req, self._on_rendered)
        for old in [i for i in self._painted if i < current - fps]:
            self._painted.discard(old)

    async def _produce(self) -> None:
        """Every few milliseconds: place new speech, collect its ready audio and frames,
        hand frames to the scheduler ahead of their time, retire finished speech."""
        fps = self.cfg.fps
        while True:
            await asyncio.sleep(0.005)
            if self.clock.t0 is not None and self.motion is not None:
                current = int(self.clock.now() * fps)
                self.motion.prefetch(current, self._mode)
                self._paint_silence(current)
            if self.clock.t0 is None or not self.queue:
                continue
            u = self.queue[0]
            if u.error is not None and u.speech.finished:
                # Failed before or while being said: a sentence cut off mid-way would say
                # something the text did not, so none of it is said from here on.
                self._fail_current(u.error)
                continue
            now = self.clock.now()
            if u.start_frame is None:
                if u.speech.seconds == 0:
                    continue
                margin = self._margin(u)
                self._place(u, math.ceil((now + margin) * fps), now)
                u.placed_at = now
                if log.isEnabledFor(logging.DEBUG):  # (the figures take the lock)
                    log.debug("utterance %s: first audio ready %.0f ms after it was "
                              "asked for; starts %.0f ms later (margin %.0f ms; first "
                              "frames predicted back in %.0f, recent starts' p90 %.0f)",
                              u.id, 1000 * (time.monotonic() - u.asked_at),
                              1000 * (u.start_frame / fps - now), 1000 * margin,
                              1000 * self.scheduler.lead_time(self.cfg.first_frames),
                              1000 * self.scheduler.start_delay())
            s = u.start_frame
            assert s is not None
            nxt = self.queue[1] if len(self.queue) > 1 else None
            if nxt is not None and nxt.start_frame is None and nxt.error is None and \
                    nxt.speech.seconds > 0 and u.speech.total_video_frames is not None:
                # The next sentence follows this one without a gap (or as soon as it can
                # be rendered): placed now, seconds ahead, its first frames are rendered
                # like any others instead of in a hurry after this one ends.
                end = s + u.speech.total_video_frames
                self._place(nxt, max(end, math.ceil((now + self._margin(nxt)) * fps)), now)
                nxt.started.set()
            if self.motion is not None and u.speech.total_video_frames is not None and \
                    not u.planned_end:
                u.planned_end = True  # its length is known: plan the way back to silence
                # From far enough back that the walk can meet the change with footage
                # where the person falls silent (frames already rendered stay as they are).
                self.motion.replan(max(s + u.submitted,
                                       int(now * fps) + self._footage_lead(),
                                       s + u.speech.total_video_frames
                                       - self.motion.fade - self.motion.switch_sight))
            for v in self._placed():
                self._advance(v, now)
            if not u.started_event and now >= s / fps:
                u.started_event = True
                self._emit(SpeechStarted, u, s / fps)
            total = u.speech.total_video_frames
            if total is not None and u.submitted >= total and now >= (s + total) / fps:
                self._emit(SpeechEnded, u, (s + total) / fps)
                self.queue.popleft().done.set()

    def _margin(self, u: Utterance) -> float:
        """Seconds from now to the earliest a new stretch of speech can start: its first
        frames rendered, with the renderer as busy as it is."""
        margin = self.cfg.start_margin_s if u.margin_s is None else u.margin_s
        return max(margin, self._render_lead())

    def _render_lead(self) -> float:
        """Seconds a start's first frames handed over now take to come back rendered."""
        return self.scheduler.start_lead(self.cfg.first_frames) + self.cfg.start_safety_s

    def _footage_lead(self) -> int:
        """Frames from now before which the walk through the bank keeps its plan: new
        footage must be decoded and cross-faded on the bank's thread (``MotionBank.lead_s``,
        measured) and then rendered before it is shown. Turned sooner, a live 720p
        session's frames waited for their footage past their time (5 % of them late)."""
        assert self.motion is not None
        need = self.motion.bank.lead_s() + self._render_lead()
        return max(self.cfg.motion_lead_in, math.ceil(need * self.cfg.fps))

    def _place(self, u: Utterance, start: int, now: float) -> None:
        """Give ``u`` its first frame; the walk through the motion bank turns to speaking
        footage there."""
        fps = self.cfg.fps
        u.start_frame = start
        if self.motion is None:
            return
        current = int(now * fps)
        turn = start + self.cfg.motion_lead_in
        soonest = current + self._footage_lead()
        # Re-planned from as early as leaves the bank's thread time to make new footage
        # ready (``_footage_lead``), so the walk can meet the speech's start with footage
        # where the person starts to speak (or turn to it as soon as it can, after the
        # start: the mouth is painted from the first frame whatever the footage); never
        # over frames handed to the renderer for speech already placed, and frames
        # painted shut for the old plan are painted again.
        first = max(soonest, turn - self.motion.switch_sight)
        before = [v for v in self._placed() if v is not u]
        if before:  # placed behind speech being said: re-planned from near its end
            prev = before[-1]
            assert prev.start_frame is not None and prev.speech.total_video_frames is not None
            end = prev.start_frame + prev.speech.total_video_frames
            first = max(soonest, current + self.cfg.render_ahead_frames + 1,
                        prev.start_frame + prev.submitted,
                        end - self.motion.fade - self.motion.switch_sight)
        self.motion.replan(first)
        # Silent frames queued from there on are painted over footage the walk no longer
        # shows or under speech: rendered, they were thrown away, and a start's first
        # frames were batched with them.
        since = min(first, start)
        self.scheduler.cancel(self.id, since=since)
        self._painted = {k for k in self._painted if k < since}
        self.motion.prefetch(current, self._mode)

    def _follower(self, u: Utterance) -> Utterance | None:
        """The placed utterance said right after ``u`` (within a cross-fade's length of
        its end), if any."""
        placed = self._placed()
        i = next((n for n, v in enumerate(placed) if v is u), None)
        total = u.speech.total_video_frames
        if i is None or i + 1 >= len(placed) or total is None or u.start_frame is None:
            return None
        v = placed[i + 1]
        assert v.start_frame is not None
        gap = v.start_frame - (u.start_frame + total)
        return v if gap <= max(self.motion.fade if self.motion is not None else 0, 8) \
            else None

    def _advance(self, u: Utterance, now: float) -> None:
        """Take a placed utterance's newly ready frames and audio, and hand its frames to
        the scheduler ahead of their time."""
        fps = self.cfg.fps
        s = u.start_frame
        assert s is not None
        ready = u.speech.ready_video()
        for n, window in ready:
            u.windows[n] = window
        if self.motion is not None and self.motion.nods is not None:
            if ready:
                u.rows.extend(frame_rows(np.stack([w for _, w in ready]), self.cfg.fps))
            self._update_nods(u)
        current = int(now * fps)
        while u.submitted in u.windows:
            k = s + u.submitted
            if k > current + self.cfg.render_ahead_frames:
                break
            if u.placed_at is not None and u.submitted >= self.cfg.first_frames and \
                    current < s:
                # A start's first frames go alone, so the lane's next batch is small and
                # back soon (see ``first_frames``); the rest follow once they are back.
                break
            base = self.motion.at(k, self._mode) if self.motion is not None else None
            if base is not None and not self.avatar.base_frame_ready(base):
                # Its footage is still being decoded on the bank's thread: handed over
                # now, the renderer would decode it itself in the middle of a batch,
                # holding up every session's frames in it (at a sentence's start, where
                # the walk turns to new footage, batches took up to 170 ms longer). The
                # timeline asked for it a second ahead (``MotionTimeline.prefetch``).
                break
            req = FrameRequest(k, u.windows.pop(u.submitted), self.id,
                               self.clock.absolute(k / fps - self.cfg.deadline_margin_s),
                               base=base, cond=u.speech.condition(u.submitted))
            if self.scheduler.submit(self.avatar_name, req, self._on_rendered) is None:
                self.stats["frames_late"] += 1
            u.submitted += 1
        # Its sound after its frames: marking a first chunk's sound, 20 ms at a time,
        # took 2-8 ms of the loop, which a start's first frames waited behind; the sound
        # is not due before the first frame is.
        self._collect_audio(u)

    def _collect_audio(self, u: Utterance) -> None:
        assert u.start_frame is not None
        # Audio frames are 20 ms: the speech's first one sits where its first video frame does.
        first = round(u.start_frame * 50 / self.cfg.fps)
        base = first + u.speech.audio_sent
        marks = self.marks()
        per = self.cfg.audio_rate // 50
        for i, pcm in enumerate(u.speech.ready_audio()):
            # Marked as it comes, at its place on the stream's timeline (the mark's chips
            # are tied to it), so every output of the session carries the same mark.
            u.audio[base + i] = pcm if marks is None else \
                marks.audio.process_int16(pcm, (base + i) * per)

    def describe(self) -> dict:
        u = self.queue[0] if self.queue else None
        return {"id": self.id, "avatar": self.avatar_name, "state": self.state,
                "speaking": bool(u and u.start_frame is not None),
                "queued": len(self.queue), "stream_time": round(self.clock.now(), 3),
                **self.stats, **(self.describe_extra() if self.describe_extra else {})}


class MotionTimeline:
    """One session's walk through the motion bank, frame by frame: decided as late as
    possible and re-planned from any frame not yet shown or handed to the renderer (when
    speech is placed, when its length becomes known, on barge-in)."""

    KEEP = 100
    """Frames of history kept (for a replan a little into the past, and late lookups)."""

    def __init__(self, avatar: Avatar, seed: int):
        walker = avatar.walker(seed)
        assert walker is not None and avatar.bank is not None
        self.walker = walker
        self.bank = avatar.bank
        # The longest cross-fade either way: the walk is back in silent footage this long
        # before the painted mouth stops.
        self.fade = max(walker.cfg.fade, walker.silent_fade)
        self.entries: dict[int, Entry] = {}
        self._snaps: dict[int, tuple] = {}
        self.next = 0
        """The first frame not yet planned."""
        self.shown = -1
        """The last frame shown (never re-planned)."""
        self.prefetch_s = 1.0
        self._prefetched = 0
        """Frames before this one were handed to the bank to decode."""
        self.nods: Callable[[int, int], np.ndarray | None] | None = None
        """Where the speech wants nods from a frame on (``Session._nods``); None: never."""
        self._horizon = int(NOD_HORIZON_S * walker.g.fps)
        c = walker.cfg
        self.switch_sight = c.min_fade + 2 + max(0, c.switch_window)

    def at(self, k: int, mode: Callable[[int], str]) -> Entry:
        """The entry frame ``k`` shows, planning up to it with ``mode`` where needed."""
        if k < self.next - self.KEEP:  # far in the past (not asked for in practice)
            k = self.next - self.KEEP
        while self.next <= k:
            self._snaps[self.next] = self.walker.snapshot()
            m = mode(self.next)
            nods = self.nods(self.next, self._horizon) if m == "speaking" and \
                self.nods is not None else None
            self.entries[self.next] = self.walker.next(m, None, nods,
                                                       self._switch_in(self.next, m, mode))
            self.entries.pop(self.next - self.KEEP, None)  # frames are planned in order
            self._snaps.pop(self.next - self.KEEP, None)
            self.next += 1
        return self.entries[k]

    def _switch_in(self, k: int, m: str, mode: Callable[[int], str]) -> int | None:
        """Frames from ``k`` to the next change of mode, as far as the walk plans
        switches ahead (None: none that near; the plan is redone when speech is placed
        or its end becomes known)."""
        for j in range(1, self.switch_sight + 1):
            if mode(k + j) != m:
                return j
        return None

    def replan(self, k: int) -> None:
        """Forget the plan from frame ``k`` on (never a frame already shown)."""
        k = max(k, self.shown + 1)
        if k >= self.next or k not in self._snaps:
            return
        self.walker.restore(self._snaps[k])
        for i in range(k, self.next):
            self.entries.pop(i, None)
            self._snaps.pop(i, None)
        self.next = k
        self._prefetched = min(self._prefetched, k)

    def mouthy(self, e: Entry) -> bool:
        return bool(self.bank.graph.mouthy[list(e.frames())].any())

    def prefetch(self, current: int, mode: Callable[[int], str]) -> None:
        """Plan the next second and have its frames decoded before they are due (called
        every few milliseconds: only frames not handed to the bank yet are)."""
        ahead = current + int(self.prefetch_s * self.bank.graph.fps)
        first = max(current, self.shown + 1, self._prefetched)
        if first >= ahead:
            return
        planned = [self.at(k, mode) for k in range(first, ahead)]
        # Frames to be painted (speech, and silent footage whose own mouth is open) are
        # also prepared for compositing there.
        self.bank.prefetch(planned, [e for k, e in zip(range(first, ahead), planned,
                                                       strict=True)
                                     if mode(k) == "speaking" or self.mouthy(e)])
        self._prefetched = ahead


async def listen(track, hear: Callable[[np.ndarray, int], None]) -> None:  # noqa: ANN001
    """Feed a client's audio track (a microphone) to ``hear`` (``Session.hear``, or a
    conversation's ``TurnTaker.hear``) until it ends."""
    from aiortc.mediastreams import MediaStreamError

    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        pcm = frame.to_ndarray()
        channels = len(frame.layout.channels)
        # Packed formats come as one row of interleaved samples, planar as one per channel.
        pcm = pcm.reshape(-1, channels) if not frame.format.is_planar else pcm.T
        mono = pcm.astype(np.float32).mean(axis=1)
        if frame.format.name.startswith("s16"):
            mono /= 32768.0
        hear(mono, frame.sample_rate)
