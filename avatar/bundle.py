"""The avatar bundle on disk: the one contract between training and the runtime.

``avatars/NAME/manifest.json`` (typed in ``avatar.manifest``) names every file with its
sha256; weights are safetensors (never pickles), media are plain files. Loading checks the
schema version and every digest, so a truncated or tampered bundle is refused with the
file's name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from avatar import atomic
from avatar.errors import path_error
from avatar.manifest import KIND, READS, SCHEMA_VERSION, Manifest, ManifestError

__all__ = ["KIND", "READS", "SCHEMA_VERSION", "Manifest", "load_weights", "read_manifest",
           "sha256_file", "write_manifest"]



def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: Path, verify: bool = True) -> Manifest:
    """The bundle's typed manifest; with ``verify``, every file it lists is checked against
    its digest. Any fault is one error naming the file and what to do."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise path_error(bundle, "no such avatar bundle (expected a folder with "
                         "manifest.json)")
    mpath = bundle / "manifest.json"
    if not mpath.is_file():
        raise path_error(mpath, "missing; this folder is not an avatar bundle")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise path_error(mpath, f"is not valid JSON ({e}); the bundle is damaged") from None
    try:
        manifest = Manifest.from_dict(raw)
    except ManifestError as e:
        raise path_error(mpath, str(e).removeprefix("manifest.json").lstrip(": ")) from None
    if verify:
        unlisted = [n for n in manifest.referenced_files() if n not in manifest.files]
        if unlisted:
            raise path_error(bundle / unlisted[0], "is used by the manifest but has no digest "
                             "in it; the bundle is damaged or tampered with (re-export it)")
        for name, digest in manifest.files.items():
            f = bundle / name
            if not f.is_file():
                raise path_error(f, "missing from the avatar bundle")
            if sha256_file(f) != digest:
                raise path_error(f, "does not match the bundle's manifest (truncated or "
                                 "modified); re-export the avatar")
    return manifest


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    """Replace ``manifest.json`` in one atomic write (the last step of any export)."""
    atomic.write_json(Path(bundle) / "manifest.json", manifest.to_dict())


def load_weights(model: object, path: Path, what: str) -> None:
    """Load a bundle's safetensors file into ``model`` (never a pickle), or one error naming
    the file: a missing file, another model's weights, a damaged file."""
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(path)))  # type: ignore[attr-defined]
    except (RuntimeError, OSError, ValueError) as e:
        raise path_error(path, f"does not hold this {what}'s weights ({str(e)[:120]})"
                         ) from None
