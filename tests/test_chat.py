"""Live chat: moderation, the question queue and its pace, show Q&A windows, the IRC
reader against a real IRC server (Debian's ngircd), the webhook, and a chat question
answered to a real aiortc viewer. The LLM is a scripted OpenAI-compatible server on
loopback (``tests.test_conversation.FakeLLM``); the real model's run is ``bench ask``."""

from __future__ import annotations

import asyncio
import time

import pytest

from avatar.chat_settings import ChatSettings
from avatar.errors import TwincastError
from avatar.show import parse_show
from bench.chat_corpus import ABUSE, CHATTER, QUESTIONS
from streaming import moderation
from streaming.chat import ChatDesk, ChatQueue
from streaming.irc import IrcTarget, parse_line
from streaming.moderation import Moderator, clean, fold
from streaming.requests import BadRequest, ChatPost


def test_the_fixed_abuse_list_is_dropped_and_questions_pass() -> None:
    m = Moderator(ChatSettings(per_user=1000))
    through = [t for i, t in enumerate(ABUSE) if m.check(f"a{i}", t).ok]
    dropped = [t for i, t in enumerate(QUESTIONS) if not m.check(f"q{i}", t).ok]
    assert through == [] and dropped == []
    assert all(m.check(f"c{i}", t).reason == "not-a-question" for i, t in enumerate(CHATTER))
    assert Moderator(ChatSettings(questions_only=False)).check("x", CHATTER[0]).ok


def test_cleaning_folding_and_each_drop_reason() -> None:
    assert clean("what\x00 is\x1b[31m **this**?\u200b") == "what is this ?"
    assert fold("F.U.C.K") == "fuck" and fold("stuuuupid!!") == "stuupid"
    m = Moderator(ChatSettings(block=("polyester",), max_chars=60, per_user=2))
    cases = {"x" * 100_000: "too-long", "a" * 61 + "?": "too-long", "   \x07 ": "empty",
             "<img src=x onerror=alert(1)>?": "markup", "see shop.example.com/x ?": "link",
             "is it POLYESTER?": "blocked", "WHY IS NOBODY ANSWERING ME HERE?": "shouting",
             "why?????????": "spam"}
    for i, (text, reason) in enumerate(cases.items()):
        assert m.check(f"u{i}", text).reason == reason, text
    v = m.check("ann", "@host does it come in blue")
    assert v.ok and v.text == "does it come in blue"
    assert m.check("ann", "does it come in blue?").reason == "duplicate"
    assert m.check("ann", "and in red?").reason == "rate"  # 2 a minute


