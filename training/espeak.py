"""espeak-ng through its C library (the copy that ``espeakng-loader`` ships).

Used for two things no registry package does offline: speech *audio* with phoneme timing
(the synthetic sample presenter) and ASCII phonemes for words the aligner's dictionary lacks.
The library keeps global state, so every call holds one process-wide lock.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_WORD = 1
_EVENT_SENTENCE = 2
_EVENT_PHONEME = 7
_EVENT_LIST_TERMINATED = 0


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass
class Synthesis:
    audio: np.ndarray
    """float32 mono in [-1, 1]."""
    rate: int
    phonemes: list[tuple[float, str]] = field(default_factory=list)
    """(start seconds, espeak ASCII phoneme) in order."""
    words: list[tuple[float, int, int]] = field(default_factory=list)
    """(start seconds, text offset, length) of each word."""


class _Engine:
    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p),
                                                   ctypes.c_int, ctypes.c_int]
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data,
                                               _INITIALIZE_PHONEME_EVENTS)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int, bytes]] = []
        self._cb = _CALLBACK(self._on_audio)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self._cb)
        self.voice = ""

    def _on_audio(self, wav: ctypes.POINTER(ctypes.c_short), n: int,
                  events: ctypes.POINTER(_Event)) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            self._events.append((e.type, e.audio_position, e.text_position, e.length,
                                 bytes(e.id).rstrip(b"\0")))
            i += 1
        return 0

    def set_voice(self, voice: str, rate_wpm: int | None = None) -> None:
        if voice != self.voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self.voice = voice
        if rate_wpm is not None:
            self.lib.espeak_SetParameter(1, int(rate_wpm), 0)  # espeakRATE


_engine: _Engine | None = None
_lock = threading.Lock()


def _get() -> _Engine:
    # Created on first use (never at import) and then reused: initialising espeak-ng twice
    # in one process is not supported by the library.
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


def synthesize(text: str, voice: str = "en-us", rate_wpm: int = 160) -> Synthesis:
    """Speak ``text``; return its audio with phoneme and word start times."""
    with _lock:
        eng = _get()
        eng.set_voice(voice, rate_wpm)
        eng._chunks, eng._events = [], []
        data = text.encode("utf-8")
        eng.lib.espeak_Synth(ctypes.c_char_p(data), len(data) + 1, 0, _POS_CHARACTER, 0,
                             _CHARS_UTF8, None, None)
        pcm = np.concatenate(eng._chunks) if eng._chunks else np.zeros(0, np.int16)
        events = eng._events
    out = Synthesis(audio=(pcm.astype(np.float32) / 32768.0), rate=eng.rate)
    for etype, ms, pos, length, ident in events:
        if etype == _EVENT_PHONEME:
            out.phonemes.append((ms / 1000.0, ident.decode("ascii", "replace")))
        elif etype == _EVENT_WORD:
            # text_position counts characters from 1.
            out.words.append((ms / 1000.0, pos - 1, length))
    return out


def text_to_phonemes(text: str, voice: str = "en-us") -> str:
    """espeak-ng's ASCII phonemes for ``text`` (stress marks included)."""
    with _lock:
        eng = _get()
        eng.set_voice(voice)
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        parts = []
        while ptr.value:
            res = eng.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, 0)
            if res:
                parts.append(res.decode("ascii", "replace"))
    return " ".join(parts).strip()
