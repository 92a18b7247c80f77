"""Running a show (``avatar.show``) on a live session: a stream that talks unattended."""

from __future__ import annotations

import asyncio
import logging

from avatar.errors import TwincastError
from avatar.show import Show
from streaming.session import SpeechBacklog

log = logging.getLogger(__name__)


async def run_show(session, show: Show, chat=None, start: int = 0) -> None:  # noqa: ANN001
    """Say the show's segments in order on ``session`` (a stream or any other session),
    waiting for each to be spoken; text injected meanwhile (``say``) slots in between.
    ``chat`` (``streaming.chat.ChatDesk``) answers live chat in the show's qa segments or
    between its segments, as its ``[chat]`` says; without it a qa segment is idle.

    Steps (a segment's each repeat, pass after pass) are counted from 0: the session's
    ``show_step`` says which one is on, and ``start`` begins at that one (a stream
    restarted elsewhere in a cluster goes on where its show was)."""
    step = -1
    for _ in show.passes():
        for seg in show.segments:
            for _ in range(seg.repeat):
                step += 1
                if step < start:
                    continue
                if session.state == "closed":
                    return
                session.stats["show_step"] = step
                if seg.kind == "qa" and chat is not None:
                    await chat.window(seg.seconds)
                elif seg.kind == "say":
                    if session.voice is None:
                        log.error("show: avatar %s has no voice; the show's speech is "
                                  "skipped", session.avatar_name)
                        return
                    uid = None
                    while uid is None and session.state != "closed":
                        try:
                            uid = session.say(seg.text, pace=seg.rate)
                        except SpeechBacklog:
                            # Text injected meanwhile fills the queue: the show waits.
                            await asyncio.sleep(SpeechBacklog.retry_after_s / 2)
                        except TwincastError as e:
                            log.warning("show: %s", e)
                            await asyncio.sleep(0.5)  # never a busy loop on the event loop
                            break
                    if uid is not None:
                        await session.wait_spoken(uid)
                else:
                    await asyncio.sleep(seg.seconds)
                if chat is not None:
                    await chat.between()
