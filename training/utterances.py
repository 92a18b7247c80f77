"""Cutting a clip's speech into utterances of at most ~12 s, with their words.

Utterances start and end in pauses found by the voice activity detector; aligned words are
attached to the utterance they fall in, and an utterance grows to cover a word the detector
cut, so no word is split across two utterances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.align import Word


@dataclass
class Utterance:
    clip: str
    start: float
    end: float
    text: str | None = None
    words: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        d = {"clip": self.clip, "start": round(self.start, 3), "end": round(self.end, 3),
             "text": self.text}
        if self.words:
            d["words"] = self.words
        return d


def split_long(a: int, b: int, db: np.ndarray, max_len: int) -> list[tuple[int, int]]:
    """Split [a, b) (hops) at its quietest point until every piece is at most max_len."""
    if b - a <= max_len:
        return [(a, b)]
    lo, hi = a + (b - a) // 5, b - (b - a) // 5
    cut = lo + int(np.argmin(db[lo:hi]))
    return split_long(a, cut, db, max_len) + split_long(cut, b, db, max_len)


def make_utterances(clip: str, segments: list[tuple[float, float]], db: np.ndarray,
                    hop_s: float, duration: float, max_len_s: float, min_pause_s: float,
                    words: list[Word] | None = None, pad_s: float = 0.1) -> list[Utterance]:
    groups: list[list[float]] = []
    for a, b in segments:
        if groups:
            ga, gb = groups[-1]
            if (a - gb < min_pause_s or gb - ga < 1.0) and b - ga <= max_len_s:
                groups[-1][1] = b
                continue
        groups.append([a, b])
    pieces: list[tuple[float, float]] = []
    max_hops = int(max_len_s / hop_s)
    for a, b in groups:
        for pa, pb in split_long(int(a / hop_s), int(b / hop_s), db, max_hops):
            pieces.append((pa * hop_s, pb * hop_s))
    utts = [Utterance(clip, max(0.0, a - pad_s), min(duration, b + pad_s)) for a, b in pieces]
    for i in range(1, len(utts)):  # padding must not make neighbours overlap
        if utts[i].start < utts[i - 1].end:
            mid = (utts[i].start + utts[i - 1].end) / 2
            utts[i - 1].end = utts[i].start = mid
    if words is None:
        return utts
    if not utts and words:
        utts = [Utterance(clip, max(0.0, words[0].start - pad_s),
                          min(duration, words[-1].end + pad_s))]
    for w in words:
        mid = (w.start + w.end) / 2
        u = min(utts, key=lambda u: 0.0 if u.start <= mid <= u.end
                else min(abs(u.start - mid), abs(u.end - mid)))
        u.start = min(u.start, w.start)
        u.end = max(u.end, w.end)
        u.words.append({"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)})
    for u in utts:
        u.text = " ".join(w["word"] for w in u.words)
    return utts
