"""``twincast bench ask``: questions answered by a real LLM, timed at a real viewer.

The server runs as ``twincast serve`` in a child process (as a user runs it: the viewer's
video decoding does not share its GIL) with an LLM behind the OpenAI-compatible API (by
default SmolLM2-135M-Instruct from ``bench.llm_server`` in another) and one aiortc viewer.
Each question is posted (``/ask``) after the last answer has ended, and timed at the viewer:

* ``llm_first_sentence_ms``: question posted -> the answer's first sentence announced on
  the data channel (``answer_sentence``: the model's time to its first full sentence, plus
  the HTTP and data-channel hops, a few ms);
* ``twincast_audio_ms`` / ``twincast_mouth_ms``: that announcement -> the first loud audio
  / the arrival of the frame that paints the first word's mouth (twincast's own part, the
  same path as ``say``), as the aiortc viewer hands them over decoded;
* ``twincast_audio_in_ms`` / ``twincast_mouth_in_ms``: the same, to when that sound's and
  that frame's last packets came in, before aiortc's own jitter buffer holds them (a
  frame interval for video, four packets for sound: ``bench.viewer``);
* ``total_audio_ms`` / ``total_mouth_ms``: question -> first audio / that frame.

Which received frame paints the first word is read from the frames' RTP timestamps and the
session's events (``bench.viewer``). With ``viewer="browser"`` the viewer is a headless
chromium on the server's page (``bench.browser_viewer``): ``twincast_mouth_ms`` is then when
chromium puts that frame on screen and ``twincast_mouth_in_ms`` when its last packet came
in, both by chromium's own frame metadata; ``twincast_audio_ms`` is when chromium played
the first loud sound out (its WebRTC statistics, read every 20 ms), and there is no packet
time for sound. Reading the mouth's opening off the received frames
(``visible_mouth_ms``: the first two frames open past the widest opening of the silent
footage before the first question) is kept beside it; it measures nothing on an enrolment
whose painted mouth barely opens (see ``bench.viewer``).

The model shares this 2-core host and keeps a core busy for the whole of a reply; it runs at
``nice`` 19 by default (``--llm-nice``), standing in for the host of its own an operator's
LLM would have. ``--llm scripted`` answers with a fixed reply at once and no CPU:
twincast's part as it is with an LLM on a host of its own.

Then the chat path: ngircd (if installed) carries a viewer's question into the channel the
session reads; timed from the line sent to ``answer_started`` and to the first audio. And
moderation over ``bench.chat_corpus``: the share of abuse and spam let through and of
ordinary questions wrongly dropped, each miss by name, and a flood of a thousand messages
through the webhook in one request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from bench.viewer import TimedViewer, first_after, pct

log = logging.getLogger(__name__)

QUESTIONS = ("Does the jacket come in blue?", "How much does it cost?",
             "Is it waterproof?", "What is it made of?", "How heavy is it?",
             "Do you ship to Germany?", "Can I wash it in the machine?",
             "Does it have pockets?", "How long is the warranty?",
             "Is there a discount today?")
KNOWLEDGE = """# Travel jacket
- Colours: blue, green and black.
- Price: 80 euros; 10 percent off today with the code RAIN.
- Waterproof shell of recycled polyester, weighs 400 grams, two zip pockets.
- Machine washable at 30 degrees. Two years of warranty.
- Ships to all of the European Union in three days.
"""


def _speaking_opening(viewer: TimedViewer, vt: np.ndarray, opening: np.ndarray) -> float | None:
    """The received mouth's opening at the 90th percentile over the frames between each
    sentence's ``speech_started`` and ``speech_ended``: how wide the painted mouth opens,
    beside the silent footage's widest (``rest_opening``)."""
    ended = {e["utterance"]: t for t, e in viewer.events if e.get("type") == "speech_ended"}
    inside = np.zeros(len(vt), bool)
    for t, e in viewer.events:
        if e.get("type") == "speech_started" and e["utterance"] in ended:
            inside |= (vt >= t) & (vt <= ended[e["utterance"]])
    return round(float(np.percentile(opening[inside], 90)), 4) if inside.any() else None


