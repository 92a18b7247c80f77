"""The realtime server: an aiohttp application with WebRTC sessions (aiortc).

Avatars are loaded once per device at start; one scheduler renders every session's frames
(see ``streaming.scheduler``). The HTTP API lives under ``/v1``; every answer to a bad
request is a 4xx with a JSON ``{"error": ...}`` body, and no request can stop the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from avatar.errors import TwincastError
from streaming.scheduler import Lane, Scheduler, SchedulerConfig
from streaming.session import Session, SessionConfig, listen

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    """Bearer token for the API; from TWINCAST_TOKEN when unset, else generated."""
    devices: tuple[str, ...] = ("cpu",)
    precision: str = "auto"
    """Render precision: ``auto`` (bfloat16 where the device has it natively), fp32, bf16."""
    max_sessions: int = 8
    max_body_bytes: int = 64 * 1024
    """Largest request body (an SDP offer is a few kB)."""
    max_text_chars: int = 5000
    max_batch: int = 16
    capacity_share: float = 0.9
    """A new session is admitted while all sessions' frames stay under this share of the
    scheduler's measured frames per second (a session needing every frame rendered)."""
    cors_origins: tuple[str, ...] = ()
    """Web origins (``https://example.com``) whose pages may call the API; ``*`` for any."""
    connect_timeout_s: float = 20.0
    """A session whose peer has not connected this long after its offer is closed."""
    vanished_after_s: float = 15.0
    """A connected peer that has sent no RTCP report (every second or so from any WebRTC
    receiver) for this long has gone without closing: its session is closed."""