def test_the_operators_filter_drops_rewrites_and_fails_closed(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    (tmp_path / "shopfilter.py").write_text(
        "def keep(user, text):\n"
        "    if 'competitor' in text: return False\n"
        "    if 'boom' in text: raise RuntimeError('bug')\n"
        "    return text.replace('colour', 'color')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = Moderator(ChatSettings(filter="shopfilter:keep", per_user=100))
    assert m.check("a", "is it better than competitor x?").reason == "filter"
    assert m.check("a", "boom?").reason == "filter"
    assert m.check("a", "which colour?").text == "which color?"
    with pytest.raises(TwincastError, match="cannot be loaded"):
        Moderator(ChatSettings(filter="no_such_module:keep"))


def test_a_flood_keeps_memory_bounded() -> None:
    t = [0.0]
    m = Moderator(ChatSettings(per_user=5), clock=lambda: t[0])
    q = ChatQueue("most-asked", 300, clock=lambda: t[0])
    for i in range(30_000):  # thirty thousand viewers, each with a new question
        v = m.check(f"viewer{i}", f"question number {i} is it waterproof?")
        assert v.ok
        q.add(v.key, v.text, f"viewer{i}")
    assert len(m._users) <= moderation.USERS_KEPT and len(m._seen) <= moderation.USERS_KEPT
    assert len(q) == q.limit


def test_the_queue_orders_by_votes_or_recency_and_forgets_old_questions() -> None:
    t = [0.0]
    q = ChatQueue("most-asked", 60, clock=lambda: t[0], limit=3)
    for key in ("a", "b", "c"):
        t[0] += 1
        q.add(key, key, "u")
    assert q.add("b", "b", "v") == "vote"
    t[0] += 1
    assert q.add("d", "d", "w") == "overflow"  # "a" (one vote, oldest) goes
    assert [q.pop().text for _ in range(3)] == ["b", "c", "d"]
    q.order = "newest"
    q.add("x", "x", "u")
    t[0] += 1
    q.add("y", "y", "u")
    assert q.pop().text == "y"
    t[0] += 61
    assert q.pop() is None  # "x" waited too long


def test_show_files_gain_qa_windows_and_a_chat_table() -> None:
    show = parse_show('[chat]\ntwitch = "MyShop"\nevery = 5\norder = "newest"\n'
                      '[[segment]]\nsay = "Hello."\n[[segment]]\nqa = 30\n')
    assert show.segments[1].kind == "qa" and show.segments[1].seconds == 30
    c = show.chat
    assert c.irc == "ircs://irc.chat.twitch.tv:6697/#myshop" and c.answer == "windows"
    assert c.every == 5 and c.order == "newest"
    assert parse_show('[chat]\n[[segment]]\nsay = "Hi."\n').chat.answer == "between"
    for text, where in (('[chat]\nanswer = "windows"\n[[segment]]\nsay = "x"\n', "line 2"),
                        ('[[segment]]\nsay = "x"\n[chat]\ncolour = 1\n', "line 4"),
                        ('[chat]\nirc = "http://x/#a"\n[[segment]]\nsay = "x"\n', "line 2"),
                        ('[chat]\nper_user = 0\n[[segment]]\nsay = "x"\n', "line 2"),
                        ('[[segment]]\nqa = -1\n', "line 2")):
        with pytest.raises(TwincastError, match=where):
            parse_show(text, "show.toml")


def test_irc_lines_and_targets() -> None:
    assert parse_line(":ann!a@h PRIVMSG #shop :is it blue?") == ("ann", "#shop", "is it blue?")
    assert parse_line("@badges=;display-name=Ann_B;id=1 :ann_b!x@x.tmi.twitch.tv PRIVMSG "
                      "#shop :hi there") == ("Ann_B", "#shop", "hi there")
    assert parse_line(":srv 001 me :welcome") is None
    t = IrcTarget.parse("ircs://irc.chat.twitch.tv:6697/#shop")
    assert (t.host, t.port, t.channel, t.tls) == ("irc.chat.twitch.tv", 6697, "#shop", True)
    assert IrcTarget.parse("irc://127.0.0.1/#a").port == 6667


def test_chat_posts_are_checked() -> None:
    assert ChatPost.parse({"from": "ann", "text": "blue?"}).messages == (("ann", "blue?"),)
    assert len(ChatPost.parse({"messages": [{"text": "a"}] * 1000}).messages) == 1000
    for bad, status in (([], 400), ({"messages": []}, 400), ({"text": 5}, 400),
                        ({"messages": [{"text": "a"}] * 1001}, 413)):
        with pytest.raises(BadRequest) as e:
            ChatPost.parse(bad)
        assert e.value.status == status


def _desk(answer: str, every: float, said: list, **kw) -> ChatDesk:  # noqa: ANN003
    async def speak(text: str, user: str) -> None:
        said.append((time.monotonic(), user, text))
        await asyncio.sleep(0.05)
    return ChatDesk("s", ChatSettings(answer=answer, every=every, per_user=100, **kw), speak)


def test_the_desk_answers_at_its_pace_in_windows_and_between_segments() -> None:
    async def run() -> None:
        said: list = []
        desk = _desk("anytime", 0.3, said)
        desk.start()
        assert desk.post("ann", "is it blue?") == "question"
        assert desk.post("bob", "Is it blue?") == "vote"
        assert desk.post("cat", "you idiot") == "blocked"
        desk.post("dan", "is it warm?")
        await asyncio.sleep(0.2)
        assert [s[2] for s in said] == ["is it blue?"]  # one answer per 0.3 s
        await asyncio.sleep(0.4)
        assert [s[2] for s in said] == ["is it blue?", "is it warm?"]
        assert said[1][0] - said[0][0] >= 0.29
        desk.stop()
        assert desk.counts["blocked"] == 1 and desk.counts["vote"] == 1

        said.clear()
        desk = _desk("windows", 0.0, said)
        desk.post("ann", "what sizes?")
        start = time.monotonic()
        window = asyncio.ensure_future(desk.window(0.6))
        await asyncio.sleep(0.2)
        desk.post("bob", "any discount?")  # arrives during the window: answered in it
        await window
        assert [s[2] for s in said] == ["what sizes?", "any discount?"]
        assert 0.55 < time.monotonic() - start < 1.5
        await desk.between()  # windows only: nothing between segments
        said.clear()
        desk = _desk("between", 10.0, said)
        desk.post("ann", "what sizes?")
        desk.post("bob", "is it warm?")
        await desk.between()
        await desk.between()  # every = 10 s: the second waits for a later gap
        assert len(said) == 1

    asyncio.run(run())


needs_ngircd = pytest.mark.skipif(not __import__("bench.irc_server").irc_server.available(),
                                  reason="ngircd is not installed (make system-deps)")


@needs_ngircd
def test_the_irc_reader_takes_a_real_channels_chat_and_reconnects() -> None:
    from bench.irc_server import Bot, IrcServer
    from streaming.irc import IrcChat

    srv = IrcServer()

    async def run() -> None:
        got: list[tuple[str, str]] = []
        chat = IrcChat(IrcTarget.parse(srv.url("#shop")), lambda u, t: got.append((u, t)))
        chat.start()
        await asyncio.wait_for(chat.joined.wait(), 10)
        bot = await asyncio.to_thread(Bot, srv, "ann", "#shop")
        bot.say("does it come in blue?")
        bot.say("x" * 400)  # a long line (IRC cuts at 512 bytes; still read)
        bot.say_many([f"flood {i}" for i in range(1000)])
        bot.say("last one?")
        for _ in range(100):
            if got and got[-1][1] == "last one?":
                break
            await asyncio.sleep(0.05)
        assert got[0] == ("ann", "does it come in blue?") and got[-1][1] == "last one?"
        assert len(got) == 1003
        bot.close()
        # The server goes away and comes back on the same port: the reader rejoins.
        port = srv.port
        srv.stop()
        for _ in range(100):
            if not chat.joined.is_set():
                break
            await asyncio.sleep(0.05)
        assert chat.state == "reconnecting"
        again = IrcServer(port=port)
        try:
            await asyncio.wait_for(chat.joined.wait(), 20)
            assert chat.stats["connects"] >= 2
        finally:
            chat.stop()
            again.stop()

    try:
        asyncio.run(run())
    finally:
        srv.stop()


@needs_ngircd
def test_chat_from_irc_and_the_webhook_is_answered_to_a_real_viewer(bundle) -> None:  # noqa: ANN001
    """ngircd carries viewers' chat (questions and abuse); the server reads it, drops the
    abuse, and its answer reaches a real aiortc viewer as events and speech; the webhook
    takes a thousand messages at once and a 100 kB one; metrics count each verdict."""
    import aiohttp

    from bench.client import open_session
    from bench.irc_server import Bot, IrcServer
    from streaming.app import Server, ServerConfig
    from streaming.llm import LLMConfig
    from streaming.routes import RunningServer
    from tests.test_conversation import FakeLLM

    irc = IrcServer()

    async def run() -> None:
        fake = FakeLLM()
        fake.pieces = ["It comes", " in blue."]
        llm_url = await fake.start()
        srv = Server({"presenter": bundle}, ServerConfig(host_share=None, lost_share=None,
            token="t", allow_unconsented=True, rtmp_allow=("127.0.0.1",),
            llm=LLMConfig(url=llm_url, model="fake")))
        await asyncio.to_thread(srv.load)
        running = await asyncio.to_thread(RunningServer, srv)
        auth = {"Authorization": "Bearer t"}
        try:
            async with aiohttp.ClientSession() as http:
                v = await open_session(http, running.url, "t", events=True)
                while v.channel.readyState != "open":
                    await asyncio.sleep(0.05)
                pump = asyncio.ensure_future(_drain(v))
                chat_url = f"{running.url}{v.location}/chat"
                async with http.put(chat_url, json={"irc": "irc://10.1.2.3:6667/#shop"},
                                    headers=auth) as r:
                    assert r.status == 403  # a private host the operator did not allow
                async with http.put(chat_url, json={"answer": "between"},
                                    headers=auth) as r:
                    assert r.status == 400 and "anytime" in await r.text()
                async with http.put(chat_url, json={"irc": irc.url("#shop"), "every": 0},
                                    headers=auth) as r:
                    assert r.status == 201, await r.text()
                desk = srv.chats[v.location.rsplit("/", 1)[1]]
                reader = desk.sources[0]
                await asyncio.wait_for(_wait_joined(reader), 10)
                async with http.get(f"{running.url}{v.location}", headers=auth) as r:
                    chat = (await r.json())["chat"]  # an operator sees the reader joined
                assert [src["state"] for src in chat["sources"]] == ["live"]
                assert chat["sources"][0]["chat"].endswith("/#shop")
                assert chat["answer"] == "anytime" and chat["queued"] == 0
                bot = await asyncio.to_thread(Bot, irc, "troll", "#shop")
                bot.say("you are an idiot")
                bot.say("https://spam.example.com free stuff?")
                viewer = await asyncio.to_thread(Bot, irc, "ann", "#shop")
                viewer.say("Does the jacket come in blue?")
                for _ in range(200):
                    if any(e["type"] == "speech_started" for e in v.events):
                        break
                    await asyncio.sleep(0.1)
                kinds = [e["type"] for e in v.events]
                assert kinds.count("answer_started") == 1, kinds
                sentence = next(e for e in v.events if e["type"] == "answer_sentence")
                assert sentence["text"] == "It comes in blue."
                words = next(e for e in v.events if e["type"] == "words")
                assert [w["text"] for w in words["words"]] == ["It", "comes", "in", "blue"]
                assert "speech_started" in kinds
                assert fake.requests[0]["messages"][-1]["content"] == \
                    "ann asks: Does the jacket come in blue?"
                assert desk.counts["blocked"] == 1 and desk.counts["link"] == 1
                # The webhook: a batch of a thousand (a flood) and a 100 kB message.
                flood = {"messages": [{"from": f"v{i % 50}", "text": f"is {i} ok?"}
                                      for i in range(1000)]}
                async with http.post(chat_url, json=flood, headers=auth) as r:
                    counts = (await r.json())["verdicts"]
                    assert r.status == 202 and counts["rate"] > 0
                    assert sum(counts.values()) == 1000
                async with http.post(chat_url, json={"text": "x" * 100_000}, headers=auth) as r:
                    assert (await r.json())["verdicts"] == {"too-long": 1}
                assert len(desk.queue) <= desk.queue.limit
                async with http.get(f"{running.url}/metrics") as r:
                    metrics = await r.text()
                assert 'twincast_chat_messages_total{verdict="blocked"} 1.0' in metrics
                assert 'twincast_chat_messages_total{verdict="too-long"} 1.0' in metrics
                async with http.post(f"{running.url}/v1/sessions/nope/chat",
                                     json={"text": "hi?"}, headers=auth) as r:
                    assert r.status == 404
                bot.close()
                viewer.close()
                pump.cancel()
                await v.pc.close()
        finally:
            await asyncio.to_thread(running.stop)
            await fake.runner.cleanup()

    try:
        asyncio.run(run())
    finally:
        irc.stop()


async def _drain(v) -> None:  # noqa: ANN001 - the media must flow for the session clock
    while True:
        for t in list(v.tracks.values()):
            await t.recv()


async def _wait_joined(reader) -> None:  # noqa: ANN001
    await reader.joined.wait()


def test_a_chat_message_to_a_server_without_an_llm_is_a_409(bundle) -> None:  # noqa: ANN001
    from streaming.app import Server, ServerConfig

    srv = Server({"presenter": bundle}, ServerConfig(host_share=None, lost_share=None,
                                                     allow_unconsented=True))
    with pytest.raises(BadRequest) as e:
        srv.post_chat(object(), ChatPost((("a", "b?"),)))  # type: ignore[arg-type]
    assert e.value.status == 409


def test_a_show_answers_chat_in_its_qa_window_and_goes_on() -> None:
    from streaming.show import run_show
    from tests.test_session import _session

    async def run() -> None:
        s, sch = _session()
        s.start()
        s.clock.start()
        said: list = []
        desk = _desk("windows", 0.0, said)
        show = parse_show('[chat]\n[[segment]]\nsay = "one"\n[[segment]]\nqa = 0.5\n'
                          '[[segment]]\nsay = "two"\n')
        desk.post("ann", "is it blue?")
        try:
            await asyncio.wait_for(run_show(s, show, desk), 20)
        finally:
            await s.close()
            sch.stop()
        assert [x[2] for x in said] == ["is it blue?"]
        spoken = [e for e in s.events if e.type == "speech_started"]
        assert len(spoken) == 2  # the show's two lines, before and after the window

    asyncio.run(run())