def _moderation() -> dict:
    from avatar.chat_settings import ChatSettings
    from bench.chat_corpus import ABUSE, CHATTER
    from bench.chat_corpus import QUESTIONS as ORDINARY
    from streaming.moderation import Moderator

    m = Moderator(ChatSettings(per_user=1000))
    through = [t for i, t in enumerate(ABUSE) if m.check(f"a{i}", t).ok]
    dropped = {t: m.check(f"q{i}", t).reason for i, t in enumerate(ORDINARY)}
    dropped = {t: r for t, r in dropped.items() if r != "question"}
    chatter = sum(not m.check(f"c{i}", t).ok for i, t in enumerate(CHATTER))
    m = Moderator(ChatSettings())
    t0 = time.perf_counter()
    for i in range(10_000):
        m.check(f"viewer{i % 500}", f"is number {i} in stock?")
    per_msg_us = (time.perf_counter() - t0) / 10_000 * 1e6
    return {"abuse_messages": len(ABUSE), "abuse_let_through": len(through),
            "abuse_let_through_share": round(len(through) / len(ABUSE), 3),
            "abuse_let_through_list": through,
            "questions": len(ORDINARY), "questions_dropped": len(dropped),
            "questions_dropped_share": round(len(dropped) / len(ORDINARY), 3),
            "questions_dropped_list": dropped,
            "chatter_dropped_as_not_a_question": f"{chatter}/{len(CHATTER)}",
            "moderation_us_per_message": round(per_msg_us, 1)}


async def _joined(http, session_url: str, auth: dict) -> None:  # noqa: ANN001
    """Until the session's chat reader has joined its channel."""
    while True:
        async with http.get(session_url, headers=auth) as r:
            chat = (await r.json()).get("chat") or {}
        if any(src.get("state") == "live" for src in chat.get("sources", [])):
            return
        await asyncio.sleep(0.1)