EMBED_FILES = {"twincast.js": "application/javascript", "example.html": "text/html",
               "example.js": "application/javascript"}


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class Server:
    def __init__(self, bundles: dict[str, Path], cfg: ServerConfig | None = None):
        if not bundles:
            raise TwincastError("serve needs at least one avatar bundle")
        self.cfg = cfg or ServerConfig()
        self.token = self.cfg.token or os.environ.get("TWINCAST_TOKEN") or \
            secrets.token_urlsafe(18)
        self.bundles = bundles
        self.avatars: dict[str, object] = {}
        self.voices: dict[str, object | None] = {}
        self.sessions: dict[str, Session] = {}
        self.peers: dict[str, object] = {}
        self.scheduler: Scheduler | None = None
        self._opening = 0
        self._listeners: dict[str, asyncio.Future] = {}
        self._opened_at: dict[str, float] = {}
        self._watchdog: asyncio.Task | None = None
        self.streams: dict[str, tuple[object, list[asyncio.Task]]] = {}

    # ------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load every bundle on every device (slow: call before serving)."""
        from avatar.avatar import Avatar
        from avatar.voice import Voice

        lanes = []
        for i, dev in enumerate(self.cfg.devices):
            renderers = {name: Avatar.load(path, dev, precision=self.cfg.precision)
                         for name, path in self.bundles.items()}
            lanes.append(Lane(f"{dev}#{i}", renderers))
        self.avatars = dict(lanes[0].renderers)
        for name, path in self.bundles.items():
            try:
                # Speech is synthesised on the first device; the head renders everywhere.
                self.voices[name] = Voice.load(path, self.cfg.devices[0])
            except TwincastError as e:
                log.warning("avatar %s: %s; it can only be driven by audio", name, e)
                self.voices[name] = None
        self.scheduler = Scheduler(lanes, SchedulerConfig(max_batch=self.cfg.max_batch))
        self.scheduler.warm_up(lambda name, n: self.avatars[name].silent_requests(n))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_body_bytes,
                              middlewares=[self._cors, self._errors, self._auth])
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/app.js", self.page_js)
        for name in EMBED_FILES:
            r.add_get(f"/embed/{name}", self.embed_file)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/openapi.json", self.openapi)
        r.add_get("/v1/avatars", self.list_avatars)
        r.add_post("/v1/sessions", self.create_session)
        r.add_get("/v1/sessions/{id}", self.get_session)
        r.add_delete("/v1/sessions/{id}", self.delete_session)
        r.add_post("/v1/sessions/{id}/say", self.say)
        r.add_post("/v1/sessions/{id}/interrupt", self.interrupt)
        r.add_post("/v1/streams", self.create_stream)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _startup(self, app: web.Application) -> None:
        if self.scheduler is None:
            self.load()
        assert self.scheduler is not None
        self.scheduler.start()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _shutdown(self, app: web.Application) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for sid in list(self.sessions):
            await self._close(sid)
        if self.scheduler is not None:
            self.scheduler.stop()

    # ------------------------------------------------------------ middlewares
    @web.middleware
    async def _cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Pages from the configured origins may call the API (and read ``Location``)."""
        origin = request.headers.get("Origin")
        allowed = origin is not None and request.path.startswith("/v1/") and (
            "*" in self.cfg.cors_origins or origin in self.cfg.cors_origins)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not allowed:
                return _error(403, f"origin {origin!r} may not call this API; add it with "
                              "--cors-origin")
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600"})
        response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Location"
            response.headers["Vary"] = "Origin"
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _error(e.status, e.reason)
        except TwincastError as e:
            return _error(400, str(e))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/") and request.path != "/v1/openapi.json":
            given = request.headers.get("Authorization", "")
            if not secrets.compare_digest(given, f"Bearer {self.token}"):
                return _error(401, "missing or wrong bearer token", **{
                    "WWW-Authenticate": "Bearer"})
        return await handler(request)

    # ------------------------------------------------------------ handlers
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sessions": len(self.sessions)})

    async def create_session(self, request: web.Request) -> web.Response:


        if len(self.sessions) + self._opening >= self.cfg.max_sessions:
            return _error(503, f"the server holds its maximum of {self.cfg.max_sessions} "
                          "sessions; try again later", **{"Retry-After": "10"})
        assert self.scheduler is not None
        need = (len(self.sessions) + self._opening + 1) * SessionConfig().fps
        if need > self.cfg.capacity_share * self.scheduler.capacity_fps():
            return _error(503, "rendering capacity is taken by the open sessions "
                          f"(measured {self.scheduler.capacity_fps():.0f} frames/s); try "
                          "again later", **{"Retry-After": "10"})
        # Hold a place while the offer is negotiated (it awaits): a burst of requests must
        # not all pass the checks above before any of them is counted.
        self._opening += 1
        try:
            return await self._open(request)
        finally:
            self._opening -= 1

    async def _open(self, request: web.Request) -> web.Response:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from streaming.tracks import AvatarAudioTrack, AvatarVideoTrack

        as_json = request.content_type == "application/json"
        if as_json:
            body = await self._json(request)
            sdp, avatar = body.get("sdp"), body.get("avatar")
        else:
            sdp, avatar = await request.text(), request.query.get("avatar")
        avatar = avatar or next(iter(self.avatars))
        if avatar not in self.avatars:
            return _error(404, f"no avatar {avatar!r}; this server has "
                          f"{', '.join(self.avatars)}")
        if not isinstance(sdp, str) or "v=0" not in sdp[:200] or "m=" not in sdp:
            return _error(400, "the body must be an SDP offer (application/sdp, or JSON "
                          "with an 'sdp' field)")
        assert self.scheduler is not None
        session = Session(avatar, self.avatars[avatar], self.voices.get(avatar),
                          self.scheduler, SessionConfig())
        pc = RTCPeerConnection()

        @pc.on("track")
        def _incoming(track) -> None:  # noqa: ANN001 - aiortc's remote track
            # Audio-driven mode: the client's microphone drives the mouth (and is heard).
            if track.kind == "audio":
                self._listeners[session.id] = asyncio.ensure_future(
                    listen(session, track))

        # Send what the offer asks to receive.
        if "m=video" in sdp:
            pc.addTrack(AvatarVideoTrack(session))
        if "m=audio" in sdp:
            pc.addTrack(AvatarAudioTrack(session))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, TypeError, AttributeError, IndexError) as e:
            await pc.close()
            return _error(400, f"the SDP offer cannot be used ({str(e)[:160]})")
        session.start()
        self.sessions[session.id] = session
        self.peers[session.id] = pc
        self._opened_at[session.id] = time.monotonic()

        @pc.on("datachannel")
        def _channel(channel) -> None:  # noqa: ANN001 - aiortc's RTCDataChannel
            self._attach_channel(session, channel)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close(session.id)

        answer = pc.localDescription.sdp
        location = f"/v1/sessions/{session.id}"
        log.info("session %s opened (avatar %s)", session.id, avatar,
                 extra={"session": session.id})
        if as_json:
            return web.json_response({"id": session.id, "sdp": answer, "type": "answer"},
                                     status=201, headers={"Location": location})
        return web.Response(text=answer, status=201, content_type="application/sdp",
                            headers={"Location": location})

    async def create_stream(self, request: web.Request) -> web.Response:
        """Start pushing a new session to an RTMP ingest (a stream is a session whose
        output is RTMP): JSON ``{"rtmp": URL, "avatar": ..., "show": TOML text, "width",
        "height", "video_kbps", "keyframe_s", "key_colour": [r, g, b]}``."""
        from avatar.show import parse_show
        from streaming.rtmp import RtmpConfig, check_url

        body = await self._json(request)
        url = body.get("rtmp")
        if not isinstance(url, str):
            return _error(400, "'rtmp' must be the ingest URL (rtmp://... or rtmps://...)")
        check_url(url)
        avatar = body.get("avatar") or next(iter(self.avatars))
        if avatar not in self.avatars:
            return _error(404, f"no avatar {avatar!r}; this server has "
                          f"{', '.join(self.avatars)}")
        show = None
        if body.get("show") is not None:
            if not isinstance(body["show"], str):
                return _error(400, "'show' must be the text of a show file (TOML)")
            show = parse_show(body["show"], "show")
        ints: dict[str, float] = {}
        for key, lo, hi in (("width", 64, 3840), ("height", 64, 2160),
                            ("video_kbps", 100, 50000)):
            v = body.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or
                                  not lo <= v <= hi or (key != "video_kbps" and v % 2)):
                return _error(400, f"'{key}' must be a whole number from {lo} to {hi}"
                              + (" (even)" if key != "video_kbps" else ""))
            if v is not None:
                ints[key] = v
        kf = body.get("keyframe_s")
        if kf is not None:
            if isinstance(kf, bool) or not isinstance(kf, int | float) or not 0.5 <= kf <= 10:
                return _error(400, "'keyframe_s' must be a number of seconds from 0.5 to 10")
            ints["keyframe_s"] = float(kf)
        key = body.get("key_colour")
        if key is not None and not (isinstance(key, list) and len(key) == 3 and all(
                isinstance(c, int) and 0 <= c <= 255 for c in key)):
            return _error(400, "'key_colour' must be [r, g, b] with values 0-255")
        if len(self.sessions) + self._opening >= self.cfg.max_sessions:
            return _error(503, f"the server holds its maximum of {self.cfg.max_sessions} "
                          "sessions; try again later", **{"Retry-After": "10"})
        cfg = RtmpConfig(url=url, key_colour=tuple(key) if key else None, **ints)
        session = await self.open_stream(avatar, cfg, show)
        location = f"/v1/sessions/{session.id}"
        return web.json_response({"id": session.id, "location": location}, status=201,
                                 headers={"Location": location})

    async def open_stream(self, avatar: str, cfg: object, show: object | None = None
                          ) -> Session:
        """A session whose output goes to an RTMP ingest instead of a WebRTC peer."""
        from streaming.rtmp import RtmpOutput, pump
        from streaming.show import run_show

        assert self.scheduler is not None
        session = Session(avatar, self.avatars[avatar], self.voices.get(avatar),
                          self.scheduler, SessionConfig())
        keyer = None
        if cfg.key_colour is not None:  # type: ignore[attr-defined]
            from streaming.keying import Keyer

            keyer = await asyncio.get_running_loop().run_in_executor(
                None, Keyer, cfg.key_colour)  # type: ignore[attr-defined]
        output = RtmpOutput(cfg, session.cfg.fps, session.cfg.audio_rate,  # type: ignore[arg-type]
                            keyer=keyer)
        session.start()
        output.start()
        tasks = [asyncio.ensure_future(pump(session, output))]
        if show is not None:
            tasks.append(asyncio.ensure_future(run_show(session, show)))
        self.sessions[session.id] = session
        self.streams[session.id] = (output, tasks)
        session.describe_extra = lambda: {"output": "rtmp", "rtmp_state": output.state,
                                          **{f"rtmp_{k}": v for k, v in output.stats.items()}}
        log.info("session %s streams to %s", session.id, output.redacted_url(),
                 extra={"session": session.id})
        return session

    def _session(self, request: web.Request) -> Session:
        s = self.sessions.get(request.match_info["id"])
        if s is None:
            raise web.HTTPNotFound(reason="no such session (unknown or closed)")
        return s

    async def _json(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPBadRequest(reason="the body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(reason="the body must be a JSON object")
        return body

    async def get_session(self, request: web.Request) -> web.Response:
        return web.json_response(self._session(request).describe())

    async def delete_session(self, request: web.Request) -> web.Response:
        s = self._session(request)
        await self._close(s.id)
        return web.Response(status=204)

    async def say(self, request: web.Request) -> web.Response:
        s = self._session(request)
        body = await self._json(request)
        text = body.get("text")
        if not isinstance(text, str):
            return _error(400, "'text' must be a string")
        if len(text) > self.cfg.max_text_chars:
            return _error(413, f"the text is {len(text)} characters; the limit is "
                          f"{self.cfg.max_text_chars}")
        policy = body.get("policy", "interrupt" if body.get("interrupt") else "append")
        if policy not in ("append", "interrupt"):
            return _error(400, "'policy' is 'append' (after what is queued) or 'interrupt'")
        pace = body.get("rate", 1.0)
        if isinstance(pace, bool) or not isinstance(pace, int | float) or \
                not 0.5 <= pace <= 2.0:
            return _error(400, "'rate' must be a number from 0.5 to 2.0")
        uid = s.say(text, interrupt=policy == "interrupt", pace=float(pace))
        return web.json_response({"utterance": uid}, status=202)

    async def interrupt(self, request: web.Request) -> web.Response:
        s = self._session(request)
        return web.json_response({"dropped": s.interrupt()})

    def _attach_channel(self, session: Session, channel) -> None:  # noqa: ANN001
        """The data channel carries the same commands as the API and the session's
        events (speech started/ended, interrupted, errors) with their stream times."""

        def send(ev: dict) -> None:
            if channel.readyState == "open":
                channel.send(json.dumps(ev))

        session.listeners.append(send)

        @channel.on("message")
        def _message(message: object) -> None:
            try:
                cmd = json.loads(message) if isinstance(message, str) else None
                if not isinstance(cmd, dict):
                    raise ValueError("a command is a JSON object")
                kind = cmd.get("type")
                if kind == "say":
                    text = cmd.get("text")
                    if not isinstance(text, str) or len(text) > self.cfg.max_text_chars:
                        raise ValueError("'text' must be a string of at most "
                                         f"{self.cfg.max_text_chars} characters")
                    pace = cmd.get("rate", 1.0)
                    if isinstance(pace, bool) or not isinstance(pace, int | float) or \
                            not 0.5 <= pace <= 2.0:
                        raise ValueError("'rate' must be a number from 0.5 to 2.0")
                    uid = session.say(text, interrupt=bool(cmd.get("interrupt")),
                                      pace=float(pace))
                    send({"type": "accepted", "utterance": uid})
                elif kind == "interrupt":
                    session.interrupt()
                else:
                    raise ValueError(f"unknown command {kind!r} (say, interrupt)")
            except (ValueError, TwincastError) as e:
                send({"type": "error", "message": str(e)})

    async def page(self, request: web.Request) -> web.Response:
        return self._static("index.html", "text/html")

    async def page_js(self, request: web.Request) -> web.Response:
        return self._static("app.js", "application/javascript")

    async def embed_file(self, request: web.Request) -> web.Response:
        """The embed kit: the client script, and an example page that uses it."""
        name = request.path.rsplit("/", 1)[1]
        return self._static(name, EMBED_FILES[name])

    def _static(self, name: str, content_type: str) -> web.Response:
        body = (Path(__file__).parent / "web" / name).read_text(encoding="utf-8")
        csp = ("default-src 'none'; script-src 'self'; connect-src 'self'; "
               "media-src 'self' blob:; img-src 'self' data:; style-src 'self' "
               "'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return web.Response(text=body, content_type=content_type,
                            headers={"Content-Security-Policy": csp,
                                     "X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-store"})

    async def list_avatars(self, request: web.Request) -> web.Response:
        return web.json_response({"avatars": [
            {"name": n, "voice": self.voices.get(n) is not None} for n in self.avatars]})

    async def openapi(self, request: web.Request) -> web.Response:
        from streaming.openapi import document

        return web.json_response(document())

    async def metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from streaming.metrics import registry_for

        body = generate_latest(registry_for(self))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _watch(self) -> None:
        """Close the sessions of clients that never connected or went away without a
        word (a closed laptop lid, a lost network): their renders and tracks are freed."""
        period = min(2.0, self.cfg.vanished_after_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for sid, pc in list(self.peers.items()):
                age = now - self._opened_at.get(sid, now)
                why = None
                try:
                    if pc.connectionState != "connected":  # type: ignore[attr-defined]
                        if age > self.cfg.connect_timeout_s:
                            why = f"its peer did not connect within {age:.0f} s"
                    else:
                        silent = await _last_report_age(pc)
                        if (silent if silent is not None else age) > self.cfg.vanished_after_s:
                            why = "its client vanished (no RTCP report for " \
                                  f"{silent if silent is not None else age:.0f} s)"
                except Exception:  # noqa: BLE001 - one odd peer must not stop the watch
                    log.exception("watchdog: session %s", sid, extra={"session": sid})
                if why is not None:
                    log.warning("session %s closed: %s", sid, why, extra={"session": sid})
                    await self._close(sid)

    async def _close(self, sid: str) -> None:
        s = self.sessions.pop(sid, None)
        pc = self.peers.pop(sid, None)
        self._opened_at.pop(sid, None)
        listener = self._listeners.pop(sid, None)
        if listener is not None:
            listener.cancel()
        stream = self.streams.pop(sid, None)
        if stream is not None:
            for task in stream[1]:
                task.cancel()
        if s is not None:
            await s.close()
            log.info("session %s closed", sid, extra={"session": sid})
        if pc is not None:
            await pc.close()  # type: ignore[attr-defined]


async def _last_report_age(pc) -> float | None:  # noqa: ANN001 - RTCPeerConnection
    """Seconds since the peer's last RTCP receiver report on any of our tracks (None when
    it has sent none yet)."""
    import datetime as dt

    newest = None
    for sender in pc.getSenders():
        if sender.track is None:
            continue
        for st in (await sender.getStats()).values():
            if st.type == "remote-inbound-rtp" and (newest is None or st.timestamp > newest):
                newest = st.timestamp
    if newest is None:
        return None
    return (dt.datetime.now(dt.UTC) - newest).total_seconds()


def bundle_names(bundles: list[Path]) -> dict[str, Path]:
    """Each bundle under the name its manifest gives it (or its folder's)."""
    from avatar.bundle import read_manifest

    return {read_manifest(b).name or b.name: b for b in bundles}


class RunningServer:
    """A server serving from a thread of its own (benchmarks, tests): ``url``, ``stop()``."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0):
        self.server = server
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        box: dict = {}

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            runner = web.AppRunner(server.app())
            self._loop.run_until_complete(runner.setup())
            self._loop.run_until_complete(web.TCPSite(runner, host, port).start())
            box["port"] = runner.addresses[0][1]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=run, name="twincast-server", daemon=True)
        self._thread.start()
        if not ready.wait(120):
            raise TwincastError("the server did not start within 2 minutes")
        self.url = f"http://{host}:{box['port']}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


def serve(bundles: list[Path], cfg: ServerConfig,
          stream: tuple[object, object | None] | None = None) -> None:
    """``twincast serve``: load, print the token and a local link, serve until Ctrl-C.
    ``stream`` (an RtmpConfig and a Show or None): also push one stream from the start
    (``twincast stream``)."""
    names = bundle_names(bundles)
    server = Server(names, cfg)
    server.load()
    if stream is not None:
        async def start_stream(app: web.Application) -> None:
            s = await server.open_stream(next(iter(names)), *stream)
            log.info("stream session %s: inject text with POST /v1/sessions/%s/say", s.id,
                     s.id)
        app = server.app()
        app.on_startup.append(start_stream)
    else:
        app = server.app()
    # The token rides in the link's fragment: the browser never sends it to a server.
    log.info("serving %s: open http://%s:%d/#token=%s", ", ".join(names), cfg.host,
             cfg.port, server.token)
    web.run_app(app, host=cfg.host, port=cfg.port, print=None,
                handle_signals=True, loop=asyncio.new_event_loop())
