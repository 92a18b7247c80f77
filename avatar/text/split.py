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
    """Sentences, with the first piece kept short (its audio leaves first) and any long
    sentence cut at its clauses, then at spaces."""
    first = True
    for sent in sentences(text):
        limit = first_max if first else max_len
        for part in _cut(sent, limit, max_len):
            yield part
            first = False
            limit = max_len


def _cut(sentence: str, limit: int, max_len: int = 160) -> Iterator[str]:
    """``sentence`` in pieces: the first at most ``limit`` characters, the others at most
    ``max_len``. Each piece is as many whole clauses as fit, or, where not even one does,
    cut at the last space that fits (anywhere, for scripts without spaces). Every piece is
    said as an utterance of its own, with its own final fall and pauses, so only the first
    is kept short (its audio leaves first) and the rest are as long as allowed."""
    text = sentence
    while len(text) > limit:
        end = reach = 0
        for m in _CLAUSE.finditer(text):
            if m.end() > limit:
                # A first clause up to twice the limit is worth its few milliseconds
                # more: a cut where the reader pauses anyway is not heard as one.
                first = limit < max_len
                reach = m.end() if first and m.end() <= min(2 * limit, max_len) else 0
                break
            end = m.end()
        end = end or reach
        if not end:
            space = text.rfind(" ", 0, limit)
            end = space if space > limit // 3 else limit
        yield text[:end].strip()
        text = text[end:].strip()
        limit = max(limit, max_len)
    if text:
        yield text
