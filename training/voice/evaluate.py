"""``twincast eval voice``: the voice measured on held-out recordings, with models nobody
here trained.

For every held-out recording with text, the voice says the same text; then
- intelligibility: pocketsphinx transcribes the synthesised and the real audio with a small
  bigram language model written here from the evaluation sentences (its stock model is too
  weak on read speech for a comparison to mean anything, DESIGN.md §5), word error rates;
- likeness: resemblyzer's speaker embedding, synthesised-to-real (same sentence) against
  real-to-real (two different real recordings);
- mel-cepstral distortion after dynamic time warping, F0 RMSE over frames voiced in both,
  the ratio of speech durations, the real-time factor and the first chunk's latency.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from avatar import atomic
from avatar.audio import SPEECH_RATE, VOICE_MEL, VOICE_RATE, resample
from avatar.errors import TwincastError, path_error
from avatar.text.frontend import TextFrontend
from avatar.voice import Voice
from training.progress import bar

log = logging.getLogger(__name__)

MEDIA_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".mpg", ".mp4", ".mkv",
                    ".webm", ".mov", ".avi")


def find_transcript(data: Path) -> Path:
    for name in ("metadata.csv", "transcripts.tsv", "transcript.tsv"):
        for d in (data, data.parent):
            if (d / name).is_file():
                return d / name
    raise path_error(data, "no transcript found beside it (metadata.csv or "
                     "transcripts.tsv); pass --transcript")


# ---------------------------------------------------------------- intelligibility

def words_of(text: str) -> list[str]:
    from training.align import normalise

    return normalise(text)


UNSEEN = Path(__file__).with_name("unseen_sentences.txt")
"""Sentences unlike any enrolment text (product talk, questions, numbers and dates,
replies, names, long sentences), with the words a listener should hear."""


def unseen_sentences(path: Path = UNSEEN) -> list[tuple[str, list[str]]]:
    """(text to say, reference words) for each line of ``path``: ``text`` or
    ``text|spoken words`` where the written form (digits, abbreviations) reads otherwise."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        text, _, spoken = line.partition("|")
        out.append((text.strip(), words_of(spoken or text)))
    return out


def unseen_wer(voice: Voice, sentences: list[tuple[str, list[str]]], lm: Path) -> dict:
    """The voice says each sentence and the recogniser, with a bigram model of these
    sentences, writes down what it heard: the word error rate on text unlike the
    enrolment's, and the sentences it got most wrong."""
    refs = [ref for _, ref in sentences]
    write_bigram_arpa(refs, lm)
    recognise = Recogniser(lm, {w for r in refs for w in r})
    rows = []
    with bar(len(sentences), "unseen sentences", "sentence") as pb:
        for text, ref in sentences:
            audio = np.concatenate([c.audio for c in voice.speak(text)])
            hyp = recognise(resample(audio, voice.rate, SPEECH_RATE))
            rows.append({"text": text, "words": len(ref),
                         "errors": edit_distance(ref, hyp), "heard": " ".join(hyp)})
            pb.update(1)
    words = sum(r["words"] for r in rows)
    worst = sorted(rows, key=lambda r: r["errors"] / max(r["words"], 1), reverse=True)
    return {"sentences": len(rows), "words": words,
            "wer_synth": round(sum(r["errors"] for r in rows) / max(words, 1), 4),
            "worst": worst[:10]}


def write_bigram_arpa(sentences: list[list[str]], path: Path, discount: float = 0.5) -> None:
    """A bigram ARPA model of ``sentences`` with absolute discounting and back-off to
    add-one unigrams: every word of the evaluation is known, their order is hinted."""
    uni: Counter[str] = Counter()
    bi: Counter[tuple[str, str]] = Counter()
    for s in sentences:
        toks = ["<s>", *s, "</s>"]
        uni.update(toks)
        bi.update(zip(toks[:-1], toks[1:], strict=False))
    vocab = sorted(uni)
    total = sum(c for w, c in uni.items() if w != "<s>")
    p_uni = {w: (uni[w] + 1) / (total + len(vocab)) for w in vocab}
    p_uni["<s>"] = 1e-99  # never predicted
    followers: dict[str, list[str]] = {}
    for a, b in bi:
        followers.setdefault(a, []).append(b)
    lines = ["\\data\\", f"ngram 1={len(vocab)}", f"ngram 2={len(bi)}", "", "\\1-grams:"]
    backoff: dict[str, float] = {}
    for a, fs in followers.items():
        ctx = sum(bi[(a, b)] for b in fs)
        left = discount * len(fs) / ctx
        seen_mass = sum(p_uni[b] for b in fs)
        backoff[a] = left / max(1e-12, 1 - seen_mass)
    for w in vocab:
        lp = -99.0 if w == "<s>" else math.log10(p_uni[w])
        bo = math.log10(backoff[w]) if w in backoff else 0.0
        lines.append(f"{lp:.5f}\t{w}\t{bo:.5f}")
    lines += ["", "\\2-grams:"]
    for (a, b), c in sorted(bi.items()):
        ctx = sum(bi[(a, x)] for x in followers[a])
        lines.append(f"{math.log10((c - discount) / ctx):.5f}\t{a} {b}")
    lines += ["", "\\end\\", ""]
    atomic.write_text(path, "\n".join(lines))


