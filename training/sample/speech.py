"""The sample presenter's script and voice: deterministic sentences spoken by espeak-ng,
with the mouth opening each phoneme calls for."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from training import espeak

_SUBJECTS = ["the new camera", "our small team", "every good story", "a quiet morning",
             "the city library", "this old bridge", "my neighbour", "the red balloon",
             "a careful listener", "the weekly market", "that blue notebook", "the pilot"]
_VERBS = ["opens", "follows", "changes", "brings", "shows", "keeps", "explains", "watches",
          "builds", "remembers", "carries", "finds"]
_OBJECTS = ["a simple idea", "the evening news", "five bright lamps", "our favourite song",
            "the long journey home", "a map of the river", "three warm loaves of bread",
            "the moon above the hills", "a letter from a friend", "the plan for tomorrow"]
_TAILS = ["before lunch", "after the rain", "with great care", "in the garden",
          "every single day", "at half past nine", "without a word", "near the old station",
          "for the whole family", "under the open sky"]
_OPENERS = ["Today", "Later on", "Sometimes", "As you can see", "In the end", "Right now",
            "Every winter", "Once again"]

# How far each espeak-ng phoneme opens the mouth (0 closed, 1 wide). Keys are matched on the
# phoneme with stress marks removed; vowels not listed get 0.6, consonants 0.25.
_OPEN = {"a": 1.0, "aa": 1.0, "A:": 1.0, "A": 1.0, "aI": 0.9, "aU": 0.9, "a#": 0.7,
         "0": 0.85, "O:": 0.8, "O": 0.8, "V": 0.75, "E": 0.7, "e@": 0.75, "eI": 0.6,
         "@": 0.5, "3:": 0.5, "3": 0.5, "oU": 0.65, "OI": 0.7, "I": 0.4, "i": 0.3,
         "i:": 0.3, "U": 0.35, "u:": 0.3, "p": 0.0, "b": 0.0, "m": 0.0, "f": 0.1, "v": 0.1,
         "w": 0.15, "_": 0.0, "_:": 0.0, ";": 0.0, "T": 0.3, "D": 0.3, "h": 0.45}
_VOWEL_START = set("aeiouAEIOUV03@")


def phoneme_opening(ph: str) -> float:
    p = ph.replace("'", "").replace(",", "").replace("%", "").replace("=", "")
    if p in _OPEN:
        return _OPEN[p]
    if p and p[0] in _VOWEL_START:
        return 0.6
    return 0.25


def make_sentence(rng: random.Random) -> str:
    parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(_TAILS))
    s = " ".join(parts)
    if rng.random() < 0.4:
        s = f"{rng.choice(_OPENERS)}, {s}"
    return s[0].upper() + s[1:] + "."


@dataclass
class Script:
    audio: np.ndarray
    """float32 mono at ``rate``."""
    rate: int
    text: str
    sentences: list[tuple[float, float, str]]
    """(start, end, sentence)."""
    words: list[tuple[float, str]]
    """(start seconds, word) as espeak-ng spoke them."""
    opening_100hz: np.ndarray
    """Target mouth opening (0..1) per 10 ms, phoneme by phoneme, before coarticulation."""


def make_script(seconds: float, rng: random.Random, wpm: int = 155,
                lines: tuple[str, ...] = (), voice: str = "en-us") -> Script:
    """Sentences with pauses until ``seconds`` of audio; some pauses are long, so the
    footage has idle stretches to stand in when silent. With ``lines``, those are read in
    order instead, and the script ends a moment after the last (``seconds`` is ignored)."""
    rate = 22050
    if lines:
        seconds = sum(len(espeak.synthesize(x, voice=voice, rate_wpm=wpm).audio)
                      for x in lines) / rate + 1.2 * len(lines) + 2.0
    audio_parts: list[np.ndarray] = []
    sentences: list[tuple[float, float, str]] = []
    words: list[tuple[float, str]] = []
    opening = np.zeros(int(seconds * 100) + 1, np.float32)
    t = rng.uniform(0.8, 1.5)
    audio_parts.append(np.zeros(int(t * rate), np.float32))
    queue = list(lines)
    while not lines or queue:
        sentence = queue.pop(0) if lines else make_sentence(rng)
        syn = espeak.synthesize(sentence, voice=voice,
                                rate_wpm=wpm + (0 if lines else rng.randint(-10, 10)))
        dur = len(syn.audio) / rate
        if t + dur > seconds - 0.5:
            break
        sentences.append((t, t + dur, sentence))
        for start, pos, length in syn.words:
            words.append((t + start, sentence[pos:pos + length]))
        marks = syn.phonemes + [(dur, "_")]
        for (a, ph), (b, _) in zip(marks[:-1], marks[1:], strict=True):
            opening[int((t + a) * 100): int((t + b) * 100)] = phoneme_opening(ph)
        audio_parts.append(syn.audio)
        pause = rng.uniform(2.0, 3.5) if rng.random() < 0.25 and not lines else \
            rng.uniform(0.35, 0.9)
        audio_parts.append(np.zeros(int(pause * rate), np.float32))
        t += dur + pause
    audio = np.concatenate(audio_parts)
    total = int(seconds * rate)
    audio = np.pad(audio, (0, max(0, total - len(audio))))[:total]
    return Script(audio=audio, rate=rate, text=" ".join(s for _, _, s in sentences),
                  sentences=sentences, words=words, opening_100hz=opening)
