"""The HTTP API (``/v1``), the page and the embed kit, over a ``streaming.app.Server``.

Handlers only translate: HTTP in, a parsed request (``streaming.requests``) to the server,
its answer out. Every refusal is a 4xx (or a 503 with Retry-After) with a JSON
``{"error": ...}`` body, and no request can stop the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from avatar.chat_settings import parse_chat
from avatar.errors import TwincastError
from avatar.watermark import bundle_mark_id
from streaming.app import Server, ServerConfig, bundle_names
from streaming.ingest import check_ingest
from streaming.ratelimit import Bucket, retry_after
from streaming.registry import Full
from streaming.requests import (
    Ask,
    BadRequest,
    ChatPost,
    Say,
    StreamRequest,
    TokenRequest,
    parse_json,
)
from streaming.tokens import Grant, viewer_may

log = logging.getLogger(__name__)
GRANT = web.RequestKey("grant", Grant)
"""The viewer token's grant a request came with (absent: the operator's own token)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

EMBED_FILES = {"twincast.js": "application/javascript", "example.html": "text/html",
               "example.js": "application/javascript"}
WEB = Path(__file__).parent / "web"
CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; media-src 'self' blob:; "
       "img-src 'self' data:; style-src 'self' 'unsafe-inline'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


async def text_body(request: web.Request) -> str:
    """The body as text in its declared charset (UTF-8 unless said); a body that is not,
    or a charset nobody knows, is the client's mistake (400)."""
    raw = await request.read()
    try:
        return raw.decode(request.charset or "utf-8")
    except LookupError:
        raise BadRequest(f"unknown charset {request.charset!r}; send UTF-8") from None
    except UnicodeDecodeError:
        raise BadRequest(f"the body is not {request.charset or 'UTF-8'} text") from None


async def json_body(request: web.Request) -> dict:
    body = parse_json(await text_body(request))
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _no_filter(settings) -> None:  # noqa: ANN001 - avatar.chat_settings.ChatSettings
    """A chat filter is code the server imports: named in a show file on the operator's
    command line only, never by an API call."""
    if settings.filter is not None:
        raise BadRequest("'filter' names code for the server to load; set it in a show file "
                         "given to `twincast stream --show`, not through the API", 403)


