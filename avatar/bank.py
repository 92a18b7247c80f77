"""Reading the motion bank at run time: frames decoded a chunk at a time, kept in a small
cache, and made ready for compositing (``avatar.avatar.prepare_frames``).

A chunk is ``chunk`` frames (32 by default): reaching any frame decodes at most that many.
Sessions ask ``prefetch`` for the frames they will show next, so the decoding happens on
the bank's own thread, ahead of the frame's time, not on the event loop or in the middle of
a render batch. The cache is bounded in bytes; the least recently used frames go first.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import cv2
import numpy as np

from avatar import resample
from avatar.avatar import _IdleFrame, prepare_frames
from avatar.decode import DecodeError, rgb_frames
from avatar.errors import path_error
from avatar.motion import Entry, MotionGraph
from avatar.priority import lower_thread_priority

log = logging.getLogger(__name__)
V = TypeVar("V")

KEEP_S = 30.0
"""Seconds a prepared frame or a cross-fade stays cached unused. They are made a second
ahead of being shown, for that showing: the walk seldom comes back to the same cross-fade
(it avoids repeating itself within a minute). Kept until their bytes' bound instead, a
server with few sessions of small frames filled the bound over an hour (about 1,600
cross-fades of 360x288 in 512 MB, each new one another frame of resident memory), which
looks like a leak to anyone watching the process; with the limit in time they hold about
the last half minute of the sessions' walks."""
SHARP_AREA = 640 * 480
"""Frames larger than this are cross-faded bilinear only around the face (``_warp``)."""
TIMINGS_KEPT = 16
"""Recent decodes, cross-fades and preparations whose durations ``lead_s`` goes by."""
TAKEN_KEPT = 4096
"""Entries a render took that the bank remembers (a few seconds of many sessions' walks:
work for them still queued on the bank's thread is skipped)."""
FACE_HALF_IOD = 1.6
"""Half the side of that box in eye distances: the face mesh spans about 2.4 eye
distances from brow to chin (1.2 either side of its centre), with a margin."""


