"""A timed aiortc viewer for the benchmarks: every frame of sound and picture with its
arrival, every data-channel event, and which received frame paints a sentence's first word.

Which frame paints the first word is read, not guessed at from the picture: the session
says on which stream-clock instant a sentence's first frame is shown (``speech_started``)
and when its first word starts in it (``words``), and a frame's RTP timestamp says which
stream-clock frame it is. Reading the mouth's opening off the received frames with a face
mesh measures nothing on an enrolment whose painted mouth barely opens (GRID with the
``ci`` preset opens 0.006 at the median while speaking, under the 0.019 its silent footage
reaches), so the benchmarks time the moving mouth this way (``bench ask``, ``bench serve``,
``bench cluster``).

Each frame is timed twice: when the aiortc viewer hands it over decoded (``video``,
``audio``), and when its last RTP packet came in (``packet_times``). The two differ by
aiortc's own jitter buffer, which is this Python viewer's and not the server's: it gives a
video frame out only once the next frame's first packet has come (a frame interval, 40 ms
at 25 fps), and sound once four more 20 ms packets have (``aiortc.rtcrtpreceiver``'s
``JitterBuffer(capacity=16, prefetch=4)``). A browser decodes a video frame on its last
packet and sizes its sound buffer to the jitter it sees.

With ``marks=True`` the viewer also keeps what ``bench.av_marks`` reads the A/V offset
from: each frame's mark features and each 20 ms of sound as mono samples.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

log = logging.getLogger(__name__)


def frame_indices(pts: np.ndarray, fps: int) -> np.ndarray:
    """Received frames' indices on the sender's frame clock, counted from the first one
    received: the server stamps frame k with k * 90000 // fps on a 90 kHz clock, and RTP
    adds a random origin and wraps at 2**32."""
    return np.round(((pts - pts[0]) % 2**32) / (90000 / fps)).astype(np.int64)


def first_after(times: np.ndarray, mask: np.ndarray, t: float) -> float | None:
    """The first of ``times`` after ``t`` where ``mask`` holds."""
    i = np.nonzero((times > t) & mask)[0]
    return float(times[i[0]]) if len(i) else None


def pct(x: list[float], q: float) -> float | None:
    return round(float(np.percentile(x, q)), 1) if x else None


def first_words(events: list[dict]) -> dict[str, float]:
    """utterance -> the stream time of its first word: its ``speech_started`` stream time
    plus the earliest word start of its ``words`` events (data-channel form)."""
    started = {e["utterance"]: e["stream_time"] for e in events
               if e.get("type") == "speech_started"}
    first: dict[str, float] = {}
    for e in events:
        if e.get("type") == "words" and e.get("words"):
            w = min(x["start"] for x in e["words"])
            first[e["utterance"]] = min(w, first.get(e["utterance"], w))
    return {u: s + first.get(u, 0.0) for u, s in started.items()}


class TimedViewer:
    """An aiortc viewer logging every audio frame's loudness, every video frame and every
    data-channel event with its arrival time."""

    def __init__(self, marks: bool = False) -> None:
        self.video: list[tuple[float, np.ndarray]] = []
        self.pts: list[int] = []
        """Each video frame's RTP timestamp (90 kHz from a random origin)."""
        self.skipped: tuple[float, int] | None = None
        """(when, the session's ``frames_skipped`` then), read before any speech."""
        self.audio: list[tuple[float, float]] = []
        self.events: list[tuple[float, dict]] = []
        self.marks = marks
        self.video_marks: list[np.ndarray] = []
        self.audio_pcm: list[np.ndarray] = []
        self.audio_pts: list[int] = []
        """Each sound frame's RTP timestamp (48 kHz)."""
        self.audio_rate = 48000
        self._packets: dict[str, dict[int, float]] = {"video": {}, "audio": {}}
        """kind -> RTP timestamp (raw) -> arrival of its last packet."""
        self._origin: dict[str, int] = {}
        """kind -> the first packet's RTP timestamp: aiortc counts frames' pts from it."""

    async def open(self, http, url: str, token: str) -> None:  # noqa: ANN001
        import json

        from bench.client import open_session

        self.v = await open_session(http, url, token, events=True)
        self.url, self.location = url, self.v.location

        @self.v.channel.on("message")
        def _timed(message: object) -> None:
            if isinstance(message, str):
                self.events.append((time.perf_counter(), json.loads(message)))

        for receiver in self.v.pc.getReceivers():
            self._time_packets(receiver)
        self.pumps = [asyncio.ensure_future(self._video()),
                      asyncio.ensure_future(self._audio())]
        while self.v.channel.readyState != "open":
            await asyncio.sleep(0.05)

    def _time_packets(self, receiver) -> None:  # noqa: ANN001 - aiortc's RTCRtpReceiver
        """Note each RTP packet's arrival before aiortc's jitter buffer takes it (the
        transport calls the receiver's ``_handle_rtp_packet`` for every packet)."""
        kind = receiver.track.kind
        seen, origin = self._packets[kind], self._origin
        handle = getattr(receiver, "_handle_rtp_packet", None)
        if handle is None:  # another aiortc: packet times are left unknown (NaN)
            log.warning("this aiortc's receiver has no _handle_rtp_packet; the figures "
                        "timed by packet arrival are left out")
            return

        async def timed(packet, arrival_time_ms: int) -> None:  # noqa: ANN001
            origin.setdefault(kind, packet.timestamp)
            seen[packet.timestamp] = time.perf_counter()
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = timed

    def packet_times(self, kind: str) -> np.ndarray:
        """For each frame of ``kind`` handed over (``video`` / ``audio``, in order), when
        its last packet came in (NaN where not seen): aiortc numbers a frame's pts from
        the first packet's RTP timestamp."""
        pts = self.pts if kind == "video" else self.audio_pts
        seen, first = self._packets[kind], self._origin.get(kind)
        if first is None:
            return np.full(len(pts), np.nan)
        return np.array([seen.get((first + p) % 2**32, np.nan) if p >= 0 else np.nan
                         for p in pts])

    async def _video(self) -> None:
        import cv2

        from avatar.video_mark import thumbnail_features

        while True:
            f = await self.v.tracks["video"].recv()
            g = cv2.cvtColor(f.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY)
            self.video.append((time.perf_counter(), g))
            self.pts.append(-1 if f.pts is None else int(f.pts))
            if self.marks:
                self.video_marks.append(thumbnail_features(g))

    async def _audio(self) -> None:
        while True:
            f = await self.v.tracks["audio"].recv()
            # Packed samples, channels interleaved: loudness and the marks read in mono.
            pcm = f.to_ndarray().astype(np.float32).reshape(
                -1, len(f.layout.channels)).mean(axis=1) / 32768
            self.audio.append((time.perf_counter(), float(np.sqrt(np.mean(pcm ** 2)))))
            self.audio_pts.append(-1 if f.pts is None else int(f.pts))
            if self.marks:
                self.audio_pcm.append(pcm)
                self.audio_rate = f.sample_rate

    def first_sound(self, after: float, loud: float, packets: bool = False) -> float | None:
        """When the first sound frame louder than ``loud`` (RMS) handed over after
        ``after`` arrived; with ``packets``, when its packet came in."""
        times = np.array([t for t, _ in self.audio])
        i = np.nonzero((times > after) & (np.array([r for _, r in self.audio]) > loud))[0]
        if not len(i):
            return None
        t = self.packet_times("audio")[i[0]] if packets else times[i[0]]
        return float(t) if np.isfinite(t) else None

    def first(self, kind: str, after: float, **match: object) -> tuple[float, dict] | None:
        for t, e in self.events:
            if t >= after and e.get("type") == kind and \
                    all(e.get(k) == v for k, v in match.items()):
                return t, e
        return None

    async def wait_answer(self, qid: str | None, after: float, timeout: float) -> bool:
        """Until question ``qid``'s answer (any, with None) has been spoken or failed."""
        end = time.perf_counter() + timeout
        match = {"question": qid} if qid else {}
        while time.perf_counter() < end:
            done = self.first("answer_done", after, **match) or \
                self.first("answer_failed", after, **match)
            if done is not None:
                said = [e["utterance"] for t, e in self.events if t >= after and
                        e.get("type") == "answer_sentence" and
                        (qid is None or e.get("question") == qid)]
                if not said or self.first("speech_ended", after, utterance=said[-1]) or \
                        done[1]["type"] == "answer_failed":
                    return True
            await asyncio.sleep(0.1)
        return False

    async def wait_said(self, uid: str, after: float, timeout: float) -> bool:
        """Until utterance ``uid`` has ended (said in full or cut short)."""
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            if self.first("speech_ended", after, utterance=uid):
                return True
            await asyncio.sleep(0.05)
        return False

    async def note_skipped(self, http, auth: dict) -> None:  # noqa: ANN001
        """The session's count of video frames skipped so far: with the gaps in the
        timestamps received by then, it says which frame was the first one sent."""
        async with http.get(f"{self.url}{self.location}", headers=auth) as r:
            self.skipped = (time.perf_counter(), int((await r.json())["frames_skipped"]))

    def word_frames(self, fps: int, packets: bool = False) -> dict[str, float]:
        """utterance -> arrival of the first received frame at or after its first word
        (``speech_started``'s stream time plus the earliest word start of its ``words``);
        with ``packets``, when that frame's last packet came in."""
        if not self.pts or self.skipped is None or min(self.pts) < 0:
            return {}
        times = np.array([t for t, _ in self.video])
        arrived = self.packet_times("video") if packets else times
        k = frame_indices(np.array(self.pts, np.int64), fps)
        seen, skipped = self.skipped
        early = k[times <= seen]
        # Skips after the first frame show as gaps in the timestamps; any the session
        # counted beyond them happened before it (its first frame was not frame 0).
        k += max(0, skipped - int(np.sum(np.maximum(np.diff(early) - 1, 0))))
        out = {}
        for u, word in first_words([e for _, e in self.events]).items():
            at = round(word * fps)
            i = np.nonzero(k >= at)[0]
            if len(i) and np.isfinite(arrived[i[0]]):
                out[u] = float(arrived[i[0]])
        return out

    def mark_skew(self, fps: float):  # noqa: ANN201 - bench.av_marks.MarkSkew
        """The A/V offset over everything received, from the marks (``marks=True``)."""
        from bench.av_marks import mark_skew

        return mark_skew(np.array([t for t, _ in self.video]),
                         np.array(self.video_marks).reshape(-1, 8),
                         np.array([t for t, _ in self.audio]), self.audio_pcm,
                         self.audio_rate, fps=fps, video_pts=np.array(self.pts),
                         audio_pts=np.array(self.audio_pts))

    async def close(self) -> None:
        for p in self.pumps:
            p.cancel()
        await self.v.pc.close()
