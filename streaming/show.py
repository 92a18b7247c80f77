"""Running a show (``avatar.show``) on a live session: a stream that talks unattended."""

from __future__ import annotations

import asyncio
import logging

from avatar.errors import TwincastError
from avatar.show import Show

log = logging.getLogger(__name__)


async def run_show(session, show: Show) -> None:  # noqa: ANN001 - streaming.Session
    """Say the show's segments in order on ``session`` (a stream or any other session),
    waiting for each to be spoken; text injected meanwhile (``say``) slots in between."""
    for _ in show.passes():
        for seg in show.segments:
            for _ in range(seg.repeat):
                if session.state == "closed":
                    return
                if seg.kind == "say":
                    try:
                        uid = session.say(seg.text, pace=seg.rate)
                    except TwincastError as e:
                        log.warning("show: %s", e)
                        continue
                    await session.wait_spoken(uid)
                else:
                    await asyncio.sleep(seg.seconds)
