"""``twincast cluster``: on an existing Ray cluster, one worker per device lane per node,
and the ingress as a Ray Serve application.

Workers are named Ray actors (``twincast-worker-...`` in the ``twincast`` namespace), so
that any ingress replica finds them; each is pinned to its node. The ingress asks them for
their reports (``Worker.info``) at most once a second and on every placement that finds
the view stale; an actor Ray reports dead is dead for good (its sessions answer 410).
``rollout`` replaces the workers by ones serving new bundles, lane by lane, each old one
draining to its last session first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from avatar.errors import TwincastError
from avatar.raycluster import NAMESPACE, connect
from streaming.cluster.ingress import Ingress, IngressConfig
from streaming.cluster.placement import WorkerInfo
from streaming.cluster.worker import WorkerConfig, actor_class

log = logging.getLogger(__name__)

__all__ = ["NAMESPACE", "ClusterConfig", "connect", "rollout", "start", "stop"]

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


def _lanes_of(node: dict, devices: tuple[str, ...]) -> list[str]:
    """The devices of ``devices`` this node has the resources for."""
    res = node.get("Resources", {})
    gpus = int(res.get("GPU", 0))
    cpus = res.get("CPU", 0)
    lanes = [d for d in devices if d.startswith("cuda") and int(d.partition(":")[2] or 0) < gpus]
    if "cpu" in devices and cpus >= 1:
        lanes.append("cpu")
    return lanes


def _plan(cfg: ClusterConfig, tag: str = "") -> list[WorkerConfig]:
    """A worker per lane of ``cfg.devices`` per live node (``tag`` ends their names)."""
    import ray

    plan = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for i, device in enumerate(_lanes_of(node, cfg.devices)):
            node_id = node["NodeID"]
            plan.append(WorkerConfig(
                name=f"{PREFIX}{node_id[:10]}-{i}{tag}", node=node_id,
                host=node["NodeManagerAddress"], bundles=cfg.bundles, token=cfg.token,
                device=device, render_threads=cfg.render_threads,
                max_sessions=cfg.max_sessions, allow_unconsented=cfg.allow_unconsented,
                cors_origins=cfg.cors_origins))
    return plan


def _launch(plan: list[WorkerConfig], timeout_s: float,
            failed: dict[str, str] | None = None) -> list[tuple[str, object]]:
    """Start the planned workers; returns (name, actor) of those that loaded and warmed up.
    One that fails (its bundle check, its warm-up) is logged with why, noted in
    ``failed`` (name -> why, for the ingress's metrics) and left out."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    Actor = actor_class()
    made = []
    for wcfg in plan:
        gpu = wcfg.device.startswith("cuda")
        # Half a CPU (or GPU) each: during a rollout the new version starts beside the old
        # one on the same lane, and both must fit. Detached: a worker outlives the command
        # that started it (a rollout's), and `stop` ends them all by name.
        actor = Actor.options(
            name=wcfg.name, namespace=NAMESPACE, lifetime="detached",
            num_cpus=0 if gpu else 0.5, num_gpus=0.5 if gpu else 0, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(wcfg.node, soft=False),
            # As `twincast serve` sets for itself (twincast.cli._one_blas_thread): set
            # before the worker's process loads numpy.
            runtime_env={"env_vars": {"OPENBLAS_NUM_THREADS": "1"}},
        ).remote(wcfg)
        made.append((wcfg.name, actor))
    ready = []
    for name, actor in made:
        try:
            info = ray.get(actor.info.remote(), timeout=timeout_s)
            log.info("worker %s ready at %s: %.0f frames/s", name, info["url"],
                     info["capacity_fps"])
            ready.append((name, actor))
        except Exception as e:  # noqa: BLE001 - Ray wraps the actor's error in its own types
            why = str(e).strip().splitlines()[-1][:300]
            log.error("worker %s failed to start and takes no sessions: %s", name, why)
            if failed is not None:
                failed[name] = why
            ray.kill(actor)
    return ready


def named_workers() -> dict[str, object]:
    """The twincast workers on the cluster now: name -> actor handle."""
    import ray

    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX):
            try:
                out[a["name"]] = ray.get_actor(a["name"], namespace=NAMESPACE)
            except ValueError:
                continue  # gone since it was listed
    return out