class Routes:
    def __init__(self, server: Server):
        self.server = server
        self.operator = Bucket(*server.cfg.operator_rate)

    # ------------------------------------------------------------ middlewares
    @web.middleware
    async def cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Pages from the configured origins may call the API (and read ``Location``)."""
        origins = self.server.cfg.cors_origins
        origin = request.headers.get("Origin")
        allowed = origin is not None and request.path.startswith("/v1/") and (
            "*" in origins or origin in origins)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not allowed:
                return error(403, f"origin {origin!r} may not call this API; add it with "
                             "--cors-origin")
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin, "Vary": "Origin",
                # PATCH: a WHEP player's trickle-ICE request must reach the server to
                # learn it is not supported (405), not fail the preflight.
                "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600"})
        response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = \
                "Location, X-Twincast-Disclosure"
            response.headers["Vary"] = "Origin"
        return response

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return error(e.status, e.reason)
        except Full as e:
            return error(e.status, str(e), **{"Retry-After": str(e.retry_after_s)})
        except BadRequest as e:
            retry = getattr(e, "retry_after_s", None)
            return error(e.status, str(e), **({"Retry-After": str(retry)} if retry else {}))
        except TwincastError as e:
            return error(400, str(e))

    @web.middleware
    async def auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The operator's token may do everything; a viewer token (``streaming.tokens``)
        opens one session and acts on that one only, as its grant allows."""
        if request.path.startswith("/v1/") and request.path != "/v1/openapi.json":
            header = request.headers.get("Authorization", "")
            # As bytes: compare_digest refuses a non-ASCII str (a 500, not a 401).
            given = header.encode("utf-8", "surrogateescape")
            if secrets.compare_digest(given, f"Bearer {self.server.token}".encode()):
                return await self._limited(self.operator, request, handler)
            grant = self.server.tokens.find(header.removeprefix("Bearer "))
            if grant is None:
                return error(401, "missing, wrong or expired bearer token",
                             **{"WWW-Authenticate": "Bearer"})
            why = viewer_may(grant, request.method, request.path)
            if why is not None:
                return error(403, why)
            request[GRANT] = grant
            if grant.bucket is None:
                grant.bucket = Bucket(*self.server.cfg.viewer_rate)
            return await self._limited(grant.bucket, request, handler)
        return await handler(request)

    @staticmethod
    async def _limited(bucket: Bucket, request: web.Request, handler: Handler
                       ) -> web.StreamResponse:
        wait = bucket.take()
        if wait:
            return error(429, f"too many requests with this token; wait {wait:.1f} s",
                         **{"Retry-After": retry_after(wait)})
        return await handler(request)

    # ------------------------------------------------------------ sessions
    async def create_session(self, request: web.Request) -> web.Response:
        as_json = request.content_type == "application/json"
        if as_json:
            body = await json_body(request)
            sdp, avatar = body.get("sdp"), body.get("avatar")
            mode = body.get("mode", "driven")
        else:
            sdp, avatar = await text_body(request), request.query.get("avatar")
            mode = request.query.get("mode", "driven")
        if avatar is not None and not isinstance(avatar, str):
            raise BadRequest("'avatar' must be a string")
        if mode not in ("driven", "conversation"):
            raise BadRequest("'mode' is driven (the microphone, if any, drives the mouth) or "
                             "conversation (the microphone is the person talking to the "
                             "avatar)")
        grant = request.get(GRANT)
        if grant is not None:
            if grant.avatar is not None and (avatar or grant.avatar) != grant.avatar:
                raise BadRequest(f"this viewer token opens avatar {grant.avatar!r} only", 403)
            avatar = grant.avatar or avatar
            if grant.session is not None:  # two offers raced with one token
                raise BadRequest("this viewer token has opened its session already", 403)
            grant.session = "opening"
        try:
            session, answer = await self.server.open_webrtc(
                sdp, avatar, may_say=grant is None or grant.say, mode=mode)
        except BaseException:
            if grant is not None:
                grant.session = None
            raise
        if grant is not None:
            grant.session = session.id
        location = f"/v1/sessions/{session.id}"
        headers = {"Location": location}
        label = self.server.label
        if label is not None:  # what the frames say, for a caption pages can read out
            headers["X-Twincast-Disclosure"] = label.cfg.text
        if as_json:
            return web.json_response({"id": session.id, "sdp": answer, "type": "answer",
                                      "disclosure": label.cfg.text if label else None},
                                     status=201, headers=headers)
        return web.Response(text=answer, status=201, content_type="application/sdp",
                            headers=headers)

    async def create_stream(self, request: web.Request) -> web.Response:
        req = StreamRequest.parse(await json_body(request))
        await check_ingest(req.rtmp, self.server.cfg.rtmp_allow)
        show = req.parsed_show()
        if show is not None and show.chat is not None:
            _no_filter(show.chat)
        if show is not None and show.chat is not None and show.chat.irc is not None:
            # The chat server is a host the caller chose, like the ingest.
            await check_ingest(show.chat.irc, self.server.cfg.rtmp_allow, "chat")
        session = await self.server.open_stream(req, show)
        location = f"/v1/sessions/{session.id}"
        return web.json_response({"id": session.id, "location": location}, status=201,
                                 headers={"Location": location})

    async def mint_token(self, request: web.Request) -> web.Response:
        if request.get(GRANT) is not None:
            raise BadRequest("only the operator's token mints viewer tokens", 403)
        req = TokenRequest.parse(await json_body(request))
        if req.avatar is not None:
            self.server.avatar_name(req.avatar)  # 404 for an unknown avatar
        token, _ = self.server.tokens.mint(req)
        return web.json_response({"token": token, "ttl_s": req.ttl_s, "avatar": req.avatar,
                                  "say": req.say}, status=201)

    async def get_session(self, request: web.Request) -> web.Response:
        session = self.server.session(request.match_info["id"])
        out = session.describe()
        desk = self.server.chats.get(session.id)
        if desk is not None:
            out["chat"] = desk.describe()  # type: ignore[attr-defined]
        return web.json_response(out)

    async def delete_session(self, request: web.Request) -> web.Response:
        session = self.server.session(request.match_info["id"])
        await self.server.close(session.id)
        return web.Response(status=204)

    async def say(self, request: web.Request) -> web.Response:
        session = self.server.session(request.match_info["id"])
        req = Say.parse(await json_body(request), self.server.cfg.max_text_chars)
        return web.json_response({"utterance": self.server.say(session, req)}, status=202)

    async def ask(self, request: web.Request) -> web.Response:
        session = self.server.session(request.match_info["id"])
        req = Ask.parse(await json_body(request))
        return web.json_response({"question": self.server.ask(session, req)}, status=202)

    async def chat(self, request: web.Request) -> web.Response:
        """A platform's chat webhook: messages are moderated and queued for the LLM; the
        reply counts each verdict (``question``, ``vote``, or why one was dropped)."""
        if request.get(GRANT) is not None:
            raise BadRequest("only the operator's token posts chat (from its platform's "
                             "webhook)", 403)
        session = self.server.session(request.match_info["id"])
        req = ChatPost.parse(await json_body(request))
        return web.json_response({"verdicts": self.server.post_chat(session, req)},
                                 status=202)

    async def set_chat(self, request: web.Request) -> web.Response:
        """Give a session live chat: the keys of a show's ``[chat]`` table as JSON (an
        ``irc`` channel to read, moderation, pace); it answers as questions come."""
        if request.get(GRANT) is not None:
            raise BadRequest("only the operator's token sets a session's chat", 403)
        session = self.server.session(request.match_info["id"])
        try:
            settings = parse_chat(await json_body(request), lambda key: "chat", False,
                                  show=False)
        except BadRequest:
            raise  # the body's own errors keep their status
        except TwincastError as e:
            raise BadRequest(str(e)) from None
        _no_filter(settings)
        if settings.irc is not None:
            await check_ingest(settings.irc, self.server.cfg.rtmp_allow, "chat")
        self.server.set_chat(session, settings)
        return web.json_response({"chat": settings.irc or "webhook", "answer":
                                  settings.answer}, status=201)

    async def interrupt(self, request: web.Request) -> web.Response:
        session = self.server.session(request.match_info["id"])
        return web.json_response({"dropped": session.interrupt()})

    # ------------------------------------------------------------ the rest
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sessions": len(self.server.registry)})

    async def list_avatars(self, request: web.Request) -> web.Response:
        voices = self.server.voices
        label = self.server.label
        marked = self.server.cfg.watermark.enabled

        def entry(name: str, avatar: object) -> dict:
            out = {"name": name, "voice": voices.get(name) is not None,
                   "consent": self.server.consent.get(name, "unconsented")}
            manifest = getattr(avatar, "manifest", None)
            if marked and manifest is not None:  # what `twincast verify` prints for it
                out["mark_id"] = bundle_mark_id(manifest.files)
            return out

        return web.json_response({
            "avatars": [entry(n, a) for n, a in self.server.avatars.items()],
            "disclosure": label.cfg.text if label is not None else None,
            "watermark": marked,
            "unconsented_allowed": self.server.cfg.allow_unconsented})

    async def openapi(self, request: web.Request) -> web.Response:
        from streaming.openapi import document

        return web.json_response(document())

    async def metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from streaming.metrics import registry_for

        body = generate_latest(registry_for(self.server))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def page(self, request: web.Request) -> web.Response:
        return static("index.html", "text/html")

    async def page_js(self, request: web.Request) -> web.Response:
        return static("app.js", "application/javascript")

    async def embed_file(self, request: web.Request) -> web.Response:
        """The embed kit: the client script, and an example page that uses it."""
        name = request.path.rsplit("/", 1)[1]
        return static(name, EMBED_FILES[name])


