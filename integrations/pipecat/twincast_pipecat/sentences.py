"""An LLM's reply, token by token, cut into sentences to speak: each is sent to the
avatar's voice as soon as it is complete, so the first one is on its way while the model
is still writing the rest."""

from __future__ import annotations

import re

# A sentence ends at . ! ? (or their CJK forms, or an ellipsis), optionally followed by
# closing quotes or brackets, and then white space. The white space is what tells "3.5" or
# "e.g." mid-token from an end; CJK full stops need none.
_END = re.compile(r"(?:[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f]+)")
# A full stop after these is not an end: "e.g. blue", "Dr. Collins".
_INITIALS = re.compile(r"^(?:[A-Za-z]\.){2,}$")
_TITLES = {"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "no.", "approx.", "jr.", "sr."}


def _is_end(text: str) -> bool:
    """Whether ``text`` (up to a candidate end) ends a sentence."""
    last = text.split()[-1].lower() if text.split() else ""
    return not (_INITIALS.match(last) or last in _TITLES)


class SentenceCutter:
    """Feed text pieces; get back the sentences they complete. ``max_chars``: a sentence
    that runs on past this is cut at its last space (a run-on must not hold the voice
    back)."""

    def __init__(self, max_chars: int = 400) -> None:
        self.max_chars = max_chars
        self._text = ""

    def feed(self, piece: str) -> list[str]:
        self._text += piece
        out: list[str] = []
        pos = 0
        while (m := _END.search(self._text, pos)) is not None:
            if not _is_end(self._text[:m.end()]):
                pos = m.end()
                continue
            out.append(self._text[:m.end()].strip())
            self._text, pos = self._text[m.end():], 0
        while len(self._text) > self.max_chars:
            cut = self._text.rfind(" ", 0, self.max_chars)
            cut = cut if cut > 0 else self.max_chars
            out.append(self._text[:cut].strip())
            self._text = self._text[cut:]
        return [s for s in out if s]

    def flush(self) -> list[str]:
        """The end of the reply: what is left is the last sentence."""
        rest, self._text = self._text.strip(), ""
        return [rest] if rest else []

    def clear(self) -> None:
        self._text = ""
