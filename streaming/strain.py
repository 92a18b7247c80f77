"""What the open sessions are losing: the share of their frames shown idle as too late to
render or passed over by a video sender that had fallen behind, over the last seconds.

Admission's other measures predict: the render lanes' cost model and the host's CPU use.
Neither sees every limit. On a GPU node (H200, 16-core Xeon, 720p) the lane's measure
admitted 15-17 sessions and the host was under a third busy, yet with every session's frames
also VP8-encoded in the same process four sessions already lost 15 % of their frames: the
compositing, frame wrapping and encoding share one interpreter. This measures the outcome
itself, so a server that is already losing frames takes no one else (``Registry.reserve``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol


class _Counted(Protocol):
    stats: dict[str, int]


@dataclass(frozen=True)
class Strain:
    lost: float
    """Share of the frames due over the window that were lost."""
    frames: int
    """Frames due over the window (every open session's)."""
    seconds: float


class FrameStrain:
    """Sample every few seconds (and before each admission) with the open sessions; a
    session's counts are taken as increments, so one closing takes nothing back."""

    def __init__(self, window_s: float = 30.0, min_frames: int = 250,
                 clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.min_frames = min_frames
        """Fewer frames than this over the window (ten seconds of one session) say nothing."""
        self.clock = clock
        self._seen: dict[str, tuple[int, int]] = {}
        self._due = self._lost = 0
        self._samples: deque[tuple[float, int, int]] = deque()

    def sample(self, sessions: Mapping[str, _Counted]) -> None:
        seen = {}
        for sid, s in sessions.items():
            skipped = s.stats.get("frames_skipped", 0)
            due = s.stats.get("frames_shown", 0) + skipped
            lost = s.stats.get("frames_late", 0) + skipped
            due0, lost0 = self._seen.get(sid, (0, 0))
            self._due += max(0, due - due0)
            self._lost += max(0, lost - lost0)
            seen[sid] = (due, lost)
        self._seen = seen
        now = self.clock()
        self._samples.append((now, self._due, self._lost))
        # Keep the newest sample at or before the window's start as its baseline.
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def strain(self) -> Strain | None:
        """Over the last window; None before there are ``min_frames`` to judge by."""
        if len(self._samples) < 2:
            return None
        (t0, due0, lost0), (t1, due1, lost1) = self._samples[0], self._samples[-1]
        frames = due1 - due0
        if frames < self.min_frames:
            return None
        return Strain(lost=(lost1 - lost0) / frames, frames=frames, seconds=t1 - t0)
