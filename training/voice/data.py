"""Training data for the voice, read from the enrolment cache: every utterance with text,
as symbol ids (from the runtime's own text frontend) and its 22.05 kHz log-mel frames.

A cache packed for another machine (``training.voice.pack``) carries each utterance's
phonemes already, so training there needs no phonemizer or espeak-ng."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatar.audio import VOICE_MEL
from avatar.errors import TwincastError
from avatar.models.voice import encode
from avatar.text.frontend import TextFrontend
from training.progress import bar

log = logging.getLogger(__name__)

PAD_SECONDS = 0.05
"""Silence kept either side of an utterance (the voice activity detector cuts tight)."""


@dataclass
class Utterance:
    key: str
    text: str
    tokens: np.ndarray
    """(N,) int64 symbol ids."""
    mel: np.ndarray
    """(n_mels, T) float32 natural-log mel, not normalised."""
    audio: Path | None = None
    """The clip's 22.05 kHz recording in the cache (the vocoder's adaptation reads it)."""
    first_frame: int = 0
    """Where ``mel`` starts in that recording, in frames of ``hop`` samples."""
    pieces: tuple[np.ndarray, ...] = ()
    """Symbol ids of each piece the runtime says the text in (``TextFrontend.pieces``):
    the speaking-rate calibration synthesises the text as the runtime would."""


def utterance_phonemes(frontend: TextFrontend, text: str) -> list[str]:
    """The phonemes of each piece ``text`` is said in (what a packed cache stores)."""
    return [p.phonemes for p in frontend.pieces(text)]


def load_utterances(features_dir: Path, rate: int = VOICE_MEL.rate, hop: int = VOICE_MEL.hop,
                    frontend: TextFrontend | None = None, marks: bool = False
                    ) -> list[Utterance]:
    """Every utterance of the cache that has text, longest first, encoded as the voice's
    model reads symbols (``marks``: see ``encode``)."""
    path = features_dir / "utterances.jsonl"
    manifest_path = features_dir / "manifest.json"
    if not manifest_path.exists() or not path.exists():
        raise TwincastError(f"{features_dir}: no enrolment cache here (manifest.json or "
                            "utterances.jsonl is missing); run 'twincast enrol' first")
    manifest = json.loads(manifest_path.read_text())
    dirs = {c["id"]: features_dir / c["dir"] for c in manifest["clips"]}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("text")]
    if not rows:
        raise TwincastError(f"{features_dir}: no utterance has a transcript; the voice "
                            "learns from text with its audio (pass --transcript to enrol)")
    mels: dict[str, np.ndarray] = {}
    out: list[Utterance] = []
    unknown: set[str] = set()
    with bar(len(rows), "reading utterances", "utt") as pb:
        for r in rows:
            clip = r["clip"]
            if clip not in mels:
                try:
                    with np.load(dirs[clip] / "audio.npz") as z:
                        mels[clip] = z["mel22"]
                except (OSError, KeyError) as e:
                    raise TwincastError(f"{dirs.get(clip, clip)}: enrolment cache is "
                                        f"incomplete ({e}); re-run 'twincast enrol'") from None
            mel = mels[clip]
            a = max(0, int((r["start"] - PAD_SECONDS) * rate / hop))
            b = min(mel.shape[1], int(np.ceil((r["end"] + PAD_SECONDS) * rate / hop)))
            said = r.get("phonemes")
            if said is None:
                frontend = frontend or TextFrontend()
                said = utterance_phonemes(frontend, r["text"])
            ids, unk = encode(" ".join(said), marks)
            unknown |= unk
            if b - a >= len(ids):  # the alignment needs a frame per symbol
                pieces = tuple(np.array(encode(p, marks)[0], np.int64) for p in said)
                out.append(Utterance(f"{clip}@{r['start']}", r["text"],
                                     np.array(ids, np.int64), mel[:, a:b].copy(),
                                     dirs[clip] / "audio22k.wav", a, pieces))
            pb.update(1)
    if unknown:
        log.warning("phoneme symbols outside the voice's table were dropped: %s",
                    "".join(sorted(unknown)))
    if not out:
        raise TwincastError(f"{features_dir}: no usable utterance for the voice")
    out.sort(key=lambda u: -u.mel.shape[1])
    return out


def mel_stats(utts: list[Utterance]) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean and std of the log-mel over all frames."""
    allm = np.concatenate([u.mel for u in utts], 1)
    return allm.mean(1).astype(np.float32), (allm.std(1) + 1e-3).astype(np.float32)


class Batcher:
    """Batches of similar-length utterances (little padding), in random order."""

    def __init__(self, utts: list[Utterance], max_frames: int, seed: int = 0):
        self.utts = utts
        self.rng = np.random.default_rng(seed)
        self.batches: list[list[int]] = []
        cur: list[int] = []
        for i, u in enumerate(utts):  # longest first
            longest = utts[cur[0]].mel.shape[1] if cur else u.mel.shape[1]
            if cur and longest * (len(cur) + 1) > max_frames:
                self.batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            self.batches.append(cur)

    def batch(self, mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
        idx = self.batches[int(self.rng.integers(len(self.batches)))]
        return pad_batch([self.utts[i] for i in idx], mean, std)

    def each(self) -> list[list[Utterance]]:
        """Every batch once, in order."""
        return [[self.utts[i] for i in idx] for idx in self.batches]


def pad_batch(us: list[Utterance], mean: np.ndarray, std: np.ndarray
              ) -> dict[str, np.ndarray]:
    """Utterances as one zero-padded batch, mels normalised by ``mean`` and ``std``."""
    n = max(len(u.tokens) for u in us)
    t = max(u.mel.shape[1] for u in us)
    tokens = np.zeros((len(us), n), np.int64)
    mels = np.zeros((len(us), len(mean), t), np.float32)
    for k, u in enumerate(us):
        tokens[k, : len(u.tokens)] = u.tokens
        mels[k, :, : u.mel.shape[1]] = (u.mel - mean[:, None]) / std[:, None]
    return {"tokens": tokens, "n_sym": np.array([len(u.tokens) for u in us]),
            "mels": mels, "n_frames": np.array([u.mel.shape[1] for u in us])}
