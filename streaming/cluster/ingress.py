"""The cluster's front door: the single server's ``/v1`` API, page and embed kit at one
address, for sessions that live on the workers.

It places a new session (or stream) on the worker ``placement.choose`` picks and forwards
the offer; it sends a session's control requests (``say``, ``interrupt``, ``GET``,
``DELETE``, chat) to the worker that owns it; everything else (the page, the embed kit,
``/v1/avatars``, OpenAPI) to any live worker. Media never passes through it: the SDP
answer a client gets is the worker's, with the worker's own ICE candidates.

Viewer tokens are minted here (the single server's rules, ``streaming.tokens``): the
session a viewer token opens is opened on its worker with a worker token minted there for
the same grant, so the worker holds its data channel and API to that grant as it would
alone, and the ingress swaps one for the other on the viewer's later requests.

``Ingress`` is plain asyncio over a ``Roster`` (who the workers are and what they say), so
that it is tested without Ray; ``serve_app`` wraps it in a Ray Serve deployment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from streaming.cluster.placement import WorkerInfo, choose
from streaming.ratelimit import Bucket, retry_after
from streaming.requests import BadRequest, TokenRequest
from streaming.tokens import Grant, TokenBook, viewer_may

log = logging.getLogger(__name__)

SESSION_PATH = re.compile(r"^/v1/(?:sessions|streams)/([A-Za-z0-9_-]{1,64})(?:/.*)?$")
"""A session's own requests (``/v1/streams/ID/chat`` too): they go to its worker."""
PASS_BACK = ("Content-Type", "Location", "Retry-After", "X-Twincast-Disclosure",
             "WWW-Authenticate", "Content-Security-Policy", "X-Content-Type-Options",
             "Cache-Control", "Vary", "Access-Control-Allow-Origin",
             "Access-Control-Expose-Headers", "Access-Control-Allow-Methods",
             "Access-Control-Allow-Headers", "Access-Control-Max-Age")
"""Response headers a client gets from the worker: its pages' policy, its CORS answers."""
PASS_ON = ("authorization", "content-type", "accept", "origin",
           "access-control-request-method", "access-control-request-headers")
"""Request headers a worker needs (names lower-cased: HTTP's are case-blind)."""


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: object, **headers: str) -> Reply:
        return cls(status, json.dumps(obj).encode(), {"Content-Type": "application/json",
                                                      **headers})


def problem(status: int, message: str, **headers: str) -> Reply:
    """The single server's error form: ``{"error": message}``."""
    return Reply.json(status, {"error": message}, **headers)


@dataclass
class IngressConfig:
    token: str
    refresh_s: float = 1.0
    """How old the workers' reports may be when placing (they are asked again after)."""
    ask_timeout_s: float = 2.0
    """A worker that does not report within this is not placed on (it may be busy or
    gone; gone ones are told apart by Ray)."""
    forward_timeout_s: float = 30.0
    viewer_rate: tuple[float, float] = (5.0, 20.0)
    """A viewer token's requests: refilled per second, burst (the single server's)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Workers that failed to start (their bundle check, their warm-up): name -> why."""


@dataclass
class StreamRecord:
    """An RTMP stream the ingress placed: its request, to open it again elsewhere should
    its worker be lost, and the show step it was last seen on."""

    body: dict
    step: int = 0
    placed: float = field(default_factory=time.monotonic)


Roster = Callable[[], Awaitable[tuple[list[WorkerInfo], set[str]]]]
"""Asks every worker for its report: (the live workers' infos, the names of those known
dead)."""


