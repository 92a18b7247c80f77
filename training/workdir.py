"""The enrolment work dir's layout, named once (DESIGN.md §1, §2)::

    WORKDIR/features/        the enrolment cache of the footage (resumable, content-hashed)
    WORKDIR/voice_features/  the cache of extra recordings the voice alone learns from
    WORKDIR/head/            the talking head's checkpoint, history and curves
    WORKDIR/voice/           the voice's (acoustic model and vocoder) checkpoints
    WORKDIR/avatars/NAME/    the exported avatar bundles
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def voice_features(self) -> Path:
        return self.root / "voice_features"

    @property
    def head(self) -> Path:
        return self.root / "head"

    @property
    def voice(self) -> Path:
        return self.root / "voice"

    @property
    def avatars(self) -> Path:
        return self.root / "avatars"

    def bundle(self, name: str) -> Path:
        return self.avatars / name

    def bundles(self) -> list[Path]:
        """The exported bundles, by name."""
        return sorted(p.parent for p in self.avatars.glob("*/manifest.json"))