LEAD_IN = 0.3
"""Seconds of silence put before and after every clip the recogniser hears. pocketsphinx
misreads the first word or two of a clip that starts with speech (its cepstral mean and
its first frames' search have nothing to settle on), and neither LJ Speech's recordings
(median lead-in 0 s over its eval split) nor the voice (at most 23 ms before the first word,
for latency) give it any. The short sentences of the unseen set suffered most: the LJ
voice's unseen WER was 23.8 % heard as is and 20.1 % with 0.25 or 0.5 s of silence
around each clip (AMD EPYC, 2026-12-05). Real, vocoded and synthesised audio all get the
same silence, so the comparison stays even."""


class Recogniser:
    """pocketsphinx with the in-domain language model (words missing from its dictionary
    get espeak-ng's pronunciation, as in the aligner); every clip heard with ``LEAD_IN``
    seconds of silence either side."""

    def __init__(self, lm_path: Path, words: set[str]):
        from pocketsphinx import Decoder

        from training.align import add_pronunciations

        self.decoder = Decoder(samprate=SPEECH_RATE, loglevel="FATAL")
        add_pronunciations(self.decoder, sorted(words), set())
        self.decoder.set_lm_file("eval", str(lm_path))
        self.decoder.activate_search("eval")

    def __call__(self, audio16: np.ndarray) -> list[str]:
        pad = np.zeros(int(LEAD_IN * SPEECH_RATE), np.float32)
        audio16 = np.concatenate([pad, np.asarray(audio16, np.float32), pad])
        pcm = (np.clip(audio16, -1, 1) * 32767).astype(np.int16).tobytes()
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        text = hyp.hypstr if hyp is not None else ""
        return [re.sub(r"\(\d+\)$", "", w) for w in text.split()]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[-1]


# ---------------------------------------------------------------- signal measures

def _trim(audio: np.ndarray, rate: int, top_db: float = 35.0) -> np.ndarray:
    """Cut leading and trailing silence (frames 35 dB below the loudest)."""
    hop = rate // 100
    n = len(audio) // hop
    if n < 3:
        return audio
    e = 10 * np.log10(np.mean(audio[: n * hop].reshape(n, hop) ** 2, 1) + 1e-12)
    loud = np.nonzero(e > e.max() - top_db)[0]
    return audio[loud[0] * hop: (loud[-1] + 1) * hop]


def _cepstra(audio22: np.ndarray) -> np.ndarray:
    """(T, 24) mel-cepstral coefficients 1-24 of the voice's own log-mel."""
    from scipy.fft import dct


    mel = VOICE_MEL(audio22)
    # Coefficients of the cosine series of the log-mel envelope (the mel-cepstrum).
    return (dct(mel, type=2, axis=0) / mel.shape[0])[1:25].T


def mcd_and_f0(real22: np.ndarray, synth22: np.ndarray) -> tuple[float, float]:
    """Mel-cepstral distortion (dB) along the DTW path, and F0 RMSE (Hz) over the path's
    frames voiced in both."""
    import librosa

    from training.audio_features import pitch_yin

    a, b = _cepstra(real22), _cepstra(synth22)
    _, path = librosa.sequence.dtw(a.T, b.T, metric="euclidean")
    path = path[::-1]
    diff = a[path[:, 0]] - b[path[:, 1]]
    mcd = float(np.mean((10 / np.log(10)) * np.sqrt(2 * (diff ** 2).sum(1))))
    fa = pitch_yin(real22, VOICE_MEL.rate, VOICE_MEL.hop, 60.0, 500.0)
    fb = pitch_yin(synth22, VOICE_MEL.rate, VOICE_MEL.hop, 60.0, 500.0)
    i = np.clip(path[:, 0], 0, len(fa) - 1)
    j = np.clip(path[:, 1], 0, len(fb) - 1)
    both = (fa[i] > 0) & (fb[j] > 0)
    f0 = float(np.sqrt(np.mean((fa[i][both] - fb[j][both]) ** 2))) if both.any() else math.nan
    return mcd, f0


