"""Microphone conversation (``streaming.listening``): the person's turns found in the
microphone's audio, the avatar stopped when they start, each turn transcribed (pocketsphinx
on a real recording, or a transcription server over the OpenAI-compatible API) and asked of
the LLM; end to end with a real aiortc client sending a real recording as its microphone."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

from avatar.audio import resample
from avatar.errors import TwincastError
from streaming.listening import RATE, Sphinx, TranscriptionAPI, TurnTaker
from streaming.requests import BadRequest

LJ = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ljspeech"


def _lj(name: str) -> tuple[np.ndarray, str]:
    audio, rate = sf.read(LJ / "train" / f"{name}.flac", dtype="float32")
    with open(LJ / "metadata.csv", newline="") as f:
        text = next(row[2] for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE)
                    if row[0] == name)
    return resample(audio, rate, RATE), text


class _Session:
    id = "s"
    state = "live"

    def __init__(self) -> None:
        self.events: list = []
        self.interrupts = 0

    def interrupt(self) -> int:
        self.interrupts += 1
        return 0

    def emit(self, kind, **extra) -> None:  # noqa: ANN001, ANN003
        self.events.append((kind.type, extra))


class _Recogniser:
    def __init__(self) -> None:
        self.turns: list[np.ndarray] = []

    async def transcribe(self, audio: np.ndarray, http=None) -> str:  # noqa: ANN001
        self.turns.append(audio)
        return f"turn {len(self.turns)}"


def _feed(taker: TurnTaker, audio: np.ndarray, rate: int = 48000) -> None:
    step = rate // 50  # 20 ms frames, as WebRTC delivers them
    for i in range(0, len(audio), step):
        taker.hear(audio[i:i + step], rate)


async def _until(done, timeout: float = 10.0) -> None:  # noqa: ANN001
    """Until ``done()`` (a turn is resampled and transcribed off the event loop)."""
    for _ in range(int(timeout / 0.02)):
        if done():
            return
        await asyncio.sleep(0.02)


def test_turns_start_with_a_barge_in_and_end_in_quiet() -> None:
    async def run() -> None:
        s, rec, asked = _Session(), _Recogniser(), []
        taker = TurnTaker(s, rec, asked.append)
        rng = np.random.default_rng(0)
        quiet = np.zeros(48000, np.float32)
        click = rng.normal(0, 0.2, 2400).astype(np.float32)  # 50 ms: not a turn
        talk = rng.normal(0, 0.1, 48000 * 2).astype(np.float32)
        _feed(taker, np.concatenate([quiet, click, quiet]))
        assert s.interrupts == 0 and not rec.turns
        _feed(taker, np.concatenate([talk, quiet]))
        await _until(lambda: len(rec.turns) == 1)
        assert s.interrupts == 1 and [e[0] for e in s.events] == ["listening", "heard"]
        assert asked == ["turn 1"]
        # The turn holds its onset (the preroll) and ends after end_s of quiet.
        assert 2.0 <= len(rec.turns[0]) / RATE <= 2.0 + 0.8 + 0.5
        # A turn past max_s is cut and transcribed; talk goes on into the next one.
        _feed(taker, rng.normal(0, 0.1, 48000 * 25).astype(np.float32))
        await _until(lambda: len(rec.turns) == 2)
        assert len(rec.turns) == 2 and len(rec.turns[1]) / RATE <= 20.1

    asyncio.run(run())


def test_pocketsphinx_transcribes_a_real_recording() -> None:
    audio, text = _lj("LJ001-0001")  # "Printing, in the only sense with which we ..."
    heard = asyncio.run(Sphinx().transcribe(audio))
    assert _overlap(heard, text) >= 0.5, (heard, text)


def _overlap(heard: str, text: str) -> float:
    """The share of the text's distinct words that were heard."""
    words = set(text.lower().replace(".", "").replace(",", "").split())
    return len(words & set(heard.lower().split())) / len(words)


def test_a_transcription_server_is_asked_over_the_api_and_its_failures_are_clear() -> None:
    import aiohttp

    async def run() -> None:
        seen: list = []

        async def handle(request: web.Request) -> web.Response:
            form = await request.post()
            seen.append((form["model"], len(form["file"].file.read()),
                         request.headers.get("Authorization")))
            if form["model"] == "broken":
                return web.Response(status=500)
            return web.json_response({"text": " does it come in blue? "})

        app = web.Application()
        app.router.add_post("/v1/audio/transcriptions", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        async with aiohttp.ClientSession() as http:
            api = TranscriptionAPI(url, "whisper", key="k")
            assert await api.transcribe(np.zeros(RATE, np.float32), http) == \
                "does it come in blue?"
            assert seen[0][0] == "whisper" and seen[0][1] > 2 * RATE
            assert seen[0][2] == "Bearer k"
            with pytest.raises(TwincastError, match="500"):
                await TranscriptionAPI(url, "broken").transcribe(np.zeros(RATE), http)
            with pytest.raises(TwincastError, match="failed"):
                await TranscriptionAPI("http://127.0.0.1:9/v1", "w").transcribe(
                    np.zeros(RATE), http)
        await runner.cleanup()

    asyncio.run(run())


def test_a_person_talks_to_the_avatar_over_webrtc(bundle, tmp_path) -> None:  # noqa: ANN001
    """A real aiortc client sends a real recording as its microphone in conversation
    mode: the server hears the turn, transcribes it and asks the LLM, whose answer the
    avatar says; without an LLM the mode is refused (409)."""
    import aiohttp
    from aiortc.contrib.media import MediaPlayer

    from bench.client import open_session
    from streaming.app import Server, ServerConfig
    from streaming.llm import LLMConfig
    from streaming.routes import RunningServer
    from tests.test_conversation import FakeLLM

    audio, text = _lj("LJ001-0001")
    clip = tmp_path / "turn.wav"
    sf.write(clip, np.concatenate([np.zeros(RATE, np.float32), audio,
                                   np.zeros(3 * RATE, np.float32)]), RATE)

    async def run() -> None:
        fake = FakeLLM()
        fake.pieces = ["Printing is an art."]
        llm_url = await fake.start()
        srv = Server({"presenter": bundle}, ServerConfig(host_share=None, lost_share=None,
            token="t", allow_unconsented=True, llm=LLMConfig(url=llm_url, model="fake")))
        await asyncio.to_thread(srv.load)
        running = await asyncio.to_thread(RunningServer, srv)
        plain = Server({"presenter": bundle}, ServerConfig(host_share=None, lost_share=None,
                                                           token="t", allow_unconsented=True))
        try:
            async with aiohttp.ClientSession() as http:
                player = MediaPlayer(str(clip))
                v = await open_session(http, running.url, "t", microphone=player.audio,
                                       events=True, mode="conversation")
                for _ in range(300):
                    if any(e["type"] == "answer_sentence" for e in v.events):
                        break
                    await asyncio.sleep(0.1)
                kinds = [e["type"] for e in v.events]
                assert "listening" in kinds and "heard" in kinds, kinds
                heard = next(e["text"] for e in v.events if e["type"] == "heard")
                assert _overlap(heard, text) >= 0.4, heard
                assert fake.requests[0]["messages"][-1]["content"] == heard
                assert "answer_sentence" in kinds
                await v.pc.close()
                with pytest.raises(BadRequest) as e:
                    await plain.open_webrtc("v=0\r\nm=audio", None, mode="conversation")
                assert e.value.status == 409
        finally:
            await asyncio.to_thread(running.stop)
            await fake.runner.cleanup()

    asyncio.run(run())
