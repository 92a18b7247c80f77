"""The voice's part of the avatar bundle: ``voice.safetensors`` (and the vocoder's) and
the manifest's typed ``voice`` section (model config, phoneme table, mel settings and
scaling, vocoder, text frontend)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from safetensors.torch import save_file

from avatar import atomic
from avatar.audio import VOICE_MEL
from avatar.bundle import read_manifest, sha256_file, write_manifest
from avatar.manifest import Manifest, VocoderSection, VoiceMel, VoiceSection
from avatar.models.voice import SYMBOLS
from avatar.version import __version__
from training.consent import bundle_consent
from training.voice.train import TrainedVoice

VOICE_FILE = "voice.safetensors"
VOCODER_FILE = "vocoder.safetensors"


def _save(model: object, path: Path) -> str:
    """Write a model's weights as safetensors, atomically; returns their sha256."""
    weights = {k: v.detach().cpu().contiguous()
               for k, v in model.state_dict().items()}  # type: ignore[attr-defined]
    with atomic.atomic_path(path, ".safetensors") as tmp:
        save_file(weights, str(tmp))
    return sha256_file(path)


def write_voice(voice: TrainedVoice, folder: Path, preset: str, tag: str = ""
                ) -> tuple[VoiceSection, dict[str, str]]:
    """Write the voice's weights into ``folder`` (names with ``-TAG`` when given, beside
    a voice already there); returns its manifest section and the digests of the files
    written."""
    voice_file = VOICE_FILE.replace(".", f"-{tag}.", 1) if tag else VOICE_FILE
    vocoder_file = VOCODER_FILE.replace(".", f"-{tag}.", 1) if tag else VOCODER_FILE
    files = {voice_file: _save(voice.model, folder / voice_file)}
    vocoder = VocoderSection("griffin-lim", n_iter=32)
    if voice.vocoder is not None:
        voc = voice.vocoder
        files[vocoder_file] = _save(voc.model, folder / vocoder_file)
        vocoder = VocoderSection("vocos", file=vocoder_file,
                                 config=dataclasses.asdict(voc.model.cfg),
                                 train_seconds=round(voc.seconds, 1), steps=voc.steps,
                                 adapt_seconds=round(voc.adapt_seconds, 1),
                                 adapt_steps=voc.adapt_steps)
    section = VoiceSection(
        file=voice_file, config=dataclasses.asdict(voice.model.cfg), symbols=list(SYMBOLS),
        mel=VoiceMel(VOICE_MEL, voice.mel_mean.tolist(), voice.mel_std.tolist()),
        vocoder=vocoder, text={"english_voice": "en-us"}, preset=preset,
        train_seconds=round(voice.seconds, 1), steps=voice.steps,
        utterances=voice.utterances, duration_scale=round(voice.duration_scale, 4),
        plan=voice.plan)
    return section, files


def add_voice(bundle: Path, voice: TrainedVoice, preset: str) -> None:
    """Put a (new) voice into an existing bundle: its weights under new names beside the
    old ones, the manifest replaced last in one atomic write, then the old weights
    removed; a failure at any point leaves the old bundle working (the weights were once
    overwritten in place before the manifest: a crash between left the digests wrong)."""
    import time

    manifest = read_manifest(bundle)
    old = manifest.voice
    old_files = set()
    if old is not None:
        old_files = {old.file} | ({old.vocoder.file} if old.vocoder.kind != "griffin-lim"
                                  else set())
    tag = f"{int(time.time() * 1000)}"
    try:
        section, files = write_voice(voice, bundle, preset, tag)
    except BaseException:
        for f in bundle.glob(f"*-{tag}.safetensors"):
            f.unlink(missing_ok=True)
        raise
    kept = {k: v for k, v in manifest.files.items() if k not in old_files}
    write_manifest(bundle, manifest.replace(voice=section, files={**kept, **files}))
    for f in old_files - set(files):
        (bundle / f).unlink(missing_ok=True)


def export_voice_bundle(voice: TrainedVoice, out: Path, name: str, preset: str) -> Path:
    """A bundle with a voice and no face (a voice-only enrolment), written atomically."""
    with atomic.atomic_dir(out) as tmp:
        section, files = write_voice(voice, tmp, preset)
        write_manifest(tmp, Manifest(
            name=name, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            tool=f"twincast {__version__}", files=files, voice=section,
            consent=bundle_consent(out)))
    return out
