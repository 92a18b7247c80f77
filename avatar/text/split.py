"""Cutting text into pieces that can be spoken one after another while the rest is still
being synthesised: sentences, and long sentences at their clauses.

Works lazily over any length of text, so 100,000 characters start speaking as soon as the
first sentence is cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from avatar.text.normalize import ABBREVIATION_RE

# A sentence ends at . ! ? (or their CJK forms, or ; and newlines) unless the dot belongs to
# a number (3.5) or an abbreviation (Dr.).
_END = re.compile(r"[.!?;]+[\"')\]]*(?=\s|$)|[。！？；]+|\n\s*\n")
_CLAUSE = re.compile(r"[,:，、：]\s*")


def sentences(text: str) -> Iterator[str]:
    start = 0
    for m in _END.finditer(text):
        end = m.end()
        # Skip a dot that ends a known abbreviation ("Dr. Smith").
        head = text[max(start, m.start() - 12): m.end()]
        if m.group().startswith(".") and ABBREVIATION_RE.search(head.split()[-1] if
                                                               head.split() else ""):
            continue
        piece = text[start:end].strip()
        if piece:
            yield piece
        start = end
    rest = text[start:].strip()
    if rest:
        yield rest


def pieces(text: str, first_max: int = 40, max_len: int = 160) -> Iterator[str]:
    """Sentences, a long first one cut at its clauses (its audio leaves first), any
    sentence over ``max_len`` at its clauses, and only a clause over ``max_len`` at
    spaces."""
    first = True
    for sent in sentences(text):
        limit = first_max if first else max_len
        for part in _cut(sent, limit, max_len):
            yield part
            first = False
            limit = max_len


def _cut(sentence: str, limit: int, max_len: int = 160) -> Iterator[str]:
    """``sentence`` in pieces of as many whole clauses as fit: the first piece in ``limit``
    characters (or, where its first clause is longer, that clause), the others in
    ``max_len``; a clause longer than ``max_len`` is cut at the last space that fits
    (anywhere, for scripts without spaces). Every piece is said as an utterance of its own,
    with its own intonation, so pieces end only where the reader would pause anyway; the
    first is kept to a clause so that its audio leaves early."""
    text = sentence
    first = limit < max_len
    while len(text) > limit:
        ends = [m.end() for m in _CLAUSE.finditer(text)]
        fit = [e for e in ends if e <= limit]
        if fit:
            end = fit[-1]
        elif first:
            first, limit = False, max_len
            if not ends or ends[0] > max_len:
                continue  # no clause to end at: the sentence by the long limit
            end = ends[0]
        else:
            space = text.rfind(" ", 0, limit)
            end = space if space > limit // 3 else limit
        yield text[:end].strip()
        text = text[end:].strip()
        first, limit = False, max(limit, max_len)
    if text:
        yield text
