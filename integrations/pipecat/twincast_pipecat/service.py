"""twincast as a pipecat avatar service: put it where a pipeline's speech is, and it puts
out the avatar's video frames (and the voice, in step with the mouth) for the pipeline's
output transport, the way pipecat's hosted avatar services are used.

Two ways to drive it (``drive``):

- ``"audio"``: the pipeline's own TTS speaks; its ``TTSAudioRawFrame``s go up to the
  twincast session, which moves the mouth to them, and come back down in step with the
  video (the pipeline's own frames are not passed on, or the voice would be heard twice and
  ahead of the mouth).
- ``"text"``: twincast's own voice (the person's, learnt at enrolment) speaks; the LLM's
  text is cut into sentences and each is said as soon as it is complete. The voice comes
  down as ``TTSAudioRawFrame``s between ``TTSStartedFrame`` and ``TTSStoppedFrame``, and
  each word as a ``TTSTextFrame`` when it is heard (live subtitles, and what the assistant
  context keeps of an interrupted reply).

Either way an ``InterruptionFrame`` (the user started talking) stops the avatar at once.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Literal

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    OutputImageRawFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings

from twincast_pipecat.connection import (
    ConnectionConfig,
    Resampler,
    TwincastConnection,
    TwincastConnectionError,
)
from twincast_pipecat.sentences import SentenceCutter

log = logging.getLogger(__name__)

VOICED = 16
"""int16 peak above which a frame of the avatar's audio is speech (Opus decodes the
server's silence to zeros or within a few steps of them)."""
HANGOVER_S = 0.3
"""Audio goes on being passed this long after the last voiced frame, so that quiet ends
of words and short pauses are not cut out."""


