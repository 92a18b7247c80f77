"""``twincast cluster``: on an existing Ray cluster, one worker per device lane per node,
and the ingress as a Ray Serve application.

Workers are named Ray actors (``twincast-worker-...`` in the ``twincast`` namespace), so
that any ingress replica finds them; each is pinned to its node. The ingress asks them for
their reports (``Worker.info``) at most once a second and on every placement that finds
the view stale; an actor Ray reports dead is dead for good (its sessions answer 410).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from avatar.errors import TwincastError
from streaming.cluster.ingress import Ingress, IngressConfig
from streaming.cluster.placement import WorkerInfo
from streaming.cluster.worker import WorkerConfig, actor_class

log = logging.getLogger(__name__)

NAMESPACE = "twincast"
PREFIX = "twincast-worker-"


@dataclass(frozen=True)
class ClusterConfig:
    bundles: dict[str, str]
    token: str
    address: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    devices: tuple[str, ...] = ("cpu",)
    """The lanes each node runs (one worker each): ``cpu``, ``cuda:0``, ..."""
    render_threads: int = 1
    max_sessions: int = 8
    allow_unconsented: bool = False
    cors_origins: tuple[str, ...] = ()
    """Web origins whose pages may call the API (the workers answer their preflights)."""


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` or say in one line why not."""
    import ray

    if ray.is_initialized():
        return
    _check_reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise TwincastError(f"cannot join the Ray cluster at {address!r}: "
                            f"{str(e).splitlines()[0][:200]}; start one with `ray start "
                            "--head` or pass its address with --ray") from None


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """A ``host:port`` that nothing answers on is refused at once: Ray itself would retry
    connecting for minutes."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or address == "auto" or "://" in address or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise TwincastError(f"cannot join the Ray cluster at {address!r}: nothing answers "
                            f"there ({e.strerror or e}); start one with `ray start --head` "
                            "or pass its address with --ray") from None


def _lanes_of(node: dict, devices: tuple[str, ...]) -> list[str]:
    """The devices of ``devices`` this node has the resources for."""
    res = node.get("Resources", {})
    gpus = int(res.get("GPU", 0))
    cpus = res.get("CPU", 0)
    lanes = [d for d in devices if d.startswith("cuda") and int(d.partition(":")[2] or 0) < gpus]
    if "cpu" in devices and cpus >= 1:
        lanes.append("cpu")
    return lanes


def start_workers(cfg: ClusterConfig, timeout_s: float = 600.0) -> list[object]:
    """A worker per lane per live node; returns the actors that loaded and warmed up.
    One that fails (its bundle check, its warm-up) is logged with why and left out."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    Actor = actor_class()
    made = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for i, device in enumerate(_lanes_of(node, cfg.devices)):
            node_id = node["NodeID"]
            name = f"{PREFIX}{node_id[:10]}-{i}"
            wcfg = WorkerConfig(name=name, node=node_id, host=node["NodeManagerAddress"],
                                bundles=cfg.bundles, token=cfg.token, device=device,
                                render_threads=cfg.render_threads,
                                max_sessions=cfg.max_sessions,
                                allow_unconsented=cfg.allow_unconsented,
                                cors_origins=cfg.cors_origins)
            gpu = 1 if device.startswith("cuda") else 0
            actor = Actor.options(
                name=name, namespace=NAMESPACE, num_cpus=0 if gpu else 1, num_gpus=gpu,
                max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node_id, soft=False)).remote(wcfg)
            made.append((name, actor))
    if not made:
        raise TwincastError("no live node of the Ray cluster has a CPU or GPU for a worker")
    ready = []
    for name, actor in made:
        try:
            info = ray.get(actor.info.remote(), timeout=timeout_s)
            log.info("worker %s ready at %s: %.0f frames/s", name, info["url"],
                     info["capacity_fps"])
            ready.append(actor)
        except Exception as e:  # noqa: BLE001 - Ray wraps the actor's error in its own types
            log.error("worker %s failed to start and takes no sessions: %s", name,
                      str(e).strip().splitlines()[-1][:300])
            ray.kill(actor)
    if not ready:
        raise TwincastError("no worker started; see the log lines above for why")
    return ready


def ray_roster(timeout_s: float = 2.0):  # noqa: ANN201 - a streaming.cluster.ingress.Roster
    """Asks every named worker for its report. A worker is dead when Ray says so (the
    actor failed, or its name is gone), or when it does not report and its own API
    refuses connections: its process is gone, though Ray may take its heartbeat timeout
    (about 15 s) to say so. One that is only slow is left out of placement, not dead."""
    import aiohttp
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    seen: set[str] = set()
    urls: dict[str, str] = {}

    async def gone(name: str) -> bool:
        url = urls.get(name)
        if url is None:
            return False
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http, \
                    http.get(f"{url}/healthz"):
                return False
        except aiohttp.ClientConnectorError:
            return True  # nothing listens there any more
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def ask() -> tuple[list[WorkerInfo], set[str]]:
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX)}
        dead = seen - names

        async def one(name: str) -> WorkerInfo | None:
            try:
                actor = ray.get_actor(name, namespace=NAMESPACE)
                async with asyncio.timeout(timeout_s):
                    info = WorkerInfo.of(await actor.info.remote())
                urls[name] = info.url
                return info
            except (RayActorError, ValueError):
                dead.add(name)
            except (TimeoutError, GetTimeoutError):
                if await gone(name):
                    dead.add(name)
                else:
                    log.warning("worker %s did not report within %.0f s", name, timeout_s)
            return None

        infos = await asyncio.gather(*(one(n) for n in sorted(names - dead)))
        seen.update(names)
        return [i for i in infos if i is not None], dead

    return ask


def serve_app(cfg: IngressConfig):  # noqa: ANN201 - a Ray Serve application
    """The ingress as a Ray Serve deployment (Serve's HTTP proxy in front of it)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    # On the head node, with Serve's controller and proxy: a replica on a worker node
    # would die with that node and come back elsewhere without what it knew.
    @serve.deployment(name="twincast-ingress", max_ongoing_requests=256,
                      ray_actor_options={"num_cpus": 0,
                                         "resources": {"node:__internal_head__": 0.001}})
    class IngressDeployment:
        def __init__(self, cfg: IngressConfig) -> None:
            self.ingress = Ingress(cfg, ray_roster(cfg.ask_timeout_s))

        async def __call__(self, request: Request) -> Response:
            reply = await self.ingress.handle(request.method, request.url.path,
                                              request.url.query, dict(request.headers),
                                              await request.body())
            return Response(reply.body, status_code=reply.status, headers=reply.headers)

    return IngressDeployment.bind(cfg)


def start(cfg: ClusterConfig) -> tuple[str, list[object]]:
    """Workers and the ingress on the cluster; returns the ingress URL and the workers."""
    from ray import serve

    connect(cfg.address)
    t0 = time.monotonic()
    workers = start_workers(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(serve_app(IngressConfig(token=cfg.token)), name="twincast", route_prefix="/",
              blocking=False)
    url = f"http://{cfg.host}:{cfg.port}"
    log.info("cluster serving at %s: %d workers, ready in %.0f s", url, len(workers),
             time.monotonic() - t0)
    return url, workers


def stop(workers: list[object]) -> None:
    import ray
    from ray import serve

    try:
        serve.delete("twincast")
    except Exception as e:  # noqa: BLE001 - Serve may already be down with the cluster
        log.info("stopping the ingress: %s", e)
    for actor in workers:
        ray.kill(actor)