# ---------------------------------------------------------------- the evaluation

def evaluate_voice(bundle: Path, data: Path, out_dir: Path, transcript: Path | None = None,
                   device: str = "cpu", limit: int | None = None,
                   whole_transcripts: bool = False, unseen: bool = True) -> dict:
    """The voice against held-out recordings of the person (``data``) and, with
    ``unseen``, on sentences unlike its training text (``UNSEEN``); ``limit`` keeps the
    first N of each."""
    from resemblyzer import VoiceEncoder

    from training.align import shared_aligner

    voice = Voice.load(bundle, device)
    if not data.is_dir():
        raise path_error(data, "no such folder of held-out recordings")
    from training.voice.features import read_texts

    texts = read_texts(transcript or find_transcript(data))
    files = sorted(f for f in data.iterdir()
                   if f.suffix.lower() in MEDIA_EXTENSIONS and f.stem in texts)
    if limit:
        files = files[:limit]
    if len(files) < 2:
        raise TwincastError(f"{data}: evaluation needs at least two recordings with text "
                            "(real-to-real likeness compares two of them)")
    out_dir.mkdir(parents=True, exist_ok=True)
    aligner = shared_aligner()
    clips, left_out = _references(aligner, files, texts, whole_transcripts)
    if len(clips) < 2:
        raise TwincastError(f"{data}: fewer than two recordings say enough of their "
                            "transcripts to be compared")
    sentences = [words_of(text) for _, text, _, _ in clips]
    lm = out_dir / "eval_bigram.arpa"
    write_bigram_arpa(sentences, lm)
    # One decoder per side: pocketsphinx carries state from one utterance to the next (on
    # LJ's eval the same real recordings scored 106 or 110 errors depending on which
    # synthesised sentences were decoded between them), so the real WER must not see the
    # voice's audio.
    vocabulary = {w for s in sentences for w in s}
    recognise_real, recognise_synth = Recogniser(lm, vocabulary), Recogniser(lm, vocabulary)
    recognise_vocoded = Recogniser(lm, vocabulary)
    encoder = VoiceEncoder(device="cuda" if device.startswith("cuda") else "cpu",
                           verbose=False)
    voice.say("Warm up.")
    rows = []
    with bar(len(clips), "evaluating voice", "clip") as pb:
        for (f, text, real, span), ref in zip(clips, sentences, strict=True):
            t0 = time.perf_counter()
            chunks, first = [], None
            for c in voice.speak(text):
                if first is None:
                    first = time.perf_counter() - t0
                chunks.append(c.audio)
            synth_s = time.perf_counter() - t0
            synth22 = np.concatenate(chunks)
            synth16 = resample(synth22, voice.rate, SPEECH_RATE)
            hyp_real = recognise_real(real[SPEECH_RATE])
            hyp_synth = recognise_synth(synth16)
            # The real recording through the voice's own vocoder: what is lost there is
            # the vocoder's share of the gap, the rest is the acoustic model's.
            vocoded = voice.vocoder(torch.from_numpy(voice.spec(real[VOICE_RATE])).to(
                voice.device))
            hyp_vocoded = recognise_vocoded(resample(vocoded, voice.rate, SPEECH_RATE))
            r22 = _cut(real[VOICE_RATE], VOICE_RATE, span)
            s22 = _cut(synth22, voice.rate, _speech_span(aligner, synth16, text))
            mcd, f0 = mcd_and_f0(r22, s22)
            rows.append({
                "clip": f.stem, "words": len(ref), "cut": text != texts[f.stem],
                "errors_real": edit_distance(ref, hyp_real),
                "errors_synth": edit_distance(ref, hyp_synth),
                "errors_vocoded": edit_distance(ref, hyp_vocoded),
                "hyp_synth": " ".join(hyp_synth),
                # Likeness on the level-trimmed recordings, as before: cut to the words,
                # clips of a second or two give resemblyzer too little to go on.
                "emb_real": encoder.embed_utterance(_trim(real[SPEECH_RATE], SPEECH_RATE)),
                "emb_synth": encoder.embed_utterance(_trim(synth16, SPEECH_RATE)),
                "seconds_real": len(r22) / VOICE_RATE,
                "seconds_synth": len(s22) / VOICE_RATE,
                "phones": phone_count(voice.frontend, text, voice.model.cfg.marks),
                "mcd_db": mcd, "f0_rmse_hz": f0,
                "rtf": synth_s / (len(synth22) / voice.rate), "first_chunk_ms": first * 1000,
                "mel_real": None if rows else _cepstra(r22),
            })
            pb.update(1)
    n_words = sum(r["words"] for r in rows)
    for k, r in enumerate(rows):
        other = rows[(k + 1) % len(rows)]
        r["sim_synth_real"] = float(r["emb_synth"] @ r["emb_real"])
        r["sim_real_real"] = float(r["emb_real"] @ other["emb_real"])
        r["duration_ratio"] = r["seconds_synth"] / max(r["seconds_real"], 1e-6)
    # The reader's own spread: a voice that spoke every sentence at the reader's median rate
    # on these very recordings (phones a second) would be this far from each of them.
    rate = float(np.median([r["seconds_real"] / max(r["phones"], 1) for r in rows]))
    steady = np.array([r["phones"] * rate / max(r["seconds_real"], 1e-6) for r in rows])
    wer_real = sum(r["errors_real"] for r in rows) / max(n_words, 1)
    wer_synth = sum(r["errors_synth"] for r in rows) / max(n_words, 1)
    wer_vocoded = sum(r["errors_vocoded"] for r in rows) / max(n_words, 1)
    ratios = np.array([r["duration_ratio"] for r in rows])
    report = {
        "bundle": str(bundle), "data": str(data), "clips": len(rows), "words": n_words,
        "clips_cut": sum(r["cut"] for r in rows), "clips_left_out": left_out,
        "whole_transcripts": whole_transcripts,
        "wer_real": round(wer_real, 4), "wer_synth": round(wer_synth, 4),
        "wer_gap_points": round(100 * (wer_synth - wer_real), 1),
        "wer_vocoded": round(wer_vocoded, 4),
        "similarity_synth_real": round(float(np.mean([r["sim_synth_real"] for r in rows])), 4),
        "similarity_real_real": round(float(np.mean([r["sim_real_real"] for r in rows])), 4),
        "duration_ratio_median": round(float(np.median(ratios)), 3),
        "duration_within_15pct": round(float(np.mean(np.abs(ratios - 1) <= 0.15)), 3),
        "duration_within_15pct_steady_rate": round(float(np.mean(np.abs(steady - 1) <= 0.15)),
                                                   3),
        "mcd_db": round(float(np.mean([r["mcd_db"] for r in rows])), 2),
        "f0_rmse_hz": round(float(np.nanmean([r["f0_rmse_hz"] for r in rows])), 1),
        "rtf": round(float(np.median([r["rtf"] for r in rows])), 4),
        "first_chunk_ms": round(float(np.median([r["first_chunk_ms"] for r in rows])), 1),
        "device": str(voice.device),
        "per_clip": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                      if k not in ("emb_real", "emb_synth", "mel_real")}
                     for r in rows],
        "method": "WER: pocketsphinx with a bigram LM of the evaluation sentences "
                  "(eval_bigram.arpa), a decoder each for real, synthesised and vocoded "
                  "audio (wer_vocoded: the real recording's mel through the voice's "
                  "vocoder, the vocoder's share of the gap); a "
                  "recording that stops before its transcript is compared (and the voice "
                  "says) only the words it says, found by forced alignment. Likeness: "
                  "resemblyzer cosine, synthesised vs the real recording of the same sentence, "
                  "and each real recording vs the next. MCD: mel-cepstra 1-24 along a DTW "
                  "path; durations and MCD on each recording's speech, first word to last by "
                  "forced alignment; likeness on recordings trimmed of silence by level. "
                  "duration_within_15pct_steady_rate: the same share for the real recordings "
                  "against one steady speaking rate (the reader's median phones a second over "
                  "these recordings), i.e. how much of the spread is the reader's own.",
    }
    if unseen:
        sentences = unseen_sentences()[:limit] if limit else unseen_sentences()
        u = unseen_wer(voice, sentences, out_dir / "unseen_bigram.arpa")
        u["gap_to_in_domain_points"] = round(100 * (u["wer_synth"] - wer_synth), 1)
        report["unseen"] = u
        report["method"] += (" unseen: the voice says sentences unlike any enrolment text "
                             "(training/voice/unseen_sentences.txt), scored against the "
                             "words a listener should hear with a bigram LM of those "
                             "sentences (unseen_bigram.arpa) on its own decoder; "
                             "gap_to_in_domain_points: its WER minus wer_synth.")
    atomic.write_json(out_dir / "report.json", report)
    _plot(rows, report, out_dir / "report.png")
    return report


