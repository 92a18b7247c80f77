"""What a session tells its listeners (the data channel, logs, tests), as typed values.

Each event says which session and utterance it concerns and when on the session's stream
clock it happened (the time the viewer sees it, not the time it was computed).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar


@dataclass(frozen=True)
class SessionEvent:
    session: str
    utterance: str | None
    stream_time: float
    type: ClassVar[str] = ""

    def to_json(self) -> dict:
        """The data channel's form: ``{"type", "session", "utterance", "stream_time"}`` and
        the event's own fields."""
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True)
class SpeechStarted(SessionEvent):
    """The first frame of an utterance is on screen."""

    type: ClassVar[str] = "speech_started"


@dataclass(frozen=True)
class SpeechEnded(SessionEvent):
    """The last frame of an utterance was shown."""

    type: ClassVar[str] = "speech_ended"


@dataclass(frozen=True)
class Words(SessionEvent):
    """When each word of an utterance is heard, for live subtitles: ``words`` is a list of
    ``{"text", "start", "end"}`` in seconds from the utterance's first frame (its
    ``speech_started`` stream_time); sent as each part of it is synthesised, usually before
    it starts."""

    words: tuple = ()
    type: ClassVar[str] = "words"


@dataclass(frozen=True)
class Interrupted(SessionEvent):
    """What was being said and queued was dropped (barge-in)."""

    type: ClassVar[str] = "interrupted"


@dataclass(frozen=True)
class SpeechFailed(SessionEvent):
    """An utterance could not be synthesised or rendered: it is dropped where it stands
    (none of a half-synthesised one is said); the session goes on."""

    message: str = ""
    type: ClassVar[str] = "error"


@dataclass(frozen=True)
class Closing(SessionEvent):
    """The session is being closed (by its viewer, the watchdog, or the server shutting
    down), with why: the last event a viewer gets. ``retry``: it ends for the server's
    sake, not the viewer's (the server or its cluster worker is stopping), so a new
    session will do; the embed kit reconnects on it."""

    reason: str = ""
    retry: bool = False
    type: ClassVar[str] = "closing"


@dataclass(frozen=True)
class AnswerStarted(SessionEvent):
    """A question went to the LLM (``streaming.conversation``)."""

    question: str = ""
    type: ClassVar[str] = "answer_started"


@dataclass(frozen=True)
class AnswerSentence(SessionEvent):
    """A sentence of the answer was queued to be said, as ``utterance`` (its
    speech_started and speech_ended follow); ``text`` is what is said (a subtitle)."""

    question: str = ""
    text: str = ""
    type: ClassVar[str] = "answer_sentence"


@dataclass(frozen=True)
class AnswerDone(SessionEvent):
    """The answer is complete (all its sentences queued); ``cut``: it ran past the reply
    length cap and the rest was dropped."""

    question: str = ""
    sentences: int = 0
    cut: bool = False
    type: ClassVar[str] = "answer_done"


@dataclass(frozen=True)
class AnswerFailed(SessionEvent):
    """The LLM did not answer (down, slow, an error, a broken stream) or the answer was
    dropped (barge-in); what was said of it stays said, the session goes on."""

    question: str = ""
    message: str = ""
    type: ClassVar[str] = "answer_failed"


@dataclass(frozen=True)
class Listening(SessionEvent):
    """Conversation mode: the person started talking (the avatar stopped, if it was)."""

    type: ClassVar[str] = "listening"


@dataclass(frozen=True)
class Heard(SessionEvent):
    """Conversation mode: what the person's turn was transcribed as (it goes to the LLM
    as their question: its answer events follow)."""

    text: str = ""
    type: ClassVar[str] = "heard"


EVENTS = (SpeechStarted, SpeechEnded, Words, Interrupted, SpeechFailed, Closing, AnswerStarted,
          AnswerSentence, AnswerDone, AnswerFailed, Listening, Heard)
"""Every event type, for the documentation."""
