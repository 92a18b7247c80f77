"""CPU time by kind of thread, for ``/metrics``: which of the server's jobs the cores go to.

An hour's soak on a 2-core host had one 5-minute window over its late-frame bar while the
server's CPU rose from about one core to 1.1-1.3 for the same work, and the process's total
could not say which part rose (the render lane, an encoder, speech synthesis, the event
loop). Python names its threads (``lane-cpu#0``, ``synthesis_1``, ``frame_0``, ...) but
not at the operating system's level, so ``top -H`` cannot tell them apart either. Linux
keeps each thread's CPU time in ``/proc/self/task/TID/stat``; ``ThreadCpu`` maps those
thread ids to Python's names, groups a pool's threads under its prefix (``synthesis``),
and adds what exited threads had used so the totals only grow. Threads Python did not start
(torch's OpenMP workers, the codecs' own) are ``native``; ``exited`` is what threads used
after the last read before they ended (the process's own total, which keeps it, less the
rest), so the kinds add up to the process's CPU time.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from pathlib import Path

from streaming.hostload import own_cpu_seconds

TASKS = Path("/proc/self/task")

_POOL_SUFFIX = re.compile(r"(_\d+|-\d+( \(.*\))?)$")
"""What distinguishes the threads of one pool or one kind: ``synthesis_3``, ``Thread-7
(run)``."""


def stat_cpu_seconds(path: Path, tick: float) -> float | None:
    """utime + stime of a ``/proc`` ``stat`` file (a process's or a thread's): fields 14 and
    15, the 12th and 13th after the command name's closing parenthesis; None when it is
    gone."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / tick


def kind(name: str | None) -> str:
    """The group a thread's CPU time is counted under."""
    if name is None:
        return "native"
    return _POOL_SUFFIX.sub("", name) or name


class ThreadCpu:
    """Cumulative CPU seconds of this process by thread kind; ``totals`` reads them (None
    where the system has no ``/proc/self/task``). One per server: it remembers the threads
    it saw, to keep counting those that have exited."""

    def __init__(self, tasks: Path = TASKS):
        self.tasks = tasks
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._seen: dict[int, tuple[str, float]] = {}
        self._exited: Counter[str] = Counter()
        self._rest = 0.0
        self._lock = threading.Lock()

    def totals(self) -> dict[str, float] | None:
        if not self.tasks.is_dir():
            return None
        names = {t.native_id: t.name for t in threading.enumerate()
                 if t.native_id is not None}
        now: dict[int, tuple[str, float]] = {}
        for entry in os.scandir(self.tasks):
            seconds = stat_cpu_seconds(Path(entry.path, "stat"), self._tick)
            if seconds is None or not entry.name.isdigit():
                continue  # it exited between the listing and the read
            tid = int(entry.name)
            now[tid] = (kind(names.get(tid)), seconds)
        process = own_cpu_seconds() if self.tasks == TASKS else None
        with self._lock:
            for tid, (group, seconds) in self._seen.items():
                again = now.get(tid)
                # Gone, or its id taken by a new thread (whose time starts again from 0).
                if again is None or again[1] < seconds:
                    self._exited[group] += seconds
                elif again[0] != group:
                    # Named since the last read (a thread Python had not yet listed, or
                    # renamed): what it used before stays with the kind it was counted as.
                    self._exited[group] += seconds
                    self._exited[again[0]] -= seconds
            self._seen = now
            out = Counter(self._exited)
        for group, seconds in now.values():
            out[group] += seconds
        if process is not None:
            # Per-thread times are rounded down to clock ticks and the process's is not, so
            # the difference wobbles by a few ticks: kept at its highest, it never falls.
            with self._lock:
                self._rest = max(self._rest, process - sum(out.values()))
                out["exited"] = self._rest
        return {g: round(s, 2) for g, s in sorted(out.items())}