def start_workers(cfg: ClusterConfig, timeout_s: float = 600.0,
                  failed: dict[str, str] | None = None) -> list[object]:
    """A worker per lane per live node; returns the actors that loaded and warmed up (those
    that did not are in ``failed`` with why). Workers left by an earlier run (killed
    before it could stop them) are ended first."""
    import ray

    for name, actor in named_workers().items():
        log.warning("ending worker %s, left by an earlier run", name)
        ray.kill(actor)
    plan = _plan(cfg)
    if not plan:
        raise TwincastError("no live node of the Ray cluster has a CPU or GPU for a worker")
    ready = [actor for _, actor in _launch(plan, timeout_s, failed)]
    if not ready:
        raise TwincastError("no worker started; see the log lines above for why")
    return ready


def rollout(cfg: ClusterConfig, drain_timeout_s: float = 3600.0,
            timeout_s: float = 600.0) -> dict:
    """Replace the running workers by ones serving ``cfg.bundles``, lane by lane, without
    ending a session: the new worker starts beside the old one on its node and device,
    the old one drains (takes no new session; the ingress places on the new one within a
    second) and is ended when its last session ends, or after ``drain_timeout_s`` (its
    sessions then end with it). A new worker that fails to start leaves the old one
    serving, and the rollout stops there."""
    import ray

    connect(cfg.address)
    t0 = time.monotonic()
    old = named_workers()
    if not old:
        raise TwincastError("no twincast worker runs on this cluster: start them with "
                            "`twincast cluster BUNDLE... --ray ADDRESS`")
    infos = {}
    for name, actor in old.items():
        try:
            infos[name] = ray.get(actor.info.remote(), timeout=10)
        except Exception as e:  # noqa: BLE001 - a dead or stuck one is not replaced
            log.warning("worker %s does not report (%s); it is left as it is", name,
                        str(e).strip().splitlines()[-1][:200])
    tag = f"-r{time.time_ns() // 1_000_000 % 10**8:08d}"
    plan = {(w.node, w.device): w for w in _plan(cfg, tag)}
    replaced, kept, ended = [], 0, 0
    for name, info in sorted(infos.items()):
        wcfg = plan.pop((info["node"], info["device"]), None)
        if wcfg is None:
            log.warning("worker %s: its node or lane is gone; it is left as it is", name)
            continue
        if not _launch([wcfg], timeout_s):
            raise TwincastError(f"the new worker for {name} did not start (see the log "
                                f"above); {len(replaced)} of {len(infos)} lanes were rolled "
                                "out, the rest serve the old version")
        open_now = ray.get(old[name].drain.remote(), timeout=10)
        log.info("rolled %s -> %s; waiting for its %d sessions to end", name, wcfg.name,
                 open_now)
        end = time.monotonic() + drain_timeout_s
        while open_now and time.monotonic() < end:
            time.sleep(1.0)
            open_now = len(ray.get(old[name].info.remote(), timeout=10)["sessions"])
        kept += len(info["sessions"])
        ended += open_now
        if open_now:
            log.warning("worker %s still has %d sessions after %.0f s; they end with it",
                        name, open_now, drain_timeout_s)
        else:
            time.sleep(2.0)  # the ingress sees it drained and empty (it asks every second)
        ray.kill(old[name])
        replaced.append((name, wcfg.name))
    if plan:  # nodes that had no worker yet: they get one of the new version
        replaced += [(None, name) for name, _ in _launch(list(plan.values()), timeout_s)]
    return {"replaced": replaced, "sessions_at_start": kept, "sessions_cut": ended,
            "seconds": round(time.monotonic() - t0, 1)}


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
    failed: dict[str, str] = {}
    workers = start_workers(cfg, failed=failed)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(serve_app(IngressConfig(token=cfg.token, failed=failed)), name="twincast",
              route_prefix="/", blocking=False)
    url = f"http://{cfg.host}:{cfg.port}"
    log.info("cluster serving at %s: %d workers, ready in %.0f s", url, len(workers),
             time.monotonic() - t0)
    return url, workers


def stop(workers: list[object]) -> None:
    """The ingress and every twincast worker (those ``start`` made and any a rollout
    made since)."""
    import ray
    from ray import serve

    try:
        serve.delete("twincast")
    except Exception as e:  # noqa: BLE001 - Serve may already be down with the cluster
        log.info("stopping the ingress: %s", e)
    for actor in workers:
        ray.kill(actor)
    try:
        for actor in named_workers().values():
            ray.kill(actor)
    except Exception as e:  # noqa: BLE001 - the cluster may be gone already
        log.info("stopping the workers: %s", e)
