"""A self-hosted video assistant in pipecat with twincast as its face and voice.

    you (browser) --WebRTC--> pipecat: VAD -> speech-to-text -> LLM -> twincast -> you

Every part runs on your own machines: the speech-to-text and the LLM are any servers that
speak the OpenAI-compatible API (a whisper server, llama.cpp's server, vLLM, Ollama), and
twincast is `twincast serve` with your enrolled avatar. Nothing here calls a hosted
service.

Run it (pipecat in its own environment, see integrations/pipecat/README.md):

    twincast serve build/demo/avatars/sample --port 8080 --token SECRET &
    pip install -e integrations/pipecat "pipecat-ai[webrtc,runner,silero]"
    TWINCAST_URL=http://127.0.0.1:8080 TWINCAST_TOKEN=SECRET \\
    LLM_URL=http://127.0.0.1:8081/v1 LLM_MODEL=smollm2 \\
    STT_URL=http://127.0.0.1:8082/v1 STT_MODEL=whisper-1 \\
        python samples/pipecat_pipeline.py

and open the page the runner prints. With TWINCAST_DRIVE=audio, put your own TTS service
before twincast in `pipeline_for` and it will move the mouth to that voice instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    twincast_url: str
    twincast_token: str
    llm_url: str
    llm_model: str
    stt_url: str
    stt_model: str
    avatar: str | None = None
    drive: str = "text"
    width: int = 512
    height: int = 512
    prompt: str = ("You are the host's digital double on a live video call. Answer in one "
                   "or two short spoken sentences, without lists or markup.")

    @classmethod
    def from_env(cls) -> Settings:
        need = ["TWINCAST_URL", "TWINCAST_TOKEN", "LLM_URL", "LLM_MODEL", "STT_URL",
                "STT_MODEL"]
        missing = [k for k in need if not os.environ.get(k)]
        if missing:
            raise SystemExit(f"set {', '.join(missing)} (see this file's docstring)")
        e = os.environ
        return cls(e["TWINCAST_URL"], e["TWINCAST_TOKEN"], e["LLM_URL"], e["LLM_MODEL"],
                   e["STT_URL"], e["STT_MODEL"], e.get("TWINCAST_AVATAR"),
                   e.get("TWINCAST_DRIVE", "text"), int(e.get("VIDEO_WIDTH", 512)),
                   int(e.get("VIDEO_HEIGHT", 512)))


def services(s: Settings) -> dict:
    """The pipeline's services (made, not connected: that happens when it starts)."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.openai.stt import OpenAISTTService

    from twincast_pipecat import TwincastVideoService

    # Local servers take any key; a hosted one reads its own from the environment.
    key = os.environ.get("OPENAI_API_KEY", "local")
    stt = OpenAISTTService(base_url=s.stt_url, api_key=key,
                           settings=OpenAISTTService.Settings(model=s.stt_model))
    llm = OpenAILLMService(base_url=s.llm_url, api_key=key,
                           settings=OpenAILLMService.Settings(model=s.llm_model,
                                                              system_instruction=s.prompt))
    avatar = TwincastVideoService(url=s.twincast_url, token=s.twincast_token,
                                  avatar=s.avatar, drive=s.drive)
    # The user's turns are found by the VAD (its model ships inside pipecat); when the
    # user starts talking the pipeline interrupts, and twincast stops the avatar at once.
    context = LLMContextAggregatorPair(
        LLMContext(), user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()))
    return {"stt": stt, "llm": llm, "avatar": avatar, "context": context}


def pipeline_for(transport, parts: dict):  # noqa: ANN001, ANN201 - pipecat's types
    from pipecat.pipeline.pipeline import Pipeline

    return Pipeline([
        transport.input(),             # your microphone
        parts["stt"],                  # -> what you said
        parts["context"].user(),       # -> the conversation so far
        parts["llm"],                  # -> the reply, token by token
        parts["avatar"],               # -> the double's face and voice, sentence by sentence
        transport.output(),            # -> your screen and speakers
        parts["context"].assistant(),  # what the double actually said (to its interruption)
    ])


async def bot(runner_args) -> None:  # noqa: ANN001 - pipecat's RunnerArguments
    """pipecat's development runner calls this for each browser that connects."""
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineTask
    from pipecat.transports.base_transport import TransportParams
    from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

    s = Settings.from_env()
    transport = SmallWebRTCTransport(
        webrtc_connection=runner_args.webrtc_connection,
        params=TransportParams(audio_in_enabled=True, audio_out_enabled=True,
                               video_out_enabled=True, video_out_is_live=True,
                               video_out_width=s.width, video_out_height=s.height,
                               video_out_framerate=25))
    task = PipelineTask(pipeline_for(transport, services(s)))
    await PipelineRunner(handle_sigint=False).run(task)


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()
