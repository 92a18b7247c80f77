"""The voice's part of the avatar bundle: ``voice.safetensors`` and the manifest's ``voice``
section (model config, phoneme table, mel settings and scaling, vocoder, text frontend)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from safetensors.torch import save_file

from avatar import atomic
from avatar.bundle import read_manifest, sha256_file
from avatar.models.voice import SYMBOLS
from avatar.vocoder import MelSpec
from training.voice.train import TrainedVoice

VOICE_FILE = "voice.safetensors"
VOCODER_FILE = "vocoder.safetensors"


def write_voice(voice: TrainedVoice, folder: Path, preset: str) -> tuple[dict, dict[str, str]]:
    """Write the voice's weights into ``folder``; returns its manifest section and the
    digests of the files written."""
    weights = {k: v.detach().cpu().contiguous() for k, v in voice.model.state_dict().items()}
    with atomic.atomic_path(folder / VOICE_FILE, ".safetensors") as tmp:
        save_file(weights, str(tmp))
    section = {
        "file": VOICE_FILE,
        "config": dataclasses.asdict(voice.model.cfg),
        "symbols": list(SYMBOLS),
        "mel": {**dataclasses.asdict(MelSpec()), "mean": voice.mel_mean.tolist(),
                "std": voice.mel_std.tolist()},
        "vocoder": {"kind": "griffin-lim", "n_iter": 32},  # replaced below when trained
        "text": {"english_voice": "en-us"},
        "preset": preset,
        "train_seconds": round(voice.seconds, 1),
        "steps": voice.steps,
        "utterances": voice.utterances,
        "duration_scale": round(voice.duration_scale, 4),
    }
    files = {VOICE_FILE: sha256_file(folder / VOICE_FILE)}
    if voice.vocoder is not None:
        voc = voice.vocoder
        weights = {k: v.detach().cpu().contiguous() for k, v in voc.model.state_dict().items()}
        with atomic.atomic_path(folder / VOCODER_FILE, ".safetensors") as tmp:
            save_file(weights, str(tmp))
        section["vocoder"] = {"kind": "vocos", "file": VOCODER_FILE,
                              "config": dataclasses.asdict(voc.model.cfg),
                              "train_seconds": round(voc.seconds, 1), "steps": voc.steps,
                              "adapt_seconds": round(voc.adapt_seconds, 1),
                              "adapt_steps": voc.adapt_steps}
        files[VOCODER_FILE] = sha256_file(folder / VOCODER_FILE)
    return section, files


def add_voice(bundle: Path, voice: TrainedVoice, preset: str) -> None:
    """Put a (new) voice into an existing bundle; the manifest is replaced last, in one
    atomic write, so a failure leaves the old bundle working."""
    manifest = read_manifest(bundle)
    section, files = write_voice(voice, bundle, preset)
    manifest["voice"] = section
    kept = {k: v for k, v in manifest["files"].items() if k not in (VOICE_FILE, VOCODER_FILE)}
    manifest["files"] = {**kept, **files}
    atomic.write_json(bundle / "manifest.json", manifest)


def export_voice_bundle(voice: TrainedVoice, out: Path, name: str, preset: str) -> Path:
    """A bundle with a voice and no face (a voice-only enrolment), written atomically."""
    import datetime as dt

    from avatar.bundle import KIND, SCHEMA_VERSION
    from avatar.version import __version__

    with atomic.atomic_dir(out) as tmp:
        section, files = write_voice(voice, tmp, preset)
        atomic.write_json(tmp / "manifest.json", {
            "schema": SCHEMA_VERSION, "kind": KIND, "name": name,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "tool": f"twincast {__version__}", "voice": section, "files": files})
    return out
