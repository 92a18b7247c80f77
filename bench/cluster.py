"""``twincast bench cluster``: the same avatar served by one ``twincast serve`` and by a Ray
cluster on this machine (a head and two worker nodes, ``ray.cluster_utils``), measured
the same way at a real aiortc viewer: text to ``speech_started`` and to the first audible
audio, and to the arrival of the frame that paints the first word (bench.viewer), p50/p95,
with the text sent both ways a client sends it: an HTTP ``say`` (an operator's backend:
through the ingress) and a ``say`` on the session's data channel (the embed kit's way
while its channel is open: straight to the worker that owns the peer connection), one
after the other; the HTTP request's own round trip (the control path); opening a session (placement,
offer and answer) through the ingress and directly; and, with a session on each node, the
time from a node's removal to its session answering 410 and to the ingress reporting one
live worker (it no longer places there)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.viewer import TimedViewer, first_after, pct

log = logging.getLogger(__name__)

SENTENCES = ["Bin blue at F two now.", "Place red by G nine soon.",
             "Lay white with P four again.", "Set green in B seven please."]
AUDIBLE = 0.01
"""RMS of a 20 ms frame above which the viewer hears the voice."""
VIA = ("http", "channel")
"""How each sentence's text is sent, in turn (``_measure``)."""


async def _measure(url: str, token: str, says: int) -> dict:
    import aiohttp

    from streaming.session import SessionConfig

    auth = {"Authorization": f"Bearer {token}"}
    mouth, audio, opened, asked = [], [], [], []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # opening a session, timed (placement, offer, answer, tracks)
            t = time.perf_counter()
            v = TimedViewer()
            await v.open(http, url, token)
            opened.append(1000 * (time.perf_counter() - t))
            await v.close()
            async with http.delete(f"{url}{v.location}", headers=auth):
                pass
        v = TimedViewer()
        await v.open(http, url, token)
        await asyncio.sleep(2.0)  # past the session's first frames
        await v.note_skipped(http, auth)
        said: list[tuple[float, str, str]] = []
        for i in range(says):
            text = SENTENCES[i % len(SENTENCES)]
            via = VIA[i % len(VIA)]
            t = time.perf_counter()
            if via == "http":
                async with http.post(f"{url}{v.location}/say", headers=auth,
                                     json={"text": text}) as r:
                    uid = (await r.json())["utterance"]
                # The request's own round trip: the control path's share (through the
                # ingress and Ray Serve's proxy, or straight to the server).
                asked.append(1000 * (time.perf_counter() - t))
            else:
                v.v.channel.send(json.dumps({"type": "say", "text": text}))
                uid = await _accepted(v, t)
            for _ in range(300):
                if v.first("speech_ended", t, utterance=uid):
                    break
                await asyncio.sleep(0.05)
            said.append((t, uid, via))
            started = v.first("speech_started", t, utterance=uid)
            if started:
                mouth.append(1000 * (started[0] - t))
            times = np.array([a[0] for a in v.audio])
            loud = np.array([a[1] > AUDIBLE for a in v.audio])
            heard = first_after(times, loud, t) if len(times) else None
            if heard is not None:
                audio.append(1000 * (heard - t))
            await asyncio.sleep(0.5)
        await v.close()
    # The frame that paints each sentence's first word, as it reached the viewer (read
    # from the frames' timestamps and the session's events: bench.viewer).
    word_at = v.word_frames(SessionConfig().fps)
    word = {w: [1000 * (word_at[u] - t) for t, u, how in said if u in word_at and how == w]
            for w in VIA}
    return {"speech_started": mouth, "first_word_frame_http": word["http"],
            "first_word_frame_channel": word["channel"], "first_audio": audio,
            "say_request": asked, "open_session": opened}


def _summary(*raws: dict) -> dict:
    """p50/p95 of ``_measure``'s times (ms), pooled over its runs."""
    def pool(key: str) -> list[float]:
        return [x for r in raws for x in r[key]]

    every = pool("first_word_frame_http") + pool("first_word_frame_channel")
    out = {"text_to_speech_started_ms": pool("speech_started"),
           "text_to_first_word_frame_ms": every,
           **{f"text_to_first_word_frame_{w}_ms": pool(f"first_word_frame_{w}")
              for w in VIA},
           "text_to_first_audio_ms": pool("first_audio"),
           "say_request_ms": pool("say_request")}
    summary = {k: {"p50": pct(x, 50), "p95": pct(x, 95), "n": len(x)} for k, x in out.items()}
    opened = pool("open_session")
    summary["open_session_ms"] = {"p50": pct(opened, 50), "max": round(max(opened), 1)}
    summary["says"] = len(out["text_to_speech_started_ms"])
    return summary


