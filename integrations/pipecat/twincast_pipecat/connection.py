"""One session on a twincast server, as a WebRTC peer (aiortc): the avatar's video and
voice come down, the pipeline's speech (if it drives the mouth) goes up, and commands and
events travel on the session's data channel.

This module knows twincast's HTTP API and nothing of pipecat, so that it can be tested and
reused on its own.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np

log = logging.getLogger(__name__)

RATE = 48_000
"""WebRTC's Opus runs at 48 kHz; what the server hears and sends is at this rate."""
FRAME = RATE // 50
"""20 ms: the packet size WebRTC clients send."""


class TwincastConnectionError(RuntimeError):
    """The server could not be reached or refused the session (its message says why)."""


@dataclass(frozen=True)
class ConnectionConfig:
    url: str
    """The server, e.g. ``http://127.0.0.1:8080``."""
    token: str
    """The operator's token or a viewer token that may make the avatar speak."""
    avatar: str | None = None
    """Which of the server's avatars (default: its first)."""
    send_audio: bool = True
    """Whether the pipeline's speech goes up to drive the mouth (``drive="audio"``)."""
    timeout_s: float = 20.0
    """How long opening the session (offer, answer, first tracks) may take."""
    max_buffer_s: float = 30.0
    """Speech queued to send beyond this is dropped with a warning: a TTS that runs far
    ahead of real time must not grow memory without bound."""


class PacedAudio:
    """A 48 kHz mono int16 queue that aiortc's audio track reads in real time: 20 ms per
    call, silence when the queue is empty (the RTP clock must keep running, or the server
    would hear the next words as a jump)."""

    def __init__(self, max_seconds: float) -> None:
        self._pending: list[np.ndarray] = []
        self._queued = 0
        self._max = int(max_seconds * RATE)
        self.dropped_s = 0.0

    def push(self, pcm: np.ndarray) -> None:
        if self._queued + len(pcm) > self._max:
            self.dropped_s += len(pcm) / RATE
            log.warning("twincast: %.1f s of speech is queued to send; dropping %.2f s",
                        self._queued / RATE, len(pcm) / RATE)
            return
        self._pending.append(pcm)
        self._queued += len(pcm)

    def clear(self) -> None:
        self._pending.clear()
        self._queued = 0

    @property
    def queued_s(self) -> float:
        return self._queued / RATE

    def take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        filled = 0
        while filled < n and self._pending:
            head = self._pending[0]
            k = min(n - filled, len(head))
            out[filled:filled + k] = head[:k]
            filled += k
            if k == len(head):
                self._pending.pop(0)
            else:
                self._pending[0] = head[k:]
        self._queued -= filled
        return out


def _speech_track(source: PacedAudio):  # noqa: ANN202 - an aiortc MediaStreamTrack
    """An aiortc audio track that plays ``source`` in real time."""
    import av
    from aiortc import MediaStreamTrack

    class SpeechTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._start: float | None = None
            self._sent = 0

        async def recv(self) -> av.AudioFrame:
            if self._start is None:
                self._start = time.monotonic()
            # Paced by the wall clock from the first frame, so that delays do not add up.
            wait = self._start + self._sent / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            pcm = source.take(FRAME)
            frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = self._sent
            frame.time_base = fractions.Fraction(1, RATE)
            self._sent += FRAME
            return frame

    return SpeechTrack()


