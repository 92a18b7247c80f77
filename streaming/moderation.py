"""What of a live chat may reach the avatar: cleaning, a block list, limits per user,
duplicates and the operator's own filter. Pure and synchronous (a flood of a thousand
messages a second costs microseconds each); ``streaming.chat`` queues what passes.

A message is dropped with one reason (a metric label and a log line), or passes as a
question; a duplicate of a waiting question is a vote for it (``most-asked`` order).
"""

from __future__ import annotations

import importlib
import logging
import re
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from avatar.chat_settings import ChatSettings
from avatar.errors import TwincastError

log = logging.getLogger(__name__)

# Abuse and spam that no operator wants read aloud; a show's ``block`` adds its own. Words
# are matched whole after folding look-alike characters (0 -> o, $ -> s, f.u.c.k -> fuck).
BLOCK_WORDS = (
    "fuck", "fucking", "fucker", "motherfucker", "shit", "bullshit", "bitch", "bastard",
    "asshole", "dick", "dickhead", "cunt", "whore", "slut", "retard", "retarded", "idiot",
    "moron", "stupid", "dumb", "loser", "scam", "scammer", "fraud", "faggot", "nigger",
    "nigga", "porn", "nude", "nudes", "sex", "sexy", "onlyfans", "crypto", "bitcoin",
    "airdrop", "giveaway", "viagra", "casino", "betting", "nazi", "hitler", "kys", "stfu",
    "wtf", "pedo", "boring", "cringe",
)
BLOCK_PHRASES = (
    "kill yourself", "shut up", "go away", "follow me", "follow back", "check my channel",
    "check out my", "sub 4 sub", "sub4sub", "free followers", "cheap followers",
    "buy followers", "get followers", "free money", "dm me", "click here", "promo code",
    "make money", "earn money", "work from home", "you are fake", "nobody cares",
    "hate you", "i hate this", "you suck", "this sucks", "stream sucks", "you are ugly",
    "you re ugly", "so ugly", "you are fat", "you re fat", "go die", "hope you die",
    "you should die", "is trash", "is garbage", "you are trash", "ignore previous",
    "ignore all previous", "ignore your instructions",
    "system prompt", "pretend you are", "repeat after me", "say the word",
)
QUESTION_WORDS = {
    "what", "whats", "how", "hows", "does", "do", "did", "is", "are", "was", "were", "can",
    "could", "will", "would", "where", "when", "why", "who", "which", "should", "any",
    "anyone", "has", "have", "may", "shall", "wie", "wo", "hast",
}
_FOLD = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "@": "a", "5": "s",
                       "$": "s", "7": "t", "+": "t"})
_LINK = re.compile(r"(https?://|www\.|\b[\w-]+\.(com|net|org|io|gg|ru|xyz|ly|me|tv|co|"
                   r"info|biz|link|shop|click|top|app)\b(/|\s|$))", re.I)
_TAG = re.compile(r"<[^<>]{0,200}>")
_HTML = re.compile(r"</?[A-Za-z][^<>]{0,200}>")
_SPACE = re.compile(r"\s+")
USERS_KEPT = 10_000
"""Per-user counts kept for this many recent users (a flood of new names stays bounded)."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    """"question", "vote" (a duplicate of a waiting question from another user), or why it
    was dropped: too-long, markup, empty, link, blocked, shouting, spam, rate, duplicate,
    not-a-question, filter."""
    text: str = ""
    key: str = ""
    """The question's folded form, for duplicates and votes."""


