"""The realtime server's core: avatars loaded once per device, one render scheduler for
every session, and sessions opened for a WebRTC peer or an RTMP ingest into one registry.

HTTP lives in ``streaming.routes``; requests are parsed by ``streaming.requests``; where a
session's media goes is an ``streaming.outputs.Output``. Nothing here knows HTTP, so the
same core can serve behind another front (a cluster worker, the command line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from avatar.chat_settings import ChatSettings
from avatar.errors import TwincastError
from avatar.label import Label, LabelConfig
from avatar.priority import lower_thread_priority
from avatar.watermark import WatermarkConfig
from streaming.hostload import HostLoad
from streaming.llm import LLMConfig
from streaming.playout_delay import PlayoutDelay
from streaming.ratelimit import Bucket
from streaming.registry import Registry
from streaming.requests import (
    Ask,
    BadRequest,
    ChatPost,
    Interrupt,
    Say,
    StreamRequest,
    parse_command,
)
from streaming.scheduler import Lane, Scheduler, SchedulerConfig
from streaming.session import Session, SessionConfig, listen
from streaming.strain import FrameStrain
from streaming.thread_cpu import ThreadCpu
from streaming.tokens import TokenBook

log = logging.getLogger(__name__)


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
    max_body_bytes: int = 256 * 1024
    """Largest request body (an SDP offer is a few kB; a webhook's batch of a thousand
    chat messages, or one 100 kB message to be refused by moderation, fits)."""
    max_text_chars: int = 5000
    max_batch: int = 16
    compositing: str = "cpu"
    """Where each lane puts the painted mouths into their frames (``Avatar.compositing``):
    ``cpu`` (OpenCV over the cores) or ``device`` (torch on the lane's device, a batch in
    one pass: on an H200 node 19 720p sessions on the lane with batches of 64 against 14,
    at a fifth of the CPU a frame)."""
    render_threads: int = 0
    """CPU threads each CPU lane's model calls use; 0: half the cores. The video encoders,
    the event loop and the voice need the rest: on the 2-core host, two sessions speaking
    back to back (``bench soak``, a minute, the GRID ci bundle without motion, two runs)
    were late on 25 and 39 % of their frames with the lane on both cores, 12 and 15 % with
    it on one (OpenMP threads wait for each other, and one of two was often off the CPU)."""
    synthesis_nice: int = 10
    """How much lower than the rest of the server its speech synthesis threads run (Linux
    niceness, set as each thread of the synthesis pool starts; 0: as the rest). Synthesis
    runs seconds ahead of the sound mid-sentence, yet took the cores in bursts from the
    renderer's lane, which has a frame due every 40 ms: one live 720p session with a
    motion bank (``bench serve``, AMX Xeon, 2026-12-07, eight alternating pairs of runs,
    fewer in each pair) lost 0.7-3.9 % of its speech frames (median 2.2) against 4.1-7.1 %
    (median 4.5) at the same priority, the renderer overrunning 0-4 times a run against
    1-10; its first frame came at a median p50 of 477 ms against 457."""
    bank_nice: int = 5
    """How much lower than the rest of the server each motion bank's thread runs (Linux
    niceness; 0: as the rest). It decodes and cross-fades new footage where a walk turns,
    which is where a sentence starts, beside that sentence's synthesis and the renderer
    catching up on its first frames: one live 720p session (``bench serve``, AMX Xeon,
    2026-12-07, four runs in turn with and without) lost 0.7-1.7 % of its speech frames
    against 2.2-4.8 %. The bank's measured lead (``MotionBank.lead_s``) follows how long it
    then takes. The video encoders lowered as well lost more again (1.9-3.0 %)."""
    capacity_share: float = 0.9
    """A new session is admitted while all sessions' frames stay under this share of the
    scheduler's measured frames per second (a session needing every frame rendered)."""
    host_share: float | None = 0.9
    """... and, with a session open, while the whole host's CPU use over the last 20 s
    stays under this share of its cores: the lanes' measure leaves out the encoders, voices,
    event loop and other processes that share them (``streaming.hostload``). None: not
    checked (tests and benchmarks that fill the host on purpose)."""
    lost_share: float | None = 0.05
    """... and while the open sessions lose under this share of their frames over the last
    30 s (``streaming.strain``: what the two measures above do not predict). Two one-hour
    soaks here lost at most 0.75 % in any five minutes. None: not checked."""
    cors_origins: tuple[str, ...] = ()
    """Web origins (``https://example.com``) whose pages may call the API; ``*`` for any."""
    connect_timeout_s: float = 20.0
    """A session whose peer has not connected this long after its offer is closed."""
    vanished_after_s: float = 15.0
    """A connected peer that has sent no RTCP report (every second or so from any WebRTC
    receiver) for this long has gone without closing: its session is closed."""
    operator_rate: tuple[float, float] = (50.0, 200.0)
    viewer_rate: tuple[float, float] = (5.0, 20.0)
    channel_rate: tuple[float, float] = (5.0, 20.0)
    """API requests a second and burst for the operator token, for each viewer token, and
    data-channel commands for each session (``streaming.ratelimit``)."""
    label: LabelConfig = LabelConfig()
    """The visible disclosure on every frame sent, WebRTC and RTMP (``avatar.label``)."""
    watermark: WatermarkConfig = WatermarkConfig()
    """The invisible marks (bundle id and time) in every frame and in the voice
    (``avatar.watermark``)."""
    llm: LLMConfig | None = None
    """The operator's LLM (OpenAI-compatible chat API) that answers ``ask``; None: questions
    are refused (409)."""
    stt: object | None = None
    """Conversation mode's recogniser: the operator's transcription server
    (``streaming.listening.TranscriptionAPI``); None: pocketsphinx on this host."""
    allow_unconsented: bool = False
    """Serve avatars whose enrolment verified no consent recording (``training.consent``);
    the operator's explicit choice, logged at start and shown in ``/v1/avatars`` and
    ``/metrics``. Off, such an avatar stops the server from starting."""
    rtmp_allow: tuple[str, ...] = ()
    """Ingest hosts or networks an API caller may stream to although they are not public
    addresses (``streaming.ingest``); ``*`` for any."""
    playout_delay: PlayoutDelay | None = None
    """The bounds each video frame asks the viewer's WebRTC stack to hold it within
    (``streaming.playout_delay``: a patch to aiortc made once per process, at ``load``,
    for every server in it); None: the viewer decides (its jitter buffer)."""