Span = tuple[float, float] | None


def phone_count(frontend: TextFrontend, text: str, marks: bool = True) -> int:
    """Phones the voice's frontend makes of ``text`` (word separators, punctuation and
    stress or length marks not counted)."""
    from avatar.models.voice import NOT_PHONES, encode, symbol_of

    n = 0
    for piece in frontend.pieces(text):
        ids, _ = encode(piece.phonemes, marks)
        n += sum(symbol_of(i) not in NOT_PHONES for i in ids)
    return n


def _speech_span(aligner: object, audio16: np.ndarray, text: str) -> Span:
    """First word's start to last word's end by forced alignment: an energy threshold
    keeps a noisy recording's hiss and clicks (GRID's 3-s clips hold 1.1-1.6 s of speech
    and trimmed by level alone they stay 2.9 s long)."""
    words = aligner.align(audio16, text)  # type: ignore[attr-defined]
    return (words[0].start, words[-1].end) if words else None


def _cut(audio: np.ndarray, rate: int, span: Span, pad: float = 0.02) -> np.ndarray:
    """``audio`` cut to ``span`` (with a little room), or trimmed by level without one."""
    if span is None:
        return _trim(audio, rate)
    a, b = max(0, int((span[0] - pad) * rate)), int((span[1] + pad) * rate)
    return audio[a:b] if b - a > rate // 10 else _trim(audio, rate)


