"""``python -m training.voice.pack WORKDIR OUT``: what voice training reads of an
enrolment's caches (each utterance's text and span, the 22.05 kHz mel and recording), as one
voice cache in OUT/voice_features, small enough to carry to a GPU machine.

Each utterance's phonemes are written into the packed cache, so training from it needs
neither phonemizer nor espeak-ng (the GPU machine has neither). ``twincast train voice OUT``
then writes a voice-only bundle into OUT/avatars."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from avatar import atomic
from avatar.audio import VOICE_RATE
from avatar.errors import TwincastError
from avatar.text.frontend import TextFrontend
from training.voice.data import utterance_phonemes
from training.workdir import Workdir


def pack(workdir: Path, out: Path) -> Path:
    """Pack the voice caches of ``workdir`` into ``out/voice_features``; returns that path."""
    from training.enrol import _has_text
    from training.voice.features import voice_sources

    sources = [d for d in voice_sources(workdir) if _has_text(d)]
    if not sources:
        raise TwincastError(f"{workdir}: no enrolment cache with transcripts to pack; run "
                            "'twincast enrol' with a transcript first")
    frontend = TextFrontend()
    dst = Workdir(out).voice_features
    clips, rows = [], []
    with atomic.atomic_dir(dst) as tmp:
        for d in sources:
            manifest = json.loads((d / "manifest.json").read_text())
            by_id = {c["id"]: c for c in manifest["clips"]}
            # Two caches of one enrolment may both hold a clip of the same name.
            prefix = f"{d.name}-" if len(sources) > 1 else ""
            for line in (d / "utterances.jsonl").read_text().splitlines():
                r = json.loads(line) if line.strip() else {}
                if not r.get("text"):
                    continue
                clip = by_id[r["clip"]]
                cid = prefix + clip["id"]
                if not (tmp / "clips" / cid).exists():
                    src, to = d / clip["dir"], tmp / "clips" / cid
                    to.mkdir(parents=True)
                    shutil.copy(src / "audio22k.wav", to / "audio22k.wav")
                    with np.load(src / "audio.npz") as z:
                        np.savez_compressed(to / "audio.npz", mel22=z["mel22"])
                    clips.append({"id": cid, "dir": f"clips/{cid}",
                                  "source": clip.get("source"),
                                  "seconds": clip.get("seconds")})
                rows.append({"clip": cid, "start": r["start"], "end": r["end"],
                             "text": r["text"],
                             "phonemes": utterance_phonemes(frontend, r["text"])})
        atomic.write_json(tmp / "manifest.json", {
            "schema": 1, "kind": "voice", "rates": [VOICE_RATE], "clips": clips,
            "packed_from": [str(d) for d in sources]})
        (tmp / "utterances.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m training.voice.pack WORKDIR OUT_WORKDIR")
    try:
        print(pack(Path(sys.argv[1]), Path(sys.argv[2])))
    except TwincastError as e:
        sys.exit(f"error: {e}")
