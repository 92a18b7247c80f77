"""How soon the avatar answers a pipecat pipeline, against a running ``twincast serve``:

    python -m twincast_pipecat.bench --url http://127.0.0.1:8080 --token T \\
        --speech some_speech.wav [--trials 8]

For each drive, ``trials`` times in one pipeline: the pipeline's speech (``audio``: the
file's audio from its first loud moment, pushed as a TTS pushes it) or a sentence
(``text``) goes in, and it measures the time to the session's ``speech_started`` (the
utterance's first frame is on its way: the mouth starts moving) and to the first voiced
audio frame back in the pipeline. Prints JSON with p50/p95 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import numpy as np

from twincast_pipecat.connection import TwincastConnectionError

SENTENCES = ["Bin blue at F two now.", "Place red by G nine soon.",
             "Lay white with P four again.", "Set green in B seven please."]


def load_speech(path: str, rate: int = 16_000) -> np.ndarray:
    """Any audio or video file's sound as mono int16 at ``rate``, from 0.1 s before its
    first loud moment (so that the pipeline's first frame is speech, as a TTS's is)."""
    import av

    with av.open(path) as f:
        r = av.AudioResampler(format="s16", layout="mono", rate=rate)
        chunks = [o.to_ndarray().reshape(-1) for frame in f.decode(audio=0)
                  for o in r.resample(frame)]
    pcm = np.concatenate(chunks)
    loud = np.flatnonzero(np.abs(pcm) > 2000)
    return pcm[max(0, int(loud[0]) - rate // 10):] if len(loud) else pcm


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 1)


async def measure(url: str, token: str, drive: str, trials: int, speech: np.ndarray,
                  rate: int = 16_000) -> dict:
    from pipecat.frames.frames import (
        EndFrame,
        Frame,
        LLMFullResponseEndFrame,
        LLMTextFrame,
        TTSAudioRawFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineTask
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    from twincast_pipecat.service import TwincastVideoService

    voiced: list[float] = []

    class Ear(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame):
                pcm = np.frombuffer(frame.audio, np.int16)
                if len(pcm) and np.abs(pcm).max() > 300:
                    voiced.append(time.monotonic())
            await self.push_frame(frame, direction)

    service = TwincastVideoService(url=url, token=token, drive=drive)
    events: asyncio.Queue = asyncio.Queue()

    @service.event_handler("on_twincast_event")
    async def _event(_service, event: dict) -> None:  # noqa: ANN001
        events.put_nowait((time.monotonic(), event))

    task = PipelineTask(Pipeline([service, Ear()]))
    started = asyncio.Event()

    @task.event_handler("on_pipeline_started")
    async def _started(_task, _frame) -> None:  # noqa: ANN001
        started.set()

    runner = asyncio.ensure_future(PipelineRunner(handle_sigint=False).run(task))
    mouth, audio = [], []
    try:
        async with asyncio.timeout(60):
            await started.wait()
        await asyncio.sleep(1.0)  # the tracks settle
        step = rate // 25
        for i in range(trials):
            while not events.empty():
                events.get_nowait()
            t0 = time.monotonic()
            if drive == "audio":
                for k in range(0, len(speech), step):
                    await task.queue_frame(TTSAudioRawFrame(
                        audio=speech[k:k + step].tobytes(), sample_rate=rate, num_channels=1))
            else:
                await task.queue_frame(LLMTextFrame(SENTENCES[i % len(SENTENCES)]))
                await task.queue_frame(LLMFullResponseEndFrame())
            async with asyncio.timeout(30):
                while True:
                    t, e = await events.get()
                    if e.get("type") == "speech_started":
                        mouth.append(1000 * (t - t0))
                    if e.get("type") == "speech_ended":
                        break
            back = [t for t in voiced if t > t0]
            if back:
                audio.append(1000 * (back[0] - t0))
            await asyncio.sleep(0.5)
    finally:
        await task.queue_frame(EndFrame())
        try:
            async with asyncio.timeout(20):
                await runner
        except TimeoutError:
            runner.cancel()
    return {"drive": drive, "trials": trials, "speech_started_ms": {
        "p50": pct(mouth, 0.5), "p95": pct(mouth, 0.95)} if mouth else None,
        "first_voiced_audio_back_ms": {"p50": pct(audio, 0.5), "p95": pct(audio, 0.95)}
        if audio else None}


async def _check(url: str, token: str) -> None:
    """The server answers and takes the token (else a clear error before any pipeline)."""
    import aiohttp

    try:
        async with aiohttp.ClientSession() as http, http.get(
                f"{url.rstrip('/')}/v1/avatars", headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=10)) as r:
            if r.status != 200:
                raise TwincastConnectionError(f"{url} answered {r.status}: {await r.text()}")
    except (OSError, TimeoutError, aiohttp.ClientError) as e:
        raise TwincastConnectionError(f"cannot reach twincast at {url}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m twincast_pipecat.bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--speech", required=True, help="an audio or video file with speech")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--drive", choices=["audio", "text", "both"], default="both")
    a = p.parse_args(argv)
    import logging

    from loguru import logger

    logger.remove()  # pipecat's per-frame debug lines would drown the figures
    logger.add(sys.stderr, level="WARNING")
    logging.basicConfig(level=logging.WARNING)
    try:
        speech = load_speech(a.speech)
    except Exception as e:  # noqa: BLE001 - PyAV fails on a bad file in many ways
        print(f"error: cannot read speech from {a.speech}: {e}", file=sys.stderr)
        return 2
    out = []
    try:
        asyncio.run(_check(a.url, a.token))
        for drive in (["audio", "text"] if a.drive == "both" else [a.drive]):
            out.append(asyncio.run(measure(a.url, a.token, drive, a.trials, speech)))
    except TwincastConnectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"speech_s": round(len(speech) / 16_000, 2), "results": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
