"""Voice-only enrolment features: a folder of recordings (audio files, or videos for their
sound) with an ``ID|text`` transcript (``ID|raw|normalized`` as LJ Speech writes it, or
``ID<TAB>text`` as for footage) -> ``WORKDIR/voice_features``.

Each recording is one utterance (sentence-length files, as voice datasets are cut), trimmed
to its speech by the voice activity detector. The cache has the layout the voice trainer
reads from a video enrolment (``manifest.json``, ``clips/ID/audio.npz``,
``utterances.jsonl``), so the two can be trained on together.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing as mp
from pathlib import Path

import numpy as np

from avatar import atomic
from avatar.errors import TwincastError, path_error
from training.config import VIDEO_EXTENSIONS, FeaturesConfig
from training.ingest import file_digest, require_writable_dir
from training.progress import bar
from training.workdir import Workdir

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS
"""A video file in a voice folder lends its sound track (a creator's clips, GRID's)."""
MAX_UTTERANCE_S = 20.0
"""Longer recordings have no word timing to cut them by: they are skipped with a warning."""


def read_voice_transcript(path: Path) -> dict[str, str]:
    """``ID|text`` or ``ID|raw|normalized`` lines -> {ID: text} (the normalised column
    where there is one)."""
    if not path.is_file():
        raise path_error(path, "transcript not found")
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise path_error(path, "transcript is not UTF-8 text") from None
    table: dict[str, str] = {}
    for n, ln in enumerate(lines, 1):
        parts = ln.split("|")
        if len(parts) < 2 or not parts[0].strip() or not parts[-1].strip():
            raise path_error(path, f"line {n} is not 'ID|text' or 'ID|raw|normalized'")
        table[Path(parts[0].strip()).stem] = parts[-1].strip()
    if not table:
        raise path_error(path, "transcript is empty")
    return table


def read_texts(path: Path) -> dict[str, str]:
    """``ID|text``/``ID|raw|normalized`` (voice datasets) or ``ID<TAB>text`` lines."""
    if not path.is_file():
        raise path_error(path, "transcript not found")
    first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    if "|" in first:
        return read_voice_transcript(path)
    table = {}
    for n, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not ln.strip():
            continue
        if "\t" not in ln:
            raise path_error(path, f"line {n} is neither 'ID|text' nor 'ID<TAB>text'")
        k, v = ln.split("\t", 1)
        table[Path(k.strip()).stem] = v.strip()
    return table


def find_audio(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise path_error(folder, "no such folder of recordings")
    files = sorted(f for f in folder.iterdir()
                   if f.is_file() and f.suffix.lower() in MEDIA_EXTENSIONS)
    if not files:
        raise path_error(folder, f"holds no recordings ({', '.join(MEDIA_EXTENSIONS)})")
    return files


def text_digest(text: str) -> str:
    """Short hash of a transcript line: a changed line re-checks its recording."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def _unit(path: Path, clip_dir: Path, cfg: FeaturesConfig, key: str, text: str) -> dict:
    """Decode one recording, compute its audio features and find how much of its
    transcript it says (runs in a worker)."""
    import torch

    torch.set_num_threads(1)
    from training import audio_features
    from training.align import shared_aligner
    from training.ingest import decode_audio

    audio = decode_audio(path, cfg.audio.rates)
    feats = audio_features.compute(audio[cfg.audio.rates[0]], audio[cfg.audio.rates[1]],
                                   cfg.audio)
    clip_dir.mkdir(parents=True, exist_ok=True)
    import soundfile as sf

    rate22 = cfg.audio.rates[1]
    with atomic.atomic_path(clip_dir / "audio22k.wav", ".wav") as tmp:
        sf.write(tmp, audio[rate22], rate22, subtype="PCM_16", format="WAV")
    atomic.save_npz(clip_dir / "audio.npz", key=np.array(key),
                    stats=np.array(json.dumps(feats.stats)), **feats.arrays())
    hop_s = cfg.audio.hop_ms / 1000
    speech = np.nonzero(feats.vad)[0]
    span = (float(speech[0] * hop_s), float((speech[-1] + 1) * hop_s)) if len(speech) else None
    said = shared_aligner().spoken_prefix(audio[cfg.audio.rates[0]], text)
    spoken = {"words": said.words, "of": said.of,
              "ends": [round(w.end, 3) for w in said.timing]}
    return {"seconds": feats.stats["seconds"], "speech": span, "spoken": spoken}


MIN_WORDS_HEARD = 3
"""A recording cut short after fewer words than this is left out rather than trimmed."""