class Ingress:
    def __init__(self, cfg: IngressConfig, roster: Roster) -> None:
        self.cfg = cfg
        self._roster = roster
        self.workers: list[WorkerInfo] = []
        self.dead: set[str] = set()
        self.retired: set[str] = set()
        """Workers gone after draining with no session left (a rollout), not lost."""
        self._asked = 0.0
        self._lock = asyncio.Lock()
        self.owner: dict[str, str] = {}
        """session id -> worker name, as last seen."""
        self.placed: dict[str, int] = {}
        """worker name -> sessions placed there by this ingress (a metric)."""
        self._http = None
        self._poller: asyncio.Future | None = None
        self.streams: dict[str, StreamRecord] = {}
        self.alias: dict[str, str] = {}
        """A restarted stream's old id -> its new one (requests to either reach it)."""
        self.restarted = 0
        self._restarts: set[asyncio.Future] = set()
        self.tokens = TokenBook()
        self.worker_tokens: dict[str, str] = {}
        """viewer token -> the token its worker minted for the session it opened."""

    async def view(self, fresh: bool = False) -> list[WorkerInfo]:
        """The live workers' reports: kept at most ``refresh_s`` old by a background task,
        so that a request does not wait for the workers to answer (``fresh``: ask now)."""
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())
        if fresh or not self._asked:
            await self._refresh()
        return self.workers

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.refresh_s)
            try:
                await self._refresh()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("asking the workers for their reports failed")

    async def _refresh(self) -> None:
        async with self._lock:
            workers, dead = await self._roster()
            for w in self.workers:
                if w.name in dead:
                    for sid in w.sessions:  # remembered: a later request is a 410
                        self.owner[sid] = w.name
                    if w.draining and not w.sessions:
                        self.retired.add(w.name)
            lost = dead - self.dead
            self.workers, self.dead = workers, self.dead | dead
            for w in workers:
                for sid in w.sessions:
                    self.owner[sid] = w.name
            self._track_streams(workers, lost)
            self._asked = time.monotonic()

    def _track_streams(self, workers: list[WorkerInfo], lost: set[str]) -> None:
        """Note where each stream's show is; forget closed ones; open again elsewhere
        the streams of workers just lost (after the lock is let go: placing asks the
        workers)."""
        live = {w.name: w for w in workers}
        for sid, rec in list(self.streams.items()):
            owner = self.owner.get(sid)
            w = live.get(owner)
            if w is not None and sid in w.streams:
                rec.step = int(w.streams[sid])
            elif w is not None and sid not in w.sessions and \
                    time.monotonic() - rec.placed > 5.0:
                # It ended there (closed, or its show done). Not one just placed: a
                # report asked for before it was placed may come back after.
                del self.streams[sid]
            elif owner in lost:
                task = asyncio.ensure_future(self._restart_stream(sid))
                self._restarts.add(task)
                task.add_done_callback(self._restarts.discard)

    async def _restart_stream(self, sid: str, tries: int = 60) -> None:
        """Open a lost stream again on a live worker, at the show step it was on; while
        the cluster is full, again every 5 s."""
        rec = self.streams.pop(sid)
        body = {**rec.body, "show_from": rec.step}
        headers = {"authorization": f"Bearer {self.cfg.token}",
                   "content-type": "application/json"}
        for _ in range(tries):
            reply = await self._place_on_a_worker("POST", "/v1/streams", "", headers,
                                                  json.dumps(body).encode(),
                                                  body.get("avatar"), None)
            new = _session_of(reply)
            if new is not None:
                self.alias[sid] = new
                self.streams[new] = StreamRecord(body, rec.step)
                self.restarted += 1
                log.warning("stream %s lost with its worker: restarted as %s on %s at show "
                            "step %d", sid, new, self.owner.get(new), rec.step)
                return
            if reply.status < 500 and reply.status != 429:
                log.error("stream %s lost with its worker could not restart: %s", sid,
                          reply.body[:300].decode(errors="replace"))
                return
            await asyncio.sleep(5.0)
        log.error("stream %s lost with its worker: no worker took it in %d tries", sid,
                  tries)

    async def handle(self, method: str, path: str, query: str, headers: dict[str, str],
                     body: bytes) -> Reply:
        headers = {k.lower(): v for k, v in headers.items()}
        if path == "/healthz":
            workers = await self.view()
            return Reply.json(200 if workers else 503, {
                "ok": bool(workers), "workers": len(workers),
                "sessions": sum(len(w.sessions) for w in workers)})
        if path == "/metrics":
            return Reply(200, self.metrics(await self.view()).encode(),
                         {"Content-Type": "text/plain; version=0.0.4"})
        viewer: tuple[str, Grant] | None = None
        preflight = method == "OPTIONS" and "access-control-request-method" in headers
        if path.startswith("/v1/") and path != "/v1/openapi.json" and not preflight:
            # (A browser's CORS preflight carries no token: the worker answers it by the
            # origins it was given, as the single server does.)
            header = headers.get("authorization", "")
            given = header.encode("utf-8", "surrogateescape")
            if not secrets.compare_digest(given, f"Bearer {self.cfg.token}".encode()):
                token = header.removeprefix("Bearer ")
                grant = self.tokens.find(token)
                if grant is None:
                    return problem(401, "missing, wrong or expired bearer token",
                                   **{"WWW-Authenticate": "Bearer"})
                refused = self._viewer_refusal(grant, method, path)
                if refused is not None:
                    return refused
                viewer = (token, grant)
                # Until its session opens, a viewer's allowed requests (the avatar list)
                # go on with the operator's token; after, with its worker's token.
                worker_token = self.worker_tokens.get(token, self.cfg.token)
                headers = {**headers, "authorization": f"Bearer {worker_token}"}
        if path == "/v1/tokens" and method == "POST":
            return await self._mint(body)
        if method == "POST" and path in ("/v1/sessions", "/v1/streams"):
            return await self._place(method, path, query, headers, body, viewer)
        m = SESSION_PATH.match(path)
        if m:
            return await self._to_owner(m.group(1), method, path, query, headers, body)
        workers = await self.view()
        if not workers:
            return problem(503, "no worker of the cluster is serving; try again shortly",
                           **{"Retry-After": "5"})
        return await self._forward(workers[0], method, path, query, headers, body)

    def _viewer_refusal(self, grant: Grant, method: str, path: str) -> Reply | None:
        """The single server's rules for a viewer token: what it may do, how often."""
        why = viewer_may(grant, method, path)
        if why is not None:
            return problem(403, why)
        if grant.bucket is None:
            grant.bucket = Bucket(*self.cfg.viewer_rate)
        wait = grant.bucket.take()
        if wait:
            return problem(429, f"too many requests with this token; wait {wait:.1f} s",
                           **{"Retry-After": retry_after(wait)})
        return None

    async def _mint(self, body: bytes) -> Reply:
        """A viewer token (operator only: a viewer's call was refused above)."""
        try:
            req = TokenRequest.parse(json.loads(body or b"{}"))
        except ValueError:
            return problem(400, "the body must be a JSON object")
        except BadRequest as e:
            return problem(e.status, str(e))
        if req.avatar is not None:
            served = sorted({a for w in await self.view() for a in w.bundles})
            if req.avatar not in served:
                return problem(404, f"no avatar {req.avatar!r}; this cluster has "
                                    f"{', '.join(served) or 'none serving'}")
        try:
            token, _ = self.tokens.mint(req)
        except BadRequest as e:
            return problem(e.status, str(e))
        for gone in [t for t in self.worker_tokens if t not in self.tokens.grants]:
            del self.worker_tokens[gone]  # expired with its grant
        return Reply.json(201, {"token": token, "ttl_s": req.ttl_s, "avatar": req.avatar,
                                "say": req.say})

    async def _worker_token(self, worker: WorkerInfo, grant: Grant) -> str | Reply:
        """A token the worker minted for ``grant`` (its avatar, say, remaining life)."""
        left = max(10, math.ceil(grant.expires - time.monotonic()))
        reply = await self._forward(
            worker, "POST", "/v1/tokens", "",
            {"authorization": f"Bearer {self.cfg.token}", "content-type": "application/json"},
            json.dumps({"avatar": grant.avatar, "say": grant.say, "ttl_s": left}).encode())
        if reply.status != 201:
            return reply
        return json.loads(reply.body)["token"]

    async def _place(self, method: str, path: str, query: str, headers: dict[str, str],
                     body: bytes, viewer: tuple[str, Grant] | None = None) -> Reply:
        avatar = _avatar_of(query, headers, body)
        grant = viewer[1] if viewer else None
        if grant is not None:
            if grant.avatar is not None and (avatar or grant.avatar) != grant.avatar:
                return problem(403, f"this viewer token opens avatar {grant.avatar!r} only")
            avatar = grant.avatar or avatar
            grant.session = "opening"  # a second offer racing with this one is refused
        try:
            reply = await self._place_on_a_worker(method, path, query, headers, body, avatar,
                                                  viewer)
        finally:
            if grant is not None and grant.session == "opening":
                grant.session = None  # not opened: the token may try again
        return reply

    async def _place_on_a_worker(self, method: str, path: str, query: str,
                                 headers: dict[str, str], body: bytes, avatar: str | None,
                                 viewer: tuple[str, Grant] | None) -> Reply:
        tried: set[str] = set()
        for fresh in (False, True, True):
            workers = [w for w in await self.view(fresh) if w.name not in tried]
            worker = choose(workers, avatar)
            if worker is None:
                if fresh:
                    break
                # Full by a view up to refresh_s old: sessions may have closed since (one
                # a viewer hung up before its DELETE came, which then found nothing to
                # uncount). Asked again before refusing.
                continue
            tried.add(worker.name)
            sent = headers
            if viewer is not None:
                minted = await self._worker_token(worker, viewer[1])
                if isinstance(minted, Reply):
                    if minted.headers.get("X-Twincast-Unreachable"):
                        continue
                    return minted
                sent = {**headers, "authorization": f"Bearer {minted}"}
            reply = await self._forward(worker, method, path, query, sent, body)
            if reply.status == 503 and not reply.headers.get("X-Twincast-Unreachable"):
                continue  # full by its own count (a burst got there first): the next one
            sid = _session_of(reply)
            if sid is not None and path == "/v1/streams":
                try:
                    self.streams[sid] = StreamRecord(json.loads(body))
                except ValueError:
                    pass  # the worker took it, so it was JSON; nothing to restart if not
            if sid is not None and viewer is not None:
                viewer[1].session = sid
                self.worker_tokens[viewer[0]] = sent["authorization"].removeprefix("Bearer ")
            if sid is not None:
                self.owner[sid] = worker.name
                # Counted at once: the next placement must not wait for the next report.
                self.workers = [replace(w, sessions=(*w.sessions, sid))
                                if w.name == worker.name else w for w in self.workers]
                self.placed[worker.name] = self.placed.get(worker.name, 0) + 1
                log.info("session %s placed on %s (node %s)", sid, worker.name, worker.node)
            return reply
        return problem(503, "every worker of the cluster is at its measured capacity; try "
                            "again later", **{"Retry-After": "5"})

    async def _to_owner(self, sid: str, method: str, path: str, query: str,
                        headers: dict[str, str], body: bytes) -> Reply:
        await self.view()  # at most refresh_s old: a dead owner is known within that
        if sid in self.alias:  # a stream restarted elsewhere: its new id
            old = sid
            while sid in self.alias:
                sid = self.alias[sid]
            m = SESSION_PATH.match(path)
            assert m is not None
            path = path[:m.start(1)] + sid + path[m.end(1):]
            log.debug("stream %s is now %s", old, sid)
        name = self.owner.get(sid)
        if name is None or (name not in self.dead and
                            name not in {w.name for w in self.workers}):
            await self.view(fresh=True)
            name = self.owner.get(sid)
        if name is None:
            return problem(404, f"no session {sid}")
        if name in self.dead:
            return problem(410, f"session {sid} was served by {name}, which has stopped; "
                                "open a new session")
        worker = next((w for w in self.workers if w.name == name), None)
        if worker is None:
            return problem(503, f"the worker serving session {sid} is not answering; try "
                                "again shortly", **{"Retry-After": "2"})
        reply = await self._forward(worker, method, path, query, headers, body)
        if method == "DELETE" and reply.status in (204, 404):
            # 404: the worker had closed it already (its viewer hung up first).
            self.streams.pop(sid, None)  # closed on purpose: not to be restarted
            # Uncounted at once, as placing counts one at once: until the next report
            # the view would still hold it, and a session opened meanwhile would go by
            # a load that is no longer there (bench cluster: two sessions opened right
            # after two others closed both went to the worker that still had one).
            self.workers = [replace(w, sessions=tuple(s for s in w.sessions if s != sid))
                            if w.name == name else w for w in self.workers]
        if reply.headers.get("X-Twincast-Unreachable"):
            await self.view(fresh=True)  # gone, or only slow? Ray knows
            if name in self.dead:
                return problem(410, f"session {sid} was served by {name}, which has "
                                    "stopped; open a new session")
        return reply

    async def _forward(self, worker: WorkerInfo, method: str, path: str, query: str,
                       headers: dict[str, str], body: bytes) -> Reply:
        import aiohttp

        if self._http is None:
            # A worker whose node is gone may leave connections hanging: connecting is
            # given 2 s, the request its full time.
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=self.cfg.forward_timeout_s, sock_connect=2.0))
        url = worker.url + path + (f"?{query}" if query else "")
        sent = {k: v for k, v in headers.items() if k in PASS_ON}
        try:
            async with self._http.request(method, url, data=body or None,
                                          headers=sent) as r:
                data = await r.read()
                back = {k: r.headers[k] for k in PASS_BACK if k in r.headers}
                return Reply(r.status, data, back)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("worker %s did not answer %s %s: %s", worker.name, method, path, e)
            reply = problem(503, f"worker {worker.name} did not answer; try again",
                            **{"Retry-After": "2"})
            reply.headers["X-Twincast-Unreachable"] = "1"
            return reply

    def metrics(self, workers: list[WorkerInfo]) -> str:
        """The cluster in Prometheus' text form: workers, sessions, capacity and frames
        (rendered and late) per worker, with its node."""
        out = ["# HELP twincast_cluster_workers Workers by state.",
               "# TYPE twincast_cluster_workers gauge",
               f'twincast_cluster_workers{{state="live"}} {len(workers)}',
               f'twincast_cluster_workers{{state="draining"}} '
               f'{sum(w.draining for w in workers)}',
               f'twincast_cluster_workers{{state="dead"}} {len(self.dead - self.retired)}',
               f'twincast_cluster_workers{{state="retired"}} {len(self.retired)}',
               f'twincast_cluster_workers{{state="failed"}} {len(self.cfg.failed)}',
               "# HELP twincast_cluster_worker_failed A worker that failed to start, and why "
               "(it takes no sessions).",
               "# TYPE twincast_cluster_worker_failed gauge",
               *(f'twincast_cluster_worker_failed{{worker="{_label(name)}",reason='
                 f'"{_label(why)}"}} 1' for name, why in sorted(self.cfg.failed.items())),
               "# HELP twincast_cluster_streams_restarted_total RTMP streams opened again "
               "elsewhere after their worker was lost.",
               "# TYPE twincast_cluster_streams_restarted_total counter",
               f"twincast_cluster_streams_restarted_total {self.restarted}"]
        rows = [("twincast_cluster_sessions", "gauge", "Open sessions.",
                 lambda w: len(w.sessions)),
                ("twincast_cluster_capacity_fps", "gauge", "Measured frames/s a worker "
                 "renders.", lambda w: round(w.capacity_fps, 1)),
                ("twincast_cluster_frames_total", "counter", "Frames rendered.",
                 lambda w: w.frames),
                ("twincast_cluster_frames_late_total", "counter", "Frames dropped as late.",
                 lambda w: w.late),
                ("twincast_cluster_placed_total", "counter", "Sessions this ingress placed.",
                 lambda w: self.placed.get(w.name, 0)),
                ("twincast_cluster_streams", "gauge", "RTMP streams.",
                 lambda w: len(w.streams))]
        for name, kind, doc, value in rows:
            out += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
            out += [f'{name}{{worker="{w.name}",node="{w.node[:12]}"}} {value(w)}'
                    for w in workers]
        return "\n".join(out) + "\n"

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for task in list(self._restarts):
            task.cancel()
        if self._http is not None:
            await self._http.close()
            self._http = None


def _label(value: str) -> str:
    """A Prometheus label value: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _avatar_of(query: str, headers: dict[str, str], body: bytes) -> str | None:
    from urllib.parse import parse_qs

    if headers.get("content-type", "").startswith("application/json"):
        try:
            value = json.loads(body or b"{}").get("avatar")
        except (ValueError, AttributeError):
            return None  # the worker answers the bad body with its own 400
        return value if isinstance(value, str) else None
    return (parse_qs(query).get("avatar") or [None])[0]


def _session_of(reply: Reply) -> str | None:
    if reply.status != 201:
        return None
    location = reply.headers.get("Location", "")
    m = SESSION_PATH.match(location)
    return m.group(1) if m else None
