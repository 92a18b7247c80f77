"""Microphone conversation: the person's turns, heard, transcribed and answered.

A session in conversation mode hears its client's microphone here instead of being driven
by it: a turn starts when the audio is loud for ``start_s`` (and the avatar stops talking
at once: barge-in), and ends after ``end_s`` of quiet; the turn is transcribed (pocketsphinx
on this host, or the operator's own server over the OpenAI-compatible transcription API)
and what was heard goes to the LLM as a question (``streaming.conversation``). The
browser's echo cancellation keeps the avatar's own voice out of the microphone.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from avatar.audio import resample
from avatar.errors import TwincastError
from streaming.events import Heard, Listening

log = logging.getLogger(__name__)

RATE = 16000


@dataclass(frozen=True)
class ListenConfig:
    gate_db: float = -42.0
    """A 20 ms frame louder than this (dBFS) is speech."""
    start_s: float = 0.15
    """Loud this long (a cough or a click is shorter) and the person has the turn."""
    end_s: float = 0.8
    """Quiet this long and their turn is over."""
    min_s: float = 0.4
    """A turn shorter than this is not transcribed."""
    max_s: float = 20.0
    """A turn is cut (and transcribed) at this length."""
    preroll_s: float = 0.3
    """Audio kept from before the turn started (its first syllable's onset)."""


class Sphinx:
    """pocketsphinx's general English model (it ships in the wheel): modest accuracy, no
    network, about half real time on one core. One decoder, one turn at a time."""

    def __init__(self) -> None:
        self._decoder = None
        self._lock = threading.Lock()

    def _transcribe(self, audio: np.ndarray) -> str:
        with self._lock:
            if self._decoder is None:
                from pocketsphinx import Decoder

                self._decoder = Decoder(samprate=RATE, loglevel="FATAL")
            d = self._decoder
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            hyp = d.hyp()
            return hyp.hypstr.strip() if hyp is not None else ""

    async def transcribe(self, audio: np.ndarray, http=None) -> str:  # noqa: ANN001
        return await asyncio.get_running_loop().run_in_executor(None, self._transcribe,
                                                                audio)


@dataclass(frozen=True)
class TranscriptionAPI:
    """The operator's recogniser over the OpenAI-compatible transcription API
    (``POST {url}/audio/transcriptions``: whisper.cpp's server, vLLM, faster-whisper
    servers, hosted providers)."""

    url: str
    model: str
    key: str | None = None
    timeout_s: float = 30.0

    async def transcribe(self, audio: np.ndarray, http) -> str:  # noqa: ANN001 - aiohttp
        import aiohttp
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, audio, RATE, format="WAV", subtype="PCM_16")
        form = aiohttp.FormData()
        form.add_field("file", buf.getvalue(), filename="turn.wav", content_type="audio/wav")
        form.add_field("model", self.model)
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            async with http.post(self.url.rstrip("/") + "/audio/transcriptions", data=form,
                                 headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as r:
                if r.status != 200:
                    raise TwincastError(f"the transcription server answered {r.status}")
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise TwincastError(f"the transcription server failed: "
                                f"{str(e) or e.__class__.__name__}") from None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise TwincastError("the transcription server's answer has no text")
        return text.strip()


def _at_rate(pieces: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """A turn's pieces as one signal at the recognisers' rate (resampled in one go: piece by
    piece, each 20 ms frame's edges would be filtered apart)."""
    out, run, run_rate = [], [], None
    for a, r in [*pieces, (None, None)]:
        if r != run_rate and run:
            whole = np.concatenate(run)
            out.append(resample(whole, run_rate, RATE) if run_rate != RATE else whole)
            run = []
        if a is not None:
            run.append(a)
            run_rate = r
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class TurnTaker:
    """One session's listening: ``hear`` each piece of microphone audio; ``on_turn`` gets
    what was said once a turn is over."""

    def __init__(self, session, recogniser, on_turn: Callable[[str], object],  # noqa: ANN001
                 http=None, cfg: ListenConfig | None = None):  # noqa: ANN001
        self.session = session
        self.recogniser = recogniser
        self.on_turn = on_turn
        self.http = http
        self.cfg = cfg or ListenConfig()
        self.stats = {"turns": 0, "heard": 0, "empty": 0, "failed": 0, "short": 0}
        self._pre: deque[tuple[np.ndarray, int]] = deque()
        self._pre_s = 0.0
        self._turn: list[tuple[np.ndarray, int]] | None = None
        self._turn_s = 0.0
        self._loud_s = 0.0
        self._quiet_s = 0.0
        self._tasks: set[asyncio.Task] = set()

    def hear(self, audio: np.ndarray, rate: int) -> None:
        """One piece of microphone audio (mono float, any rate). Runs on the event loop for
        every 20 ms frame, so it only measures and keeps: the turn is resampled once, when
        it is over, off the loop."""
        c = self.cfg
        a = np.asarray(audio, np.float32)
        dur = len(a) / rate
        loud = 20 * np.log10(float(np.sqrt(np.mean(np.square(a)))) + 1e-9) > c.gate_db
        if self._turn is None:
            self._pre.append((a, rate))
            self._pre_s += dur
            while self._pre_s > c.preroll_s + c.start_s:
                old, r = self._pre.popleft()
                self._pre_s -= len(old) / r
            self._loud_s = self._loud_s + dur if loud else 0.0
            if self._loud_s >= c.start_s and self.session.state != "closed":
                self._turn, self._turn_s = list(self._pre), self._pre_s
                self._pre.clear()
                self._pre_s = self._quiet_s = 0.0
                self.stats["turns"] += 1
                self.session.interrupt()  # barge-in: the person talks over the avatar
                self.session.emit(Listening)
            return
        self._turn.append((a, rate))
        self._turn_s += dur
        self._quiet_s = 0.0 if loud else self._quiet_s + dur
        if self._quiet_s >= c.end_s or self._turn_s >= c.max_s:
            turn, spoken = self._turn, self._turn_s - self._quiet_s
            self._turn, self._turn_s, self._loud_s = None, 0.0, 0.0
            if spoken < c.min_s:
                self.stats["short"] += 1
                return
            task = asyncio.ensure_future(self._finish(turn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, pieces: list[tuple[np.ndarray, int]]) -> None:
        turn = await asyncio.get_running_loop().run_in_executor(None, _at_rate, pieces)
        try:
            text = await self.recogniser.transcribe(turn, self.http)
        except TwincastError as e:
            self.stats["failed"] += 1
            log.warning("session %s: a turn was not transcribed: %s", self.session.id, e)
            return
        if not text:
            self.stats["empty"] += 1
            return
        self.stats["heard"] += 1
        self.session.emit(Heard, text=text)
        try:
            self.on_turn(text)
        except TwincastError as e:  # a full question queue: this turn is not answered
            log.warning("session %s: a turn was heard but not asked: %s", self.session.id, e)

    def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