def fit_to_speech(text: str, speech: tuple[float, float], spoken: dict, seconds: float
                  ) -> tuple[str, tuple[float, float]] | None:
    """The text and speech span to learn from when a recording stops before its transcript:
    the words heard, the span cut after the last of them. A last word that runs into the
    end of the file may be cut mid-way, so it goes too. None: too little is left.
    ``spoken``: ``words`` heard of ``of`` and the ``ends`` (s) of those recognised."""
    from training.align import cut_text

    if spoken["words"] >= spoken["of"]:
        return text, speech
    words, ends = spoken["words"], list(spoken["ends"])
    if ends and seconds - ends[-1] < 0.05:
        words, ends = words - 1, ends[:-1]
    if words < MIN_WORDS_HEARD or not ends:
        return None
    return cut_text(text, words), (speech[0], min(speech[1], ends[-1] + 0.03))


def enrol_voice_features(folder: Path, transcript: Path, workdir: Path,
                         cfg: FeaturesConfig) -> Path:
    """Build (or reuse) ``workdir/voice_features``; returns its path."""
    files = find_audio(folder)
    texts = read_texts(transcript)
    matched = [f for f in files if f.stem in texts]
    if not matched:
        raise path_error(transcript, f"names none of the recordings in {folder} (first: "
                         f"{files[0].stem})")
    if len(matched) < len(files):
        log.warning("%d recordings have no transcript line and are left out",
                    len(files) - len(matched))
    require_writable_dir(workdir)
    out = Workdir(workdir).voice_features
    digest_cfg = cfg.audio_digest()
    jobs, results = [], {}
    with bar(len(matched), "hashing recordings", "file") as pb:
        for f in matched:
            key = f"{file_digest(f)[:20]}-{digest_cfg}-{text_digest(texts[f.stem])}"
            d = out / "clips" / f.stem
            cached = d / "info.json"
            if cached.exists() and json.loads(cached.read_text()).get("key") == key:
                results[f.stem] = json.loads(cached.read_text())
            else:
                jobs.append((f, d, key))
            pb.update(1)
    log.info("%d recordings: %d to compute, %d reused from the cache", len(matched),
             len(jobs), len(results))
    workers = max(1, cfg.workers)
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as ex, \
            bar(len(jobs), "voice features", "file") as pb:
        futures = {ex.submit(_unit, f, d, cfg, key, texts[f.stem]): (f, d, key)
                   for f, d, key in jobs}
        for fut in cf.as_completed(futures):
            f, d, key = futures[fut]
            info = {"key": key, **fut.result()}
            atomic.write_json(d / "info.json", info)
            results[f.stem] = info
            pb.update(1)
    clips, utterances, cut, dropped = [], [], 0, 0
    for f in matched:
        info = results[f.stem]
        clips.append({"id": f.stem, "dir": f"clips/{f.stem}", "source": str(f),
                      "seconds": info["seconds"]})
        if info["speech"] is None:
            log.warning("%s: no speech found; left out", f)
            continue
        a, b = info["speech"]
        if b - a > MAX_UTTERANCE_S:
            log.warning("%s: %.0f s of speech in one recording; the voice learns from "
                        "sentence-length files (at most %.0f s), so it is left out", f,
                        b - a, MAX_UTTERANCE_S)
            continue
        fitted = fit_to_speech(texts[f.stem], (a, b), info["spoken"], info["seconds"])
        if fitted is None:
            dropped += 1
            continue
        text, (a, b) = fitted
        cut += text != texts[f.stem]
        utterances.append({"clip": f.stem, "start": round(a, 3), "end": round(b, 3),
                           "text": text})
    if cut or dropped:
        # Loud on purpose: a transcript that promises more than its recording teaches the
        # voice to speak far too fast, and users should know their data does this.
        log.warning("%d of %d recordings stop before their transcript does: %d were cut "
                    "to the words they say, %d left out (fewer than %d words heard)",
                    cut + dropped, len(matched), cut, dropped, MIN_WORDS_HEARD)
    if not utterances:
        raise TwincastError(f"{folder}: no recording gave a usable utterance")
    atomic.write_text(out / "utterances.jsonl",
                      "".join(json.dumps(u) + "\n" for u in utterances))
    speech_s = sum(u["end"] - u["start"] for u in utterances)
    atomic.write_json(out / "manifest.json", {
        "schema": 1, "kind": "voice", "rates": list(cfg.audio.rates), "clips": clips,
        "utterances": len(utterances), "speech_seconds": round(speech_s, 1)})
    log.info("voice cache: %d utterances, %.1f minutes of speech", len(utterances),
             speech_s / 60)
    return out


def voice_sources(workdir: Path) -> list[Path]:
    """The caches of an enrolment the voice learns from: the video enrolment's and the
    voice-only one's, whichever exist."""
    wd = Workdir(workdir)
    found = [d for d in (wd.features, wd.voice_features)
             if (d / "manifest.json").exists()]
    if not found:
        raise TwincastError(f"{workdir}: no enrolment cache here; run 'twincast enrol' first")
    return found
