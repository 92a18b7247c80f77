"""The twincast service in real pipecat pipelines against a real twincast server.

The server is started by twincast's own test suite (tests/test_pipecat.py), which runs
these in this package's own environment and says where it is: TWINCAST_URL,
TWINCAST_TOKEN, and TWINCAST_SPEECH (a 16 kHz mono WAV of real speech, standing in for a
pipeline's TTS). Without them the tests that need the server are skipped.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import wave

import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from twincast_pipecat import TwincastConnectionError, TwincastVideoService
from twincast_pipecat.connection import ConnectionConfig, PacedAudio, TwincastConnection
from twincast_pipecat.sentences import SentenceCutter

URL = os.environ.get("TWINCAST_URL")
TOKEN = os.environ.get("TWINCAST_TOKEN", "")
server = pytest.mark.skipif(URL is None, reason="TWINCAST_URL: no twincast server to use")


class Recorder(FrameProcessor):
    """Keeps what comes out of the service, with the loop time it came."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, Frame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.seen.append((time.monotonic(), frame))
        await self.push_frame(frame, direction)

    def of(self, kind: type) -> list[tuple[float, Frame]]:
        return [(t, f) for t, f in self.seen if isinstance(f, kind)]


def voiced_s(frames: list[tuple[float, Frame]], level: int = 300) -> float:
    """Seconds of audio frames with speech in them (peaks above ``level``: a recording's
    room noise reaches 1,000, the synthetic voice's silence stays near 0)."""
    total = 0.0
    for _, f in frames:
        pcm = np.frombuffer(f.audio, np.int16)
        if len(pcm) and np.abs(pcm).max() > level:
            total += len(pcm) / f.sample_rate
    return total


def speech_frames() -> tuple[list[TTSAudioRawFrame], float]:
    """TWINCAST_SPEECH in 40 ms TTS frames, as a TTS service pushes them (all at once,
    faster than real time), and its length in seconds."""
    with wave.open(os.environ["TWINCAST_SPEECH"]) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    step = rate // 25
    frames = [TTSAudioRawFrame(audio=pcm[i:i + step].tobytes(), sample_rate=rate,
                               num_channels=1) for i in range(0, len(pcm), step)]
    return frames, len(pcm) / rate


def test_sentences_are_cut_as_the_tokens_come() -> None:
    cut = SentenceCutter(max_chars=40)
    assert cut.feed("Hello") == []
    assert cut.feed(" there. It costs 3.5 euros") == ["Hello there."]
    assert cut.feed(", e.g. today! And") == ["It costs 3.5 euros, e.g. today!"]
    assert cut.feed("你好。再见") == ["And你好。"]
    assert cut.flush() == ["再见"] and cut.flush() == []
    run_on = cut.feed("word " * 20)
    assert run_on and all(len(s) <= 40 for s in run_on)


def test_paced_audio_is_bounded_and_pads_with_silence() -> None:
    q = PacedAudio(max_seconds=1.0)
    q.push(np.ones(48_000, np.int16))
    q.push(np.ones(10, np.int16))  # over the bound: dropped, counted
    assert q.dropped_s > 0 and q.queued_s == 1.0
    first = q.take(960)
    assert first.min() == 1
    q.clear()
    assert q.take(960).max() == 0 and q.queued_s == 0


def test_a_bad_drive_is_refused() -> None:
    with pytest.raises(ValueError, match="drive"):
        TwincastVideoService(url="http://127.0.0.1:1", token="t", drive="video")


def test_a_server_that_is_not_there_is_a_clear_error() -> None:
    async def run() -> None:
        conn = TwincastConnection(ConnectionConfig(url="http://127.0.0.1:9", token="t",
                                                   timeout_s=5))
        with pytest.raises(TwincastConnectionError, match="twincast serve"):
            await conn.open()

    asyncio.run(run())


def test_a_pipeline_whose_server_is_not_there_gets_an_error_frame_saying_so() -> None:
    service = TwincastVideoService(url="http://127.0.0.1:9", token="t", drive="text",
                                   connect_timeout_s=5)
    down, up = asyncio.run(run_test(service, start_timeout=15,
                                    frames_to_send=[SleepFrame(0.2), LLMTextFrame("Hi.")]))
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors and "twincast serve" in errors[0].error, up
    assert not [f for f in down if isinstance(f, OutputImageRawFrame)]


@server
def test_a_refused_session_says_why() -> None:
    async def run() -> None:
        conn = TwincastConnection(ConnectionConfig(url=URL, token="not-the-token"))
        with pytest.raises(TwincastConnectionError, match="401"):
            await conn.open()
        conn = TwincastConnection(ConnectionConfig(url=URL, token=TOKEN, avatar="nobody"))
        with pytest.raises(TwincastConnectionError, match="404.*nobody"):
            await conn.open()

    asyncio.run(run())


