"""Which thread count each kind of training step runs at on a CPU, from measured speed.

With another process busy on one of two cores, two threads wait on each other at every
operation and one thread can be several (up to twenty) times faster; on an idle host two are
faster. So each kind of step is timed at both counts before training (on throwaway copies;
a stage that starts without that probe tries the other count within its first half
minute), runs at the faster, and every few minutes tries the other count for a few steps
again (the load of the host changes during an hour). The head's stage planner and the
voice's trainers share this.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class Speed:
    """Seconds per step of one kind at one thread count: the probe's figure, then a moving
    average of the real steps."""

    seconds: float
    samples: int = 0

    def add(self, seconds: float, weight: float = 0.1) -> None:
        self.samples += 1
        # The first real steps replace the probe quickly; later ones move it slowly.
        w = max(weight, 1.0 / self.samples)
        self.seconds += w * (seconds - self.seconds)


class ThreadClock:
    """Measured seconds per step of each kind at each thread count, the chosen count per
    kind, the seconds spent per stage, and the periodic checks of the other count."""

    def __init__(self, check_seconds: float = 300.0, check_steps: int = 4) -> None:
        self.check_seconds = check_seconds
        """How often the other thread count is tried again for a few steps."""
        self.check_steps = check_steps
        self.speeds: dict[tuple[str, int], Speed] = {}
        self.threads: dict[str, int] = {}
        """The thread count each kind runs at (empty: leave torch's)."""
        self.spent: dict[str, float] = {}
        self._check: tuple[str, int, int, float] | None = None
        """A thread check under way: kind, thread count tried, steps left, when it began."""
        self._last_check: dict[str, float] = {}

    def speed(self, kind: str) -> float:
        t = self.threads.get(kind, 0)
        if (kind, t) in self.speeds:
            return self.speeds[kind, t].seconds
        known = [v.seconds for (k, _), v in self.speeds.items() if k == kind]
        return min(known) if known else 0.0

    def set_probe(self, kind: str, threads: int, seconds: float) -> None:
        self.speeds[kind, threads] = Speed(seconds)

    def choose_threads(self) -> None:
        """Each kind at its fastest measured thread count; a single thread must be clearly
        (10 %) faster to win, since an idle host is the usual case."""
        for kind in sorted({k for k, _ in self.speeds}):
            options = {t: v.seconds for (k, t), v in self.speeds.items() if k == kind}
            if not options:
                continue
            best = max(options)
            for t, s in sorted(options.items(), reverse=True):
                if s < 0.9 * options[best]:
                    best = t
            self.threads[kind] = best

    def record(self, kind: str, threads: int, seconds: float, stage: str) -> None:
        self.spent[stage] = self.spent.get(stage, 0.0) + seconds
        self.speeds.setdefault((kind, threads), Speed(seconds)).add(seconds)

    def threads_for(self, kind: str, now: float, max_threads: int) -> int:
        """The thread count for the next step of ``kind``: the chosen one, now and then the
        other for a few steps (CPU, more than one thread available). A check comes every
        ``thread_check_seconds``, and at once (30 s apart at most) when the steps have got
        twice as slow as the best this kind has run at."""
        current = self.threads.get(kind, max_threads)
        if max_threads <= 1 or not self.threads:
            return current
        if self._check is not None:
            if self._check[0] == kind:
                return self._check[1]
            self._check = None  # the stage moved on during a check: drop it
        last = self._last_check.setdefault(kind, now)
        mine = self.speeds.get((kind, current))
        best = min((v.seconds for (k, _), v in self.speeds.items() if k == kind),
                   default=0.0)
        slowed = mine is not None and mine.samples >= 5 and mine.seconds > 2 * best
        if now - last >= self.check_seconds or (slowed and now - last >= 30):
            other = 1 if current > 1 else max_threads
            # One step more than counted: the first at a new count warms up and is not
            # measured, unless it alone shows the other count is far slower.
            self._check = (kind, other, self.check_steps + 1, now)
            return other
        return current

    def after_step(self, kind: str, threads: int, seconds: float, stage: str,
                   now: float) -> None:
        """Record a step; ends a thread check when its steps are done, or at once when the
        first step at the other count is three times slower than the chosen count (with
        another process busy, two threads can be twenty times slower than one)."""
        check = self._check
        if check is None or check[0] != kind or check[1] != threads:
            self.record(kind, threads, seconds, stage)
            return
        _, t, left, began = check
        before = self.threads.get(kind, t)
        kept = self.speeds.get((kind, before))
        warm_up = left > self.check_steps
        if warm_up and kept is not None and seconds > 3 * kept.seconds:
            self.spent[stage] = self.spent.get(stage, 0.0) + seconds
            self.speeds[kind, t] = Speed(seconds, 1)
            self._check = None
            self._last_check[kind] = now
            return
        if warm_up:
            self.spent[stage] = self.spent.get(stage, 0.0) + seconds
        else:
            if left == self.check_steps:  # a fresh figure, not the old average
                self.speeds[kind, t] = Speed(seconds)
            self.record(kind, threads, seconds, stage)
        left -= 1
        if left > 0:
            self._check = (kind, t, left, began)
            return
        self._check = None
        self._last_check[kind] = now
        tried = self.speeds.get((kind, t))
        if tried is not None and kept is not None and tried.seconds < 0.9 * kept.seconds:
            self.threads[kind] = t
            log.info("%s steps now run on %d thread(s): %.2f s a step against %.2f", kind,
                     t, tried.seconds, kept.seconds)

    def start(self, kind: str, threads: int, first_check_after: float = 30.0) -> None:
        """Run ``kind`` at ``threads`` without a probe; the other count is first tried
        after ``first_check_after`` seconds (then every ``check_seconds``)."""
        self.threads[kind] = threads
        self._last_check[kind] = time.monotonic() - self.check_seconds + first_check_after

    def timed(self, kind: str, step: Callable[[], dict], max_threads: int,
              stage: str | None = None) -> Callable[[], dict]:
        """``step`` run at this kind's thread count (CPU with more than one thread), timed
        and recorded."""
        def run() -> dict:
            threads = max_threads
            if max_threads > 1:
                threads = self.threads_for(kind, time.monotonic(), max_threads)
                if threads != torch.get_num_threads():
                    torch.set_num_threads(threads)
            t0 = time.perf_counter()
            out = step()
            self.after_step(kind, threads, time.perf_counter() - t0, stage or kind,
                            time.monotonic())
            return out
        return run


@contextlib.contextmanager
def threads_kept() -> Iterator[None]:
    """Whatever a trainer's thread choices do inside, torch's thread count is as it was
    after."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def probe_threads(clock: ThreadClock, kind: str, run: Callable[[], object],
                  options: list[int], steps: int, wait: Callable[[], None] = lambda: None
                  ) -> None:
    """Time ``run`` (a step on throwaway copies) at each thread count in ``options`` after
    one untimed warm-up step; a count whose warm-up alone is three times slower than the
    fastest so far is not timed further. Leaves torch's thread count as it found it."""
    fastest = float("inf")
    with threads_kept():
        for threads in options:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            run()  # warm-up: first calls allocate and pick kernels
            wait()
            first = time.perf_counter() - t0
            if first > 3 * fastest:
                clock.set_probe(kind, threads, first)
                continue
            t0 = time.perf_counter()
            for _ in range(steps):
                run()
            wait()
            took = (time.perf_counter() - t0) / steps
            clock.set_probe(kind, threads, took)
            fastest = min(fastest, took)

