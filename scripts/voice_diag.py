"""Where a voice's errors come from, without a trained vocoder: an acoustic-model checkpoint
is scored on held-out recordings three ways, each turned into sound by Griffin-Lim and
transcribed by the evaluation's recogniser (a bigram model of those sentences):

- ``real``: the recording's own mel (the recogniser's and Griffin-Lim's floor);
- ``teacher_forced``: the model's mel with the recording's own alignment (its decoder);
- ``synth``: the model's mel with its own predicted durations (what synthesis does).

    .venv/bin/python scripts/voice_diag.py WORKDIR/voice/checkpoint.pt --preset cpu \
        [--data ../shared/data/ljspeech/eval] [--clips 12] [--model '{"dim": 128}']

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from avatar.audio import SPEECH_RATE, VOICE_MEL, resample
from avatar.models.voice import VOICE_PRESETS, AcousticModel, encode
from avatar.text.frontend import TextFrontend
from avatar.vocoder import GriffinLim
from training.voice.evaluate import (
    Recogniser,
    edit_distance,
    find_transcript,
    words_of,
    write_bigram_arpa,
)
from training.voice.features import read_texts

WAYS = ("real", "teacher_forced", "synth")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--preset", default="cpu", help="the model's architecture preset")
    ap.add_argument("--model", default="{}", help="JSON changes to the preset's model")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/ljspeech/eval"))
    ap.add_argument("--clips", type=int, default=12)
    args = ap.parse_args()

    saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    cfg = dataclasses.replace(VOICE_PRESETS[args.preset], **json.loads(args.model))
    model = AcousticModel(cfg)
    model.load_state_dict(saved["model"])
    model.eval()
    mean, std = saved["mel_mean"][:, None], saved["mel_std"][:, None]

    texts = read_texts(find_transcript(args.data))
    files = sorted(f for f in args.data.iterdir() if f.stem in texts
                   and f.suffix.lower() in (".wav", ".flac"))[: args.clips]
    refs = [words_of(texts[f.stem]) for f in files]
    lm = Path(tempfile.mkdtemp()) / "bigram.arpa"
    write_bigram_arpa(refs, lm)
    vocabulary = {w for r in refs for w in r}
    frontend, gl = TextFrontend(), GriffinLim(VOICE_MEL, 32)
    errors = dict.fromkeys(WAYS, 0)
    held_l1 = []
    for f, ref in zip(files, refs, strict=True):
        audio, rate = sf.read(f, dtype="float32", always_2d=False)
        audio = resample(audio, rate, VOICE_MEL.rate) if rate != VOICE_MEL.rate else audio
        mel = torch.from_numpy(VOICE_MEL(audio)).float()
        phonemes = " ".join(p.phonemes for p in frontend.pieces(texts[f.stem]))
        ids, _ = encode(phonemes, cfg.marks)
        tokens = torch.tensor([ids])
        norm = ((mel - mean) / std)[None]
        with torch.no_grad():
            forced, losses = model(tokens, torch.tensor([len(ids)]), norm,
                                   torch.tensor([norm.shape[2]]))
        held_l1.append(float(losses["voice/mel"]))
        synth, _ = model.synthesise(tokens)
        mels = {"real": mel, "teacher_forced": forced[0] * std + mean,
                "synth": synth * std + mean}
        for way in WAYS:
            # A fresh decoder each time: pocketsphinx carries state between utterances.
            heard = Recogniser(lm, vocabulary)(resample(gl(mels[way]), VOICE_MEL.rate,
                                                        SPEECH_RATE))
            errors[way] += edit_distance(ref, heard)
    words = sum(len(r) for r in refs)
    print(json.dumps({"checkpoint": str(args.checkpoint), "step": saved.get("step"),
                      "clips": len(files), "words": words,
                      "held_mel_l1": round(float(np.mean(held_l1)), 4),
                      **{f"wer_{w}": round(errors[w] / max(words, 1), 4) for w in WAYS}}))


if __name__ == "__main__":
    main()
