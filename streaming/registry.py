"""Every open session with its output: admission, lookup, the watchdog and teardown, the
same for WebRTC viewers and livestreams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from streaming.hostload import Load
from streaming.outputs import Output
from streaming.requests import BadRequest
from streaming.session import Session
from streaming.strain import Strain

log = logging.getLogger(__name__)


class Full(BadRequest):
    """The server cannot take another session now (503, with Retry-After)."""

    retry_after_s = 10

    def __init__(self, message: str):
        super().__init__(message, 503)


@dataclass
class Entry:
    session: Session
    output: Output


class Registry:
    def __init__(self, max_sessions: int, capacity_share: float,
                 host_share: float | None = None, lost_share: float | None = None):
        self.max_sessions = max_sessions
        self.capacity_share = capacity_share
        """Sessions are admitted while all their frames stay under this share of the
        scheduler's measured frames per second (each needing every frame rendered)."""
        self.host_share = host_share
        """And, with a session open, while the host's measured CPU use stays under this
        share of its cores (None: not checked; ``streaming.hostload``)."""
        self.lost_share = lost_share
        """And while the open sessions lose under this share of their frames (None: not
        checked; ``streaming.strain``)."""
        self.entries: dict[str, Entry] = {}
        self._opening = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, sid: object) -> bool:
        return sid in self.entries

    @property
    def sessions(self) -> dict[str, Session]:
        return {sid: e.session for sid, e in self.entries.items()}

    def get(self, sid: str) -> Entry | None:
        return self.entries.get(sid)

    def of_kind(self, kind: str) -> list[tuple[str, Output]]:
        return [(sid, e.output) for sid, e in list(self.entries.items())
                if e.output.kind == kind]

    @contextlib.contextmanager
    def reserve(self, fps: int, capacity_fps: float, load: Load | None = None,
                strain: Strain | None = None) -> Iterator[None]:
        """Admit one more session of ``fps`` or raise Full; the place is held while it is
        opened (negotiating awaits: a burst of requests must not all pass the check before
        any of them is counted). ``load``: the host's CPU use over the last seconds;
        ``strain``: what the open sessions lost over them."""
        held = len(self.entries) + self._opening
        if held >= self.max_sessions:
            raise Full(f"the server holds its maximum of {self.max_sessions} sessions; try "
                       "again later")
        # An idle server admits one whatever its measure says: the measure is refitted
        # only from what it renders, so one taken under a passing overload would
        # otherwise refuse every session for good.
        if held and (held + 1) * fps > self.capacity_share * capacity_fps:
            raise Full(f"rendering capacity is taken by the open sessions (measured "
                       f"{capacity_fps:.0f} frames/s); try again later")
        # A host whose cores are already this busy has nothing left for another session's
        # encoder and voice, whatever the render lanes' measure says (other processes on
        # the host count: they take the same cores).
        if held and load is not None and self.host_share is not None and \
                load.host > self.host_share:
            raise Full(f"the host's CPUs were {load.host:.0%} busy over the last "
                       f"{load.seconds:.0f} s ({load.own:.0%} this server's, {held} "
                       "session(s)); try again later")
        # Whatever the measures predict, sessions already losing frames mean this server
        # has no room (a limit neither measure sees: ``streaming.strain``).
        if held and strain is not None and self.lost_share is not None and \
                strain.lost > self.lost_share:
            raise Full(f"the open sessions lost {strain.lost:.1%} of their frames over the "
                       f"last {strain.seconds:.0f} s (too late to render, or behind at "
                       "the encoder); try again later")
        self._opening += 1
        try:
            yield
        finally:
            self._opening -= 1

    def add(self, session: Session, output: Output) -> None:
        self.entries[session.id] = Entry(session, output)
        session.describe_extra = output.describe

    async def close(self, sid: str, reason: str = "closed") -> None:
        entry = self.entries.pop(sid, None)
        if entry is None:
            return
        await entry.session.close(reason)
        log.info("session %s closed (%s)", sid, reason, extra={"session": sid})
        await entry.output.close()

    async def close_all(self, reason: str = "the server is shutting down") -> None:
        """Every session told why (its data channel's last event: one to open again,
        elsewhere), then closed."""
        entries = list(self.entries.values())
        for e in entries:
            e.session.tell_closing(reason, retry=True)
        if entries:
            await asyncio.sleep(0.2)  # the events leave before the connections close
        for sid in list(self.entries):
            await self.close(sid, reason)

    async def sweep(self) -> None:
        """Close the sessions whose viewers are gone without a word (a closed lid, a lost
        network): their renders and tracks are freed."""
        for sid, entry in list(self.entries.items()):
            try:
                why = await entry.output.vanished()
            except Exception:  # noqa: BLE001 - one odd peer must not stop the watch
                log.exception("watchdog: session %s", sid, extra={"session": sid})
                continue
            if why is not None:
                log.warning("session %s closed: %s", sid, why, extra={"session": sid})
                await self.close(sid, why)
