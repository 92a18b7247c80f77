"""The render scheduler: every session's frame requests, rendered in batches, earliest
deadline first, on every configured device.

Sessions submit ``Job``s (one video frame each: which avatar, which idle frame, which audio,
by when). Each lane (one device) runs in its own thread, off the event loop: it takes the job
with the earliest deadline, then adds more jobs for the same avatar, in deadline order,
while the batch would still finish before that earliest deadline (the lane's measured cost
per batch says how long a batch takes). A job that can no longer be rendered in time is
dropped, never queued behind; its session shows the idle frame instead. Results go back
through each job's callback (the server hands them to the event loop there).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from avatar.avatar import FrameRequest

log = logging.getLogger(__name__)


class Renderer(Protocol):
    """What a lane needs of an avatar: ``avatar.avatar.Avatar`` is one."""

    def render(self, requests: list[FrameRequest]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 16
    """Most frames one model call renders."""
    max_pending: int = 512
    """Jobs waiting in all, over every session; beyond it new jobs are refused."""
    hold_s: float = 0.25
    """A lane waits for more jobs while its earliest one would still be done this long
    before its deadline: sessions hand frames over one at a time, and rendering each as it
    comes made batches of one or two (a model call per frame costs two to three times a
    frame of a batch of 8 on a CPU). 0: render whatever is waiting at once. A quarter
    second, with sessions handing frames over half a second ahead
    (``SessionConfig.render_ahead_frames``): batches of about 6 frames a session, and a
    quarter second for a batch held up by a busy host (with 0.1 s and 0.24 s ahead, two
    sessions on two cores lost 1-5 % of their frames to the renderer being late)."""


START_SAMPLES = 32
"""Recent speech starts ``Scheduler.start_delay`` is taken over."""
START_MIN_SAMPLES = 4


@dataclass(order=True)
class Job:
    deadline: float
    seq: int
    avatar: str = field(compare=False)
    request: FrameRequest = field(compare=False)
    done: Callable[[Job, np.ndarray | None, str], None] = field(compare=False)
    """Called once, from a lane thread: (job, frame, "ok") or (job, None, "late" |
    "cancelled" | "error")."""
    submitted: float = field(default=0.0, compare=False)
    """When the session handed it over (the scheduler's clock)."""

    @property
    def session(self) -> str:
        return self.request.session


SPREAD_SAMPLES = 32
"""Recent batches whose time over the prediction ``Cost.spread`` is taken over."""
SPREAD_MIN_SAMPLES = 8
SPREAD_CAP = 2.0


class Cost:
    """A lane's time per batch, modelled as fixed + per_frame * size and fitted online by
    exponentially weighted least squares over the batches it renders; and how far recent
    batches ran over that (``spread``)."""

    def __init__(self, fixed: float = 0.01, per_frame: float = 0.01, decay: float = 0.98):
        self.fixed, self.per_frame, self.decay = fixed, per_frame, decay
        self._sums = np.zeros(5)  # weight, n, n^2, t, n*t
        self._ratios: deque[float] = deque(maxlen=SPREAD_SAMPLES)

    def predict(self, size: int) -> float:
        return self.fixed + self.per_frame * size

    def spread(self) -> float:
        """The 90th percentile of recent batches' time over their prediction (1 before
        there are enough, at most ``SPREAD_CAP``): the fit is a mean over about fifty
        batches, and on a host whose cores other work takes in bursts (a sentence's start:
        its synthesis and new footage decoded beside the renderer) batches run over it."""
        if len(self._ratios) < SPREAD_MIN_SAMPLES:
            return 1.0
        return float(np.clip(np.percentile(np.asarray(self._ratios), 90), 1.0, SPREAD_CAP))

    def observe(self, size: int, seconds: float) -> None:
        n, t = float(size), float(seconds)
        self._ratios.append(t / max(self.predict(size), 1e-9))
        self._sums = self._sums * self.decay + np.array([1.0, n, n * n, t, n * t])
        w, sn, snn, st, snt = self._sums
        det = w * snn - sn * sn
        if det > 1e-6 * w * snn:  # batches of more than one size: fit both terms
            per = (w * snt - sn * st) / det
            fixed = (st - per * sn) / w
            if per > 0 and fixed >= 0:
                self.fixed, self.per_frame = fixed, per
                return
        # One size seen so far (or a fit that makes no sense): keep the split, match the
        # mean time.
        scale = (st / w) / max(self.predict(int(round(sn / w))), 1e-9)
        self.fixed *= scale
        self.per_frame = max(1e-6, self.per_frame * scale)

    def capacity_fps(self, max_batch: int) -> float:
        return max_batch / self.predict(max_batch)


LATE_CAUSES = ("handed_over_late", "renderer_overran", "queued_behind")
"""Why a lane dropped a frame as too late to render (``Lane.late_cause``)."""
BURST_GAP_S = 0.5
"""Frames dropped within this long of the lane's last drop belong to the same burst."""
OVERRUN = 1.5
"""A batch that took this many times its predicted time overran."""


@dataclass
class LaneStats:
    frames: int = 0
    batches: int = 0
    late: int = 0
    late_by_cause: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(LATE_CAUSES, 0))
    late_bursts: int = 0
    """Runs of drops with under ``BURST_GAP_S`` between them."""
    errors: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class Lane:
    """One device with the avatars loaded on it."""

    def __init__(self, name: str, renderers: dict[str, Renderer], cost: Cost | None = None,
                 threads: int | None = None):
        self.name = name
        self.renderers = renderers
        self.cost = cost or Cost()
        self.stats = LaneStats()
        self.threads = threads
        """CPU threads the lane's model calls use (None: torch's default)."""
        self.last_batch: tuple[int, float, float] | None = None
        """(size, seconds, predicted seconds) of the lane's last model call."""
        self.busy_until: float | None = None
        """When the batch on the lane now is predicted to be done (scheduler clock; None:
        the lane is not rendering)."""
        self._last_late = -1e9

    def late_cause(self, job: Job) -> str:
        """Why ``job`` could not be rendered in time: handed over with less time before
        its deadline than the lane's batch in flight and then a batch of one take (the
        session was late: its speech or footage was not ready; such a frame is made only
        when the lane happens to be idle), the lane's last batch took much longer than
        predicted (the host's cores were taken: other processes, a hypervisor's steal), or
        it waited behind other work. Counted against a batch of one alone, frames handed
        over 24-39 ms before their deadline while a 49-ms batch was out were put down to
        waiting behind others (a 15-minute soak, 2-core EPYC)."""
        in_flight = self.last_batch[2] if self.last_batch is not None else 0.0
        if job.deadline - job.submitted < self.cost.predict(1) + in_flight:
            return "handed_over_late"
        if self.last_batch is not None and self.last_batch[1] > OVERRUN * self.last_batch[2]:
            return "renderer_overran"
        return "queued_behind"

    def note_late(self, job: Job, now: float) -> None:
        """Count a dropped frame by cause; the first of a burst is logged with why."""
        cause = self.late_cause(job)
        self.stats.late += 1
        self.stats.late_by_cause[cause] += 1
        if now - self._last_late > BURST_GAP_S:
            self.stats.late_bursts += 1
            size, took, predicted = self.last_batch or (0, 0.0, 0.0)
            log.info("lane %s: frames dropped as too late to render (%s; handed over "
                     "%.0f ms before their deadline, %.0f ms ago; the lane's last batch of "
                     "%d took %.0f ms against %.0f predicted)", self.name,
                     cause.replace("_", " "), 1000 * (job.deadline - job.submitted),
                     1000 * (now - job.submitted), size, 1000 * took, 1000 * predicted)
        self._last_late = now


