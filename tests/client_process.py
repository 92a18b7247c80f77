"""A WebRTC viewer in a process of its own, for tests that kill it without warning.

Usage: python tests/client_process.py URL TOKEN -> prints the session's location once
video arrives, then keeps receiving until killed."""

import asyncio
import sys


async def main(url: str, token: str) -> None:
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    tracks: dict = {}
    pc.on("track", lambda t: tracks.__setitem__(t.kind, t))
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/sessions", data=pc.localDescription.sdp, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}) as r:
            location = r.headers["Location"]
            answer = await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    while "video" not in tracks:
        await asyncio.sleep(0.05)
    await tracks["video"].recv()
    print(location, flush=True)
    while True:
        await tracks["video"].recv()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
