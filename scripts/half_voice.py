"""``python scripts/half_voice.py BUNDLE``: store a bundle's voice weights in float16, in
place, so that the voice GPU check's bundles fit what the device tool brings back (64 MiB).

The manifest's digests are rewritten and its voice section says ``"weights": "float16"``;
synthesis loads the weights into float32 as ever. Measured on LJ's cpu-preset voice: the
rounding left one sentence's audio 57 dB below the signal, and moved another's length by
one frame (a duration that sat on a rounding edge)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from avatar import atomic
from avatar.bundle import read_manifest, sha256_file, write_manifest


def halve(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    voice = manifest.voice
    if voice is None:
        sys.exit(f"{bundle}: this bundle has no voice")
    names = [voice.file] + ([voice.vocoder.file] if voice.vocoder.kind == "vocos" else [])
    files = dict(manifest.files)
    for name in names:
        weights = load_file(str(bundle / name))
        half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
        with atomic.atomic_path(bundle / name, ".safetensors") as tmp:
            save_file(half, str(tmp))
        files[name] = sha256_file(bundle / name)
    write_manifest(bundle, manifest.replace(
        voice=dataclasses.replace(voice, weights="float16"), files=files))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/half_voice.py BUNDLE")
    halve(Path(sys.argv[1]))