class Resampler:
    """int16 PCM at any rate and channel count to mono int16 at ``rate`` (PyAV's
    resampler, rebuilt when the input's format changes)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._key: tuple | None = None
        self._r = None

    def __call__(self, pcm: bytes | np.ndarray, rate: int, channels: int) -> np.ndarray:
        import av

        samples = np.frombuffer(pcm, np.int16) if isinstance(pcm, bytes) else pcm
        if rate == self.rate and channels == 1:
            return samples.astype(np.int16, copy=False)
        if self._key != (rate, channels):
            self._key = (rate, channels)
            self._r = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
        layout = "mono" if channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16",
                                           layout=layout)
        frame.sample_rate = rate
        out = [f.to_ndarray().reshape(-1) for f in self._r.resample(frame)]
        return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


class TwincastConnection:
    """An open session: ``video`` and ``audio`` are the avatar's remote tracks; ``send``
    speaks a command; ``speak`` queues the pipeline's speech; ``on_event`` hears what the
    session says (``speech_started``, ``words``, ``speech_ended``, ``interrupted``, ...)."""

    def __init__(self, cfg: ConnectionConfig,
                 on_event: Callable[[dict], None] | None = None) -> None:
        self.cfg = cfg
        self.on_event = on_event
        self.location: str | None = None
        self.disclosure: str | None = None
        self.video = None
        self.audio = None
        self.outgoing = PacedAudio(cfg.max_buffer_s)
        self._resample = Resampler(RATE)
        self._pc = None
        self._channel = None
        self._http = None

    async def open(self) -> None:
        """Offer, answer, and wait for the avatar's tracks and the data channel. Raises
        TwincastConnectionError with the server's own message when it refuses."""
        import aiohttp
        from aiortc import RTCPeerConnection, RTCSessionDescription

        cfg = self.cfg
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout_s))
        self._pc = pc = RTCPeerConnection()
        self._channel = channel = pc.createDataChannel("twincast")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._message)
        pc.addTransceiver("video", direction="recvonly")
        if cfg.send_audio:
            pc.addTrack(_speech_track(self.outgoing))  # sendrecv: speech up, voice down
        else:
            pc.addTransceiver("audio", direction="recvonly")
        tracks: dict = {}
        both = asyncio.Event()

        @pc.on("track")
        def _track(track) -> None:  # noqa: ANN001 - aiortc's remote track
            tracks[track.kind] = track
            if len(tracks) == 2:
                both.set()

        try:
            await pc.setLocalDescription(await pc.createOffer())
            query = "?" + urlencode({"avatar": cfg.avatar}) if cfg.avatar else ""
            async with self._http.post(
                    f"{cfg.url.rstrip('/')}/v1/sessions{query}", data=pc.localDescription.sdp,
                    headers={"Authorization": f"Bearer {cfg.token}",
                             "Content-Type": "application/sdp"}) as r:
                if r.status != 201:
                    raise TwincastConnectionError(
                        f"twincast refused the session ({r.status}): {_message(await r.text())}")
                self.location = r.headers.get("Location")
                self.disclosure = r.headers.get("X-Twincast-Disclosure")
                answer = await r.text()
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            async with asyncio.timeout(cfg.timeout_s):
                await both.wait()
                await opened.wait()
        except TwincastConnectionError:
            await self.close()
            raise
        except (OSError, TimeoutError, aiohttp.ClientError) as e:
            await self.close()
            raise TwincastConnectionError(
                f"cannot open a twincast session at {cfg.url}: {type(e).__name__} {e}; is "
                "`twincast serve` running there?") from None
        self.video, self.audio = tracks["video"], tracks["audio"]
        log.info("twincast session %s open", self.location)

    def _message(self, message: object) -> None:
        if not isinstance(message, str):
            return
        try:
            event = json.loads(message)
        except ValueError:
            log.warning("twincast: a data channel message that is not JSON: %.80s", message)
            return
        if event.get("type") == "error":
            log.warning("twincast: %s", event.get("message"))
        if self.on_event is not None:
            self.on_event(event)

    def send(self, command: dict) -> None:
        """A command on the data channel (``say``, ``ask``, ``interrupt``)."""
        if self._channel is not None and self._channel.readyState == "open":
            self._channel.send(json.dumps(command))
        else:
            log.warning("twincast: the session's channel is closed; %s not sent",
                        command.get("type"))

    def speak(self, pcm: bytes, rate: int, channels: int = 1) -> None:
        """The pipeline's speech (int16 PCM), queued to go up in real time."""
        self.outgoing.push(self._resample(pcm, rate, channels))

    def interrupt(self) -> None:
        """Barge-in: drop the speech not yet sent and what the avatar is saying."""
        self.outgoing.clear()
        self.send({"type": "interrupt"})

    async def close(self) -> None:
        """Ends the session on the server (so that its capacity is free at once) and the
        peer connection. Safe to call twice."""
        http, self._http = self._http, None
        if http is not None:
            if self.location:
                try:
                    async with http.delete(f"{self.cfg.url.rstrip('/')}{self.location}",
                                           headers={"Authorization":
                                                    f"Bearer {self.cfg.token}"}):
                        pass
                except (OSError, TimeoutError, Exception) as e:  # noqa: BLE001 - best effort
                    log.info("twincast: closing %s: %s", self.location, e)
            await http.close()
        pc, self._pc = self._pc, None
        if pc is not None:
            await pc.close()


def _message(text: str) -> str:
    """The server's error message from its JSON error body, or the text itself."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:300]
    return str(body)[:300]