def static(name: str, content_type: str) -> web.Response:
    body = (WEB / name).read_text(encoding="utf-8")
    return web.Response(text=body, content_type=content_type,
                        headers={"Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-store"})


def build_app(server: Server) -> web.Application:
    routes = Routes(server)
    app = web.Application(client_max_size=server.cfg.max_body_bytes,
                          middlewares=[routes.cors, routes.errors, routes.auth])
    r = app.router
    r.add_get("/", routes.page)
    r.add_get("/app.js", routes.page_js)
    for name in EMBED_FILES:
        r.add_get(f"/embed/{name}", routes.embed_file)
    r.add_get("/healthz", routes.healthz)
    r.add_get("/metrics", routes.metrics)
    r.add_get("/v1/openapi.json", routes.openapi)
    r.add_get("/v1/avatars", routes.list_avatars)
    r.add_post("/v1/sessions", routes.create_session)
    r.add_get("/v1/sessions/{id}", routes.get_session)
    r.add_delete("/v1/sessions/{id}", routes.delete_session)
    r.add_post("/v1/sessions/{id}/say", routes.say)
    r.add_post("/v1/sessions/{id}/ask", routes.ask)
    r.add_post("/v1/sessions/{id}/interrupt", routes.interrupt)
    r.add_post("/v1/streams", routes.create_stream)
    r.add_post("/v1/streams/{id}/chat", routes.chat)
    r.add_post("/v1/sessions/{id}/chat", routes.chat)
    r.add_put("/v1/sessions/{id}/chat", routes.set_chat)
    r.add_post("/v1/tokens", routes.mint_token)

    async def startup(app: web.Application) -> None:
        await server.start()

    async def shutdown(app: web.Application) -> None:
        await server.stop()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return app


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
          stream: tuple[StreamRequest, object | None] | None = None) -> None:
    """``twincast serve``: load, print the token and a local link, serve until Ctrl-C.
    ``stream`` (a StreamRequest and a parsed show or None): also push one stream from the
    start (``twincast stream``)."""
    names = bundle_names(bundles)
    server = Server(names, cfg)
    server.load()
    app = server.app()
    if stream is not None:
        async def start_stream(app: web.Application) -> None:
            s = await server.open_stream(*stream)
            log.info("stream session %s: inject text with POST /v1/sessions/%s/say", s.id,
                     s.id)
        app.on_startup.append(start_stream)
    # The token rides in the link's fragment (the browser never sends it to a server),
    # and never in the log: log lines are shipped and kept. A token the operator chose
    # they know; one generated here goes to the terminal alone.
    log.info("serving %s: open http://%s:%d/#token=<the API token>", ", ".join(names),
             cfg.host, cfg.port)
    if not (cfg.token or os.environ.get("TWINCAST_TOKEN")):
        print(f"twincast: generated API token (not logged): {server.token}\n"
              f"          open http://{cfg.host}:{cfg.port}/#token={server.token}",
              file=sys.stderr, flush=True)
    web.run_app(app, host=cfg.host, port=cfg.port, print=None,
                handle_signals=True, loop=asyncio.new_event_loop())
