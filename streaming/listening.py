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
        self._pre: deque[np.ndarray] = deque()
        self._turn: list[np.ndarray] | None = None
        self._loud_s = 0.0
        self._quiet_s = 0.0
        self._tasks: set[asyncio.Task] = set()

    def hear(self, audio: np.ndarray, rate: int) -> None:
        c = self.cfg
        a = resample(np.asarray(audio, np.float32), rate, RATE) if rate != RATE else \
            np.asarray(audio, np.float32)
        dur = len(a) / RATE
        loud = 20 * np.log10(float(np.sqrt(np.mean(np.square(a)))) + 1e-9) > c.gate_db
        if self._turn is None:
            self._pre.append(a)
            while sum(len(p) for p in self._pre) / RATE > c.preroll_s + c.start_s:
                self._pre.popleft()
            self._loud_s = self._loud_s + dur if loud else 0.0
            if self._loud_s >= c.start_s and self.session.state != "closed":
                self._turn = list(self._pre)
                self._pre.clear()
                self._quiet_s = 0.0
                self.stats["turns"] += 1
                self.session.interrupt()  # barge-in: the person talks over the avatar
                self.session.emit(Listening)
            return
        self._turn.append(a)
        self._quiet_s = 0.0 if loud else self._quiet_s + dur
        length = sum(len(p) for p in self._turn) / RATE
        if self._quiet_s >= c.end_s or length >= c.max_s:
            turn = np.concatenate(self._turn)
            self._turn, self._loud_s = None, 0.0
            if length - self._quiet_s < c.min_s:
                self.stats["short"] += 1
                return
            task = asyncio.ensure_future(self._finish(turn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, turn: np.ndarray) -> None:
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
