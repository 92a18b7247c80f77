"""Atomic writes: a reader sees the old file or folder or the new one, never neither."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from avatar import atomic


def test_a_folder_is_replaced_whole_and_kept_when_the_swap_fails(tmp_path: Path,
                                                                 monkeypatch) -> None:  # noqa: ANN001
    target = tmp_path / "bundle"
    with atomic.atomic_dir(target) as d:
        (d / "a.txt").write_text("old")
    with atomic.atomic_dir(target) as d:
        (d / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # nothing left over

    real = os.replace

    def failing(src, dst):  # noqa: ANN001, ANN202
        if Path(dst) == target and ".tmp" in str(src):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"), atomic.atomic_dir(target) as d:
        (d / "a.txt").write_text("newer")
    # The old folder was deleted before the new one went in: now it is still there.
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
