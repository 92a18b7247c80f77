"""A cluster worker: one twincast server (one device lane) in a Ray actor on its node.

It is the single server unchanged — the bundle loaded and verified, the lane warmed up,
its HTTP API and WebRTC peers on its own node's address — plus ``info()``, what the
ingress places sessions by. The ingress forwards offers and control to its API; clients'
media flows to it directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    node: str
    """The Ray node id it was placed on (for logs and metrics)."""
    host: str
    """The address its API and peers bind to: its node's."""
    bundles: dict[str, str]
    """avatar name -> bundle path (on a file system the node sees)."""
    token: str
    device: str = "cpu"
    render_threads: int = 1
    max_sessions: int = 8
    allow_unconsented: bool = False
    cors_origins: tuple[str, ...] = ()


class Worker:
    """The body of the Ray actor (``actor_class()`` wraps it); plain Python so that it is
    tested without Ray."""

    def __init__(self, cfg: WorkerConfig) -> None:
        from avatar.bundle import sha256_file
        from streaming.app import Server, ServerConfig
        from streaming.routes import RunningServer

        self.cfg = cfg
        _name_logs(cfg)
        bundles = {name: Path(p) for name, p in cfg.bundles.items()}
        # The manifest's own hash names the version served (it lists every file's sha256);
        # loading checks the files against it, and a bundle that fails raises here, so the
        # worker never starts and `launch.start_workers` logs why.
        self.bundles = {name: sha256_file(p / "manifest.json") for name, p in bundles.items()}
        # Not admission by the host's CPU use: a node runs a worker per device, each of
        # which would count the others' load as its own; the ingress places sessions by
        # each worker's measured capacity instead.
        server_cfg = ServerConfig(host=cfg.host, token=cfg.token, devices=(cfg.device,),
                                  render_threads=cfg.render_threads,
                                  max_sessions=cfg.max_sessions,
                                  allow_unconsented=cfg.allow_unconsented,
                                  cors_origins=cfg.cors_origins, host_share=None,
                                  lost_share=None)
        self.server = Server(bundles, server_cfg)
        self.server.load()
        self.running = RunningServer(self.server, host=cfg.host)
        self.draining = False
        log.info("worker %s on node %s serving %s at %s", cfg.name, cfg.node,
                 ", ".join(bundles), self.running.url)

    def drain(self) -> int:
        """Take no new sessions (a newer version is starting beside it); the open ones go
        on to their end. Returns how many are open."""
        if not self.draining:
            log.info("worker %s draining: %d sessions open", self.cfg.name,
                     len(self.server.registry.entries))
        self.draining = True
        return len(self.server.registry.entries)

    def info(self) -> dict:
        srv = self.server
        assert srv.scheduler is not None
        from streaming.session import SessionConfig

        lanes = srv.scheduler.lanes
        return {"name": self.cfg.name, "node": self.cfg.node, "url": self.running.url,
                "sessions": list(srv.registry.entries), "max_sessions": self.cfg.max_sessions,
                "capacity_fps": srv.scheduler.capacity_fps(),
                "capacity_share": srv.cfg.capacity_share, "fps": SessionConfig().fps,
                "frames": sum(lane.stats.frames for lane in lanes),
                "late": sum(lane.stats.late for lane in lanes), "bundles": self.bundles,
                "device": self.cfg.device, "draining": self.draining,
                # Its RTMP streams and the show step each is on: where one restarts
                # elsewhere should this worker be lost.
                "streams": {sid: e.session.stats.get("show_step", 0)
                            for sid, e in srv.registry.entries.items()
                            if e.output.kind == "rtmp"}}


def _name_logs(cfg: WorkerConfig) -> None:
    """Every log line of this (Ray actor) process names its worker and node: Ray keeps
    each worker's output in a file of its own on its node, and a line read elsewhere
    (a log collector) still says where it came from."""
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s [{cfg.name} node {cfg.node[:12]}] "
                            "%(name)s: %(message)s")
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(fmt)
    root.setLevel(logging.INFO)


def actor_class():  # noqa: ANN201 - a Ray actor class
    """``Worker`` as a Ray actor class (Ray is imported here, in cluster mode only)."""
    import ray

    return ray.remote(Worker)
