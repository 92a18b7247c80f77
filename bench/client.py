"""A WebRTC viewer of a twincast server in Python (aiortc), as the benchmark and the tests
use it, and as a Python app could: offer, answer, and the avatar's tracks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class Viewer:
    pc: object
    """The aiortc RTCPeerConnection."""
    tracks: dict
    """The avatar's tracks by kind ("video", "audio")."""
    location: str
    """The session's path, /v1/sessions/{id}."""
    events: list[dict] | None = None
    """What the session's data channel said, in order (with ``events=True``)."""
    channel: object | None = None
    """The data channel (with ``events=True``)."""


async def open_session(http, url: str, token: str, microphone=None,  # noqa: ANN001
                       timeout: float = 20.0, events: bool = False,
                       mode: str | None = None) -> Viewer:
    """Open a session on the server at ``url`` with an aiohttp ``http`` client session.
    ``microphone``: an aiortc audio track to send up (it drives the mouth, or with
    ``mode="conversation"`` it is the person talking to the avatar). ``events``: open
    the data channel and keep what it says (``Viewer.events``)."""
    import json

    from aiortc import RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection()
    said: list[dict] | None = None
    channel = None
    if events:
        said = []
        channel = pc.createDataChannel("events")

        @channel.on("message")
        def _said(message: object) -> None:
            if isinstance(message, str):
                said.append(json.loads(message))

    pc.addTransceiver("video", direction="recvonly")
    if microphone is None:
        pc.addTransceiver("audio", direction="recvonly")
    else:
        pc.addTrack(microphone)  # sendrecv: the microphone up, the avatar's voice down
    tracks: dict = {}
    both = asyncio.Event()

    @pc.on("track")
    def _track(track) -> None:  # noqa: ANN001 - aiortc's remote track
        tracks[track.kind] = track
        if len(tracks) == 2:
            both.set()

    await pc.setLocalDescription(await pc.createOffer())
    query = f"?mode={mode}" if mode else ""
    async with http.post(f"{url}/v1/sessions{query}", data=pc.localDescription.sdp,
                         headers={"Authorization": f"Bearer {token}",
                                  "Content-Type": "application/sdp"}) as r:
        if r.status != 201:
            await pc.close()
            raise RuntimeError(f"session refused: {r.status} {await r.text()}")
        location = r.headers["Location"]
        answer = await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await asyncio.wait_for(both.wait(), timeout)
    return Viewer(pc, tracks, location, said, channel)
