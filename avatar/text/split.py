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
        for part in _cut(sent, limit):
            yield part
            first = False
            limit = max_len


def _cut(sentence: str, limit: int) -> Iterator[str]:
    if len(sentence) <= limit:
        yield sentence
        return
    buf = ""
    for clause in _split_keep(sentence, _CLAUSE):
        if buf and len(buf) + len(clause) > limit:
            yield from _hard_cut(buf.strip(), limit)
            buf = ""
            limit = max(limit, 160)
        buf += clause
    if buf.strip():
        yield from _hard_cut(buf.strip(), limit)


def _split_keep(text: str, pattern: re.Pattern) -> list[str]:
    out, last = [], 0
    for m in pattern.finditer(text):
        out.append(text[last: m.end()])
        last = m.end()
    out.append(text[last:])
    return [p for p in out if p]


def _hard_cut(text: str, limit: int) -> Iterator[str]:
    """A clause longer than the limit is cut at the last space before it (or anywhere, for
    scripts without spaces)."""
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        cut = cut if cut > limit // 3 else limit
        yield text[:cut].strip()
        text = text[cut:].strip()
    if text:
        yield text
