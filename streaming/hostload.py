"""How busy the whole host's CPUs are, and how much of that is this server, for admission.

The render lanes' measured frames per second say what the model can render, not what a
session costs the host: its video encoder, its voice and its share of the event loop run
on the same cores as the lane, and so does whatever else runs on the machine. In an hour's
soak on a 2-core host, two sessions speaking back to back were late on 0.6-1.9 % of their
frames per 5-minute window, most of it dropped in bursts while a third session, admitted by
the lanes' measure, was on. ``HostLoad`` samples ``/proc/stat`` (every process on the
host) and this process's CPU time over a sliding window; admission (``streaming.registry``)
refuses another session while the host is busier than its share of the cores.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Load:
    """Shares of the host's CPU capacity (1.0: every core busy) over the last window."""

    host: float
    """Every process on the host, this server included."""
    own: float
    """This server's process (all its threads)."""
    seconds: float
    """The window's length."""


@dataclass(frozen=True)
class _Sample:
    t: float
    busy: float
    total: float
    own: float


def read_cpu_ticks(path: Path = Path("/proc/stat")) -> tuple[list[float], int] | None:
    """The host's clock ticks since boot over all CPUs, as /proc/stat lists them (user
    nice system idle iowait irq softirq steal), and the CPU count; None where there is
    no ``/proc/stat`` (not Linux)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    head = next((ln for ln in lines if ln.startswith("cpu ")), None)
    if head is None:
        return None
    # The guest columns after steal are already counted in user and nice: left out.
    ticks = [float(v) for v in head.split()[1:9]]
    ticks += [0.0] * (8 - len(ticks))
    cpus = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    return ticks, max(cpus, 1)


def read_proc_stat(path: Path = Path("/proc/stat")) -> tuple[float, float, int] | None:
    """(busy, total) clock ticks over all CPUs since boot and the CPU count; None where
    there is no ``/proc/stat``."""
    read = read_cpu_ticks(path)
    if read is None:
        return None
    ticks, cpus = read
    total = sum(ticks)
    # idle and iowait are the cores' free time; steal counts as busy (not ours to use).
    return total - ticks[3] - ticks[4], total, cpus


def own_cpu_seconds() -> float:
    """CPU seconds this process has used, all threads, user and system."""
    t = os.times()
    return t.user + t.system


class HostLoad:
    """A sliding window of samples; ``sample`` is cheap (one small file read) and is
    called every couple of seconds by the server's watchdog and at each admission."""

    def __init__(self, window_s: float = 20.0, min_span_s: float = 4.0,
                 stat: Callable[[], tuple[float, float, int] | None] = read_proc_stat,
                 own: Callable[[], float] = own_cpu_seconds,
                 clock: Callable[[], float] = time.monotonic):
        self.window_s, self.min_span_s = window_s, min_span_s
        self._stat, self._own, self._clock = stat, own, clock
        self._samples: deque[_Sample] = deque()
        self._cpus = 1

    def sample(self) -> None:
        stat = self._stat()
        if stat is None:
            return
        busy, total, self._cpus = stat
        now = self._clock()
        self._samples.append(_Sample(now, busy, total, self._own()))
        # Keep one sample older than the window so that a full window can be measured.
        while len(self._samples) > 2 and self._samples[1].t <= now - self.window_s:
            self._samples.popleft()

    def load(self) -> Load | None:
        """The shares over the window, or None before it spans ``min_span_s``."""
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        span = last.t - first.t
        ticks = last.total - first.total
        if span < self.min_span_s or ticks <= 0:
            return None
        host = (last.busy - first.busy) / ticks
        own = (last.own - first.own) / (span * self._cpus)
        return Load(min(max(host, 0.0), 1.0), min(max(own, 0.0), 1.0), span)
