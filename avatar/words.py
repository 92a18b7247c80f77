"""Word timings from a piece's phoneme timings, for live subtitles: which word is heard
when, on the utterance's clock.

The voice times phoneme symbols; words are the runs of them between word separators. When
the text has as many words as the phonemes have runs (the usual case) they pair up in
order; when not (espeak joins "of the", a number reads as several words) the piece's spoken
span is shared out by the words' lengths, which is close enough for a subtitle.
"""

from __future__ import annotations

import re
import unicodedata

_HAN = r"[\u3400-\u9fff\uf900-\ufaff]"


def text_words(text: str, lang: str) -> list[str]:
    """The words a subtitle shows: Chinese one character (one syllable) each."""
    if lang == "zh":
        return re.findall(rf"{_HAN}|[A-Za-z0-9]+", text)
    return re.findall(r"[\w'’]+(?:[-.][\w'’]+)*", text)


def _is_sound(symbol: str) -> bool:
    return symbol.strip() != "" and unicodedata.category(symbol[0])[0] not in "PZ"


def word_times(words: list[str], timing: list[tuple[str, float, float]]
               ) -> list[tuple[str, float, float]]:
    """(word, start, end) for ``words`` given every symbol's (symbol, start, end) in order,
    word separators and punctuation included."""
    runs: list[list[float]] = []
    inside = False
    for sym, a, b in timing:
        if _is_sound(sym):
            if inside:
                runs[-1][1] = b
            else:
                runs.append([a, b])
            inside = True
        else:
            inside = False
    if not words or not runs:
        return []
    if len(runs) == len(words):
        return [(w, round(a, 3), round(b, 3)) for w, (a, b) in zip(words, runs, strict=True)]
    a, b = runs[0][0], runs[-1][1]
    sizes = [max(1, len(w)) for w in words]
    total = sum(sizes)
    out, done = [], 0
    for w, n in zip(words, sizes, strict=True):
        s = a + (b - a) * done / total
        done += n
        out.append((w, round(s, 3), round(a + (b - a) * done / total, 3)))
    return out
