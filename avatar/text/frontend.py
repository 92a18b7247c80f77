"""Text in, phonemes out, piece by piece: the voice's frontend.

Text is split into pieces for streaming, each piece into runs of one script: Han characters
go to Mandarin (pinyin with tone numbers, from pypinyin's dictionary), Latin text to English
(normalised, then espeak-ng's IPA through phonemizer). Other scripts are skipped with a
warning; text with nothing speakable left is an error, never a crash or a hang.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from avatar.errors import TwincastError
from avatar.text.normalize import normalize_english, strip_markup
from avatar.text.split import pieces

log = logging.getLogger(__name__)

_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_PUNCT = r"\u3000-\u303f\uff00-\uffef"
_RUN = re.compile(rf"(?P<zh>[{_HAN}][{_HAN}{_CJK_PUNCT}\d\s]*)|(?P<en>[\x20-\x7e°€£¥–]+)"
                  rf"|(?P<other>[^\x20-\x7e°€£¥–{_HAN}{_CJK_PUNCT}]+)|(?P<punct>[{_CJK_PUNCT}]+)")
_ZH_DIGITS = "零一二三四五六七八九"
_NOTHING = ("nothing to say: the text holds no speakable words (only emoji, punctuation, "
            "control characters or scripts other than English and Mandarin)")


@dataclass(frozen=True)
class TextConfig:
    """Frontend settings."""

    english_voice: str = "en-us"
    max_chars: int = 200_000
    """Longer texts are refused; anything shorter is streamed piece by piece."""
    first_piece_chars: int = 40
    """A first sentence longer than this is cut at its clauses (as many whole ones as fit,
    or else the first), so that the first audio leaves early; never in mid-clause."""
    piece_chars: int = 160


@dataclass(frozen=True)
class Piece:
    text: str
    """The words of this piece as they will be said (normalised)."""
    lang: str
    """'en' or 'zh'."""
    phonemes: str
    """IPA with stress marks for English; space-separated pinyin syllables with tone
    numbers (1-5) for Mandarin."""
    sentence_end: bool = False


def chinese_number(n: int) -> str:
    """Digits read the Mandarin way: 25 -> 二十五, 305 -> 三百零五 (below 10^8)."""
    if n < 10:
        return _ZH_DIGITS[n]
    if n >= 10**8:
        return "".join(_ZH_DIGITS[int(d)] for d in str(n))
    units = [(10**4, "万"), (1000, "千"), (100, "百"), (10, "十")]
    out, zero = "", False
    for size, name in units:
        q, n = divmod(n, size)
        if q:
            if zero:
                out += "零"
            out += ("" if (size == 10 and q == 1 and not out) else chinese_number(q)) + name
            zero = False
        elif out:
            zero = True
    if n:
        out += ("零" if zero else "") + _ZH_DIGITS[n]
    return out


class TextFrontend:
    def __init__(self, cfg: TextConfig | None = None):
        self.cfg = cfg or TextConfig()
        self._english = None
        self._lock = threading.Lock()

    def _phonemize_en(self, text: str) -> str:
        with self._lock:
            if self._english is None:
                import espeakng_loader
                from phonemizer.backend import EspeakBackend
                from phonemizer.backend.espeak.wrapper import EspeakWrapper

                EspeakWrapper.set_library(espeakng_loader.get_library_path())
                EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
                quiet = logging.getLogger("twincast.phonemizer")
                quiet.setLevel(logging.ERROR)  # its word-count notes are noise here
                self._english = EspeakBackend(self.cfg.english_voice, with_stress=True,
                                              preserve_punctuation=True,
                                              language_switch="remove-flags", logger=quiet)
            return self._english.phonemize([text], strip=True)[0]

    @staticmethod
    def _pinyin(text: str) -> str:
        from pypinyin import Style, lazy_pinyin

        text = re.sub(r"\d+", lambda m: chinese_number(int(m.group())), text)
        syllables = lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True,
                                errors="ignore")
        return " ".join(s for s in syllables if s.strip() and any(c.isalpha() for c in s))

    def check(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise TwincastError("nothing to say: the text is empty")
        if len(text) > self.cfg.max_chars:
            raise TwincastError(f"the text is {len(text):,} characters; the limit is "
                                f"{self.cfg.max_chars:,} (TextConfig.max_chars): send it in "
                                "parts")
        # Refused now, not dropped mid-stream: text with nothing this voice can say.
        if not any(m.lastgroup == "zh" or (m.lastgroup == "en" and
                                           re.search(r"[A-Za-z0-9]", m.group()))
                   for m in _RUN.finditer(text)):
            raise TwincastError(_NOTHING)

    def pieces(self, text: str) -> Iterator[Piece]:
        """Speakable pieces in order; raises TwincastError if none can be made."""
        self.check(text)
        made = 0
        skipped: set[str] = set()
        for chunk in pieces(strip_markup(text), self.cfg.first_piece_chars,
                            self.cfg.piece_chars):
            for m in _RUN.finditer(chunk):
                kind = m.lastgroup
                run = m.group()
                if kind == "other":
                    skipped.add(run[:20])
                    continue
                end = run.rstrip()[-1:] in ".!?;。！？；"
                if kind == "zh":
                    ph = self._pinyin(run)
                    if ph:
                        made += 1
                        yield Piece(run.strip(), "zh", ph, end)
                elif kind == "en":
                    said = normalize_english(run)
                    if re.search(r"[A-Za-z]", said):
                        made += 1
                        yield Piece(said, "en", self._phonemize_en(said), end)
        if skipped:
            log.warning("skipped text in scripts this voice cannot speak: %s",
                        ", ".join(sorted(skipped))[:200])
        if not made:
            raise TwincastError(_NOTHING)
