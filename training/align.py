"""Word timings from a transcript and the audio, with pocketsphinx forced alignment.

pocketsphinx ships its English acoustic model and dictionary inside the wheel, so this
works offline. Words missing from its dictionary get a pronunciation from espeak-ng.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

import numpy as np

from avatar.audio import SPEECH_RATE
from avatar.text.numbers import cardinal

log = logging.getLogger(__name__)

FRAME_S = 0.01  # pocketsphinx's frame hop

_ESPEAK_TO_ARPA = {
    "@L": "AH L", "@2": "AH", "@5": "AH", "@": "AH", "3:": "ER", "3": "ER", "a#": "AH",
    "aa": "AA", "a": "AE", "A:": "AA", "A@": "AA R", "A": "AA", "aI@": "AY ER", "aI3": "AY ER",
    "aI": "AY", "aU@": "AW ER", "aU": "AW", "e@": "EH R", "eI": "EY", "e": "EH", "E": "EH",
    "i@3": "IY R", "i@": "IY R", "i:": "IY", "i": "IY", "I#": "IH", "I2": "IH", "I": "IH",
    "0": "AA", "O:": "AO", "O@": "AO R", "OI": "OY", "O": "AO", "o@": "AO R", "oU": "OW",
    "o": "OW", "U@": "UH R", "U": "UH", "u:": "UW", "u": "UW", "V": "AH",
    "tS": "CH", "dZ": "JH", "t#": "T", "d#": "D", "n-": "N", "l-": "L", "r-": "R",
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "f": "F", "v": "V",
    "T": "TH", "D": "DH", "s": "S", "z": "Z", "S": "SH", "Z": "ZH", "h": "HH", "x": "HH",
    "m": "M", "n": "N", "N": "NG", "l": "L", "r": "R", "j": "Y", "w": "W",
}
_KEYS = sorted(_ESPEAK_TO_ARPA, key=len, reverse=True)

@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class SpokenPrefix:
    """The leading words of a transcript that a recording says (see ``spoken_prefix``)."""

    words: int
    """How many of the transcript's normalised words are heard."""
    of: int
    """How many it has."""
    timing: list[Word]

    @property
    def complete(self) -> bool:
        return self.words >= self.of


def cut_text(text: str, words: int) -> str:
    """The leading part of ``text`` holding its first ``words`` normalised words, with its
    own spelling and punctuation (a trailing comma or dash dropped)."""
    out, n = [], 0
    for token in text.split():
        if n >= words:
            break
        out.append(token)
        n += len(normalise(token))
    return " ".join(out).rstrip(",;:-— ")


def number_words(n: int) -> str:
    """English words for a whole number (digits in transcripts are aligned as spoken)."""
    return cardinal(n)


def normalise(text: str) -> list[str]:
    """Lower-case words with digits spelled out and punctuation dropped."""
    text = re.sub(r"\d+", lambda m: " " + number_words(int(m.group()) % 10**9) + " ",
                  text.lower())
    text = re.sub(r"[^a-z' ]+", " ", text)
    return [w.strip("'") for w in text.split() if w.strip("'")]


def espeak_to_arpabet(phonemes: str) -> str:
    s = re.sub(r"[',%=_:|]", lambda m: ":" if m.group() == ":" else "", phonemes)
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == " ":
            i += 1
            continue
        for k in _KEYS:
            if s.startswith(k, i):
                out.append(_ESPEAK_TO_ARPA[k])
                i += len(k)
                break
        else:
            i += 1  # a symbol with no English counterpart: skip it
    return " ".join(out)


def add_pronunciations(decoder: object, words: list[str], added: set[str]) -> list[str]:
    """Give a pocketsphinx decoder espeak-ng's pronunciation of the words its dictionary
    lacks (``added`` remembers them); returns the words it can now use."""
    from training.espeak import text_to_phonemes

    usable = []
    for w in words:
        if w in added or decoder.lookup_word(w):  # type: ignore[attr-defined]
            usable.append(w)
            continue
        arpa = espeak_to_arpabet(text_to_phonemes(w))
        if not arpa:
            log.warning("no pronunciation for %r; it is left out", w)
            continue
        decoder.add_word(w, arpa, True)  # type: ignore[attr-defined]
        added.add(w)
        usable.append(w)
    return usable


