"""The avatar bundle on disk: the one contract between training and the runtime.

``avatars/NAME/manifest.json`` names every file with its sha256; weights are safetensors
(never pickles), media are plain files. Loading checks the schema version and every digest,
so a truncated or tampered bundle is refused with the file's name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from avatar.errors import TwincastError, path_error

SCHEMA_VERSION = 1
KIND = "twincast-avatar"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: Path, verify: bool = True) -> dict[str, Any]:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise path_error(bundle, "no such avatar bundle (expected a folder with "
                         "manifest.json)")
    mpath = bundle / "manifest.json"
    if not mpath.is_file():
        raise path_error(mpath, "missing; this folder is not an avatar bundle")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise path_error(mpath, f"is not valid JSON ({e}); the bundle is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise path_error(mpath, f"is not a {KIND} manifest")
    version = manifest.get("schema")
    if version != SCHEMA_VERSION:
        raise path_error(mpath, f"has schema version {version!r}, but this twincast reads "
                         f"version {SCHEMA_VERSION}; re-export the avatar or upgrade twincast")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise path_error(mpath, "lists no files")
    if verify:
        for name, digest in files.items():
            f = bundle / name
            if not f.is_file():
                raise path_error(f, "missing from the avatar bundle")
            if sha256_file(f) != digest:
                raise path_error(f, "does not match the bundle's manifest (truncated or "
                                 "modified); re-export the avatar")
    return manifest


def require(manifest: dict[str, Any], *keys: str) -> Any:
    """manifest[k1][k2]..., or a clear error naming the missing key."""
    node: Any = manifest
    for i, k in enumerate(keys):
        if not isinstance(node, dict) or k not in node:
            raise TwincastError(f"manifest.json lacks {'.'.join(keys[: i + 1])}; the bundle "
                                "is damaged or from another tool")
        node = node[k]
    return node