def clean(text: str) -> str:
    """Control characters (terminal escapes whole) and markup out, whitespace collapsed."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", " ", text)
    text = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in text)
    text = _TAG.sub(" ", text)
    text = re.sub(r"[*_`~#>\[\]]{1,}", " ", text)  # Markdown and chat formatting
    return _SPACE.sub(" ", text).strip()


def fold(text: str) -> str:
    """Lower case, accents and look-alike characters folded, letters and digits only,
    single spaces: the form block words and duplicates are matched in."""
    t = unicodedata.normalize("NFKD", text.lower())
    t = "".join(c for c in t if not unicodedata.combining(c))
    t = re.sub(r"(?<=\w)[!|](?=\w)", "i", t).translate(_FOLD)  # "sh!t", "st|pid"
    # Letters split by dots or dashes ("f.u.c.k", "s-h-i-t") are one word.
    t = re.sub(r"\b(\w)(?:[.\-_*](\w)\b)+", lambda m: m.group(0).replace(".", "")
               .replace("-", "").replace("_", "").replace("*", ""), t)
    t = re.sub(r"[^\w\s]", " ", t)
    t = re.sub(r"(\w)\1{2,}", r"\1\1", t)  # "stuuuupid" -> "stuupid"
    return _SPACE.sub(" ", t).strip()


def _squeeze(word: str) -> str:
    return re.sub(r"(\w)\1+", r"\1", word)


def load_filter(spec: str) -> Callable[[str, str], object]:
    """The operator's own check, ``module.path:function`` taking (user, text) and
    returning True/None to keep, False to drop, or a string to say instead."""
    mod, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise TwincastError(f"chat filter {spec!r} cannot be loaded ({e}); it is "
                            "module.path:function on the server's Python path") from None
    if not callable(fn):
        raise TwincastError(f"chat filter {spec!r} is not a function")
    return fn


class Moderator:
    def __init__(self, settings: ChatSettings, clock: Callable[[], float] = time.monotonic,
                 own_filter: Callable[[str, str], object] | None = None):
        self.s = settings
        self.clock = clock
        words: set[str] = set()
        phrases: set[str] = set()
        for b in (*BLOCK_WORDS, *BLOCK_PHRASES, *settings.block):
            b = fold(b)  # matched in folded text, so folded the same way
            (phrases if " " in b else words).add(b)
        self.words = words | {_squeeze(w) for w in words}
        self.phrases = tuple((f" {p} ", f" {_squeeze(p)} ") for p in sorted(phrases))
        self.filter = own_filter or (load_filter(settings.filter) if settings.filter
                                     else None)
        self._users: OrderedDict[str, deque[float]] = OrderedDict()
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    def check(self, user: str, text: str) -> Verdict:
        s = self.s
        # A 100 kB message is dropped before any work proportional to its size.
        if len(text) > 4 * s.max_chars:
            return Verdict(False, "too-long")
        # Platforms escape what viewers type: HTML in a message is someone probing.
        if _HTML.search(text):
            return Verdict(False, "markup")
        said = clean(text)
        if not said:
            return Verdict(False, "empty")
        if len(said) > s.max_chars:
            return Verdict(False, "too-long")
        if not re.search(r"\w", said):
            return Verdict(False, "empty")
        if not s.links and _LINK.search(said):
            return Verdict(False, "link")
        # A leading mention of the avatar (or anyone) is not part of the question.
        said = re.sub(r"^(@\w+[,:]?\s*)+", "", said) or said
        folded = fold(said)
        if self._blocked(folded):
            return Verdict(False, "blocked")
        letters = [c for c in said if c.isalpha()]
        if len(letters) >= 12 and sum(c.isupper() for c in letters) > 0.7 * len(letters):
            return Verdict(False, "shouting")
        if re.search(r"(.)\1{5,}", said) or re.search(r"(\S{2,6})\1{4,}", said) or \
                len(said) > 40 and len(set(said.lower())) < 8:
            return Verdict(False, "spam")
        if not self._within_rate(user):
            return Verdict(False, "rate")
        now = self.clock()
        seen = self._seen.get((user, folded))
        self._seen[(user, folded)] = now
        self._seen.move_to_end((user, folded))
        while len(self._seen) > USERS_KEPT:
            self._seen.popitem(last=False)
        if seen is not None and now - seen < s.max_age:
            return Verdict(False, "duplicate")
        if s.questions_only and not self.is_question(folded, said):
            return Verdict(False, "not-a-question")
        if self.filter is not None:
            try:
                out = self.filter(user, said)
            except Exception:  # noqa: BLE001 - the operator's code; fail closed
                log.exception("chat filter %s failed on a message; dropped", s.filter)
                return Verdict(False, "filter")
            if out is False:
                return Verdict(False, "filter")
            if isinstance(out, str):
                said, folded = out, fold(out)
        return Verdict(True, "question", said, folded)

    def _blocked(self, folded: str) -> bool:
        tokens = folded.split()
        if any(t in self.words or _squeeze(t) in self.words for t in tokens):
            return True
        spaced = f" {folded} "
        squeezed = f" {' '.join(_squeeze(t) for t in tokens)} "
        return any(p in spaced or q in squeezed for p, q in self.phrases)

    @staticmethod
    def is_question(folded: str, said: str) -> bool:
        first = folded.split(" ", 1)[0]
        return "?" in said or "？" in said or first in QUESTION_WORDS

    def _within_rate(self, user: str) -> bool:
        now = self.clock()
        times = self._users.get(user)
        if times is None:
            times = self._users[user] = deque()
            while len(self._users) > USERS_KEPT:
                self._users.popitem(last=False)
        self._users.move_to_end(user)
        while times and now - times[0] > 60.0:
            times.popleft()
        if len(times) >= self.s.per_user:
            return False
        times.append(now)
        return True