class MotionBank:
    def __init__(self, path: Path, index: dict[str, np.ndarray], files: list[str], fps: int,
                 geometry: tuple[np.ndarray, np.ndarray, np.ndarray], size: int,
                 cache_mb: float = 2048.0, prepared_mb: float = 1536.0,
                 mixed_mb: float = 512.0, keep_s: float = KEEP_S):
        self.path = path
        self.index = index
        self.files = files
        self.chunk = int(index["chunk"])
        self.n = len(index["state"])
        self.graph = MotionGraph(index, fps)
        self._geometry = geometry
        self._size = size
        self._affine = index["crop_affine"].astype(np.float64)
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()
        # Cross-fades mixed and frames prepared for painting, a second ahead of every
        # session (sixteen sessions: 400 entries; at 720p 3.7 MB a prepared entry with
        # its frame, 1.5 GB, and 0.2 GB of cross-fades): bounded in bytes, not in entries.
        # At 512 MB the bound let go of two thirds of sixteen 720p walks' prepared frames
        # before they were painted (``bench render --motion``, batch 16), and the renderer
        # prepared them again itself. A render takes its entry out (``take``), so what
        # the bound holds is the second ahead, and entries re-planned away until they
        # expire. A prepared entry holds its frame too: a cross-fade's mixed frame (kept
        # alive after the cross-fade cache lets it go) or a bank frame (kept alive after
        # the frame cache lets it go, unless the whole bank stays decoded). Counted, or the
        # prepared cache grows by a frame for every new cross-fade painted: uncounted, an
        # hour's soak at 360x288 kept growing by ~5 MB a minute after its tenth minute.
        self._prepared: _Lru[_IdleFrame] = _Lru(int(prepared_mb * 2**20), self._prepared_size,
                                                keep_s)
        self._mixed: _Lru[tuple[np.ndarray, np.ndarray]] = _Lru(
            int(mixed_mb * 2**20), lambda e, m: m[0].nbytes, keep_s)
        self._resident = False
        """Whether the whole bank is decoded and never evicted (``preload``)."""
        self._bytes = 0
        # 2 GB: sixteen sessions at 720p each reading their own 32-frame chunk need about
        # 1.4 GB; under that, chunks were decoded again before their frames were shown
        # (bench render --motion, batch 16: 75-93 frames/s at 1 GB, 121 at 2 GB, with the
        # same peak memory).
        self._limit = int(cache_mb * 2**20)
        self._lock = threading.Lock()
        self._decode_lock = threading.Lock()
        self._worker: _Worker | None = None
        self._queued: dict[int, int] = {}
        """Chunks handed to the bank's thread, with the first frame each decode keeps."""
        self.decoded_chunks = 0
        self.thread_nice = 0
        """Niceness the bank's thread runs at (Linux; a server lowers it so the renderer
        keeps its core where the walk turns: ``ServerConfig.bank_nice``)."""
        self._taken: OrderedDict[Entry, None] = OrderedDict()
        """The entries renders took lately (``take``), the oldest first."""
        self._took: dict[str, deque[float]] = {
            kind: deque(maxlen=TIMINGS_KEPT) for kind in ("decode", "mix", "prepare")}
        """Wall seconds of the recent pieces of work, as this host runs them now."""

    # ------------------------------------------------------------------ frames
    def rgb(self, i: int) -> np.ndarray:
        """Bank frame ``i`` (H, W, 3) uint8 at the output size."""
        with self._lock:
            f = self._frames.get(i)
            if f is not None:
                self._frames.move_to_end(i)
                return f
        self._decode(i)
        with self._lock:
            f = self._frames.get(i)
            if f is not None:
                self._frames.move_to_end(i)
        if f is None:  # evicted at once: a cache smaller than one chunk
            raise path_error(self.path / self.files[i // self.chunk],
                             "frame missing after decoding; the bundle is damaged")
        return f

    def _decode(self, i: int) -> None:
        c = i // self.chunk
        with self._decode_lock:  # one decoder at a time; a second caller waits for it
            with self._lock:
                if i in self._frames:
                    return
            name = self.files[c]
            first = c * self.chunk
            t0 = time.perf_counter()
            try:
                got = []
                # Frames before the one asked for were shown already (the walk plays
                # forwards): kept from it on.
                # One decoder thread: a chunk is a few dozen small frames, and FFmpeg's
                # own pool was started and ended for each (77 threads a second in a
                # server with two sessions) on a host the renderer needs.
                frames = rgb_frames(self.path / name, skip=i - first, container="mp4",
                                    threads=1, own=True)
                for j, rgb in enumerate(frames):
                    if rgb is not None:
                        got.append((first + j, rgb))
            except DecodeError as e:
                raise path_error(self.path / name, f"cannot be decoded ({e}); bundle "
                                 "damaged") from None
            self.decoded_chunks += 1
            with self._lock:
                self._took["decode"].append(time.perf_counter() - t0)
                for j, rgb in got:
                    if j not in self._frames:
                        self._frames[j] = rgb
                        self._bytes += rgb.nbytes
                self._evict()
                if self._queued.get(c, -1) >= i:
                    del self._queued[c]

    def preload(self) -> bool:
        """Decode the whole bank into the cache now, where it fits (a server before it
        serves): False, decoding one chunk only, where it does not. Otherwise the first
        minutes of serving decode a new chunk for nearly every turn of every walk, and
        with two sessions on two cores that cost the renderer 2-4 % of the first
        minute's frames."""
        self.rgb(0)
        with self._lock:
            per_frame = next(iter(self._frames.values())).nbytes
        if per_frame * self.n > 0.9 * self._limit:
            return False
        for first in range(self.chunk, self.n, self.chunk):
            self._decode(first)
        self._resident = True
        return True

    def _prepared_size(self, e: Entry, p: _IdleFrame) -> int:
        own = p.nbytes
        if e.b >= 0 or not self._resident:
            own += p.frame.nbytes
        return own

    def _evict(self) -> None:
        """Least recently used first, down to the bound (never under one chunk)."""
        while self._bytes > self._limit and len(self._frames) > self.chunk:
            _, old = self._frames.popitem(last=False)
            self._bytes -= old.nbytes

    def prefetch(self, entries: Sequence[Entry], paint: Sequence[Entry] = ()) -> None:
        """Make ``entries`` ready on the bank's thread (returns at once): their chunks
        decoded, their cross-fades mixed, and for those in ``paint`` (the frames a mouth
        will be painted on) what compositing needs prepared. None of it then happens on
        the caller's thread (the server's event loop) or in the middle of a render batch,
        where it holds up every session's frames.

        ``entries`` come in the order they are shown, and their work is queued in that
        order: each entry's decode, then its cross-fade. With every decode queued first,
        a sentence's start waited for the next chunk's decode (0.1-0.25 s on a busy
        2-core host) before its first cross-fade into speaking footage was mixed, and its
        frames reached the renderer too late to be painted (one live 720p session, eleven
        alternating pairs of ``bench serve`` runs: a median 1.1 % of speech frames late
        against 1.9)."""
        with self._lock:
            # Only the entries' own frames are looked up: this runs on the event loop for
            # every newly planned frame, and the cache may hold thousands.
            missing = {f for e in entries for f in e.frames() if f not in self._frames}
            mixed = {e for e in entries if e.b >= 0 and e in self._mixed}
            preps = list(dict.fromkeys(e for e in paint if e not in self._prepared))
        work: list[tuple[Callable, object]] = []
        seen: set[Entry] = set()
        for e in entries:
            for f in e.frames():
                if f not in missing:
                    continue
                c = f // self.chunk
                with self._lock:
                    # A decode keeps its chunk's frames from the one asked for on: an
                    # earlier frame of a chunk already queued needs a decode of its own.
                    if self._queued.get(c, f + 1) <= f:
                        continue
                    self._queued[c] = f
                work.append((self._safe_decode, f))
            if e.b >= 0 and e not in mixed and e not in seen:
                seen.add(e)
                work.append((self._safe_mix, e))
        if not work and not preps:
            return
        if self._worker is None:
            self._worker = _Worker("bank_0", nice=self.thread_nice)
        for fn, arg in work:
            self._worker.submit(READY, fn, arg)
        for e in preps:
            self._worker.submit(PREPARE, self._safe_prepare, e)

    def lead_s(self) -> float:
        """Seconds the bank's thread is predicted to take, from now, to have a frame of
        footage it has not decoded yet ready to show: the chunks queued before it and its
        own decoded, a piece of work in flight, and its cross-fade mixed (each the 90th
        percentile of the recent ones on this host, as loaded as it is). A walk that
        turns to new footage sooner than this shows it late: a 720p chunk takes about
        0.2 s to decode here, and a sentence's start turned the walk 0.16 s ahead."""
        with self._lock:
            took = {k: float(np.percentile(v, 90)) if v else 0.0
                    for k, v in self._took.items()}
            queued = 0 if self._resident else len(self._queued)
        decode = 0.0 if self._resident else took["decode"] * (queued + 1)
        return decode + max(took["mix"], took["prepare"]) + took["mix"]

    def wait_prefetched(self) -> None:
        """Return once what ``prefetch`` was asked for so far is done."""
        if self._worker is not None:
            self._worker.wait()

    def _painted(self, e: Entry) -> bool:
        """Whether a render has taken ``e`` already: the bank's thread, once behind the
        renderer, would otherwise make frames nobody will paint, and stay behind."""
        with self._lock:
            return e in self._taken

    def _safe_prepare(self, e: Entry) -> None:
        if self._painted(e):
            return
        try:
            self.background(e)
        except Exception:  # noqa: BLE001 - prepared again (and fails loudly) when painted
            log.exception("preparing bank frame %s failed", e)

    def _safe_mix(self, e: Entry) -> None:
        # Not skipped for a painted frame: a render's own cross-fade is cached already,
        # and a frame painted too late is shown plain (``show``).
        try:
            self._mixed_frame(e)
        except Exception:  # noqa: BLE001 - mixed again (and fails loudly) when shown
            log.exception("preparing bank cross-fade %s failed", e)

    def _safe_decode(self, i: int) -> None:
        try:
            self._decode(i)
        except Exception:  # noqa: BLE001 - the frame is decoded again (and fails loudly) when shown
            log.exception("prefetching bank frame %d failed", i)
            with self._lock:
                self._queued.pop(i // self.chunk, None)

    # ------------------------------------------------------------------ entries
    def show(self, e: Entry) -> np.ndarray:
        """The plain frame an entry shows (no painted mouth). A cross-fade's frame is
        mixed once (on the bank's thread when prefetched) and kept for both showing and
        painting."""
        if e.b < 0:
            return self.rgb(e.a)
        return self._mixed_frame(e)[0]

    def ready(self, e: Entry) -> bool:
        """Whether ``show(e)`` can answer from what is decoded and mixed already, without
        decoding (tens of milliseconds a chunk: not for the server's event loop)."""
        with self._lock:
            if e.b < 0:
                return e.a in self._frames
            return e in self._mixed

    def _mixed_frame(self, e: Entry) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            m = self._mixed.get(e)
        if m is None:
            t0 = time.perf_counter()
            m = self._compose(e)
            with self._lock:
                self._mixed.put(e, m)
                self._took["mix"].append(time.perf_counter() - t0)
        return m

    def _compose(self, e: Entry) -> tuple[np.ndarray, np.ndarray]:
        """The entry's frame and its crop transform (frame pixels -> crop pixels).

        A cross-fade is a morph, not a dissolve: both frames are moved toward a face
        position between theirs (the leaving frame toward the entering one's by ``w``,
        the entering one from the leaving one's), then mixed, so the face slides from one
        place to the other instead of showing twice. The crop transforms are similarities
        ([[a, -b], [b, a]]), a linear family, so a mix of two is one too.
        """
        a = self.rgb(e.a)
        if e.b < 0:
            return a, self._affine[e.a]
        b = self.rgb(e.b)
        ca, cb = _h(self._affine[e.a]), _h(self._affine[e.b])
        b_to_a = resample.invert(ca) @ cb        # b's frame pixels -> where a has that face
        a_to_b = resample.invert(b_to_a)
        eye = np.eye(3)
        move_a = (1 - e.w) * eye + e.w * a_to_b
        move_b = (1 - e.w) * b_to_a + e.w * eye
        h, w = a.shape[:2]
        box = self._face_box(e, move_a, (h, w)) if h * w > SHARP_AREA else None
        wa = _warp(a, move_a, (w, h), box)
        wb = _warp(b, move_b, (w, h), box)
        # One uint8 pass (OpenCV rounds and saturates): a fifth of float arithmetic's time.
        mixed = cv2.addWeighted(wa, 1.0 - e.w, wb, e.w, 0.0)
        crop = (1 - e.w) * (ca @ resample.invert(move_a)) + e.w * (cb @ resample.invert(move_b))
        return mixed, crop[:2]

    def _face_box(self, e: Entry, move_a: np.ndarray, hw: tuple[int, int]
                  ) -> tuple[int, int, int, int]:
        """Where the cross-fade shows the face (and a margin for the head): around frame
        ``a``'s face as ``move_a`` places it, which is where ``b``'s is placed too."""
        c = move_a[:2] @ np.append(self.index["centre"][e.a].astype(np.float64), 1.0)
        iod = float(max(self.index["iod"][e.a], self.index["iod"][e.b]))
        half = FACE_HALF_IOD * iod
        h, w = hw
        return (int(max(0, c[0] - half)), int(max(0, c[1] - half)),
                int(min(w, c[0] + half + 1)), int(min(h, c[1] + half + 1)))

    def background(self, e: Entry, keep: bool = True) -> _IdleFrame:
        """Everything compositing needs for an entry (cached, made ahead on the bank's
        thread; ``keep``: cache what is made here)."""
        with self._lock:
            p = self._prepared.get(e)
            if p is not None:
                return p
        frame, affine = self._compose(e) if e.b < 0 else self._mixed_frame(e)
        t0 = time.perf_counter()
        p = prepare_frames([frame], affine[None], *self._geometry, self._size)[0]
        with self._lock:
            if keep:
                self._prepared.put(e, p)
            self._took["prepare"].append(time.perf_counter() - t0)
        return p

    def take(self, e: Entry) -> _IdleFrame:
        """``background(e)`` for the render that paints it, which is the entry's last use
        (a frame is painted once): it leaves the cache. Kept, painted entries were the
        most recently used, so the cache's bound let go of those prepared ahead, the next
        to be painted, first: with sixteen 720p walks a second ahead (``bench render
        --motion``, batch 16) the renderer prepared 108 of 153 frames again itself."""
        with self._lock:
            p = self._prepared.pop(e)
            self._taken[e] = None
            while len(self._taken) > TAKEN_KEPT:
                self._taken.popitem(last=False)
        return p if p is not None else self.background(e, keep=False)


READY, PREPARE = 0, 1
"""The bank thread's two kinds of work, the first always before the second: decoding and
mixing (a session hands a frame to the renderer only once its footage is ready), then
preparing for compositing (which the renderer does itself where it is not done yet). In
one queue, first come first served, a turn of the walk waited behind the preparing of the
second ahead: one live 720p session's decodes waited up to 190 ms and its cross-fades up to
0.7 s, and its frames reached the renderer too late to be painted."""


class _Worker:
    """One thread running submitted calls, lower ``kind`` first, in order within a kind.
    The thread ends after ``idle_s`` with nothing to do and starts again with the next
    call, so a bank let go of leaves no thread behind."""

    def __init__(self, name: str, idle_s: float = 5.0, nice: int = 0):
        self._name = name
        self._idle_s = idle_s
        self._nice = nice
        self._queue: queue.PriorityQueue[tuple[int, int, Callable, object]] = \
            queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, kind: int, fn: Callable[[V], None], arg: V) -> None:
        with self._lock:  # put and start together, so the thread never ends over work
            self._queue.put((kind, next(self._order), fn, arg))
            if self._thread is None:
                # A daemon: a cache filler has nothing to finish when the process ends.
                self._thread = threading.Thread(target=self._run, name=self._name,
                                                daemon=True)
                self._thread.start()

    def wait(self) -> None:
        """Return once everything submitted before has run."""
        done = threading.Event()
        self.submit(PREPARE + 1, lambda _: done.set(), None)
        done.wait()

    def _run(self) -> None:
        lower_thread_priority(self._nice)
        while True:
            try:
                _, _, fn, arg = self._queue.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            fn(arg)


class _Lru(Generic[V]):
    """A cache bounded in bytes (``size(key, value)`` of each item, taken when it is put
    and kept with it) and in time (an item unused for ``keep_s`` goes): the least recently
    used go first, the newest is always kept. Not locked: the bank holds its lock around
    it."""

    def __init__(self, limit: int, size: Callable[[Entry, V], int],
                 keep_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self._size = size
        self.keep_s = keep_s
        self._clock = clock
        self._items: OrderedDict[Entry, tuple[V, int, float]] = OrderedDict()
        self.bytes = 0

    def __contains__(self, key: Entry) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Entry) -> V | None:
        now = self._clock()
        item = self._items.pop(key, None)
        if item is not None:
            self._items[key] = (item[0], item[1], now)  # the most recent now
        self._expire(now)
        return None if item is None else item[0]

    def pop(self, key: Entry) -> V | None:
        """The item for ``key``, taken out of the cache (None where it is not in it)."""
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.bytes -= item[1]
        return item[0]

    def put(self, key: Entry, value: V) -> None:
        now = self._clock()
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        n = self._size(key, value)
        self._items[key] = (value, n, now)
        self.bytes += n
        while self.bytes > self.limit and len(self._items) > 1:
            _, (_, gone, _) = self._items.popitem(last=False)
            self.bytes -= gone
        self._expire(now)

    def _expire(self, now: float) -> None:
        """The items unused for ``keep_s`` (the oldest first: the order is of last use)."""
        if self.keep_s is None:
            return
        while len(self._items) > 1:
            key = next(iter(self._items))
            _, n, used = self._items[key]
            if now - used <= self.keep_s:
                break
            del self._items[key]
            self.bytes -= n


def _h(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def _warp(img: np.ndarray, m: np.ndarray, size: tuple[int, int],
          sharp: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``img`` moved by ``m`` (its pixels -> output pixels), bilinear; with ``sharp``, a
    box of the output, bilinear only there and nearest-neighbour around it: a 720p
    frame's bilinear warp costs 11 ms of CPU here (3-channel remap has no fast path
    in OpenCV), a cross-fade needs two per frame, and outside the face, for the few
    frames a seam lasts, whole-pixel steps do not show."""
    # A move of under a tenth of a pixel anywhere in the frame is no move.
    h, w = img.shape[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64).T
    if np.abs((m - np.eye(3)) @ corners)[:2].max() < 0.1:
        return img
    if sharp is None:
        return cv2.warpAffine(img, m[:2], size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    out = cv2.warpAffine(img, m[:2], size, flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_REPLICATE)
    x0, y0, x1, y1 = sharp
    if x1 > x0 and y1 > y0:
        shifted = m[:2].copy()
        shifted[:, 2] -= (x0, y0)   # the box's own pixels
        out[y0:y1, x0:x1] = cv2.warpAffine(img, shifted, (x1 - x0, y1 - y0),
                                           flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REPLICATE)
    return out