class TwincastVideoService(AIService):
    """The avatar of a twincast server in a pipecat pipeline.

    Args:
        url: the twincast server (``twincast serve``), e.g. ``http://127.0.0.1:8080``.
        token: its operator token, or a viewer token minted with ``say``.
        avatar: which of its avatars (default: the server's first).
        drive: ``"audio"`` (the pipeline's TTS drives the mouth) or ``"text"`` (twincast's
            own voice says the LLM's text).
        max_sentence_chars: in ``"text"`` mode, a run-on sentence is cut at a space here.

    Events: ``on_twincast_event(service, event)`` for each event of the session (a dict:
    ``speech_started``, ``words``, ``speech_ended``, ``interrupted``, ``error``, ...).
    """

    def __init__(self, *, url: str, token: str, avatar: str | None = None,
                 drive: Literal["audio", "text"] = "audio", max_sentence_chars: int = 400,
                 connect_timeout_s: float = 20.0, **kwargs: object) -> None:
        if drive not in ("audio", "text"):
            raise ValueError(f"drive is 'audio' or 'text', not {drive!r}")
        super().__init__(settings=ServiceSettings(model=None), **kwargs)
        self._drive = drive
        self._conn = TwincastConnection(
            ConnectionConfig(url=url, token=token, avatar=avatar, send_audio=drive == "audio",
                             timeout_s=connect_timeout_s), self._on_event)
        self._cutter = SentenceCutter(max_sentence_chars)
        self._out_rate = 24_000
        self._events: asyncio.Queue[dict] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._connected = False
        # Text mode: what each utterance says, until its words have been heard.
        self._said: list[str] = []          # sent, not yet accepted (the server answers in order)
        self._texts: dict[str, str] = {}    # utterance -> its sentence
        self._starts: dict[str, float] = {}  # utterance -> loop time of its first frame
        self._words: dict[str, list[dict]] = {}  # utterance -> words waiting for its start
        self._worded: set[str] = set()
        self._speaking: str | None = None  # the utterance on screen, for TTSStoppedFrame
        self._due: list[tuple[float, int, str]] = []  # (loop time, order, word) to push
        self._order = 0
        self._due_changed = asyncio.Event()
        self._register_event_handler("on_twincast_event")

    # ------------------------------------------------------------ lifecycle
    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        self._out_rate = setup.audio_out_sample_rate
        try:
            await self._conn.open()
            self._connected = True
        except TwincastConnectionError as e:
            await self.push_error(error_msg=str(e), force_treat_as_permanent=True)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._close()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._close()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()

    async def _close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await self.cancel_task(task)
        self._connected = False
        await self._conn.close()

    def _start_pumps(self) -> None:
        if not self._connected or self._tasks:
            return
        self._tasks = [self.create_task(self._pump_video(), "twincast-video"),
                       self.create_task(self._pump_audio(), "twincast-audio"),
                       self.create_task(self._pump_events(), "twincast-events")]
        if self._drive == "text":
            self._tasks.append(self.create_task(self._pump_words(), "twincast-words"))

    # ------------------------------------------------------------ frames in
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            # Frames may only go downstream once StartFrame has.
            await self.push_frame(frame, direction)
            self._start_pumps()
            return
        if isinstance(frame, InterruptionFrame):
            self._interrupt()
        elif self._drive == "audio" and isinstance(frame, TTSAudioRawFrame):
            if self._connected:
                self._conn.speak(frame.audio, frame.sample_rate, frame.num_channels)
            return
        elif self._drive == "text" and direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, TTSSpeakFrame):
                self._say(frame.text)
                return
            if isinstance(frame, LLMTextFrame) or type(frame) is TextFrame:
                for sentence in self._cutter.feed(frame.text):
                    self._say(sentence)
                return
            if isinstance(frame, LLMFullResponseEndFrame):
                for sentence in self._cutter.flush():
                    self._say(sentence)
        await self.push_frame(frame, direction)

    def _say(self, text: str) -> None:
        if not self._connected or not text.strip():
            return
        self._said.append(text)
        self._conn.send({"type": "say", "text": text})

    def _interrupt(self) -> None:
        self._cutter.clear()
        self._said.clear()
        self._texts.clear()
        self._words.clear()
        self._starts.clear()
        self._due.clear()
        if self._connected:
            self._conn.interrupt()

    # ------------------------------------------------------------ frames out
    async def _pump_video(self) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await self._conn.video.recv()
            except MediaStreamError:
                return
            image = frame.to_ndarray(format="rgb24")
            out = OutputImageRawFrame(image=image.tobytes(),
                                      size=(image.shape[1], image.shape[0]), format="RGB")
            await self.push_frame(out)

    async def _pump_audio(self) -> None:
        from aiortc.mediastreams import MediaStreamError

        resample = Resampler(self._out_rate)
        quiet_s = HANGOVER_S
        while True:
            try:
                frame = await self._conn.audio.recv()
            except MediaStreamError:
                return
            pcm = resample(frame.to_ndarray().reshape(-1), frame.sample_rate,
                           len(frame.layout.channels))
            if len(pcm) == 0:
                continue
            if int(np.abs(pcm).max()) > VOICED:
                quiet_s = 0.0
            else:
                quiet_s += len(pcm) / self._out_rate
            if quiet_s < HANGOVER_S:
                await self.push_frame(TTSAudioRawFrame(audio=pcm.tobytes(),
                                                       sample_rate=self._out_rate,
                                                       num_channels=1))

    def _on_event(self, event: dict) -> None:
        # aiortc calls this on the loop; frames are pushed from the events task.
        self._events.put_nowait(event)

    async def _pump_events(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            event = await self._events.get()
            kind, utterance = event.get("type"), event.get("utterance")
            if self._drive == "text":
                if kind == "accepted" and "utterance" in event and self._said:
                    self._texts[event["utterance"]] = self._said.pop(0)
                elif kind == "error" and "session" not in event and self._said:
                    # The channel refused that sentence (a session's own errors name it).
                    self._said.pop(0)
                elif kind == "speech_started" and utterance in self._texts:
                    self._starts[utterance] = loop.time()
                    for word in self._words.pop(utterance, []):
                        self._schedule(utterance, word)
                    self._speaking = utterance
                    await self.push_frame(TTSStartedFrame(context_id=utterance))
                elif kind == "words" and utterance in self._texts:
                    self._worded.add(utterance)
                    for word in event.get("words", []):
                        if utterance in self._starts:
                            self._schedule(utterance, word)
                        else:
                            self._words.setdefault(utterance, []).append(word)
                elif kind == "speech_ended" and utterance in self._texts:
                    text = self._texts.pop(utterance)
                    self._starts.pop(utterance, None)
                    if utterance not in self._worded:
                        # A voice without word timings: the sentence, once it was said.
                        await self.push_frame(TTSTextFrame(text=text, text_type="sentence",
                                                           context_id=utterance))
                    self._worded.discard(utterance)
                    self._speaking = None
                    await self.push_frame(TTSStoppedFrame(context_id=utterance))
                elif kind == "interrupted" and self._speaking is not None:
                    await self.push_frame(TTSStoppedFrame(context_id=self._speaking))
                    self._speaking = None
            await self._call_event_handler("on_twincast_event", event)

    def _schedule(self, utterance: str, word: dict) -> None:
        due = self._starts[utterance] + float(word.get("start", 0.0))
        self._order += 1
        heapq.heappush(self._due, (due, self._order, str(word.get("text", ""))))
        self._due_changed.set()

    async def _pump_words(self) -> None:
        """Each word as a TTSTextFrame when it is heard."""
        loop = asyncio.get_running_loop()
        while True:
            self._due_changed.clear()
            wait = self._due[0][0] - loop.time() if self._due else None
            if wait is not None and wait <= 0:
                _, _, text = heapq.heappop(self._due)
                await self.push_frame(TTSTextFrame(text=text, text_type="word"))
                continue
            try:
                async with asyncio.timeout(wait):
                    await self._due_changed.wait()
            except TimeoutError:
                pass
