"""The runtime voice: load a bundle's voice and speak text as a stream of audio chunks.

``Voice.speak`` is a generator: the text frontend cuts the text into pieces (sentences, the
first one at a clause where it is long), each piece's mel is made at once and vocoded in
chunks, the first about 0.4 s, each yielded as soon as it is ready with its place
in time and the timing of its phoneme symbols, so a caller can start playing (and the face
can start moving) while the rest is still being made.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avatar import devices
from avatar.audio import MelSpec
from avatar.bundle import load_weights, read_manifest
from avatar.errors import TwincastError, path_error
from avatar.manifest import VocoderSection
from avatar.models.voice import (
    SYMBOLS,
    AcousticModel,
    VoiceConfig,
    encode,
    symbol_of,
)
from avatar.text.frontend import TextConfig, TextFrontend
from avatar.vocoder import GriffinLim
from avatar.words import text_words, word_times

log = logging.getLogger(__name__)


@dataclass
class AudioChunk:
    """One piece of speech, ready to play."""

    audio: np.ndarray
    """(n,) float32 mono in [-1, 1]."""
    rate: int
    start: float
    """Seconds from the start of the whole utterance to this chunk's first sample."""
    text: str
    """The piece of text this chunk begins ("" for the later chunks of a piece)."""
    phonemes: list[tuple[str, float, float]] = field(default_factory=list)
    """(symbol, start, end) in seconds from the start of the whole utterance."""
    words: list[tuple[str, float, float]] = field(default_factory=list)
    """(word, start, end) on the same clock, for subtitles: every word of the piece, on
    the piece's first chunk (``avatar.words``)."""

    @property
    def duration(self) -> float:
        return len(self.audio) / self.rate