def bench_ask(bundle: Path, questions: int = 8, llm_url: str | None = None,
              llm_model: str = "SmolLM2-135M-Instruct", chat_questions: int = 3,
              llm_nice: int = 19, viewer_kind: str = "aiortc",
              playout_delay: str = "off", server_log: Path | None = None) -> dict:
    """``server_log``: where to keep the server's own log, debug lines included (its
    sessions' "first audio ready ... starts ... later" trace), once the run ends."""
    import tempfile

    from bench.irc_server import available as irc_available
    from bench.llm_server import LLMProcess, ScriptedModel, ThreadServer, build_app
    from bench.serve import LOUD_RMS, MOVING_MARGIN, mouth_openings
    from bench.server_process import ServerProcess
    from streaming.session import SessionConfig

    if not bundle.is_dir():
        from avatar.errors import TwincastError

        raise TwincastError(f"{bundle}: no such bundle; give an avatar folder that "
                            "`twincast enrol` wrote")
    if viewer_kind == "browser":
        from bench.chromium import installed

        if installed() is None:
            from avatar.errors import TwincastError

            raise TwincastError("--viewer browser needs chromium; `make system-deps` "
                                "installs it")
    proc = None
    if llm_url == "scripted":
        proc = ThreadServer(build_app(ScriptedModel()))
        llm_url, llm_model = proc.url, "scripted"
    elif llm_url is None:
        log.info("starting SmolLM2-135M-Instruct (bench.llm_server); about a minute")
        proc = LLMProcess(nice=llm_nice)
        llm_url = proc.url
    # The server runs as `twincast serve` in a child process, as a user runs it: in this
    # process the viewer's video decoding would share its GIL and be counted in its part.
    tmp = tempfile.TemporaryDirectory(prefix="twincast-ask-")
    knowledge = Path(tmp.name) / "knowledge.md"
    knowledge.write_text(KNOWLEDGE)
    server = ServerProcess(bundle, Path(tmp.name) / "serve.log", token="bench", args=(
        "--host-share", "0", "--rtmp-allow", "127.0.0.1", "--llm", llm_url,
        "--llm-model", llm_model, "--knowledge", str(knowledge),
        "--playout-delay", playout_delay), verbose=server_log is not None)
    irc = None
    posted: list[tuple[float, str | None]] = []
    chat_sent: list[float] = []
    answered = 0
    try:
        async def run() -> TimedViewer:
            nonlocal answered, irc
            import aiohttp

            auth = {"Authorization": "Bearer bench"}
            if viewer_kind == "browser":
                from bench.browser_viewer import BrowserViewer

                viewer = BrowserViewer()
            else:
                viewer = TimedViewer()
            async with aiohttp.ClientSession() as http:
                await server.wait_ready(http)
                await viewer.open(http, server.url, "bench")
                await asyncio.sleep(2.0)  # idle footage first: the mouth's rest opening
                await viewer.note_skipped(http, auth)
                for i in range(questions):
                    t = time.perf_counter()
                    async with http.post(f"{server.url}{viewer.location}/ask", headers=auth,
                                         json={"text": QUESTIONS[i % len(QUESTIONS)],
                                               "from": "bench"}) as r:
                        qid = (await r.json())["question"]
                    posted.append((t, qid))
                    answered += await viewer.wait_answer(qid, t, 240.0)
                    await asyncio.sleep(1.0)
                if chat_questions and irc_available():
                    from bench.irc_server import Bot, IrcServer

                    irc = IrcServer()
                    async with http.put(f"{server.url}{viewer.location}/chat", headers=auth,
                                        json={"irc": irc.url("#shop"), "every": 0}) as r:
                        r.raise_for_status()
                    await asyncio.wait_for(_joined(http, server.url + viewer.location, auth),
                                           20)
                    for i in range(chat_questions):
                        bot = await asyncio.to_thread(Bot, irc, f"viewer{i}", "#shop")
                        t = time.perf_counter()
                        bot.say(QUESTIONS[(i + 3) % len(QUESTIONS)])
                        chat_sent.append(t)
                        await viewer.wait_answer(None, t, 240.0)
                        bot.close()
                        await asyncio.sleep(1.0)
                await viewer.close()
            return viewer

        t0 = time.perf_counter()
        viewer = asyncio.run(run())
        wall = time.perf_counter() - t0
    finally:
        server.stop()
        if server_log is not None:
            import shutil

            shutil.copyfile(server.log_path, server_log)
        tmp.cleanup()
        if proc is not None:
            proc.stop()
        if irc is not None:
            irc.stop()

    vt = np.array([t for t, _ in viewer.video])
    at = np.array([t for t, _ in viewer.audio])
    loud = np.array([r for _, r in viewer.audio]) > LOUD_RMS
    # The browser viewer keeps no pictures: no opening read off them.
    opening = np.zeros(len(vt)) if viewer_kind == "browser" else \
        np.nan_to_num(mouth_openings([g for _, g in viewer.video]), nan=0.0)
    first_t = posted[0][0] if posted else (chat_sent[0] if chat_sent else 0.0)
    idle = opening[: max(1, int(np.searchsorted(vt, first_t)))]
    rest = float(idle.max()) if len(idle) else 0.0
    moving = opening > rest + MOVING_MARGIN
    moving = moving & np.r_[moving[1:], False]  # two frames in a row

    word_at = viewer.word_frames(SessionConfig().fps)
    word_in = viewer.word_frames(SessionConfig().fps, packets=True)
    llm_ms, own_audio, own_mouth, tot_audio, tot_mouth = [], [], [], [], []
    audio_in, mouth_in = [], []
    visible, mouth_minus_audio = [], []
    for t, qid in posted:
        s = viewer.first("answer_sentence", t, question=qid)
        a = first_after(at, loud, t)
        v = first_after(vt, moving, t)
        if s is None:
            continue
        llm_ms.append((s[0] - t) * 1000)
        if a is not None:
            own_audio.append((a - s[0]) * 1000)
            tot_audio.append((a - t) * 1000)
        a_in = viewer.first_sound(t, LOUD_RMS, packets=True)
        if a_in is not None:
            audio_in.append((a_in - s[0]) * 1000)
        if (w := word_in.get(s[1].get("utterance"))) is not None:
            mouth_in.append((w - s[0]) * 1000)
        w = word_at.get(s[1].get("utterance"))
        if w is not None:
            own_mouth.append((w - s[0]) * 1000)
            tot_mouth.append((w - t) * 1000)
            if a is not None:
                mouth_minus_audio.append((w - a) * 1000)
        if v is not None:
            visible.append((v - s[0]) * 1000)
    chat_start, chat_audio = [], []
    for t in chat_sent:
        s = viewer.first("answer_started", t)
        a = first_after(at, loud, t)
        if s is not None:
            chat_start.append((s[0] - t) * 1000)
        if a is not None:
            chat_audio.append((a - t) * 1000)
    sentences = [e for _, e in viewer.events if e.get("type") == "answer_sentence"]
    words = [e for _, e in viewer.events if e.get("type") == "words"]
    shown = {}
    if viewer_kind == "browser":
        # A frame chromium decoded but never showed can only make the first word's frame
        # be found later (bench.browser_viewer): the figures are then upper bounds.
        st = viewer.stats
        shown = {"browser_frames_shown": len(viewer.video),
                 "browser_frames_decoded": st.get("decoded"),
                 "browser_frames_dropped": st.get("dropped"),
                 "browser_jitter_buffer_ms": None if st.get("jitter_buffer_ms") is None
                 else round(st["jitter_buffer_ms"], 1)}
    return {
        "viewer": viewer_kind, **shown,
        "llm": llm_model,
        "llm_nice": llm_nice if isinstance(proc, LLMProcess) else None,
        "questions": len(posted), "answered": answered,
        "llm_first_sentence_ms_p50": pct(llm_ms, 50),
        "llm_first_sentence_ms_p95": pct(llm_ms, 95),
        "twincast_audio_ms_p50": pct(own_audio, 50),
        "twincast_audio_ms_p95": pct(own_audio, 95),
        "twincast_mouth_ms_p50": pct(own_mouth, 50),
        "twincast_mouth_ms_p95": pct(own_mouth, 95),
        # The same two, timed when the packets came in at the viewer, before aiortc's own
        # jitter buffer holds them (bench.viewer): what a browser starts decoding on.
        "twincast_audio_in_ms_p50": pct(audio_in, 50),
        "twincast_audio_in_ms_p95": pct(audio_in, 95),
        "twincast_mouth_in_ms_p50": pct(mouth_in, 50),
        "twincast_mouth_in_ms_p95": pct(mouth_in, 95),
        "total_audio_ms_p50": pct(tot_audio, 50), "total_audio_ms_p95": pct(tot_audio, 95),
        "total_mouth_ms_p50": pct(tot_mouth, 50), "total_mouth_ms_p95": pct(tot_mouth, 95),
        # The first word's frame against the first loud sound, at the viewer: the picture's
        # lead (negative) or lag over the sound as the viewer gets them; the viewer's own
        # jitter buffer holds the sound about 80 ms before its first packet.
        "mouth_minus_audio_ms_p50": pct(mouth_minus_audio, 50),
        "visible_mouth_ms_p50": pct(visible, 50),
        "rest_opening": None if viewer_kind == "browser" else round(rest, 4),
        "speaking_opening_p90": None if viewer_kind == "browser" else
        _speaking_opening(viewer, vt, opening),
        "sentences_said": len(sentences), "words_events": len(words),
        "example_answer": " ".join(e["text"] for e in sentences[:3]),
        "chat_via_irc": bool(chat_sent), "chat_questions": len(chat_sent),
        "chat_to_answer_started_ms_p50": pct(chat_start, 50),
        "chat_to_first_audio_ms_p50": pct(chat_audio, 50),
        "chat_to_first_audio_ms_max": round(max(chat_audio), 1) if chat_audio else None,
        "moderation": _moderation(),
        "wall_s": round(wall, 1),
    }
