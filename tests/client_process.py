"""A WebRTC viewer in a process of its own, for tests that kill it without warning.

Usage: python tests/client_process.py URL TOKEN -> prints the session's location once
video arrives, then keeps receiving until killed."""

import asyncio
import sys


async def main(url: str, token: str) -> None:
    import aiohttp

    from bench.client import open_session

    async with aiohttp.ClientSession() as http:
        viewer = await open_session(http, url, token)
    await viewer.tracks["video"].recv()
    print(viewer.location, flush=True)
    while True:
        await viewer.tracks["video"].recv()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
