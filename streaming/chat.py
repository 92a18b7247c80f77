"""Live chat on one stream: messages in (IRC, the webhook), moderated
(``streaming.moderation``), queued, and answered by the LLM in the avatar's voice when the
show's ``[chat]`` policy says: in its Q&A windows, between its segments, or any time, at
most one answer per ``every`` seconds, newest or most-asked first.

The queue is bounded (a flood of a thousand messages a second keeps a few hundred
questions and counts the rest) and questions older than ``max_age`` are dropped: an answer
a quarter of an hour late is no answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from avatar.chat_settings import ChatSettings
from streaming.moderation import Moderator

log = logging.getLogger(__name__)

MAX_WAITING = 200
"""Distinct questions kept waiting; past this the least-asked oldest one goes."""


@dataclass
class Waiting:
    text: str
    user: str
    first: float
    last: float
    votes: int = 1


class ChatQueue:
    def __init__(self, order: str, max_age: float, clock: Callable[[], float] = time.monotonic,
                 limit: int = MAX_WAITING):
        self.order = order
        self.max_age = max_age
        self.clock = clock
        self.limit = limit
        self.items: OrderedDict[str, Waiting] = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def add(self, key: str, text: str, user: str) -> str:
        """``question`` (new), ``vote`` (asked again by another user) or ``overflow``
        (a new question pushed out the least wanted one)."""
        now = self.clock()
        w = self.items.get(key)
        if w is not None:
            w.votes += 1
            w.last = now
            return "vote"
        outcome = "question"
        if len(self.items) >= self.limit:
            self.expire()
        if len(self.items) >= self.limit:
            worst = min(self.items, key=lambda k: (self.items[k].votes, self.items[k].last))
            del self.items[worst]
            outcome = "overflow"
        self.items[key] = Waiting(text, user, now, now)
        return outcome

    def expire(self) -> int:
        now = self.clock()
        old = [k for k, w in self.items.items() if now - w.last > self.max_age]
        for k in old:
            del self.items[k]
        return len(old)

    def pop(self) -> Waiting | None:
        self.expire()
        if not self.items:
            return None
        if self.order == "newest":
            key = max(self.items, key=lambda k: self.items[k].last)
        else:
            key = max(self.items, key=lambda k: (self.items[k].votes, -self.items[k].first))
        return self.items.pop(key)


Answerer = Callable[[str, str], Awaitable[None]]
"""(text, user) -> returns once the avatar has said its answer."""


class ChatDesk:
    """One stream's chat: ``post`` takes a message from any source; answers are given by
    ``window``/``between`` (called by the show) or by its own loop (``answer = anytime``)."""

    def __init__(self, session_id: str, settings: ChatSettings, answer: Answerer,
                 totals: Counter | None = None, clock: Callable[[], float] = time.monotonic,
                 moderator: Moderator | None = None):
        self.session_id = session_id
        self.s = settings
        self._answer = answer
        self.clock = clock
        self.moderator = moderator or Moderator(settings, clock)
        self.queue = ChatQueue(settings.order, settings.max_age, clock)
        self.counts: Counter = Counter()
        """Messages by verdict (question, vote, overflow, or a drop reason); taken: questions
        handed to the LLM."""
        self.totals = totals
        self._last_answer = -1e9
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self.sources: list = []
        """Where messages come from besides the webhook (``streaming.irc.IrcChat``)."""

    def _count(self, key: str) -> None:
        self.counts[key] += 1
        if self.totals is not None:
            self.totals[key] += 1

    def post(self, user: str, text: str, source: str = "webhook") -> str:
        """Moderate and queue one message; returns its verdict (a drop reason or
        question/vote/overflow). Never raises on what a viewer typed."""
        user = (user or "viewer")[:64]
        v = self.moderator.check(user, text if isinstance(text, str) else "")
        if not v.ok:
            self._count(v.reason)
            log.debug("session %s: chat from %s dropped (%s)", self.session_id, user,
                      v.reason)
            return v.reason
        outcome = self.queue.add(v.key, v.text, user)
        self._count(outcome)
        if outcome == "overflow":
            log.warning("session %s: chat queue full (%d questions); the least asked one "
                        "was dropped", self.session_id, self.queue.limit)
        self._arrived.set()
        return outcome

    def describe(self) -> dict:
        """For ``GET /v1/sessions/ID``: how it answers, what waits, what came in by verdict,
        and each chat source's connection state (``live`` once it has joined)."""
        return {"answer": self.s.answer, "queued": len(self.queue),
                "messages": dict(self.counts),
                "sources": [{"chat": str(src.target), "state": src.state}
                            for src in self.sources]}

    def start(self) -> None:
        """``answer = anytime``: answer on its own, as questions come."""
        if self.s.answer == "anytime" and self._loop_task is None:
            self._loop_task = asyncio.ensure_future(self._anytime())

    def stop(self) -> None:
        """The stream closed: stop answering and reading its sources."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        for src in self.sources:
            src.stop()

    async def _anytime(self) -> None:
        while True:
            await self._one(deadline=None)

    async def between(self) -> None:
        """Between two show segments: one answer, if one is waiting and it is time."""
        if self.s.answer == "between" and len(self.queue) and self._due() <= 0:
            await self._one(deadline=self.clock())

    async def window(self, seconds: float) -> None:
        """A Q&A window: answer waiting and arriving questions for ``seconds`` (an answer
        under way at its end is finished, not cut)."""
        end = self.clock() + seconds
        while self.clock() < end:
            if not await self._one(deadline=end):
                return

    def _due(self) -> float:
        return self._last_answer + self.s.every - self.clock()

    async def _one(self, deadline: float | None) -> bool:
        """Wait (until ``deadline``) for a question and for ``every`` to pass, then answer
        it. False when the deadline came first."""
        while True:
            wait = self._due()
            if not len(self.queue):
                self._arrived.clear()
                wait = max(wait, 0.0)
                if deadline is not None:
                    left = deadline - self.clock()
                    if left <= 0:
                        return False
                    try:
                        async with asyncio.timeout(left):  # not wait_for: see streaming.irc
                            await self._arrived.wait()
                    except TimeoutError:
                        return False
                else:
                    await self._arrived.wait()
                continue
            if wait > 0:
                if deadline is not None and self.clock() + wait >= deadline:
                    await asyncio.sleep(max(0.0, deadline - self.clock()))
                    return False
                await asyncio.sleep(wait)
                continue
            q = self.queue.pop()
            if q is None:
                continue
            self._last_answer = self.clock()
            self._count("taken")
            log.info("session %s: answering %s (asked by %d)", self.session_id, q.user,
                     q.votes)
            try:
                await self._answer(q.text, q.user)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one question's fault, not the show's
                log.exception("session %s: a chat answer failed", self.session_id)
            return True