@server
def test_the_pipelines_tts_audio_moves_the_mouth() -> None:
    """drive="audio": the pipeline's TTS audio goes up, the session starts speaking with
    it, and video frames and the voice (in step with the mouth) come down; the pipeline's
    own audio frames are not passed on."""
    frames, seconds = speech_frames()
    service = TwincastVideoService(url=URL, token=TOKEN, drive="audio")
    events: list[tuple[float, dict]] = []

    @service.event_handler("on_twincast_event")
    async def _event(_service, event: dict) -> None:  # noqa: ANN001
        events.append((time.monotonic(), event))

    rec = Recorder()
    sent: list[float] = []

    class Mark(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame) and not sent:
                sent.append(time.monotonic())
            await self.push_frame(frame, direction)

    asyncio.run(run_test(
        Pipeline([Mark(), service, rec]), start_timeout=30,
        frames_to_send=[SleepFrame(1.0), TTSStartedFrame(), *frames, TTSStoppedFrame(),
                        SleepFrame(seconds + 3.0)]))

    images = rec.of(OutputImageRawFrame)
    assert len(images) > 15 * (seconds + 3), f"{len(images)} video frames"
    assert len({f.size for _, f in images}) == 1
    started = [t for t, e in events if e.get("type") == "speech_started"]
    assert started, [e for _, e in events]
    audio = rec.of(TTSAudioRawFrame)
    assert all(f.sample_rate == 24_000 for _, f in audio)  # the pipeline's rate, not 16 kHz
    spoken = voiced_s([(0.0, f) for f in frames], 2000)
    back = voiced_s(audio, 2000)
    assert back > 0.6 * spoken, f"{back:.2f} of {spoken:.2f} s back"
    print(f"\nTTS audio in -> speech_started: {1000 * (started[0] - sent[0]):.0f} ms")


@server
def test_the_llms_text_is_said_in_twincasts_voice_with_words_as_heard() -> None:
    """drive="text": LLM tokens are cut into sentences and said by twincast's voice; the
    voice comes down between TTSStarted/TTSStopped with the words as TTSTextFrames."""
    service = TwincastVideoService(url=URL, token=TOKEN, drive="text")
    rec = Recorder()
    tokens = ["Bin blue", " at F two", " now. Place", " red by G", " nine soon."]
    asyncio.run(run_test(
        Pipeline([service, rec]), start_timeout=30,
        frames_to_send=[SleepFrame(0.5), LLMFullResponseStartFrame(),
                        *[LLMTextFrame(t) for t in tokens], LLMFullResponseEndFrame(),
                        SleepFrame(9.0)]))

    assert not rec.of(LLMTextFrame)  # consumed: the service is the pipeline's voice
    assert len(rec.of(TTSStartedFrame)) == 2 and len(rec.of(TTSStoppedFrame)) == 2
    words = " ".join(f.text for _, f in rec.of(TTSTextFrame))
    assert words.split()[:2] == ["Bin", "blue"] and "soon" in words, words
    assert voiced_s(rec.of(TTSAudioRawFrame)) > 1.5
    assert len(rec.of(OutputImageRawFrame)) > 100
    assert not rec.of(ErrorFrame)


@server
def test_an_interruption_stops_the_avatar_at_once() -> None:
    service = TwincastVideoService(url=URL, token=TOKEN, drive="text")
    rec = Recorder()
    long = ("Lay white with P four again, then set green at B seven please, and place "
            "blue by C one soon.")
    marks: list[float] = []

    class Stamp(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, InterruptionFrame):
                marks.append(time.monotonic())
            await self.push_frame(frame, direction)

    asyncio.run(run_test(
        Pipeline([Stamp(), service, rec]), start_timeout=30,
        frames_to_send=[SleepFrame(0.5), LLMTextFrame(long), LLMFullResponseEndFrame(),
                        SleepFrame(4.0), InterruptionFrame(), SleepFrame(3.0)]))

    audio = rec.of(TTSAudioRawFrame)
    assert voiced_s([a for a in audio if a[0] < marks[0]]) > 0.5  # it was speaking
    late = [a for a in audio if a[0] > marks[0] + 0.5]
    assert voiced_s(late) < 0.1, f"{voiced_s(late):.2f} s of voice after the interruption"


def test_the_sample_pipeline_builds_with_this_pipecat() -> None:
    """samples/pipecat_pipeline.py: its services and pipeline are made as they are in use
    (VAD, OpenAI-compatible STT and LLM, twincast), without connecting to any of them."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "samples" / "pipecat_pipeline.py"
    spec = importlib.util.spec_from_file_location("pipecat_pipeline", path)
    sample = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = sample  # its dataclass looks itself up there
    spec.loader.exec_module(sample)
    settings = sample.Settings("http://127.0.0.1:1", "t", "http://127.0.0.1:2/v1", "m",
                               "http://127.0.0.1:3/v1", "whisper-1")
    parts = sample.services(settings)
    assert isinstance(parts["avatar"], TwincastVideoService)

    class Transport:
        def input(self) -> FrameProcessor:
            return FrameProcessor()

        def output(self) -> FrameProcessor:
            return FrameProcessor()

    pipeline = sample.pipeline_for(Transport(), parts)
    assert parts["avatar"] in pipeline.processors
