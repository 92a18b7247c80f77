"""Cluster mode: placement by measured capacity, the ingress's routing (over real worker
servers, without Ray), and a real multi-node Ray cluster on this machine."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from streaming.cluster.ingress import Ingress, IngressConfig
from streaming.cluster.placement import WorkerInfo, choose


def info(name: str, sessions: int, capacity: float = 100.0, late: int = 0,
         max_sessions: int = 8, avatars: tuple[str, ...] = ("a",)) -> WorkerInfo:
    return WorkerInfo(name, "node-" + name, f"http://{name}", tuple(f"s{name}{i}" for i in
                      range(sessions)), max_sessions, capacity, 0.9, 25, 1000, late,
                      dict.fromkeys(avatars, "sha"))


def test_placement_goes_where_the_predicted_load_is_lowest() -> None:
    # 90 frames/s usable: three sessions fit (75), a fourth does not (100).
    assert choose([info("x", 1), info("y", 0)]).name == "y"
    assert choose([info("x", 1, capacity=300), info("y", 1)]).name == "x"
    assert choose([info("x", 3), info("y", 3)]) is None  # the cluster is full
    assert choose([info("x", 1, max_sessions=1), info("y", 2)]).name == "y"
    # Equal loads: the one late less often.
    assert choose([info("x", 1, late=50), info("y", 1, late=1)]).name == "y"
    assert choose([info("x", 0, avatars=("b",)), info("y", 2)], avatar="a").name == "y"
    assert choose([info("x", 0, avatars=("b",))], avatar="a") is None
    # An idle worker takes one whatever its measure (the single server's rule).
    assert choose([info("x", 0, capacity=5.0)]).name == "x"
    assert choose([info("x", 1, capacity=5.0)]) is None


class Workers:
    """Two real twincast servers (one session each) as the cluster's workers, and a
    roster over them that can be told one died."""

    def __init__(self, bundle, remote: dict[str, str] | None = None,  # noqa: ANN001
                 rtmp_allow: tuple[str, ...] = ()) -> None:
        from streaming.app import Server, ServerConfig
        from streaming.routes import RunningServer

        self.remote = remote or {}
        """Workers in other processes: name -> url (placed first: reported roomier)."""
        self.remote_sessions: dict[str, list[str]] = {}
        """Their sessions, as far as the test has told (they are asked about these)."""
        self.servers = {}
        for name in ("w1", "w2"):
            srv = Server({"presenter": bundle}, ServerConfig(
                token="t", allow_unconsented=True, max_sessions=1, render_threads=1,
                rtmp_allow=rtmp_allow))
            srv.load()
            self.servers[name] = (srv, RunningServer(srv))
        self.dead: set[str] = set()

    async def roster(self) -> tuple[list[WorkerInfo], set[str]]:
        out = []
        for name, (srv, running) in self.servers.items():
            if name in self.dead:
                continue
            out.append(WorkerInfo(name, "node-" + name, running.url,
                                  tuple(srv.registry.entries), srv.cfg.max_sessions,
                                  srv.scheduler.capacity_fps(), 0.9, 25,
                                  bundles={"presenter": "sha"},
                                  streams={sid: e.session.stats.get("show_step", 0)
                                           for sid, e in srv.registry.entries.items()
                                           if e.output.kind == "rtmp"}))
        for name, url in self.remote.items():
            if name in self.dead:
                continue
            streams = {}
            async with aiohttp.ClientSession() as http:
                for sid in self.remote_sessions.get(name, []):
                    async with http.get(f"{url}/v1/sessions/{sid}",
                                        headers={"Authorization": "Bearer t"}) as r:
                        if r.status == 200:
                            streams[sid] = (await r.json()).get("show_step", 0)
            out.append(WorkerInfo(name, "node-" + name, url, tuple(streams), 1, 1000.0, 0.9,
                                  25, bundles={"presenter": "sha"}, streams=streams))
        return out, set(self.dead)

    def stop(self) -> None:
        for _, running in self.servers.values():
            running.stop()


SHOW = "\n".join(f'[[segment]]\nsay = "{line}"\n' for line in (
    "Bin blue at F two now.", "Place red by G nine soon.", "Lay white with P four again.",
    "Set green in B seven please.", "Bin red at A one again.", "Place white by C three now."))
"""Six sentences: a show whose step can be told apart where it restarts."""


async def serve_ingress(ingress: Ingress):  # noqa: ANN201 - (url, stop coroutine)
    """The ingress at an aiohttp server on loopback: its url, and a ``stop()`` that
    closes both."""
    from aiohttp import web

    runner = web.AppRunner(ingress_app(ingress))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()

    async def stop() -> None:
        await ingress.close()
        await runner.cleanup()

    return f"http://127.0.0.1:{runner.addresses[0][1]}", stop


def ingress_app(ingress: Ingress):  # noqa: ANN201 - an aiohttp app in front of the ingress
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        reply = await ingress.handle(request.method, request.path, request.query_string,
                                     dict(request.headers), await request.read())
        return web.Response(body=reply.body, status=reply.status, headers=reply.headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def test_the_ingress_places_routes_and_forgets_a_dead_worker(bundle) -> None:  # noqa: ANN001
    """Sessions land on both workers (each holds one), the third is a 503 with a retry
    hint; say reaches the owner; a dead worker's session is a 410, an unknown one a 404,
    and new sessions go to the survivor."""
    import aiohttp

    from bench.client import open_session

    workers = Workers(bundle)

    async def run() -> None:
        ingress = Ingress(IngressConfig(token="t", refresh_s=0.2, failed={
            "w9": 'bundle presenter: "head.safetensors" does not match its sha256'}),
            workers.roster)
        url, stop = await serve_ingress(ingress)
        auth = {"Authorization": "Bearer t"}
        viewers = []
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/metrics") as r:  # a worker that never started
                    text = await r.text()
                    assert 'twincast_cluster_workers{state="failed"} 1' in text
                    assert ('twincast_cluster_worker_failed{worker="w9",reason="bundle '
                            'presenter: \\"head.safetensors\\" does not match its sha256"} 1'
                            ) in text, text
                async with http.get(f"{url}/v1/avatars") as r:
                    assert r.status == 401
                async with http.get(f"{url}/v1/avatars", headers=auth) as r:
                    assert r.status == 200 and "presenter" in await r.text()
                for _ in range(2):
                    viewers.append(await open_session(http, url, "t", events=True))
                owners = {ingress.owner[v.location.rsplit("/", 1)[1]] for v in viewers}
                assert owners == {"w1", "w2"}  # one each: the lowest load first
                async with http.post(f"{url}/v1/sessions", data="v=0\r\nm=video",
                                     headers={**auth, "Content-Type": "application/sdp"}) as r:
                    assert r.status == 503 and r.headers["Retry-After"]
                    assert "capacity" in (await r.json())["error"]
                v = viewers[0]
                while v.channel.readyState != "open":
                    await asyncio.sleep(0.05)
                async with http.post(f"{url}{v.location}/say", json={"text": "Bin blue now."},
                                     headers=auth) as r:
                    assert r.status == 202, await r.text()
                async with http.get(f"{url}{v.location}", headers=auth) as r:
                    assert r.status == 200 and (await r.json())["id"] in v.location
                async with http.get(f"{url}/v1/sessions/nosuchsession", headers=auth) as r:
                    assert r.status == 404
                owner = ingress.owner[v.location.rsplit("/", 1)[1]]
                workers.dead.add(owner)
                await asyncio.sleep(0.3)  # the roster is asked again at most 0.2 s later
                async with http.post(f"{url}{v.location}/say", json={"text": "Hi."},
                                     headers=auth) as r:
                    assert r.status == 410 and "open a new session" in (await r.json())["error"]
                async with http.get(f"{url}/metrics") as r:
                    text = await r.text()
                    assert 'twincast_cluster_workers{state="dead"} 1' in text
                # The survivor's session ends; a new one goes there, not to the dead one.
                other = viewers[1]
                async with http.delete(f"{url}{other.location}", headers=auth) as r:
                    assert r.status == 204
                await asyncio.sleep(0.3)
                fresh = await open_session(http, url, "t")
                viewers.append(fresh)
                assert ingress.owner[fresh.location.rsplit("/", 1)[1]] != owner
        finally:
            for viewer in viewers:
                await viewer.pc.close()
            await stop()

    try:
        asyncio.run(run())
    finally:
        workers.stop()


def test_viewer_tokens_through_the_ingress(bundle) -> None:  # noqa: ANN001
    """The ingress mints viewer tokens by the single server's rules: one opens one session
    (on whichever worker), acts on that one only, says only where allowed, also over its
    data channel, which the worker holds to the same grant."""
    import aiohttp

    from bench.client import open_session

    workers = Workers(bundle)

    async def run() -> None:
        ingress = Ingress(IngressConfig(token="t", refresh_s=0.2), workers.roster)
        url, stop = await serve_ingress(ingress)
        auth = {"Authorization": "Bearer t"}
        viewers = []
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{url}/v1/tokens", json={"avatar": "nobody"},
                                     headers=auth) as r:
                    assert r.status == 404 and "presenter" in (await r.json())["error"]
                async with http.post(f"{url}/v1/tokens", json={"ttl_s": 1},
                                     headers=auth) as r:
                    assert r.status == 400
                async with http.post(f"{url}/v1/tokens", json={"ttl_s": 60},
                                     headers=auth) as r:
                    assert r.status == 201
                    watch = (await r.json())["token"]
                async with http.post(f"{url}/v1/tokens", json={"say": True,
                                                              "avatar": "presenter"},
                                     headers=auth) as r:
                    talk = (await r.json())["token"]
                w_auth = {"Authorization": f"Bearer {watch}"}
                t_auth = {"Authorization": f"Bearer {talk}"}
                async with http.post(f"{url}/v1/tokens", json={}, headers=w_auth) as r:
                    assert r.status == 403  # viewers mint nothing
                async with http.get(f"{url}/v1/avatars", headers=w_auth) as r:
                    assert r.status == 200 and "presenter" in await r.text()
                async with http.get(f"{url}/v1/avatars",
                                    headers={"Authorization": "Bearer tcv_forged"}) as r:
                    assert r.status == 401
                v = await open_session(http, url, watch, events=True)
                t = await open_session(http, url, talk)
                viewers += [v, t]
                owners = {ingress.owner[x.location.rsplit("/", 1)[1]] for x in viewers}
                assert owners == {"w1", "w2"}
                async with http.get(f"{url}{v.location}", headers=w_auth) as r:
                    assert r.status == 200
                async with http.post(f"{url}{v.location}/say", json={"text": "hi"},
                                     headers=w_auth) as r:
                    assert r.status == 403 and "not make the avatar speak" in \
                        (await r.json())["error"]
                async with http.post(f"{url}/v1/sessions", data="v=0\r\nm=audio",
                                     headers={**w_auth, "Content-Type": "application/sdp"}
                                     ) as r:
                    assert r.status == 403  # its one session is open
                async with http.post(f"{url}{t.location}/say", json={"text": "hi"},
                                     headers=w_auth) as r:
                    assert r.status == 403  # another viewer's session
                async with http.post(f"{url}{t.location}/say", json={"text": "Bin blue."},
                                     headers=t_auth) as r:
                    assert r.status == 202, await r.text()
                # The data channel is the worker's, held to the worker token's grant.
                while v.channel.readyState != "open":
                    await asyncio.sleep(0.05)
                v.channel.send(json.dumps({"type": "say", "text": "hi"}))
                for _ in range(100):
                    if any("not make the avatar speak" in e.get("message", "")
                           for e in v.events):
                        break
                    await asyncio.sleep(0.05)
                assert any("not make the avatar speak" in e.get("message", "")
                           for e in v.events), v.events
                async with http.delete(f"{url}{v.location}", headers=w_auth) as r:
                    assert r.status == 204
        finally:
            for viewer in viewers:
                await viewer.pc.close()
            await stop()

    try:
        asyncio.run(run())
    finally:
        workers.stop()


def test_a_lost_workers_stream_restarts_elsewhere_where_its_show_was(bundle, tmp_path
                                                                      ) -> None:  # noqa: ANN001
    """An RTMP stream with a show, placed through the ingress on a worker process that is
    then killed outright: the ingress opens it again on a live worker within seconds, at
    the show step it was on, pushing to the same ingest; the old id reaches the new stream
    (and closes it)."""

    from bench.localrtmp import LocalRtmp, available
    from bench.server_process import ServerProcess

    if not available():
        pytest.skip("nginx with libnginx-mod-rtmp is not installed (.ci/run installs it)")
    nginx = LocalRtmp(tmp_path / "nginx")
    nginx.start()
    proc = ServerProcess(bundle, tmp_path / "doomed.log", token="t",
                         args=("--max-sessions", "1", "--render-threads", "1",
                               "--rtmp-allow", "127.0.0.1"))
    workers = None
    try:
        async def run() -> None:
            nonlocal workers
            async with aiohttp.ClientSession() as http:
                await proc.wait_ready(http)
            workers = Workers(bundle, remote={"doomed": proc.url}, rtmp_allow=("127.0.0.1",))
            ingress = Ingress(IngressConfig(token="t", refresh_s=0.2), workers.roster)
            url, stop = await serve_ingress(ingress)
            auth = {"Authorization": "Bearer t"}
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"{url}/v1/streams", headers=auth, json={
                            "rtmp": nginx.url("show"), "show": SHOW, "width": 320,
                            "height": 240}) as r:
                        assert r.status == 201, await r.text()
                        sid = (await r.json())["id"]
                    assert ingress.owner[sid] == "doomed"
                    workers.remote_sessions["doomed"] = [sid]
                    for _ in range(600):  # the show reaches its third sentence
                        if ingress.streams[sid].step >= 2:
                            break
                        await asyncio.sleep(0.1)
                    step = ingress.streams[sid].step
                    assert step >= 2, step
                    proc.proc.kill()  # the node goes without a word
                    workers.dead.add("doomed")  # as Ray would report it
                    t0 = time.monotonic()
                    while sid not in ingress.alias and time.monotonic() - t0 < 30:
                        await asyncio.sleep(0.05)
                    assert sid in ingress.alias, "the stream was not restarted"
                    restarted = time.monotonic() - t0
                    new = ingress.alias[sid]
                    assert ingress.owner[new] in ("w1", "w2")
                    state = None
                    while time.monotonic() - t0 < 60:
                        async with http.get(f"{url}/v1/sessions/{sid}", headers=auth) as r:
                            assert r.status == 200
                            now = await r.json()
                        state = now["rtmp_state"]
                        if state == "live":
                            break
                        await asyncio.sleep(0.1)
                    live = time.monotonic() - t0
                    assert state == "live" and now["id"] == new
                    assert now["show_step"] in (step, step + 1), (now, step)
                    print(f"\nworker killed -> its stream opened elsewhere: {restarted:.1f} s, "
                          f"pushing again: {live:.1f} s, at show step {now['show_step']} "
                          f"(it was on {step})")
                    async with http.get(f"{url}/metrics") as r:
                        assert "twincast_cluster_streams_restarted_total 1" in await r.text()
                    async with http.delete(f"{url}/v1/sessions/{sid}", headers=auth) as r:
                        assert r.status == 204
                    assert new not in ingress.streams
            finally:
                await stop()

        asyncio.run(run())
    finally:
        proc.stop(timeout=5)
        if workers is not None:
            workers.stop()
        nginx.kill()


def test_the_embed_kit_reconnects_when_its_worker_is_lost(bundle, tmp_path) -> None:  # noqa: ANN001
    """A real browser's embed kit, through the ingress, with a fresh viewer token for
    each session: its worker killed outright (no word to the client), then its next
    worker stopped (the session told to open another): each time it says it is
    reconnecting, opens a new session on a live worker, says it reconnected, and plays
    and speaks there."""
    import aiohttp

    from bench.server_process import ServerProcess
    from tests.browser import chromium, page

    proc = ServerProcess(bundle, tmp_path / "doomed.log", token="t",
                         args=("--max-sessions", "1", "--render-threads", "1"))
    workers = None
    try:
        async def serve() -> None:
            async with aiohttp.ClientSession() as http:
                await proc.wait_ready(http)

        asyncio.run(serve())
        workers = Workers(bundle, remote={"doomed": proc.url})

        async def run(ws_url_box: list, url_box: list, ready: asyncio.Event) -> None:
            ingress = Ingress(IngressConfig(token="t", refresh_s=0.2), workers.roster)
            url, stop = await serve_ingress(ingress)
            url_box.append(url)
            ready.set()
            while not ws_url_box:
                await asyncio.sleep(0.05)
            evaluate, close = await page(ws_url_box[0])
            try:
                await _kit_reconnects(evaluate, ingress, workers, proc)
            finally:
                await close()
                await stop()

        import threading

        ws_url_box: list = []
        url_box: list = []
        loop = asyncio.new_event_loop()
        ready = asyncio.Event()
        failure: list = []

        def body() -> None:
            try:
                loop.run_until_complete(run(ws_url_box, url_box, ready))
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                failure.append(e)

        thread = threading.Thread(target=body)
        thread.start()
        while not url_box and thread.is_alive():
            time.sleep(0.05)
        assert url_box, failure
        with chromium(f"{url_box[0]}/embed/example.html", tmp_path / "profile") as ws_url:
            ws_url_box.append(ws_url)
            thread.join(300)
        assert not thread.is_alive(), "the browser test did not finish in 300 s"
        if failure:
            raise failure[0]
    finally:
        proc.stop(timeout=5)
        if workers is not None:
            workers.stop()


async def _kit_reconnects(evaluate, ingress, workers, proc) -> None:  # noqa: ANN001
    for _ in range(300):  # the page and the kit load (through the ingress)
        if await evaluate("typeof Twincast !== 'undefined'"):
            break
        await asyncio.sleep(0.1)
    await evaluate("""new Promise((done) => {
        const mint = async () => {
          const r = await fetch("/v1/tokens", { method: "POST", body: '{"say": true}',
            headers: { Authorization: "Bearer t", "Content-Type": "application/json" } });
          return (await r.json()).token;
        };
        window.seen = [];
        window.kit = new Twincast({ token: mint, video: document.getElementById("avatar") });
        kit.on("*", (ev) => seen.push(ev));
        kit.connect().then(done);
    })""")

    async def wait_for(js: str, seconds: float) -> object:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            value = await evaluate(js)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"not within {seconds} s: {js}; events: "
                             f"{await evaluate('JSON.stringify(seen)')}")

    async def speaks() -> None:
        n = await evaluate("seen.filter((e) => e.type === 'speech_started').length")
        await evaluate("kit.say('Bin blue at one now.')")
        await wait_for(f"seen.filter((e) => e.type === 'speech_started').length > {n}", 30)
        await wait_for("kit.video.videoWidth > 0", 30)

    first = (await evaluate("kit.session")).rsplit("/", 1)[1]
    assert ingress.owner[first] == "doomed"
    await speaks()
    # The node goes without a word: the process is killed, Ray reports its actor dead.
    proc.proc.kill()
    workers.dead.add("doomed")
    t0 = time.monotonic()
    await wait_for("seen.some((e) => e.type === 'reconnecting')", 30)
    told = time.monotonic() - t0
    await wait_for("seen.some((e) => e.type === 'reconnected')", 60)
    took = time.monotonic() - t0
    ev = await evaluate("seen.find((e) => e.type === 'reconnecting')")
    assert ev["session"].endswith(first), ev
    second = (await evaluate("kit.session")).rsplit("/", 1)[1]
    assert second != first and ingress.owner[second] in ("w1", "w2")
    await speaks()
    print(f"\nworker killed -> the embed kit says it is reconnecting: {told:.1f} s, "
          f"is on a new session: {took:.1f} s")
    # Its next worker is stopped: the server tells the session to open another.
    owner = ingress.owner[second]
    workers.dead.add(owner)
    workers.servers[owner][1].stop()
    await wait_for("seen.filter((e) => e.type === 'reconnected').length === 2", 60)
    closing = await evaluate("seen.find((e) => e.type === 'closing')")
    assert closing["retry"] is True, closing
    third = (await evaluate("kit.session")).rsplit("/", 1)[1]
    assert ingress.owner[third] not in ("doomed", owner)
    await speaks()
    await evaluate("kit.close()")
    assert await evaluate("seen[seen.length - 1].type") == "closed"


@pytest.mark.slow
def test_a_real_ray_cluster_serves_across_nodes_and_survives_losing_one(bundle, tmp_path
                                                                        ) -> None:  # noqa: ANN001
    """ray.cluster_utils.Cluster: a head and two worker nodes on this machine. Sessions
    opened through the Ray Serve ingress land on both nodes and play to real aiortc
    clients; say reaches the owner; a new bundle version rolled out lane by lane without
    a dropped session; a node removed mid-session: its session answers 410, the ingress
    stops placing there within seconds, new sessions go to the survivor."""
    ray = pytest.importorskip("ray")
    import aiohttp
    from ray.cluster_utils import Cluster

    from bench.client import open_session
    from bench.server_process import free_port
    from streaming.cluster import launch

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    port = free_port()
    cfg = launch.ClusterConfig(bundles={"presenter": str(bundle)}, token="t",
                               address=cluster.address, port=port, max_sessions=2,
                               allow_unconsented=True)
    workers: list = []
    try:
        url, workers = launch.start(cfg)
        assert len(workers) == 2

        async def run() -> None:
            auth = {"Authorization": "Bearer t"}
            async with aiohttp.ClientSession() as http:
                viewers = [await open_session(http, url, "t", events=True) for _ in range(2)]
                for _ in range(50):  # the ingress asks the workers once a second
                    async with http.get(f"{url}/metrics") as r:
                        text = await r.text()
                    placed = sorted(line.rsplit(" ", 1)[1] for line in text.splitlines()
                                    if line.startswith("twincast_cluster_sessions{"))
                    if placed == ["1", "1"]:
                        break
                    await asyncio.sleep(0.1)
                assert placed == ["1", "1"], text  # one session on each node
                v = viewers[0]
                while v.channel.readyState != "open":
                    await asyncio.sleep(0.05)
                async with http.post(f"{url}{v.location}/say", json={"text": "Bin blue now."},
                                     headers=auth) as r:
                    assert r.status == 202, await r.text()
                frames = 0
                for _ in range(200):
                    await asyncio.wait_for(v.tracks["video"].recv(), 5)
                    frames += 1
                    if any(e["type"] == "speech_started" for e in v.events):
                        break
                assert any(e["type"] == "speech_started" for e in v.events), v.events
                viewers.append(await _roll_out(http, url, cfg, bundle, tmp_path, viewers))
                # The node of the session opened during the rollout goes away.
                async with http.get(f"{url}{viewers[-1].location}", headers=auth) as r:
                    assert r.status == 200
                victim = await _node_of_session(http, url, viewers[-1].location, auth, nodes)
                t0 = time.monotonic()
                cluster.remove_node(victim, allow_graceful=False)
                gone, seen = None, []
                while time.monotonic() - t0 < 60:
                    async with http.get(f"{url}{viewers[-1].location}", headers=auth) as r:
                        seen.append((round(time.monotonic() - t0, 1), r.status))
                        if r.status == 410:
                            gone = time.monotonic() - t0
                            break
                    await asyncio.sleep(0.2)
                assert gone is not None, f"the dead node's session never answered 410: {seen}"
                print(f"\nnode removed -> its session answers 410: {gone:.1f} s")
                fresh = await open_session(http, url, "t")
                async with http.get(f"{url}/metrics") as r:
                    text = await r.text()
                assert 'twincast_cluster_workers{state="live"} 1' in text
                for viewer in [*viewers, fresh]:
                    await viewer.pc.close()

        asyncio.run(run())
    finally:
        launch.stop(workers)
        ray.shutdown()
        cluster.shutdown()


async def _reports() -> list[dict]:
    import ray

    from streaming.cluster.launch import named_workers

    out = []
    for actor in named_workers().values():
        try:
            out.append(await actor.info.remote())
        except ray.exceptions.RayActorError:
            continue  # ended since it was listed
    return out


async def _roll_out(http, url: str, cfg, bundle, tmp_path, viewers):  # noqa: ANN001, ANN202
    """A new version of the bundle rolled out while a session plays on each worker: as
    each old worker drains, its session still speaks when asked, and a session opened
    meanwhile goes to a new worker; then the old one's session is closed and the rollout
    moves on. Returns the session opened during it."""
    import dataclasses
    import shutil
    import threading

    from avatar.bundle import sha256_file
    from bench.client import open_session
    from streaming.cluster import launch

    auth = {"Authorization": "Bearer t"}
    new = tmp_path / "presenter-v2"
    shutil.copytree(bundle, new)
    manifest = json.loads((new / "manifest.json").read_text())
    manifest["created"] = "2026-12-02T00:00:00+00:00"  # a new version: a new manifest sha
    (new / "manifest.json").write_text(json.dumps(manifest))
    new_sha = sha256_file(new / "manifest.json")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(launch.rollout(
        dataclasses.replace(cfg, bundles={"presenter": str(new)}), drain_timeout_s=120)))
    thread.start()
    by_sid = {v.location.rsplit("/", 1)[1]: v for v in viewers}
    fresh, closed, t0 = None, set(), time.monotonic()
    while thread.is_alive():
        assert time.monotonic() - t0 < 300, "the rollout did not end in 300 s"
        for report in await _reports():
            if not report["draining"]:
                continue
            if fresh is None:  # the ingress sees the drain within a second
                await asyncio.sleep(1.5)
                fresh = await open_session(http, url, "t")
                sid = fresh.location.rsplit("/", 1)[1]
                owner = next(r for r in await _reports() if sid in r["sessions"])
                assert not owner["draining"] and owner["bundles"]["presenter"] == new_sha
            for sid in set(report["sessions"]) & set(by_sid) - closed:
                v = by_sid[sid]
                async with http.post(f"{url}{v.location}/say", json={"text": "Still here."},
                                     headers=auth) as r:
                    assert r.status == 202, await r.text()
                    uid = (await r.json())["utterance"]
                for _ in range(200):
                    if any(e["type"] == "speech_started" and e.get("utterance") == uid
                           for e in v.events):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"a draining worker's session stopped speaking: "
                                         f"{v.events[-5:]}")
                async with http.delete(f"{url}{v.location}", headers=auth) as r:
                    assert r.status == 204
                closed.add(sid)
        await asyncio.sleep(0.5)
    thread.join()
    assert result and result["sessions_cut"] == 0, result
    assert len(result["replaced"]) == 2 and closed == set(by_sid), (result, closed)
    print(f"\nrollout of two lanes with a live session each: {result['seconds']:.0f} s")
    reports = await _reports()
    assert len(reports) == 2 and all(r["bundles"]["presenter"] == new_sha and
                                     not r["draining"] for r in reports), reports
    for _ in range(30):
        async with http.get(f"{url}/metrics") as r:
            text = await r.text()
        if 'twincast_cluster_workers{state="retired"} 2' in text:
            break
        await asyncio.sleep(0.2)
    assert 'twincast_cluster_workers{state="retired"} 2' in text, text
    assert 'twincast_cluster_workers{state="dead"} 0' in text, text
    return fresh


async def _node_of_session(http, url: str, location: str, auth: dict, nodes: list):  # noqa: ANN001, ANN202
    """The cluster_utils node whose worker holds the session (from the ingress's report
    of the session's worker url: the worker's node address and port differ per node)."""
    import ray

    from streaming.cluster.launch import NAMESPACE, PREFIX

    sid = location.rsplit("/", 1)[1]
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a.get("namespace") != NAMESPACE or not a["name"].startswith(PREFIX):
            continue
        report = await ray.get_actor(a["name"], namespace=NAMESPACE).info.remote()
        if sid in report["sessions"]:
            return next(n for n in nodes if n.node_id == report["node"])
    raise AssertionError(f"no worker holds session {sid}")


def test_a_cluster_address_that_does_not_answer_is_one_line(bundle, tmp_path) -> None:  # noqa: ANN001
    from tests.conftest import run_cli

    proc = run_cli("cluster", tmp_path, "--ray", "127.0.0.1:1")
    assert proc.returncode == 2 and "not an avatar bundle" in proc.stderr
    proc = run_cli("cluster", bundle, "--ray", "127.0.0.1:1", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "twincast: error: cannot join the Ray cluster at '127.0.0.1:1': nothing answers")


def test_bench_cluster_times_text_sent_by_http_and_on_the_data_channel(bundle) -> None:  # noqa: ANN001
    """``bench cluster``'s latency measure, through an ingress in front of two servers:
    sentences go by HTTP and on the session's data channel in turn, and each way gets its
    own text-to-first-word-frame times (a data-channel say is matched to its utterance by
    the session's ``accepted`` event); the summary pools runs and the differences compare
    p50 with p50."""
    from bench.cluster import _differences, _measure, _summary

    workers = Workers(bundle)

    async def run() -> dict:
        ingress = Ingress(IngressConfig(token="t", refresh_s=0.2), workers.roster)
        url, stop = await serve_ingress(ingress)
        try:
            return await _measure(url, "t", says=2)
        finally:
            await stop()

    try:
        raw = asyncio.run(run())
    finally:
        workers.stop()
    assert len(raw["speech_started"]) == 2
    assert len(raw["first_word_frame_http"]) == 1
    assert len(raw["first_word_frame_channel"]) == 1
    assert len(raw["say_request"]) == 1  # the HTTP one: a data-channel say has no reply
    assert all(0 < x < 5000 for x in raw["first_word_frame_http"] +
               raw["first_word_frame_channel"])
    one, two = _summary(raw), _summary(raw, raw)
    assert one["says"] == 2 and two["says"] == 4
    assert two["text_to_first_word_frame_ms"]["n"] == 4
    assert two["text_to_first_word_frame_ms"]["p50"] == one["text_to_first_word_frame_ms"]["p50"]
    slower = {**raw, "first_word_frame_channel": [x + 40 for x in raw["first_word_frame_channel"]]}
    diff = _differences(one, _summary(slower), "_x")
    assert diff["cluster_minus_single_word_frame_channel_p50_ms_x"] == 40.0
    assert diff["cluster_minus_single_word_frame_http_p50_ms_x"] == 0.0



def test_bench_cluster_helper_stops_the_server_however_the_body_ends(bundle, tmp_path) -> None:  # noqa: ANN001
    """``bench cluster`` runs its single-server phases through one helper: the body runs
    once the server answers, and the server is stopped after it, also when the body fails."""
    from bench.cluster import _with_server

    seen = []

    async def health(server) -> int:  # noqa: ANN001
        import aiohttp

        async with aiohttp.ClientSession() as http, http.get(server.url + "/healthz") as r:
            seen.append(server)
            return r.status

    assert _with_server(bundle, tmp_path / "a.log", ("--render-threads", "1"), health) == 200
    assert seen[0].proc.poll() is not None

    async def fails(server) -> None:  # noqa: ANN001
        seen.append(server)
        raise RuntimeError("the body failed")

    with pytest.raises(RuntimeError, match="the body failed"):
        _with_server(bundle, tmp_path / "b.log", (), fails)
    assert seen[1].proc.poll() is not None


def test_a_closed_session_is_uncounted_before_the_next_report() -> None:
    """Placement between the workers' reports: a session closed through the ingress no
    longer counts on its worker, so the next one goes there (still counted, the tie went by
    name to the other worker, which had as many sessions)."""
    from streaming.cluster.ingress import Reply

    async def roster() -> tuple[list[WorkerInfo], set[str]]:
        return [WorkerInfo(n, "node-" + n, f"http://{n}", s, 3, 100.0, 0.9, 25)
                for n, s in (("w1", ("a", "b")), ("w2", ("c", "d")))], set()

    sent = []

    async def forward(worker, method, path, query, headers, body) -> Reply:  # noqa: ANN001
        sent.append((worker.name, method, path))
        return Reply(204)

    async def run() -> None:
        # Reports asked for once, at the first request: the view stays as it was.
        ingress = Ingress(IngressConfig(token="t", refresh_s=600.0), roster)
        ingress._forward = forward  # type: ignore[method-assign]
        try:
            await ingress.view()
            assert choose(ingress.workers).name == "w1"  # a tie, by name
            reply = await ingress.handle("DELETE", "/v1/sessions/d", "",
                                         {"Authorization": "Bearer t"}, b"")
            assert reply.status == 204 and sent == [("w2", "DELETE", "/v1/sessions/d")]
            assert [w.sessions for w in ingress.workers] == [("a", "b"), ("c",)]
            assert choose(ingress.workers).name == "w2"
        finally:
            await ingress.close()

    asyncio.run(run())


def test_a_full_view_is_asked_again_before_a_refusal() -> None:
    """A session whose viewer hung up closes on its worker before its DELETE comes (a 404,
    uncounted all the same), and a view up to ``refresh_s`` old may still count it: the next
    session is placed once fresh reports say there is room, and refused only when they
    say there is none."""
    from streaming.cluster.ingress import Reply

    reports = {"w1": ("a",)}
    asked = []

    async def roster() -> tuple[list[WorkerInfo], set[str]]:
        asked.append(dict(reports))
        return [WorkerInfo(n, "node-" + n, f"http://{n}", s, 1, 100.0, 0.9, 25)
                for n, s in reports.items()], set()

    async def forward(worker, method, path, query, headers, body) -> Reply:  # noqa: ANN001
        if method == "DELETE":
            return Reply(404, b'{"error": "no such session (unknown or closed)"}')
        return Reply(201, b"v=0", {"Location": "/v1/sessions/n1"})

    async def run() -> None:
        ingress = Ingress(IngressConfig(token="t", refresh_s=600.0), roster)
        ingress._forward = forward  # type: ignore[method-assign]
        auth = {"Authorization": "Bearer t", "Content-Type": "application/sdp"}
        try:
            await ingress.view()
            reports["w1"] = ()  # closed on the worker; the ingress's view still holds it
            reply = await ingress.handle("POST", "/v1/sessions", "", auth, b"v=0")
            assert reply.status == 201 and len(asked) == 2
            assert ingress.owner["n1"] == "w1"
            reports["w1"] = ("n1",)
            reply = await ingress.handle("DELETE", "/v1/sessions/n1", "", auth, b"")
            assert reply.status == 404
            assert [w.sessions for w in ingress.workers] == [()]  # uncounted all the same
            reports["w1"] = ("b",)  # really full: asked again, then refused
            await ingress.view(fresh=True)
            n = len(asked)
            reply = await ingress.handle("POST", "/v1/sessions", "", auth, b"v=0")
            assert reply.status == 503 and len(asked) == n + 1
        finally:
            await ingress.close()

    asyncio.run(run())