def _consent_of(bundles: dict[str, Path], allow: bool) -> dict[str, str]:
    """``verified`` or ``unconsented`` for each bundle; unconsented ones are refused unless
    the operator allowed them (and then logged, once per avatar, at start)."""
    from avatar.bundle import read_manifest

    status = {name: "verified" if read_manifest(path, verify=False).consented
              else "unconsented" for name, path in bundles.items()}
    missing = [n for n, st in status.items() if st != "verified"]
    if missing and not allow:
        raise TwincastError(
            f"avatar {missing[0]} has no verified consent (it was enrolled without "
            "--consent); enrol it again with the person's consent recording (`twincast "
            "consent`), or pass --allow-unconsented if you hold their consent otherwise "
            "(logged, and shown in /v1/avatars and /metrics)")
    for name in missing:
        log.warning("avatar %s has no verified consent: served because the operator passed "
                    "--allow-unconsented", name)
    return status


class Server:
    def __init__(self, bundles: dict[str, Path], cfg: ServerConfig | None = None):
        if not bundles:
            raise TwincastError("serve needs at least one avatar bundle")
        self.cfg = cfg or ServerConfig()
        self.tokens = TokenBook()
        """Viewer tokens minted by the operator (``streaming.tokens``)."""
        self.token = self.cfg.token or os.environ.get("TWINCAST_TOKEN") or \
            secrets.token_urlsafe(18)
        self.bundles = bundles
        self.consent = _consent_of(bundles, self.cfg.allow_unconsented)
        """Each avatar's consent status: ``verified`` or ``unconsented``."""
        self.avatars: dict[str, object] = {}
        self.voices: dict[str, object | None] = {}
        self.scheduler: Scheduler | None = None
        self.registry = Registry(self.cfg.max_sessions, self.cfg.capacity_share,
                                 self.cfg.host_share, self.cfg.lost_share)
        self.host_load = HostLoad()
        self.thread_cpu = ThreadCpu()
        self.strain = FrameStrain()
        self.conversations: dict[str, object] = {}
        """Each session's questions to the LLM (``streaming.conversation``), once asked."""
        self.chats: dict[str, object] = {}
        """Each stream's live chat (``streaming.chat.ChatDesk``), once it has one."""
        self.chat_totals: Counter = Counter()
        """Chat messages by verdict over all streams, for ``/metrics``."""
        self.answer_totals: Counter = Counter()
        """Questions asked, answered, failed and dropped over all sessions."""
        self._http = None  # the LLM's HTTP client, made at the first question
        self._recogniser = None  # conversation mode's, made at the first such session
        self._watchdog: asyncio.Task | None = None
        self.synthesis_pool: ThreadPoolExecutor | None = None
        """Every session's speech synthesis (one at a time per session), apart from the
        event loop's default executor: aiortc encodes each session's video frames there,
        and syntheses take seconds; with as many speaking sessions as that executor has
        threads (6 on 2 cores), every session's next frame would wait behind them."""
        self.label = Label(self.cfg.label) if self.cfg.label.enabled else None
        if self.label is None:
            log.warning("the visible AI-generated label is off: viewers are not told the "
                        "video is synthetic")
        if not self.cfg.watermark.enabled:
            log.warning("the invisible watermark is off: copies of this server's output "
                        "cannot be traced back to their avatar")

    @property
    def sessions(self) -> dict[str, Session]:
        """The open sessions, WebRTC and livestreams alike."""
        return self.registry.sessions

    # ------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load every bundle on every device (slow: call before serving)."""
        from avatar import devices
        from avatar.avatar import Avatar
        from avatar.blas import one_blas_thread
        from avatar.voice import Voice

        one_blas_thread()  # before any session: see avatar/blas.py
        if self.cfg.playout_delay is not None:
            from streaming import playout_delay

            playout_delay.install(self.cfg.playout_delay)

        lanes = []
        for i, dev in enumerate(self.cfg.devices):
            renderers = {name: Avatar.load(path, dev, precision=self.cfg.precision)
                         for name, path in self.bundles.items()}
            for avatar in renderers.values():
                avatar.compositing = self.cfg.compositing
            threads = None
            if devices.device(dev).type == "cpu":
                threads = self.cfg.render_threads or max(1, (os.cpu_count() or 1) // 2)
            lanes.append(Lane(f"{dev}#{i}", renderers, threads=threads))
        self.avatars = dict(lanes[0].renderers)
        for lane in lanes:
            for name, avatar in lane.renderers.items():
                if avatar.bank is not None:
                    avatar.bank.thread_nice = self.cfg.bank_nice
                    t0 = time.perf_counter()
                    whole = avatar.bank.preload()
                    log.info("avatar %s on %s: motion bank %s in %.1f s", name, lane.name,
                             "decoded" if whole else "larger than its cache: decoded as "
                             "sessions need it,", time.perf_counter() - t0)
        for name, path in self.bundles.items():
            try:
                # Speech is synthesised on the first device; the head renders everywhere.
                self.voices[name] = Voice.load(path, self.cfg.devices[0])
            except TwincastError as e:
                log.warning("avatar %s: %s; it can only be driven by audio", name, e)
                self.voices[name] = None
        if self.cfg.watermark.enabled:
            # The audio mark's noises (~0.2 s to make) here, not on the event loop at a
            # session's first word.
            from avatar.audio_mark import noises

            noises(SessionConfig().audio_rate)
        self.scheduler = Scheduler(lanes, SchedulerConfig(max_batch=self.cfg.max_batch))
        # As many as cores: more at once would only share them, each finishing later.
        self.synthesis_pool = ThreadPoolExecutor(
            max(2, os.cpu_count() or 1), thread_name_prefix="synthesis",
            initializer=lower_thread_priority, initargs=(self.cfg.synthesis_nice,))
        self.scheduler.warm_up(lambda name, n: self.avatars[name].silent_requests(n))
        from streaming.speech import warm_up

        # Here, before serving: a session's start would otherwise do it on the event loop
        # (every session waits), and a cluster worker's first session opened 2 s slower.
        warm_up()

    def app(self):  # noqa: ANN201 - an aiohttp Application (streaming.routes)
        from streaming.routes import build_app

        return build_app(self)

    async def start(self) -> None:
        if self.scheduler is None:
            self.load()
        assert self.scheduler is not None
        self.scheduler.start()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.registry.close_all()
        if self._http is not None:
            await self._http.close()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.synthesis_pool is not None:
            self.synthesis_pool.shutdown(wait=False, cancel_futures=True)

    async def _watch(self) -> None:
        period = min(2.0, self.cfg.vanished_after_s / 4)
        while True:
            await asyncio.sleep(period)
            self.host_load.sample()
            self.strain.sample(self.registry.sessions)
            await self.registry.sweep()

    # ------------------------------------------------------------ sessions
    def avatar_name(self, name: str | None) -> str:
        """``name``, or the first avatar when None; a 404 for one this server lacks."""
        name = name or next(iter(self.avatars))
        if name not in self.avatars:
            raise BadRequest(f"no avatar {name!r}; this server has {', '.join(self.avatars)}",
                             404)
        return name

    def _new_session(self, avatar: str) -> Session:
        assert self.scheduler is not None
        session = Session(avatar, self.avatars[avatar], self.voices.get(avatar),
                          self.scheduler, SessionConfig())
        session.synthesis_pool = self.synthesis_pool
        if self.cfg.watermark.enabled:
            session.mark_cfg = self.cfg.watermark
        return session

    def _reserve(self):  # noqa: ANN202 - the registry's admission context
        assert self.scheduler is not None
        self.host_load.sample()
        self.strain.sample(self.registry.sessions)
        return self.registry.reserve(SessionConfig().fps, self.scheduler.capacity_fps(),
                                     self.host_load.load(), self.strain.strain())

    async def open_webrtc(self, sdp: object, avatar: str | None, may_say: bool = True,
                          mode: str = "driven") -> tuple[Session, str]:
        """A session for a WebRTC peer's SDP offer; returns it and the SDP answer.
        ``may_say``: whether its data channel may make the avatar speak (a viewer token's
        grant). ``mode``: what the client's microphone does: ``driven``, it drives the
        mouth; ``conversation``, it is the person talking to the avatar, whose turns are
        transcribed and answered by the LLM (``streaming.listening``)."""
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from streaming.outputs import WebRtcOutput
        from streaming.tracks import AvatarAudioTrack, AvatarVideoTrack

        if mode == "conversation" and self.cfg.llm is None:
            raise BadRequest("conversation mode answers with an LLM, and this server has "
                             "none; start it with --llm URL --llm-model NAME", 409)
        with self._reserve():
            avatar = self.avatar_name(avatar)
            if not isinstance(sdp, str) or "v=0" not in sdp[:200] or "m=" not in sdp:
                raise BadRequest("the body must be an SDP offer (application/sdp, or JSON "
                                 "with an 'sdp' field)")
            if mode == "conversation":
                if not may_say:
                    raise BadRequest("a conversation makes the avatar speak; this viewer "
                                     "token may only watch", 403)
                if self.voices.get(avatar) is None:
                    raise BadRequest(f"avatar {avatar!r} has no voice to answer with", 409)
            session = self._new_session(avatar)
            session.may_say = may_say
            hear = session.hear
            if mode == "conversation":
                hear = self._turn_taker(session).hear  # 409 without an LLM
            pc = RTCPeerConnection()
            output = WebRtcOutput(pc, self.cfg.connect_timeout_s, self.cfg.vanished_after_s)

            @pc.on("track")
            def _incoming(track) -> None:  # noqa: ANN001 - aiortc's remote track
                # Audio-driven mode: the client's microphone drives the mouth (and is heard).
                if track.kind == "audio":
                    output.listener = asyncio.ensure_future(listen(track, hear))

            # Send what the offer asks to receive.
            if "m=video" in sdp:
                video = AvatarVideoTrack(session, self.label)
                session.on_close.append(video.stop)  # its frame thread ends with it
                pc.addTrack(video)
            if "m=audio" in sdp:
                pc.addTrack(AvatarAudioTrack(session))
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as e:  # noqa: BLE001 - aiortc fails on a bad offer in any way
                # (an AssertionError for "v=0\r\nm="): the client's mistake, and the peer
                # connection must not stay open, nor a conversation made for the session.
                await pc.close()
                self.conversations.pop(session.id, None)
                raise BadRequest(f"the SDP offer cannot be used ({type(e).__name__}: "
                                 f"{str(e)[:160]})") from None
            session.start()
            self.registry.add(session, output)

        @pc.on("datachannel")
        def _channel(channel) -> None:  # noqa: ANN001 - aiortc's RTCDataChannel
            self.attach_channel(session, channel)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.registry.close(session.id, f"the connection {pc.connectionState}")

        log.info("session %s opened (avatar %s)", session.id, avatar,
                 extra={"session": session.id})
        return session, pc.localDescription.sdp

    async def open_stream(self, req: StreamRequest, show: object | None = None) -> Session:
        """A session whose output is pushed to an RTMP ingest (``show``: a parsed show to
        run on it, else the request's show text)."""
        from streaming.outputs import RtmpStream
        from streaming.rtmp import RtmpOutput, pump
        from streaming.show import run_show

        show = show if show is not None else req.parsed_show()
        if show is not None and show.chat is not None and self.cfg.llm is None:
            raise BadRequest("the show's [chat] is answered by an LLM, and this server has "
                             "none; start it with --llm URL --llm-model NAME", 409)
        cfg = req.rtmp_config()
        with self._reserve():
            avatar = self.avatar_name(req.avatar)
            session = self._new_session(avatar)
            keyer = None
            if cfg.key_colour is not None:
                from streaming.keying import Keyer

                keyer = await asyncio.get_running_loop().run_in_executor(
                    None, Keyer, cfg.key_colour)
            marks = session.marks()
            push = RtmpOutput(cfg, session.cfg.fps, session.cfg.audio_rate, keyer=keyer,
                              label=self.label,
                              mark=marks.video if marks is not None else None)
            session.start()
            push.start()
            tasks = [asyncio.ensure_future(pump(session, push))]
            desk = None
            if show is not None and show.chat is not None:
                desk = self.chat_desk(session, show.chat)
                if show.chat.irc is not None:
                    self._read_irc(session, desk, show.chat.irc)
            if show is not None:
                tasks.append(asyncio.ensure_future(run_show(session, show, desk,
                                                            start=req.show_from)))
            self.registry.add(session, RtmpStream(push, tasks))
        log.info("session %s streams to %s", session.id, push.redacted_url(),
                 extra={"session": session.id})
        return session

    def _read_irc(self, session: Session, desk, url: str) -> None:  # noqa: ANN001
        from streaming.irc import IrcChat, IrcTarget

        irc = IrcChat(IrcTarget.parse(url), lambda user, text: desk.post(user, text, "irc"))
        desk.sources.append(irc)
        irc.start()

    def session(self, sid: str) -> Session:
        entry = self.registry.get(sid)
        if entry is None:
            raise BadRequest("no such session (unknown or closed)", 404)
        return entry.session

    def say(self, session: Session, req: Say) -> str:
        return session.say(req.text, interrupt=req.interrupt, pace=req.rate)

    def ask(self, session: Session, req: Ask) -> str:
        """Queue a question for the LLM to answer in the session's voice; its id."""
        return self._conversation(session).ask(req.text, req.sender)

    def _need_llm(self) -> None:
        if self.cfg.llm is None:
            raise BadRequest("this server has no LLM to answer with; start it with --llm "
                             "URL --llm-model NAME", 409)

    def _conversation(self, session: Session):  # noqa: ANN202 - streaming.conversation
        self._need_llm()
        conv = self.conversations.get(session.id)
        if conv is None:
            import aiohttp

            from streaming.conversation import Conversation

            if self._http is None or self._http.closed:
                self._http = aiohttp.ClientSession()
            conv = self.conversations[session.id] = Conversation(
                session, self.cfg.llm, self._http, totals=self.answer_totals)
            session.on_close.append(lambda: self.conversations.pop(session.id, None))
        return conv

    def chat_desk(self, session: Session, settings: ChatSettings | None = None):  # noqa: ANN201
        """The session's live chat desk, made on first use (``settings``: the show's
        ``[chat]``; without one, questions are answered as they come)."""
        self._need_llm()
        desk = self.chats.get(session.id)
        if desk is not None:
            return desk
        if session.voice is None:
            raise BadRequest(f"avatar {session.avatar_name!r} has no voice to answer chat "
                             "with", 409)
        from streaming.chat import ChatDesk

        conv = self._conversation(session)  # 409 without an LLM
        desk = ChatDesk(session.id, settings or ChatSettings(answer="anytime"),
                        conv.answer, totals=self.chat_totals)
        self.chats[session.id] = desk
        desk.start()

        def gone() -> None:
            self.chats.pop(session.id, None)
            desk.stop()
        session.on_close.append(gone)
        return desk

    def _turn_taker(self, session: Session):  # noqa: ANN202 - streaming.listening
        from streaming.listening import Sphinx, TurnTaker

        conv = self._conversation(session)
        if self._recogniser is None:
            if self.cfg.stt is None:
                import importlib.util

                if importlib.util.find_spec("pocketsphinx") is None:
                    raise BadRequest("conversation mode's built-in recogniser needs "
                                     "pocketsphinx (pip install 'twincast[listen]'); or "
                                     "start the server with --stt URL --stt-model NAME", 409)
            self._recogniser = self.cfg.stt or Sphinx()
        taker = TurnTaker(session, self._recogniser, lambda text: conv.ask(text, None),
                          http=conv.http)
        session.on_close.append(taker.stop)
        return taker

    def set_chat(self, session: Session, settings: ChatSettings) -> None:
        """Live chat for a session that has none yet (``PUT /v1/sessions/ID/chat``): its
        moderation and pace, and an IRC channel to read if it names one."""
        if session.id in self.chats:
            raise BadRequest("this session has its chat set already", 409)
        desk = self.chat_desk(session, settings)
        if settings.irc is not None:
            self._read_irc(session, desk, settings.irc)

    def post_chat(self, session: Session, req: ChatPost) -> dict[str, int]:
        """Moderate and queue a webhook's chat messages; the count of each verdict."""
        desk = self.chat_desk(session)
        out: Counter = Counter()
        for user, text in req.messages:
            out[desk.post(user, text, "webhook")] += 1
        return dict(out)

    async def close(self, sid: str) -> None:
        await self.registry.close(sid)

    def attach_channel(self, session: Session, channel) -> None:  # noqa: ANN001
        """The data channel carries the same commands as the API and the session's
        events (speech started/ended, interrupted, errors) with their stream times."""

        def send(message: dict) -> None:
            if channel.readyState == "open":
                channel.send(json.dumps(message))

        session.listeners.append(lambda ev: send(ev.to_json()))

        bucket = Bucket(*self.cfg.channel_rate)
        # A command is a few hundred bytes of JSON around at most max_text_chars of text.
        largest = 4 * self.cfg.max_text_chars + 1024

        @channel.on("message")
        def _message(message: object) -> None:
            try:
                if isinstance(message, str | bytes) and len(message) > largest:
                    raise BadRequest(f"a command is at most {largest} bytes", 413)
                wait = bucket.take()
                if wait:
                    raise BadRequest(f"too many commands; wait {wait:.1f} s", 429)
                cmd = parse_command(message, self.cfg.max_text_chars)
                if not session.may_say:
                    raise BadRequest("this session may watch, not make the avatar speak", 403)
                if isinstance(cmd, Interrupt):
                    session.interrupt()
                elif isinstance(cmd, Ask):
                    send({"type": "accepted", "question": self.ask(session, cmd)})
                else:
                    send({"type": "accepted", "utterance": self.say(session, cmd)})
            except TwincastError as e:
                send({"type": "error", "message": str(e)})


def bundle_names(bundles: list[Path]) -> dict[str, Path]:
    """Each bundle under the name its manifest gives it (or its folder's)."""
    from avatar.bundle import read_manifest

    return {read_manifest(b).name or b.name: b for b in bundles}
