"""Where a new session goes: the worker whose predicted load after taking it is lowest,
among those that admit it by the single server's own rule (sessions x fps within the share
of its measured capacity, under its session cap). Pure, so that it is tested alone."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker reports (``TwincastWorker.info``), as the ingress sees it."""

    name: str
    node: str
    url: str
    sessions: tuple[str, ...]
    max_sessions: int
    capacity_fps: float
    """Its scheduler's warm-up measure of frames/s it renders (the cost model's best)."""
    capacity_share: float
    fps: int
    frames: int = 0
    late: int = 0
    bundles: dict = field(default_factory=dict)
    """avatar name -> the sha256 of its manifest, as loaded and verified."""
    draining: bool = False
    """A newer version has started beside it: it keeps its sessions and takes no more."""
    streams: dict = field(default_factory=dict)
    """RTMP stream session id -> the show step it is on."""

    @classmethod
    def of(cls, d: dict) -> WorkerInfo:
        return cls(d["name"], d["node"], d["url"], tuple(d["sessions"]), d["max_sessions"],
                   float(d["capacity_fps"]), float(d["capacity_share"]), int(d["fps"]),
                   int(d.get("frames", 0)), int(d.get("late", 0)), dict(d.get("bundles", {})),
                   bool(d.get("draining", False)), dict(d.get("streams", {})))

    def load_after(self, extra: int = 1) -> float:
        """The share of its admissible capacity taken with ``extra`` more sessions."""
        usable = self.capacity_share * self.capacity_fps
        return (len(self.sessions) + extra) * self.fps / usable if usable > 0 else float("inf")

    def admits(self) -> bool:
        """The single server's rule (``streaming.registry.Registry.reserve``): an idle
        worker takes one whatever its measure says."""
        return (not self.draining and len(self.sessions) < self.max_sessions
                and (not self.sessions or self.load_after() <= 1.0))

    @property
    def late_share(self) -> float:
        return self.late / self.frames if self.frames else 0.0


def choose(workers: list[WorkerInfo], avatar: str | None = None) -> WorkerInfo | None:
    """The worker for one more session (of ``avatar``, if it must serve that one), or None
    when the whole cluster is full. Lowest predicted load first; a worker that has been
    late more often loses ties (its host is busier than its model says)."""
    fits = [w for w in workers if w.admits() and (avatar is None or avatar in w.bundles)]
    if not fits:
        return None
    return min(fits, key=lambda w: (round(w.load_after(), 3), w.late_share, w.name))