def _references(aligner: object, files: list[Path], texts: dict[str, str],
                whole: bool = False
                ) -> tuple[list[tuple[Path, str, dict[int, np.ndarray], Span]], int]:
    """(recording, the text it says, its audio at 16 and 22.05 kHz, its speech span) for
    each held-out recording, and how many were left out. Some recordings stop before their
    transcript does; scoring them against the whole sentence would count words never spoken as the
    recogniser's errors (flattering any voice by inflating the real WER) and compare the
    voice's whole sentence with a fragment's duration. ``whole`` keeps every transcript
    whole all the same (for comparison with figures measured that way)."""
    from training.ingest import decode_audio
    from training.voice.features import fit_to_speech

    out, left_out = [], 0
    with bar(len(files), "checking transcripts", "clip") as pb:
        for f in files:
            real = decode_audio(f, [SPEECH_RATE, VOICE_RATE])
            seconds = len(real[SPEECH_RATE]) / SPEECH_RATE
            said = aligner.spoken_prefix(real[SPEECH_RATE], texts[f.stem])  # type: ignore[attr-defined]
            pb.update(1)
            if whole:
                span = (said.timing[0].start, said.timing[-1].end) if said.timing else None
                out.append((f, texts[f.stem], real, span))
                continue
            fitted = fit_to_speech(texts[f.stem], (0.0, seconds), {
                "words": said.words, "of": said.of, "ends": [w.end for w in said.timing]},
                seconds)
            if fitted is None:
                left_out += 1
                continue
            text, (_, end) = fitted
            if end < seconds:
                real = {r: a[: int(end * r)] for r, a in real.items()}
            heard = [w for w in said.timing if w.end <= end + 1e-6]
            out.append((f, text, real, (heard[0].start, heard[-1].end) if heard else None))
    if left_out:
        log.warning("%d held-out recordings say fewer than three words of their transcripts "
                    "and are left out", left_out)
    return out, left_out


def _plot(rows: list[dict], report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 7))
    k = np.arange(len(rows))
    ax[0, 0].bar(k - 0.2, [r["sim_synth_real"] for r in rows], 0.4, label="synth-real")
    ax[0, 0].bar(k + 0.2, [r["sim_real_real"] for r in rows], 0.4, label="real-real")
    ax[0, 0].set_title("speaker similarity (resemblyzer)")
    ax[0, 0].legend()
    ax[0, 1].hist([r["duration_ratio"] for r in rows], bins=15)
    ax[0, 1].axvline(1.0, color="k")
    ax[0, 1].set_title("duration synth / real")
    ax[1, 0].bar(["real", "synth"], [report["wer_real"], report["wer_synth"]])
    ax[1, 0].set_title("word error rate (in-domain bigram LM)")
    first = rows[0]
    ax[1, 1].imshow(first["mel_real"].T, aspect="auto", origin="lower")
    ax[1, 1].set_title(f"mel-cepstra of the real {first['clip']}")
    fig.tight_layout()
    with atomic.atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