class Aligner:
    """One pocketsphinx decoder, reused across clips (loading the model takes ~0.3 s)."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        # Wide beams: forced alignment of minutes-long audio is pruned away (no result at
        # all) with the recognition defaults; the search stays linear in the audio length.
        self._decoder = Decoder(samprate=SPEECH_RATE, bestpath=False, loglevel="FATAL",
                                beam=1e-100, wbeam=1e-80, pbeam=1e-100)
        self._added: set[str] = set()

    def _ensure_words(self, words: list[str]) -> list[str]:
        return add_pronunciations(self._decoder, words, self._added)

    def align(self, audio16: np.ndarray, text: str) -> list[Word]:
        """Word start/end times (seconds) of ``text`` in ``audio16`` (16 kHz float32)."""
        words = self._ensure_words(normalise(text))
        if not words:
            return []
        pcm = (np.clip(audio16, -1, 1) * 32767).astype(np.int16).tobytes()
        d = self._decoder
        # The front end adapts its normalisation to what it heard: started afresh, a clip's
        # alignment is the same whichever clips this decoder aligned before (in whatever
        # worker, here or on a cluster).
        d.reinit_feat()
        d.set_align_text(" ".join(words))
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        segs = d.seg()
        if segs is None:
            log.warning("forced alignment found no path through the audio; is the transcript "
                        "the text spoken in this clip?")
            return []
        out = []
        for seg in segs:
            w = seg.word
            if w.startswith("<") or w.startswith("[") or w == "sil":
                continue
            w = re.sub(r"\(\d+\)$", "", w)  # alternate pronunciations are marked word(2)
            out.append(Word(w, seg.start_frame * FRAME_S, (seg.end_frame + 1) * FRAME_S))
        if len(out) < len(words):
            log.warning("aligned %d of %d words", len(out), len(words))
        return out

    def spoken_prefix(self, audio16: np.ndarray, text: str) -> SpokenPrefix:
        """How much of ``text`` ``audio16`` says, when a recording may stop before its
        transcript does (a clip cut short: the text then promises words the audio never
        has, and a voice trained on the pair learns to cram a sentence into a second).

        Decodes with a grammar that accepts any leading run of the transcript's words,
        continuing favoured over stopping, so the acoustic evidence alone decides where
        the speech ends."""
        norm = normalise(text)
        words = self._ensure_words(norm)
        if not words:
            return SpokenPrefix(0, len(norm), [])
        n = len(words)
        arcs: list[tuple] = [(i, i + 1, 0.9 if i else 1.0, w) for i, w in enumerate(words)]
        arcs += [(i, n, 0.1) for i in range(1, n)]
        d = self._decoder
        d.add_fsg("prefix", d.create_fsg("prefix", 0, n, arcs))
        d.activate_search("prefix")
        try:
            pcm = (np.clip(audio16, -1, 1) * 32767).astype(np.int16).tobytes()
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            segs = list(d.seg() or [])
        finally:
            d.remove_search("prefix")
        said = [Word(re.sub(r"\(\d+\)$", "", s.word), s.start_frame * FRAME_S,
                     (s.end_frame + 1) * FRAME_S)
                for s in segs if not (s.word.startswith(("<", "[", "(")) or s.word == "sil")]
        # Words the dictionary could not take were left out of the grammar: count the
        # transcript's words up to the last one heard, those included.
        j = 0
        for w in said:
            while j < len(norm) and norm[j] != w.word:
                j += 1
            j += 1
        return SpokenPrefix(min(j, len(norm)), len(norm), said)


@functools.cache
def shared_aligner() -> Aligner:
    """One aligner per process (a worker aligns many clips; loading takes ~0.3 s)."""
    return Aligner()
