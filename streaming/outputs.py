"""Where a session's media goes: a WebRTC peer or an RTMP ingest, behind one small
protocol, so the registry admits, describes, watches and closes both the same way."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol


class Output(Protocol):
    kind: str
    """``webrtc`` or ``rtmp`` (metrics and ``describe`` say which)."""

    def describe(self) -> dict:
        """This output's part of the session's state."""

    async def vanished(self) -> str | None:
        """Why the viewer is gone for good (the session should close), or None."""

    async def close(self) -> None:
        """Stop sending and free what the output holds."""


class WebRtcOutput:
    """A peer connection: gone when it never connects, or stops sending RTCP reports
    (every WebRTC receiver sends them every second or so) without closing."""

    kind = "webrtc"

    def __init__(self, pc, connect_timeout_s: float, vanished_after_s: float):  # noqa: ANN001
        self.pc = pc
        self.opened_at = time.monotonic()
        self.connect_timeout_s = connect_timeout_s
        self.vanished_after_s = vanished_after_s
        self.listener: asyncio.Future | None = None
        """The task feeding the client's microphone to the session, if it sends one."""

    def describe(self) -> dict:
        return {"output": self.kind}

    async def vanished(self) -> str | None:
        age = time.monotonic() - self.opened_at
        if self.pc.connectionState != "connected":
            if age > self.connect_timeout_s:
                return f"its peer did not connect within {age:.0f} s"
            return None
        silent = await _last_report_age(self.pc)
        quiet = silent if silent is not None else age
        if quiet > self.vanished_after_s:
            return f"its client vanished (no RTCP report for {quiet:.0f} s)"
        return None

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.cancel()
        await self.pc.close()


async def _last_report_age(pc) -> float | None:  # noqa: ANN001 - RTCPeerConnection
    """Seconds since the peer's last RTCP receiver report on any of our tracks (None when
    it has sent none yet)."""
    newest = None
    for sender in pc.getSenders():
        if sender.track is None:
            continue
        for st in (await sender.getStats()).values():
            if st.type == "remote-inbound-rtp" and (newest is None or st.timestamp > newest):
                newest = st.timestamp
    if newest is None:
        return None
    return (dt.datetime.now(dt.UTC) - newest).total_seconds()


class RtmpStream:
    """A push to an RTMP(S) ingest (``streaming.rtmp.RtmpOutput``) and the tasks that feed
    it. It never vanishes: a failed ingest is reconnected to."""

    kind = "rtmp"

    def __init__(self, push, tasks: list[asyncio.Task]):  # noqa: ANN001 - RtmpOutput
        self.push = push
        self.tasks = tasks

    @property
    def state(self) -> str:
        return self.push.state

    @property
    def stats(self) -> dict:
        return self.push.stats

    def describe(self) -> dict:
        return {"output": self.kind, "rtmp_state": self.push.state,
                "rtmp_error": self.push.last_failure,
                **{f"rtmp_{k}": v for k, v in self.push.stats.items()}}

    async def vanished(self) -> str | None:
        return None

    async def close(self) -> None:
        # The pump stops the push (in an executor) as it is cancelled; waited for, so that
        # on shutdown the stream is flushed and closed before the process ends.
        others = [t for t in self.tasks if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
