"""Reading a channel's chat over IRC (Twitch's public chat protocol, or any IRC server):
an anonymous, read-only client that hands each message to a callback and reconnects,
with a growing pause, whenever the connection drops. It never sends into the channel.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024
"""Longer lines are skipped (IRC allows 512 bytes, Twitch's tags take a few kB more)."""


@dataclass(frozen=True)
class IrcTarget:
    host: str
    port: int
    channel: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> IrcTarget:
        u = urlsplit(url)
        tls = u.scheme == "ircs"
        return cls(u.hostname or "", u.port or (6697 if tls else 6667),
                   (u.fragment and "#" + u.fragment) or u.path.lstrip("/"), tls)

    def __str__(self) -> str:
        return f"{'ircs' if self.tls else 'irc'}://{self.host}:{self.port}/{self.channel}"


def parse_line(line: str) -> tuple[str, str, str] | None:
    """(user, channel, text) of a PRIVMSG line (IRCv3 tags read for a display name), else
    None."""
    tags: dict[str, str] = {}
    if line.startswith("@"):
        raw, _, line = line.partition(" ")
        for kv in raw[1:].split(";"):
            k, _, v = kv.partition("=")
            tags[k] = v
    m = re.match(r":([^!\s]+)\S*\s+PRIVMSG\s+(\S+)\s+:?(.*)", line)
    if m is None:
        return None
    user = tags.get("display-name") or m.group(1)
    return user, m.group(2), m.group(3)


class IrcChat:
    def __init__(self, target: IrcTarget, on_message: Callable[[str, str], object],
                 nick: str | None = None, retry_max_s: float = 60.0):
        self.target = target
        self.on_message = on_message
        # Twitch lets any "justinfan" nick read a channel without an account.
        self.nick = nick or f"justinfan{random.randint(10000, 99999)}"
        self.retry_max_s = retry_max_s
        self.state = "connecting"
        self.stats = {"connects": 0, "messages": 0, "skipped_lines": 0}
        self._task: asyncio.Task | None = None
        self._stopped = False
        self.joined = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        self.state = "closed"

    async def _run(self) -> None:
        pause = 1.0
        while not self._stopped:
            try:
                await self._session()
                pause = 1.0
            except asyncio.CancelledError:
                raise
            except asyncio.IncompleteReadError:
                log.warning("chat %s: the server closed the connection; reconnecting in "
                            "%.0f s", self.target, pause)
            except (OSError, TimeoutError, ssl.SSLError) as e:
                log.warning("chat %s: %s; reconnecting in %.0f s", self.target,
                            str(e) or e.__class__.__name__, pause)
            if self._stopped:
                return
            self.state = "reconnecting"
            self.joined.clear()
            await asyncio.sleep(pause)
            pause = min(self.retry_max_s, pause * 2)

    async def _session(self) -> None:
        t = self.target
        ctx = ssl.create_default_context() if t.tls else None
        async with asyncio.timeout(15.0):
            reader, writer = await asyncio.open_connection(t.host, t.port, ssl=ctx,
                                                           limit=MAX_LINE)
        self.stats["connects"] += 1
        try:
            # Tags carry Twitch's display names; a server without the capability says NAK.
            writer.write(f"CAP REQ :twitch.tv/tags\r\nNICK {self.nick}\r\n"
                         f"USER {self.nick} 0 * :twincast\r\nCAP END\r\n".encode())
            await writer.drain()
            skipping = False
            while True:
                try:
                    # Servers PING every few minutes; silence past that is a dead link.
                    # (asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                    # cancel that meets the line's arrival, and the reader would never stop.)
                    async with asyncio.timeout(600.0):
                        raw = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as e:
                    # An over-long line: dropped, up to and including its newline.
                    await reader.readexactly(e.consumed)
                    if not skipping:
                        self.stats["skipped_lines"] += 1
                    skipping = True
                    continue
                if skipping:
                    skipping = False
                    continue
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                await self._handle(line, writer)
        finally:
            writer.close()

    async def _handle(self, line: str, writer: asyncio.StreamWriter) -> None:
        cmd = line.split(" ", 2)
        if cmd[0] == "PING":
            writer.write(f"PONG {line[5:]}\r\n".encode())
            await writer.drain()
            return
        if len(cmd) > 1 and cmd[1] == "001":  # registered: join the channel
            writer.write(f"JOIN {self.target.channel}\r\n".encode())
            await writer.drain()
            return
        if len(cmd) > 1 and cmd[1] == "JOIN" and not self.joined.is_set():
            self.state = "live"
            self.joined.set()
            log.info("chat %s: reading as %s", self.target, self.nick)
            return
        if len(cmd) > 1 and cmd[1] in ("432", "433", "465", "473", "474", "475"):
            raise OSError(f"the IRC server refused: {line[:200]}")
        msg = parse_line(line)
        if msg is not None and msg[1].lower() == self.target.channel.lower():
            self.stats["messages"] += 1
            self.on_message(msg[0], msg[2])
