"""Questions to one session, answered by the operator's LLM in the avatar's voice.

A question waits its turn (one answer at a time per session, a few waiting); its answer
streams from the LLM (``streaming.llm``) and each sentence is said as soon as it is
complete, so the first is on its way to the voice while the model is still writing. A
barge-in drops the answer being given and those waiting. An LLM that is down, slow or
talking nonsense costs that answer alone: an ``answer_failed`` event and a log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass

from avatar.errors import TwincastError
from streaming.events import AnswerDone, AnswerFailed, AnswerSentence, AnswerStarted
from streaming.llm import LLMConfig, LLMError, Sentences, stream_reply
from streaming.requests import BadRequest
from streaming.session import Session, SpeechBacklog

log = logging.getLogger(__name__)


@dataclass
class Question:
    id: str
    text: str
    sender: str | None
    asked: float
    done: asyncio.Future | None = None
    """Resolved once the answer is given, failed or dropped (``Conversation.answer``)."""
    last: str | None = None
    """The utterance of the answer's last sentence queued so far."""

    def finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


class Conversation:
    def __init__(self, session: Session, cfg: LLMConfig, http,  # noqa: ANN001 - aiohttp
                 max_waiting: int = 3, backlog_wait_s: float = 30.0,
                 totals: Counter | None = None):
        self.session = session
        self.cfg = cfg
        self.http = http
        self.max_waiting = max_waiting
        self.backlog_wait_s = backlog_wait_s
        self.waiting: deque[Question] = deque()
        self.stats = {"asked": 0, "answered": 0, "failed": 0, "dropped": 0}
        self.totals = totals
        """The server's counts over all sessions (``/metrics``), added to as these are."""
        self._task: asyncio.Task | None = None
        self._current: Question | None = None
        self._questions: dict[str, Question] = {}
        """Questions waiting or being answered, by id (each leaves when finished)."""
        session.on_interrupt.append(self.cancel)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] += n
        if self.totals is not None:
            self.totals[key] += n

    def ask(self, text: str, sender: str | None = None) -> str:
        """Queue a question; returns its id. A full queue is a 429."""
        if len(self.waiting) >= self.max_waiting:
            raise BadRequest(f"{len(self.waiting)} questions are already waiting for this "
                             "session's answer; ask again when it has answered", 429)
        if self.session.voice is None:
            raise BadRequest(f"avatar {self.session.avatar_name!r} has no voice to answer "
                             "with", 409)
        q = Question(uuid.uuid4().hex[:8], text, sender, time.monotonic(),
                     asyncio.get_running_loop().create_future())
        self.waiting.append(q)
        self._count("asked", 1)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._work(), name=f"answers-{self.session.id}")
        self._questions[q.id] = q
        return q.id

    async def answer(self, text: str, sender: str | None = None) -> None:
        """Ask, and return once the answer has been said (or failed, or was dropped)."""
        q = self._questions[self.ask(text, sender)]
        assert q.done is not None
        await q.done
        if q.last is not None:
            await self.session.wait_spoken(q.last)

    def cancel(self) -> None:
        """Barge-in: the answer being given and every waiting question are dropped."""
        dropped = len(self.waiting) + (self._current is not None)
        for q in self.waiting:
            q.finish()
            self._questions.pop(q.id, None)
        self.waiting.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._count("dropped", dropped)

    async def close(self) -> None:
        self.cancel()
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _work(self) -> None:
        while self.waiting and self.session.state != "closed":
            q = self.waiting.popleft()
            self._current = q
            try:
                await self._answer(q)
            except asyncio.CancelledError:
                self.session.emit(AnswerFailed, question=q.id,
                                  message="dropped: the avatar was interrupted")
                raise
            except Exception as e:  # noqa: BLE001 - one answer's fault, never the session's
                self._count("failed", 1)
                log.exception("session %s: question %s failed", self.session.id, q.id)
                self.session.emit(AnswerFailed, question=q.id,
                                  message=f"the answer failed ({e.__class__.__name__})")
            finally:
                self._current = None
                q.finish()
                self._questions.pop(q.id, None)

    async def _answer(self, q: Question) -> None:
        s = self.session
        s.emit(AnswerStarted, question=q.id)
        question = f"{q.sender} asks: {q.text}" if q.sender else q.text
        sentences = Sentences(self.cfg.max_reply_chars)
        said = 0
        try:
            async for piece in stream_reply(self.http, self.cfg, question, s.avatar_name):
                for sentence in sentences.feed(piece):
                    said += await self._say(q, sentence)
            for sentence in sentences.flush():
                said += await self._say(q, sentence)
        except LLMError as e:
            self._count("failed", 1)
            log.warning("session %s: question %s not answered%s: %s", s.id, q.id,
                        f" after {said} sentence(s)" if said else "", e)
            s.emit(AnswerFailed, question=q.id, message=str(e))
            return
        if sentences.cut:
            log.info("session %s: answer %s cut at %d characters", s.id, q.id,
                     self.cfg.max_reply_chars)
        self._count("answered", 1)
        s.emit(AnswerDone, question=q.id, sentences=said, cut=sentences.cut)

    async def _say(self, q: Question, sentence: str) -> int:
        """Queue one sentence; waits while the session's speech queue is full. A sentence
        the voice cannot speak is skipped with a warning (the rest is said)."""
        deadline = time.monotonic() + self.backlog_wait_s
        while True:
            try:
                uid = self.session.say(sentence)
                break
            except SpeechBacklog:
                if time.monotonic() > deadline:
                    raise LLMError("the session's speech queue stayed full") from None
                await asyncio.sleep(0.2)
            except TwincastError as e:
                log.warning("session %s: a sentence of answer %s skipped: %s",
                            self.session.id, q.id, e)
                return 0
        q.last = uid
        self.session.emit(AnswerSentence, utterance=uid, question=q.id, text=sentence)
        return 1