def _differences(single: dict, cluster: dict, suffix: str = "") -> dict:
    """Cluster minus single, p50 against p50, for each of the latencies."""
    out = {}
    for key, name in (("text_to_speech_started_ms", "cluster_minus_single_p50_ms"),
                      ("text_to_first_word_frame_ms", "cluster_minus_single_word_frame_p50_ms"),
                      ("text_to_first_word_frame_http_ms",
                       "cluster_minus_single_word_frame_http_p50_ms"),
                      ("text_to_first_word_frame_channel_ms",
                       "cluster_minus_single_word_frame_channel_p50_ms"),
                      ("say_request_ms", "cluster_minus_single_say_request_p50_ms")):
        if single[key]["p50"] is not None and cluster[key]["p50"] is not None:
            out[name + suffix] = round(cluster[key]["p50"] - single[key]["p50"], 1)
    return out


async def _accepted(v: TimedViewer, after: float, timeout: float = 10.0) -> str:
    """The utterance id the session gives a data-channel ``say`` (its ``accepted``
    event)."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        got = v.first("accepted", after)
        if got is not None and "utterance" in got[1]:
            return str(got[1]["utterance"])
        err = v.first("error", after)
        if err is not None:
            raise RuntimeError(f"the session refused a data-channel say: {err[1]}")
        await asyncio.sleep(0.005)
    raise RuntimeError("no answer to a data-channel say within 10 s")


async def _hold(url: str, token: str, n: int, seconds: float = 20.0) -> dict:
    """``n`` sessions opened at real viewers that keep receiving, each talking as a host
    does (a sentence, then a second's pause when it has been said), for ``seconds`` after
    a 3 s settle: the share of their frames shown late (from each session's own counts)."""
    import aiohttp

    from bench.client import open_session

    auth = {"Authorization": f"Bearer {token}"}
    viewers, pumps, refused = [], [], 0

    async def drain(track) -> None:  # noqa: ANN001 - an aiortc track
        while True:
            await track.recv()

    async def stats(http) -> list[dict]:  # noqa: ANN001
        out = []
        for v in viewers:
            async with http.get(f"{url}{v.location}", headers=auth) as r:
                out.append(await r.json())
        return out

    async with aiohttp.ClientSession() as http:
        try:
            for _ in range(n):
                try:
                    v = await open_session(http, url, token)
                except RuntimeError:  # 503: the server (or cluster) is at its capacity
                    refused += 1
                    continue
                viewers.append(v)
                pumps += [asyncio.ensure_future(drain(t)) for t in v.tracks.values()]
            await asyncio.sleep(3.0)
            before = await stats(http)
            async with http.get(f"{url}/metrics", headers=auth) as r:
                text = await r.text()
            # Through the cluster: how many of the sessions each worker holds (placed
            # evenly or not); the single server has no such line.
            per_worker = sorted(int(m) for m in re.findall(
                r'^twincast_cluster_sessions\{[^}]*\} (\d+)$', text, re.M))
            end = time.perf_counter() + seconds
            i = 0
            quiet_since = [0.0] * len(viewers)
            while time.perf_counter() < end:
                now = time.perf_counter()
                for k, (v, st) in enumerate(zip(viewers, await stats(http), strict=True)):
                    if st.get("queued", 0) or st.get("speaking"):
                        quiet_since[k] = 0.0
                    elif not quiet_since[k]:
                        quiet_since[k] = now
                    elif now - quiet_since[k] >= 1.0:
                        async with http.post(f"{url}{v.location}/say", headers=auth,
                                             json={"text": SENTENCES[i % len(SENTENCES)]}):
                            i += 1
                        quiet_since[k] = 0.0
                await asyncio.sleep(0.25)
            after = await stats(http)
        finally:
            for task in pumps:
                task.cancel()
            for v in viewers:
                async with http.delete(f"{url}{v.location}", headers=auth):
                    pass
                await v.pc.close()
    shown = sum(a["frames_shown"] - b["frames_shown"] for a, b in zip(after, before, strict=True))
    late = sum(a["frames_late"] - b["frames_late"] for a, b in zip(after, before, strict=True))
    return {"sessions": len(viewers), "refused": refused, "frames": shown,
            **({"sessions_per_worker": per_worker} if per_worker else {}),
            "late_ratio": round(late / max(1, shown), 4)}


async def _failover(url: str, token: str, cluster, nodes: list) -> dict:  # noqa: ANN001
    """A session on each node; the node of the first is removed."""
    import aiohttp
    import ray

    from streaming.cluster.launch import NAMESPACE, PREFIX

    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        viewers, refused = [], 0
        while len(viewers) < 2:
            v = TimedViewer()
            try:
                await v.open(http, url, token)
            except RuntimeError:  # 503: the workers are not taking it yet; asked again
                refused += 1
                if refused > 30:
                    async with http.get(f"{url}/metrics") as r:
                        log.error("the cluster refuses sessions:\n%s", await r.text())
                    raise
                await asyncio.sleep(1.0)
                continue
            viewers.append(v)
        sid = viewers[0].location.rsplit("/", 1)[1]
        victim = None
        for a in ray.util.list_named_actors(all_namespaces=True):
            if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX):
                report = await ray.get_actor(a["name"], namespace=NAMESPACE).info.remote()
                if sid in report["sessions"]:
                    victim = next(n for n in nodes if n.node_id == report["node"])
        assert victim is not None, "no worker reports the session"
        t0 = time.perf_counter()
        cluster.remove_node(victim, allow_graceful=False)
        gone = unplaced = None
        while time.perf_counter() - t0 < 60 and (gone is None or unplaced is None):
            if gone is None:
                async with http.get(f"{url}{viewers[0].location}", headers=auth) as r:
                    if r.status == 410:
                        gone = time.perf_counter() - t0
            if unplaced is None:
                async with http.get(f"{url}/metrics") as r:
                    if 'twincast_cluster_workers{state="live"} 1' in await r.text():
                        unplaced = time.perf_counter() - t0
            await asyncio.sleep(0.1)
        for v in viewers:
            await v.close()
    return {"refused_before_two_opened": refused,
            "node_removed_to_session_410_s": None if gone is None else round(gone, 2),
            "node_removed_to_not_placed_s": None if unplaced is None else round(unplaced, 2)}


def bench_cluster(bundle: Path, says: int = 8, hold: tuple[int, ...] = (2, 3),
                  rounds: int = 2) -> dict:
    """``hold``: numbers of talking sessions whose late frames are measured on each.

    Latency is compared two ways. ``single`` is the server alone on the host, measured
    before the cluster starts, against ``cluster`` (the cost of the cluster as a whole on
    this host: its own processes, three raylets among them, share the two cores). And in
    ``rounds`` interleaved rounds with the cluster up, the same server beside it
    (``single_beside``) and the cluster one after the other, ``says`` sentences each a
    round: the cost of the cluster's path (ingress, worker actor) with the host's load and
    drift the same for both, which a one-after-the-other comparison cannot separate."""
    import ray
    from ray.cluster_utils import Cluster

    from bench.server_process import free_port
    from streaming.cluster import launch

    out: dict = {"bundle": str(bundle)}
    with tempfile.TemporaryDirectory() as tmp:
        # One server alone, as `twincast serve` runs it.
        out["single"] = _summary(_with_server(
            bundle, Path(tmp) / "serve.log", ("--render-threads", "1"),
            lambda server: _measure(server.url, server.token, says)))
        # Held sessions: the single server on both cores (two render threads) against two
        # nodes of one core each, one render thread each (the cluster's workers do not
        # admit by the host's CPU use, so neither does the server here).
        async def held(server) -> dict:
            return {str(n): await _hold(server.url, server.token, n) for n in hold}

        out["single_held"] = _with_server(
            bundle, Path(tmp) / "serve2.log",
            ("--render-threads", "2", "--max-sessions", str(max(hold)), "--host-share", "0"),
            held)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0,
                                                            "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    workers: list = []
    try:
        t = time.perf_counter()
        url, workers = launch.start(launch.ClusterConfig(
            bundles={"avatar": str(bundle)}, token="bench", address=cluster.address,
            port=free_port(), max_sessions=max(2, *hold), allow_unconsented=True))
        out["cluster_ready_s"] = round(time.perf_counter() - t, 1)
        out.update(_interleaved(bundle, url, says, rounds))
        out["cluster_held"] = {str(n): asyncio.run(_hold(url, "bench", n)) for n in hold}
        out["failover"] = asyncio.run(_failover(url, "bench", cluster, nodes))
    finally:
        launch.stop(workers)
        ray.shutdown()
        cluster.shutdown()
    out.update(_differences(out["single"], out["cluster"]))
    out.update(_differences(out["single_beside"], out["cluster"], "_interleaved"))
    return out


def _with_server(bundle: Path, log: Path, args: tuple[str, ...],
                 body: Callable[[Any], Awaitable[Any]]) -> Any:
    """Start `twincast serve` on ``bundle``, await ``body(server)`` once it answers, stop it."""
    from bench.server_process import ServerProcess

    server = ServerProcess(bundle, log, args=args)

    async def run():
        import aiohttp

        async with aiohttp.ClientSession() as http:
            await server.wait_ready(http)
        return await body(server)

    try:
        return asyncio.run(run())
    finally:
        server.stop()


def _interleaved(bundle: Path, url: str, says: int, rounds: int) -> dict:
    """The server beside the running cluster and the cluster, measured in turn."""
    raw: dict[str, list[dict]] = {"single_beside": [], "cluster": []}

    async def rounds_in_turn(server) -> None:
        for _ in range(rounds):
            raw["single_beside"].append(await _measure(server.url, server.token, says))
            raw["cluster"].append(await _measure(url, "bench", says))

    with tempfile.TemporaryDirectory() as tmp:
        _with_server(bundle, Path(tmp) / "beside.log", ("--render-threads", "1"),
                     rounds_in_turn)
    per_round = [{k: _summary(raw[k][i])["text_to_first_word_frame_ms"]["p50"] for k in raw}
                 for i in range(rounds)]
    return {"single_beside": _summary(*raw["single_beside"]),
            "cluster": _summary(*raw["cluster"]),
            "first_word_frame_p50_by_round_ms": per_round}