class _TrainedVocoder:
    """A trained vocoder behind the same call as Griffin-Lim, which can also vocode a
    stretch of frames exactly as the whole would have it (``segment``)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, log_mel: torch.Tensor) -> np.ndarray:
        return self.model.synthesise(log_mel).cpu().numpy().astype(np.float32)

    def segment(self, log_mel: torch.Tensor, a: int, b: int) -> np.ndarray:
        return self.model.segment(log_mel, a, b).cpu().numpy().astype(np.float32)

    def stream(self, log_mel: torch.Tensor) -> _Segments:
        return _Segments(self, log_mel)


class _Segments:
    """A trained vocoder's chunks of one piece: each computed from its own frames and
    their context, the same as the whole would have them (no state between chunks)."""

    def __init__(self, vocoder: _TrainedVocoder, log_mel: torch.Tensor):
        self.vocoder, self.log_mel = vocoder, log_mel

    def chunk(self, a: int, b: int) -> np.ndarray:
        return self.vocoder.segment(self.log_mel, a, b)


LEAD_FRAMES = 2
"""Frames of silence (23 ms) at most before the first word of what is said: the recordings'
own lead-in, which the voice learns (a quarter of a second before some GRID sentences), is
only delay in a live answer. Pauses between sentences are kept as learned. In ``bench serve``
(GRID voice, three runs each) the first moving mouth came at a median of 258-277 ms against
326-333 ms with six frames. Two frames once seemed to cost two sessions late frames; the
cause was the renderer's first calls at each batch size, not the lead-in (see
``Scheduler.warm_up``): with the warm-up, 0.42 % late with two frames and 0.08-0.38 % with six."""

FIRST_CHUNK_FRAMES = 36
"""About 0.42 s: the first audio of each piece. A video frame needs 0.23 s of audio past
its centre (the face model's window), so this lets the first five frames of speech be
rendered from the first chunk alone (a start hands four to the renderer first) while the
rest is vocoded; with a 0.28-s first chunk the second frame already waited on the rest.
From 48 frames (0.56 s; eight video frames) to 36, three alternating runs each of `bench
ask --llm scripted` on the GRID `ci` bundle (AMD EPYC, 2026-12-04): the first word's frame
in at the viewer 267, 300, 309 ms p50 against 357, 319, 316, the first sound 213, 247,
251 against 297, 257, 257 (Griffin-Lim's first chunk is that much shorter to make); two
sessions in `bench serve` lost 7 and 7 frames at a sentence's start against 10 and 10."""
LATER_CHUNK_FRAMES = 400
"""About 4.6 s: the longest chunk. Chunks after the first grow (the second as long as the
first, then twice as long each time) up to this, because each must be vocoded before the
audio ahead of it has been shown, less the face's look-ahead. With Griffin-Lim and the rest
of a sentence as the second chunk, beside a two-thread load standing in for a render lane,
the second chunk of one of twelve GRID answer sentences came 13 ms after its first frame
was due; with growing chunks the worst of them came 16 ms ahead (median 0.26-0.32 s
ahead). A trained vocoder makes 4.6 s in a few dozen milliseconds, and each cut costs it
its context twice over (48 frames), so the chunks do not stay short."""


def chunk_spans(ends: np.ndarray, first: int = FIRST_CHUNK_FRAMES,
                later: int = LATER_CHUNK_FRAMES) -> list[tuple[int, int]]:
    """Frame spans that cut a piece's mel into chunks at symbol boundaries (``ends``: each
    symbol's last frame + 1): the first and second about ``first`` frames, then each twice
    the one before up to ``later``, a short tail (under half a chunk) joined to the chunk
    before it. Vocoding the first chunk alone lets its audio leave long before the whole
    sentence is vocoded, without cutting the sentence itself (each piece is spoken as one
    utterance, with one intonation)."""
    total = int(ends[-1]) if len(ends) else 0
    spans: list[tuple[int, int]] = []
    pos, size = 0, first
    while pos < total:
        beyond = ends[ends >= pos + size]
        cut = int(beyond[0]) if len(beyond) else total
        if spans and total - cut < size // 2:
            cut = total  # a short tail joins the chunk before it (never the first chunk)
        spans.append((pos, cut))
        pos = cut
        size = min(later, first * 2 ** (len(spans) - 1))
    return spans


def _load_vocoder(path: Path, voc: VocoderSection, spec: MelSpec, dev: torch.device
                  ) -> GriffinLim | _TrainedVocoder:
    if voc.kind == "griffin-lim":
        return GriffinLim(spec, voc.n_iter, dev)

    from avatar.models.vocoder import Vocoder, VocoderConfig

    try:
        model = Vocoder(VocoderConfig.from_dict(voc.config))
    except (TypeError, KeyError) as e:
        raise path_error(path / "manifest.json", f"vocoder config is invalid ({e})") from None
    load_weights(model, path / voc.file, "vocoder")
    return _TrainedVocoder(model.eval().to(dev))


class Voice:
    def __init__(self, model: AcousticModel, spec: MelSpec, mean: np.ndarray,
                 std: np.ndarray, vocoder: GriffinLim | _TrainedVocoder,
                 frontend: TextFrontend,
                 device: torch.device, duration_scale: float = 1.0):
        self.model = model
        self.spec = spec
        self.mean = torch.from_numpy(mean).to(device)[:, None]
        self.std = torch.from_numpy(std).to(device)[:, None]
        self.vocoder = vocoder
        self.frontend = frontend
        self.device = device
        self.duration_scale = duration_scale

    @property
    def rate(self) -> int:
        return self.spec.rate

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu",
             text: TextConfig | None = None) -> Voice:

        path = Path(path)
        v = read_manifest(path).voice
        if v is None:
            raise path_error(path / "manifest.json", "this bundle has no voice; enrol with "
                             "a transcript so that one is trained")
        dev = devices.device(device)
        if tuple(v.symbols) != SYMBOLS:
            raise path_error(path / "manifest.json", "the voice was made with another "
                             "phoneme table; re-export it with this version of twincast")
        try:
            cfg = VoiceConfig.from_dict(v.config)
        except (TypeError, KeyError) as e:
            raise path_error(path / "manifest.json", f"voice config is invalid ({e})") from None
        model = AcousticModel(cfg)
        load_weights(model, path / v.file, "voice")
        model.eval().to(dev)
        mean = np.asarray(v.mel.mean, np.float32)
        std = np.asarray(v.mel.std, np.float32)
        vocoder = _load_vocoder(path, v.vocoder, v.mel.spec, dev)
        frontend = TextFrontend(text or TextConfig(
            english_voice=v.text.get("english_voice", "en-us")))
        return cls(model, v.mel.spec, mean, std, vocoder, frontend, dev, v.duration_scale)

    def speak(self, text: str, pace: float = 1.0) -> Iterator[AudioChunk]:
        """Audio chunks of ``text`` in order, each yielded as soon as it is made.
        ``pace`` above 1 speaks faster (0.5-2)."""
        if not 0.5 <= pace <= 2.0:
            raise TwincastError(f"pace {pace}: choose a speaking rate between 0.5 and 2")
        t = 0.0
        frame_s = self.spec.hop / self.spec.rate
        for p, piece in enumerate(self.frontend.pieces(text)):
            ids, unknown = encode(piece.phonemes, self.model.cfg.marks)
            if unknown:
                log.warning("symbols this voice cannot say were skipped: %s",
                            "".join(sorted(unknown)))
            tokens = torch.tensor([ids], device=self.device)
            mel, frames = self.model.synthesise(tokens, pace, self.duration_scale,
                                                lead=LEAD_FRAMES if p == 0 else None)
            log_mel = mel * self.std + self.mean
            n = frames.cpu().numpy()
            ends = np.cumsum(n)
            # Both vocoders go chunk by chunk, so the first audio of a piece costs its
            # first half second, not the whole sentence (Griffin-Lim over four whole GRID
            # voice sentences took 137-213 ms on a loaded 2-core host, their first chunks
            # 57-67 ms).
            stream = self.vocoder.stream(log_mel)
            spans = chunk_spans(ends)
            rel = ends - n  # each symbol's first frame
            words = word_times(text_words(piece.text, piece.lang),
                               [(symbol_of(i), t + float(s0) * frame_s, t + float(e) * frame_s)
                                for i, s0, e in zip(ids, rel, ends, strict=True)])
            for k, (a, b) in enumerate(spans):
                audio = stream.chunk(a, b)
                start = t - a * frame_s  # the piece's start on the utterance's clock
                timing = [(symbol_of(i), start + float(s0) * frame_s, start + float(e) * frame_s)
                          for i, s0, e in zip(ids, rel, ends, strict=True)
                          if symbol_of(i) != " " and a <= s0 < b]
                chunk = AudioChunk(audio, self.spec.rate, t, piece.text if k == 0 else "",
                                   timing, words if k == 0 else [])
                t += chunk.duration
                yield chunk

    def say(self, text: str, pace: float = 1.0) -> np.ndarray:
        """The whole of ``text`` as one waveform at ``rate``."""
        return np.concatenate([c.audio for c in self.speak(text, pace)])