def _use_threads(n: int | None) -> int | None:
    """Set this thread's torch thread count (an OpenMP setting, per thread); returns the
    count before, for putting back."""
    if n is None:
        return None
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


class Scheduler:
    def __init__(self, lanes: Sequence[Lane], cfg: SchedulerConfig | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not lanes:
            raise ValueError("the scheduler needs at least one lane")
        names = [set(lane.renderers) for lane in lanes]
        if any(n != names[0] for n in names):
            raise ValueError("every lane must hold the same avatars")
        self.lanes = list(lanes)
        self.cfg = cfg or SchedulerConfig()
        self.clock = clock
        self._heap: list[Job] = []
        self._arrivals: deque[float] = deque()
        self._starts: deque[float] = deque(maxlen=START_SAMPLES)
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stop = False

    # ------------------------------------------------------------ sessions' side
    def submit(self, avatar: str, request: FrameRequest,
               done: Callable[[Job, np.ndarray | None, str], None]) -> Job | None:
        """Queue one frame; None when the scheduler is full (the caller shows idle)."""
        job = Job(request.deadline, next(self._seq), avatar, request, done, self.clock())
        with self._cv:
            if len(self._heap) >= self.cfg.max_pending:
                return None
            heapq.heappush(self._heap, job)
            self._arrivals.append(self.clock())
            self._cv.notify()
        return job

    def cancel(self, session: str, before: int | None = None,
               since: int | None = None) -> int:
        """Drop every queued job of ``session`` (barge-in), or only its frames before
        frame ``before``, or from frame ``since`` on; returns how many."""
        def dropped(j: Job) -> bool:
            k = j.request.idle_index
            return j.session == session and (before is None or k < before) and \
                (since is None or k >= since)

        with self._cv:
            keep = [j for j in self._heap if not dropped(j)]
            gone = [j for j in self._heap if dropped(j)]
            self._heap = keep
            heapq.heapify(self._heap)
        for j in gone:
            j.done(j, None, "cancelled")
        return len(gone)

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def lead_time(self, frames: int) -> float:
        """Predicted seconds until ``frames`` submitted now are all rendered: what is left
        of the batch on the lane now, then the work already queued and these frames,
        shared by the lanes. (It used to count a whole batch of the queued frames' size as
        in flight whenever any were queued, rendering or not: 100-155 ms for a start's
        first two frames on the ``make demo`` bundle, whose rendered silences keep a few
        frames queued, where they came back in 35-150.)"""
        pending = self.pending
        per_lane = math.ceil((pending + frames) / len(self.lanes))
        now = self.clock()
        return min((0.0 if lane.busy_until is None else max(0.0, lane.busy_until - now))
                   + lane.cost.predict(per_lane) * lane.cost.spread() for lane in self.lanes)

    def note_start(self, seconds: float) -> None:
        """How long a stretch of speech placed to start at once took to have its first
        frames rendered and back on the event loop (any session's)."""
        self._starts.append(seconds)

    def start_delay(self) -> float:
        """The 90th percentile of the recent ``note_start`` times (0 before there are
        enough): what ``lead_time``'s model of the renderer leaves out on this host, such as
        the synthesis and encoder threads it shares the cores with and the hand-back through
        the event loop. On an AVX2-only 2-core EPYC the first frames came back 0.13 s after
        placing against 0.05 s predicted, and 17-20 of a session's 25-57 late frames were
        among its sentences' first five."""
        if len(self._starts) < START_MIN_SAMPLES:
            return 0.0
        return float(np.percentile(np.asarray(self._starts), 90))

    def start_lead(self, frames: int) -> float:
        """Seconds a start's first ``frames`` handed over now take to come back: the lanes'
        prediction (``lead_time``, stretched by their recent overruns: without that a new
        server's first sentences, placed before enough starts were measured, had their
        first frames back in 85-94 ms against 47 predicted beside the sentence's
        synthesis, `make demo` bundle on a 2-core EPYC, and late) or, where longer, the
        recent starts' (``start_delay``)."""
        return max(self.lead_time(frames), self.start_delay())

    def capacity_fps(self) -> float:
        """Frames per second all lanes together can render at full batches (measured)."""
        return sum(lane.cost.capacity_fps(self.cfg.max_batch) for lane in self.lanes)

    def warm_up(self, requests: Callable[[str, int], list[FrameRequest]]) -> None:
        """Render each batch size once on every lane and avatar, then time a second pass
        into the lane's cost model, before any session comes. A model's first call at a
        new batch shape is slow (on this machine's CPU oneDNN plans its kernels: 32 ms
        against 12 at batch 1, 110 against 83 at 16), and the cost model's first guess is
        no measurement: both made the first sentences after a start lose frames.
        ``requests(avatar, n)``: n frame requests for that avatar."""
        top = self.cfg.max_batch
        sizes = sorted({*range(1, min(16, top) + 1), top,
                        *(2 ** k for k in range(5, 12) if 2 ** k < top)})
        t0 = time.perf_counter()
        for lane in self.lanes:
            # Timed with the threads the lane will render with.
            before = _use_threads(lane.threads)
            try:
                for name, renderer in lane.renderers.items():
                    for n in sizes:
                        batch = requests(name, n)
                        renderer.render(batch)
                        t = time.perf_counter()
                        renderer.render(batch)
                        lane.cost.observe(n, time.perf_counter() - t)
            finally:
                _use_threads(before)
        log.info("renderers warmed up in %.1f s: %s", time.perf_counter() - t0,
                 ", ".join(f"{lane.name} {lane.cost.capacity_fps(top):.0f} frames/s at "
                           f"batch {top}" for lane in self.lanes))

    # ------------------------------------------------------------ lanes' side
    def take_batch(self, lane: Lane) -> list[Job]:
        """Pop this lane's next batch (call with nothing held). Late jobs found on the way
        are finished as "late". Returns [] when nothing can be rendered in time.

        A batch must be done by its earliest job's deadline. When the lane is behind, the
        earliest jobs have little time left and would allow only a batch of one or two:
        under load a model call costs two to three times what a frame of a larger batch
        does, so rendering those would keep the lane behind for good (every session late
        on a fifth of its frames, and worse as the sessions went on). So the batch may
        start further down the queue: it is chosen to render the most jobs in time less
        those passed over, which stay queued (another lane may still make them)."""
        late: list[Job] = []
        batch: list[Job] = []
        with self._cv:
            now = self.clock()
            # Jobs this lane cannot finish in time even alone (every lane holds every
            # avatar: the server loads each bundle on each device).
            while self._heap and now + lane.cost.predict(1) > self._heap[0].deadline:
                late.append(heapq.heappop(self._heap))
            if self._heap:
                avatar = self._heap[0].avatar
                popped: list[Job] = []
                same: list[Job] = []
                while self._heap and len(same) < 2 * self.cfg.max_batch:
                    j = heapq.heappop(self._heap)
                    popped.append(j)
                    if j.avatar == avatar:
                        same.append(j)
                start, size = self._choose(lane, now, same)
                batch = same[start:start + size]
                taken = {id(j) for j in batch}
                for j in popped:
                    if id(j) not in taken:
                        heapq.heappush(self._heap, j)
        for j in late:
            lane.note_late(j, now)
            j.done(j, None, "late")
        return batch

    def _choose(self, lane: Lane, now: float, jobs: list[Job]) -> tuple[int, int]:
        """(start, size) of the batch among ``jobs`` (one avatar, deadline order).

        From the front of the queue while that keeps up with the jobs coming in. Where it
        does not, the start that does most jobs in time per second of rendering: a job
        passed over counts as lost unless it can still be done after the batch."""
        spread = lane.cost.spread()

        def fits(size: int, deadline: float) -> bool:
            # A batch leaves its first frame room for the lane's recent overruns; a frame
            # that only makes it if nothing overruns is still tried alone.
            return now + lane.cost.predict(size) * (1.0 if size == 1 else spread) <= deadline

        def size_from(start: int) -> int:
            size = 0
            while start + size < len(jobs) and size < self.cfg.max_batch and \
                    fits(size + 1, jobs[start].deadline):
                size += 1
            return size

        def rate(start: int, size: int) -> float:
            after = now + lane.cost.predict(size) + lane.cost.predict(start)
            lost = sum(j.deadline < after for j in jobs[:start])
            return (size - lost) / lane.cost.predict(size)

        front = size_from(0)
        need = self.arrival_fps(now) / len(self.lanes)
        if front == len(jobs) or front == self.cfg.max_batch or \
                (front and rate(0, front) >= 1.1 * need):
            return 0, front
        best = (rate(0, front) if front else 0.0, 0, front)
        for start in range(1, len(jobs)):
            size = size_from(start)
            if size and (r := rate(start, size)) > best[0]:
                best = (r, start, size)
        return best[1], best[2]

    def arrival_fps(self, now: float) -> float:
        """Jobs submitted per second over the last second (call with the lock held)."""
        while self._arrivals and self._arrivals[0] < now - 1.0:
            self._arrivals.popleft()
        return float(len(self._arrivals))

    def render_batch(self, lane: Lane, batch: list[Job]) -> None:
        renderer = lane.renderers[batch[0].avatar]
        t0 = time.perf_counter()
        lane.busy_until = self.clock() + lane.cost.predict(len(batch))
        try:
            frames = renderer.render([j.request for j in batch])
        except Exception:  # noqa: BLE001 - one bad batch must not stop the lane
            lane.busy_until = None
            log.exception("rendering a batch of %d on %s failed", len(batch), lane.name)
            sessions = sorted({j.request.session for j in batch})
            if len(sessions) > 1:
                # A batch holds several sessions' frames: one session's bad request must
                # not cost the others theirs. Each session's part is tried on its own, so
                # only the part that fails again is lost.
                for s in sessions:
                    self.render_batch(lane, [j for j in batch if j.request.session == s])
                return
            lane.stats.errors += len(batch)
            for j in batch:
                j.done(j, None, "error")
            return
        took = time.perf_counter() - t0
        lane.busy_until = None
        lane.last_batch = (len(batch), took, lane.cost.predict(len(batch)))
        lane.cost.observe(len(batch), took)
        lane.stats.frames += len(batch)
        lane.stats.batches += 1
        lane.stats.batch_sizes.append(len(batch))
        del lane.stats.batch_sizes[:-1000]
        for j, f in zip(batch, frames, strict=True):
            j.done(j, f, "ok")

    def hold(self, lane: Lane) -> float:
        """Seconds this lane may wait for more jobs before its next batch (call with the
        lock held): 0 when the earliest job is due within its batch's time plus
        ``hold_s``, or a full batch waits."""
        if not self._heap or len(self._heap) >= self.cfg.max_batch:
            return 0.0
        first = self._heap[0]
        done_by = self.clock() + lane.cost.predict(len(self._heap))
        return max(0.0, first.deadline - done_by - self.cfg.hold_s)

    def _run(self, lane: Lane) -> None:
        _use_threads(lane.threads)
        while True:
            with self._cv:
                while not self._stop and not self._heap:
                    self._cv.wait(0.5)
                # A new job wakes the lane (notify): it may fill the batch or be due sooner.
                while not self._stop and (wait := self.hold(lane)) > 0:
                    self._cv.wait(wait)
                if self._stop:
                    return
            batch = self.take_batch(lane)
            if batch:
                self.render_batch(lane, batch)

    def start(self) -> None:
        for lane in self.lanes:
            t = threading.Thread(target=self._run, args=(lane,), name=f"lane-{lane.name}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
