"""Atomic file writes: a reader never sees a half-written file.

Every cache and bundle file is written to a temporary name beside its target and renamed
into place, so a run killed at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp",
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the usual permissions.
        os.chmod(tmp_path, 0o666 & ~_umask())
        _fsync(tmp_path)  # its data on disk before its name: a crash leaves old or new
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npz(target: Path, compress: bool = False, **arrays: np.ndarray) -> None:
    """Save arrays, uncompressed unless ``compress`` (most are read often and are
    memory-mapped-ish sized; the texture bank is read once per load and shrinks by half).

    The archive is built in memory and written in one go: numpy writing a zip straight into
    a file that fills the disk leaves the zip half-open, and its clean-up then prints a
    traceback from the garbage collector over the one-line "disk is full" error."""
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    with atomic_path(target, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Build a directory under a temporary name; it replaces ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        # mkdtemp makes a private folder, and some writers make private files.
        mode = 0o666 & ~_umask()
        os.chmod(tmp, mode | 0o111)
        for f in tmp.rglob("*"):
            os.chmod(f, mode | (0o111 if f.is_dir() else 0))
            if f.is_file():
                _fsync(f)
        _fsync(tmp)
        # The old folder is moved aside, not deleted, until the new one is in place: a
        # failure in between leaves it whole (under its backup name), never nothing.
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old",
                                        dir=target.parent))
            os.replace(target, old / "x")
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old / "x", target)
                shutil.rmtree(old, ignore_errors=True)
            raise
        _fsync(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
