"""The pipecat service (integrations/pipecat) in real pipecat pipelines against a real
twincast server: the server runs here, the pipelines in the integration's own environment
(pipecat needs protobuf 5, twincast's mediapipe protobuf 4), made by `make pipecat-setup`,
which `make test` runs first."""

from __future__ import annotations

import os
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import GRID, read_audio

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "integrations" / "pipecat"
PYTHON = PACKAGE / ".venv" / "bin" / "python"


def speech_wav(path: Path, fallback: Path) -> Path:
    """A real GRID utterance (or the sample's speech) as 16 kHz mono WAV, from just before
    its first loud frame, so that the pipeline's first TTS frame is speech."""
    clips = sorted((GRID / "train").glob("*.mpg")) if (GRID / "train").is_dir() else []
    audio = read_audio(clips[0] if clips else fallback, 16000)
    loud = np.flatnonzero(np.abs(audio) > 0.06)
    start = max(0, int(loud[0]) - 1600) if len(loud) else 0
    pcm = (np.clip(audio[start:], -1, 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def test_the_pipecat_service_in_real_pipelines(bundle, sample, tmp_path) -> None:  # noqa: ANN001
    if not PYTHON.exists():
        if os.environ.get("TWINCAST_PIPECAT") == "1":
            pytest.fail(f"{PYTHON} is missing; `make pipecat-setup` makes it")
        pytest.skip("the pipecat environment is not set up (make pipecat-setup)")
    from streaming.app import Server, ServerConfig
    from streaming.routes import RunningServer

    srv = Server({"presenter": bundle}, ServerConfig(host_share=None, lost_share=None,
                                                     token="t", allow_unconsented=True))
    srv.load()
    running = RunningServer(srv)
    try:
        env = {**os.environ, "TWINCAST_URL": running.url, "TWINCAST_TOKEN": "t",
               "TWINCAST_SPEECH": str(speech_wav(tmp_path / "speech.wav", sample.video))}
        proc = subprocess.run(
            [str(PYTHON), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests"],
            cwd=PACKAGE, env=env, capture_output=True, text=True, timeout=600)
    finally:
        running.stop()
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, tail
