"""The motion graph: which of the person's own frames the avatar shows next.

The bank (``training.motion.bank``) holds the enrolment footage's usable stretches, each
frame labelled speaking, listening or idle. The runtime plays a stretch forwards while it
fits what the avatar is doing, and leaves it for another frame of the right state whose
pose, position, landmarks, shoulders and face-area pixels (and their velocities) agree
with the frame it leaves, morphing over a few frames so no jump shows. Nothing is ever
played backwards. Frames whose next two seconds were shown within the last minute are
left out, so a stretch does not come back while the viewer might remember it, and the
next one is drawn uniformly among all good enough. While speaking, the stretch's own
speech loudness is matched to the new speech's where it is known (a larger movement where
the new speech is louder, as in the person's own footage).

What is coming steers the walk where it is known in time. Where the person's nod model
(``avatar.cues``) wants a nod, the walk enters their footage so that one of their own nods
lands on that frame; where the avatar is about to fall silent or start speaking, it enters
footage where the person does so at that very frame, so the change of state is theirs
and needs no seam.

The graph is implicit: the cost from one frame to every frame of the bank is a few
thousand multiply-adds a frame, so a transition is priced when it is needed and nothing
quadratic is stored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from avatar.audio import frame_levels_db
from avatar.cues import bank_nods

IDLE, LISTENING, SPEAKING = 0, 1, 2
OPEN_MOUTH = 0.015
"""Mouth opening (inner-lip gap over eye distance) above which a frame's own mouth is not
shut (a shut mouth reads about 0.002): such a frame is never shown without a painted
mouth, so the mouth is still and closed whenever the avatar is silent (GRID's listening
frames: 0.032 at the 90th percentile). Taken over the person's own rest opening where that
is wider (``open_mouth``)."""
SHUT_MOUTH = 0.002


def open_mouth(opening: np.ndarray, silent: np.ndarray) -> float:
    """The opening above which this footage's mouth is open: ``OPEN_MOUTH`` as far above
    the person's rest (the median of the silent frames) as it is above a shut mouth. A face
    whose lips rest apart (the `make demo` sample's rest reads 0.117) otherwise had every
    silent frame painted shut: 0.4 of a core on a 2-core host while nobody spoke, for a
    mouth no stiller than the footage's own."""
    rest = opening[silent & np.isfinite(opening)]
    if not len(rest):
        return OPEN_MOUTH
    return max(OPEN_MOUTH, float(np.median(rest)) + OPEN_MOUTH - SHUT_MOUTH)


WANTS = {"speaking": (SPEAKING,), "silent": (LISTENING, IDLE)}
"""The footage states each mode of the avatar may show."""


@dataclass(frozen=True)
class Entry:
    """What one output frame shows: bank frame ``a``, cross-faded toward ``b`` by ``w``."""

    a: int
    b: int = -1
    w: float = 0.0

    def frames(self) -> tuple[int, ...]:
        return (self.a,) if self.b < 0 else (self.a, self.b)


@dataclass(frozen=True)
class MotionConfig:
    fade: int = 8
    """Most frames of cross-fade at a seam (320 ms at 25 fps): the change between two
    stretches is spread over as many frames as keep each frame's change within the
    footage's usual one (``accept_quantile``), at least ``min_fade``."""
    min_fade: int = 2
    forced_fade_scale: float = 2.0
    """A transition costlier than the accepted budget (no candidate was within it) may
    fade this many times the longest fade, where the cost needs it and the stretch
    entered has the frames..."""
    hold_leaving: bool = True
    """...and the stretch left, where it ends before the fade does, holds its last frame
    (False: the fade ends with it)."""
    pixel_quantile: float | None = 95.0
    """A fade is made as long as keeps each of its frames' change of the face area (the
    bank's thumbnails, blended as the fade blends them, the motion of both stretches
    included) and of its landmarks within this percentile of the footage's own
    consecutive changes, up to the forced length; where no length does, the one whose
    worst frame changes least.
    The cost's estimate alone (``accept_quantile``) left fades short: on GRID's training
    clips most seams over the footage's 99th percentile had the fade their cost asked
    for, and were over it on the face area's pixels; with this check (and the choice
    below) 2.0-2.1 % of seam frames were, against 5.3-5.5 %. None: the cost's estimate
    only."""
    silent_fade: int = 8
    """The same bound in silence. Silent seams come every second or so on footage whose
    silences are short (GRID's: 0.7 s), and there a longer fade keeps the morph's head
    movement within the listener's own."""
    room_by_need: bool = False
    """A stretch may be entered where it holds a stay and the fade its own cost needs
    (False: a stay and the longest fade). Short stretches that match well stay
    reachable when the longest fade is long."""
    group_weights: tuple[float, ...] = (1.0, 1.0, 0.5, 1.0, 0.5, 3.0)
    """How much pose, position, size, landmarks, shoulders and face-area pixels count in
    a transition's cost. Pixels most: what a viewer sees jump is the picture."""
    min_stay_s: float = 0.6
    """A stretch entered is played at least this long (no flicker between stretches)."""
    silent_min_stay_s: float | None = None
    """The same in silence (listening and idle footage); None: from the footage
    (``silent_stay``): as long as ``min_stay_s`` where the footage's silences leave room
    for it, shorter (down to ``shortest_silent_stay_s``) where they are short."""
    shortest_silent_stay_s: float = 0.2
    short_silent_fade: int = 6
    """The longest cross-fade in silence where the footage's silences are short (the
    shortest stay's case): a stay and a fade of 0.44 s fit in more of GRID's 0.7 s
    silences than 0.32 + 0.36 s, so the walk finds closer matches (below)."""
    silent_room_share: float = 0.6
    """``silent_stay`` keeps ``min_stay_s`` in silence where stretches with room for it and
    the longest fade hold at least this share of the silent footage. A stay that only a few
    silent stretches have room for leaves the walk few places to go: on GRID (3-second
    clips, 0.7 s of silence at each end; 38 % of its silent frames in stretches with room
    for 0.6 s and a fade) every silent seam was a poor match, and the walk's morphs made
    the silence move more than the person does."""
    max_stay_s: float = 4.0
    """After this long in one stretch the walk looks for a good way out (variety)."""
    leave_quantile: float = 75.0
    """A voluntary transition is taken only if it costs no more than this percentile of
    the footage's own frame-to-frame costs; a forced one takes the best there is."""
    recent_s: float = 60.0
    repeat_window_s: float = 2.0
    """A frame whose next ``repeat_window_s`` hold a frame shown within ``recent_s`` is
    priced out of the next choice: no 2-second stretch twice in a minute; nor is a frame
    a stretch was entered at within ``recent_s`` (no seam twice, no loop)."""
    accept_quantile: float = 75.0
    """The next stretch is drawn uniformly among all frames whose transition, spread over
    the cross-fade, changes each frame no more than this percentile of the footage's own
    frame-to-frame changes: the cheapest alone would steer the walk toward the stillest
    footage (still frames match anything)."""
    silent_accept_quantile: float = 50.0
    """The same for silent footage: a listener is stiller than a speaker, and every
    seam's morph moves the head, so silence takes closer matches (GRID, whose silences
    need a seam every second: silent head-speed KS 0.24 at 75, 0.19 at 50; at 25 the
    sample's silence was stiller than the person's, KS 0.16)."""
    choices: int = 3
    """Where none is that cheap: drawn among this many of the cheapest..."""
    choice_slack: float = 1.5
    """...that cost at most this many times the cheapest..."""
    pixel_candidates: int = 24
    """...of those among this many of the cheapest that the longest fade brings in
    within ``pixel_quantile`` (where any do; 0: not looked at)."""
    velocity_weight: float = 0.5
    envelope_weight: float = 2.0
    envelope_s: float = 1.0
    nod_tolerance: int = 2
    """A footage nod within this many frames of where the speech wants one is on time."""
    switch_window: int = 25
    """How far (frames) beyond the shortest reachable distance a coming change between
    speaking and silence is looked for: the walk then enters footage where the person
    falls silent (or starts speaking) at that very frame, so the change needs no seam and
    looks as theirs does."""
    nod_settle: int = 3
    """Frames between a cross-fade's end and the lowest point of the nod it leads to (the
    dip begins about five frames before it; the fade's last frames are nearly all the
    new stretch)."""


@dataclass
class _State:
    cur: int
    stay: int
    pending: list[Entry] = field(default_factory=list)
    reused: int = 0
    """Frames in a row shown again within the last minute."""
    nods_upto: int = -1
    """Nods the speech wants at output frames up to this one have been seen to."""
    hold_until: int = -1
    """Until this output frame the walk stays in its stretch unless it must leave (a nod
    it was placed for is coming)."""
    switch_at: int = -1
    """The output frame where the mode changes and the stretch played changes state with
    it (a planned switch): the stretch is played up to there."""
    switch_tried: int = -1
    """The coming switch already planned for (or found impossible)."""


class MotionGraph:
    """The bank's per-frame features, standardised so a cost of 1 is a typical change
    between two consecutive frames of the footage."""

    def __init__(self, index: dict[str, np.ndarray], fps: int,
                 group_weights: tuple[float, ...] = MotionConfig.group_weights):
        self.fps = fps
        self.n = len(index["state"])
        self.state = index["state"].astype(np.int8)
        self.cont = index["cont"].astype(bool)
        self.loud = np.clip((index["loudness_db"].astype(np.float32) + 60) / 20, 0, 3)
        opening = index["opening"].astype(np.float32)
        self.open_mouth = open_mouth(opening, np.isin(self.state, WANTS["silent"]))
        self.mouthy = (self.state == SPEAKING) | ~(np.nan_to_num(opening, nan=1.0)
                                                    <= self.open_mouth)
        iod = np.maximum(index["iod"].astype(np.float32), 1.0)[:, None]
        centre = index["centre"].astype(np.float32)
        lm = (index["landmarks"].astype(np.float32) - centre[:, None, :]) / iod[:, :, None]
        sh = index["shoulders"].astype(np.float32).reshape(self.n, -1)
        sh_ok = np.isfinite(sh).all(1)
        sh = np.where(sh_ok[:, None], sh, np.nanmedian(sh, axis=0) if sh_ok.any() else 0.0)
        thumb = index["thumb"].astype(np.float32)
        t = thumb.shape[1] // 8 * 8
        pooled = thumb[:, :t, :t].reshape(self.n, 8, t // 8, 8, t // 8).mean((2, 4))
        groups = {"pose": index["euler"].astype(np.float32), "position": centre,
                  "size": np.log(iod), "landmarks": lm.reshape(self.n, -1),
                  "shoulders": np.nan_to_num(sh), "pixels": pooled.reshape(self.n, -1)}
        pairs = np.flatnonzero(self.cont[:-1]) if self.n > 1 else np.zeros(0, int)
        cols, weights = [], []
        for x, gw in zip(groups.values(), group_weights, strict=True):
            x = np.nan_to_num(x.astype(np.float32))
            d = np.abs(x[pairs + 1] - x[pairs]) if pairs.size else np.ones_like(x[:1])
            # One scale per group: a typical frame-to-frame change of that group.
            scale = max(float(np.median(d)), 1e-3) if d.size else 1.0
            cols.append(x / scale)
            weights.append(np.full(x.shape[1], gw / x.shape[1], np.float32))
        self.thumb = index["thumb"]
        """The face area's grey thumbnails (as stored), for a fade's check."""
        self.pixel_change = np.abs(thumb[pairs + 1] - thumb[pairs]).mean((1, 2)) \
            if pairs.size else np.zeros(0, np.float32)
        """Mean absolute change of the thumbnail between consecutive frames."""
        self.lm = index["landmarks"].astype(np.float32) / iod[:, :, None]
        """The landmarks in eye distances, for a fade's check."""
        self.lm_change = np.linalg.norm(self.lm[pairs + 1] - self.lm[pairs], axis=2).mean(1) \
            if pairs.size else np.zeros(0, np.float32)
        """Their mean speed between consecutive frames."""
        self.x = np.concatenate(cols, 1)
        self.w = np.concatenate(weights) / sum(group_weights)
        vel = np.zeros_like(self.x)
        if pairs.size:
            vel[pairs + 1] = self.x[pairs + 1] - self.x[pairs]
        # A stretch's first frame moves as its second does.
        first = np.flatnonzero(~np.concatenate([[False], self.cont[:-1]]))
        ok = first[(first + 1 < self.n)]
        ok = ok[self.cont[ok]]
        vel[ok] = vel[ok + 1]
        self.vel = vel
        # Frames of uninterrupted playback from each frame on (itself included).
        left = np.ones(self.n, np.int32)
        for i in range(self.n - 2, -1, -1):
            if self.cont[i]:
                left[i] = left[i + 1] + 1
        self.left = left
        self.nod = bank_nods(index, fps)
        """Frames where one of the person's nods is at its lowest."""
        # The same, counting only frames of one state group (speaking, or silent).
        self.left_in: dict[tuple[int, ...], np.ndarray] = {}
        for want in WANTS.values():
            inside = np.isin(self.state, want)
            run = inside.astype(np.int32)
            for i in range(self.n - 2, -1, -1):
                if inside[i] and self.cont[i]:
                    run[i] = run[i + 1] + 1
            self.left_in[want] = run
        # Where the footage changes between speaking and silent in one stretch: the first
        # frame of the new state (with room to stay in it), keyed by the state left.
        prev = np.concatenate([[False], self.cont[:-1]])
        self.switch_into: dict[tuple[int, ...], np.ndarray] = {}
        for want, other in ((WANTS["speaking"], WANTS["silent"]),
                            (WANTS["silent"], WANTS["speaking"])):
            was = np.concatenate([[False], np.isin(self.state[:-1], want)])
            self.switch_into[want] = prev & was & np.isin(self.state, other) & \
                (self.left_in[other] >= 2 * fps // 5)

    def costs(self, src: int, vel_weight: float) -> np.ndarray:
        """Cost of showing each bank frame right after frame ``src``'s successor would
        have been: how far its look and its motion are from continuing ``src``."""
        nxt = self.x[src] + self.vel[src]
        d = np.square(self.x - nxt) @ self.w
        dv = np.square(self.vel - self.vel[src]) @ self.w
        return d + vel_weight * dv

    def consecutive_cost(self) -> np.ndarray:
        """The same cost between each frame and its own successor in the footage: the
        yardstick transitions are compared with."""
        i = np.flatnonzero(self.cont[:-1])
        if not i.size:
            return np.zeros(1, np.float32)
        return np.square(self.x[i + 1] - (self.x[i] + self.vel[i])) @ self.w


class Walker:
    """One viewer's walk through the bank. ``next(mode)`` gives the next output frame;
    ``snapshot``/``restore`` let a timeline re-plan from a frame already decided."""

    def __init__(self, graph: MotionGraph, cfg: MotionConfig | None = None, seed: int = 0,
                 start: int | None = None):
        self.g = graph
        self.cfg = cfg or MotionConfig()
        self.rng = np.random.default_rng(seed)
        fps = graph.fps
        self.min_stay = max(1, int(round(self.cfg.min_stay_s * fps)))
        self.min_stay_silent = silent_stay(graph, self.cfg) \
            if self.cfg.silent_min_stay_s is None \
            else max(1, int(round(self.cfg.silent_min_stay_s * fps)))
        self.silent_fade = min(self.cfg.silent_fade, self.cfg.short_silent_fade) \
            if short_silences(graph, self.cfg) else self.cfg.silent_fade
        """The longest cross-fade in silence for this bank."""
        self.max_stay = max(self.min_stay, int(round(self.cfg.max_stay_s * fps)))
        self.recent = int(round(self.cfg.recent_s * fps))
        self.ahead = max(1, int(round(self.cfg.repeat_window_s * fps)))
        self.last_used = np.full(graph.n, -10**9, np.int64)
        self.entered = np.full(graph.n, -10**9, np.int64)
        """The output frame at which each bank frame was last entered by a transition."""
        self.k = 0
        # Each walk starts somewhere else in the silent footage (sessions opened together
        # do not move in step), where a stretch long enough to stay in begins.
        # (Best with the mouth shut; then any silent footage; then anything.)
        silent = np.isin(graph.state, WANTS["silent"])
        long = graph.left_in[WANTS["silent"]] >= self.min_stay_silent
        pool = np.arange(graph.n)
        for wanted in (silent & long & ~graph.mouthy, silent & long, silent):
            if wanted.any():
                pool = np.flatnonzero(wanted)
                break
        first = int(self.rng.choice(pool)) if start is None else start
        self.s = _State(cur=first, stay=1, pending=[Entry(first)])
        self.transitions = 0
        natural = graph.consecutive_cost()
        self.leave_cost = float(np.percentile(natural, self.cfg.leave_quantile))
        # A difference spread over a fade of f frames changes each by 1/(f+1) of it, and
        # the cost is squared.
        self.step_cost = float(np.percentile(natural, self.cfg.accept_quantile))
        self.accept_cost = self.step_cost * (self.cfg.fade + 1) ** 2
        self.accept_silent = float(np.percentile(natural, self.cfg.silent_accept_quantile)) \
            * (self.silent_fade + 1) ** 2
        q = self.cfg.pixel_quantile
        self.pixel_step = float(np.percentile(graph.pixel_change, q)) \
            if q is not None and graph.pixel_change.size else None
        """The largest change of the face area's thumbnail a fade's frame may make..."""
        self.lm_step = max(float(np.percentile(graph.lm_change, q)), 1e-6) \
            if self.pixel_step is not None else 1.0
        """...and of its landmarks."""

    def snapshot(self) -> tuple:
        return (dataclasses.replace(self.s, pending=list(self.s.pending)), self.k)

    def restore(self, snap: tuple) -> None:
        s, self.k = snap
        self.s = dataclasses.replace(s, pending=list(s.pending))

    def next(self, mode: str, envelope: np.ndarray | None = None,
             nods: np.ndarray | None = None, switch_in: int | None = None) -> Entry:
        """The next output frame while the avatar is ``speaking`` or ``silent``.
        ``envelope``: the coming speech's loudness (dB per frame), where known; ``nods``:
        whether a nod should peak at this frame and each of the next (``avatar.cues``),
        as far as known; ``switch_in``: frames from this one to the next change of mode,
        where known (None: not within sight)."""
        s = self.s
        if s.pending:
            e = s.pending.pop(0)
        else:
            e = None
            if mode == "speaking" and nods is not None and nods.any():
                e = self._nod_step(WANTS[mode], nods)
            if e is None and switch_in is not None:
                e = self._switch_step(WANTS[mode], switch_in)
            if e is None:
                e = self._step(WANTS[mode], envelope)
        for f in e.frames():
            self.last_used[f] = self.k
        self.k += 1
        return e

    def _step(self, want: tuple[int, ...], envelope: np.ndarray | None) -> Entry:
        g, s, c = self.g, self.s, self.cfg
        cur = s.cur
        nxt = cur + 1 if 0 <= cur < g.n - 1 and g.cont[cur] else -1
        # Frames shown within the last minute may come back for a moment, never for
        # long: a run of them ends the stretch.
        fresh = nxt >= 0 and self.k - self.last_used[nxt] >= self.recent
        s.reused = 0 if fresh else s.reused + 1
        # A stretch ending within a fade is left, unless it ends where the mode changes
        # (a planned switch: then it ends at the change, or a frame or two before it).
        left = int(g.left_in[want][nxt]) if nxt >= 0 else 0
        fits = nxt >= 0 and s.reused < self.ahead // 3 and (
            left > self._cap(want) or self.k <= s.switch_at <= self.k + left + c.nod_tolerance)
        if fits and (s.stay < self.max_stay or self.k <= max(s.hold_until, s.switch_at)):
            # Through a planned switch the footage's new state is a stretch of its own.
            s.cur, s.stay = nxt, 1 if self.k == s.switch_at else s.stay + 1
            return Entry(nxt)
        target, cost = self._choose(cur if cur >= 0 else 0, want, envelope)
        if fits and (target < 0 or cost > self.leave_cost):
            s.cur, s.stay = nxt, s.stay + 1  # no good way out yet: play on
            return Entry(nxt)
        if target < 0:  # nothing of this state at all: play on, or restart the walk
            if nxt >= 0:
                s.cur, s.stay = nxt, s.stay + 1
                return Entry(nxt)
            target = int(np.argmax(g.left))
        return self._transition(nxt, target, cost, want)

    def _cap(self, want: tuple[int, ...]) -> int:
        """The longest cross-fade in this state."""
        return self.silent_fade if want == WANTS["silent"] else self.cfg.fade

    def _stay(self, want: tuple[int, ...]) -> int:
        """The shortest stay in a stretch of this state."""
        return self.min_stay_silent if want == WANTS["silent"] else self.min_stay

    def _needed(self, cost: np.ndarray, cap: int) -> np.ndarray:
        """Frames of cross-fade a transition of each ``cost`` needs so that each frame
        changes no more than the footage's usual step, within ``min_fade`` .. ``cap``."""
        with np.errstate(invalid="ignore"):
            need = np.ceil(np.sqrt(np.maximum(cost, 0.0) / max(self.step_cost, 1e-6))) - 1
        return np.clip(np.nan_to_num(need, nan=cap, posinf=cap), self.cfg.min_fade,
                       cap).astype(int)

    def _fade(self, nxt: int, target: int, cost: float, cap: int, hold: bool = False) -> int:
        """Frames of cross-fade from ``nxt`` into ``target``: enough to keep each frame's
        change within the footage's usual one, within the bounds and the stretch entered,
        and within the stretch left unless its last frame may be ``hold``-en."""
        need = int(self._needed(np.array([cost]), cap)[0])
        leaving = int(self.g.left[nxt]) if nxt >= 0 else 0
        return min(need, need if hold else leaving, int(self.g.left[target]) - 1)

    def _transition(self, nxt: int, target: int, cost: float, want: tuple[int, ...],
                    most: int | None = None) -> Entry:
        s, g = self.s, self.g
        self.transitions += 1
        s.reused = 0  # a bank too small to avoid repeats repeats rather than fade for ever
        self.entered[target] = self.k
        cap = self._cap(want)
        longest = max(cap, int(round(cap * self.cfg.forced_fade_scale)))
        forced = cost > self._accept(want)
        # Nothing within the budget: the change is larger than the longest fade spreads
        # within the footage's usual step, so it gets a longer one, the leaving stretch's
        # last frame held where it ends first (on GRID's training clips most seams over
        # the footage's 99th percentile were these, fades cut short by the cap or by a
        # clip's end).
        hold = self.cfg.hold_leaving
        fade = self._fade(nxt, target, cost, longest if forced else cap, forced and hold)
        bound = self._fade_bound(nxt, target, want)
        if most is not None:
            bound, fade = min(bound, most), min(fade, most)
        if self.pixel_step is not None and bound > fade >= 0:
            fade = self._pixel_fade(nxt, target, fade, bound)
        if fade <= 0:
            s.cur, s.stay = target, 1
            return Entry(target)
        last = nxt + int(g.left[nxt]) - 1 if nxt >= 0 else s.cur
        first = nxt if nxt >= 0 else s.cur
        s.pending = [Entry(min(first + j, last), target + j, (j + 1) / (fade + 1))
                     for j in range(fade)]
        s.cur, s.stay = target + fade - 1, fade
        return s.pending.pop(0)

    def _pixel_fade(self, nxt: int, target: int, lo: int, hi: int) -> int:
        """The shortest fade from ``lo`` to ``hi`` frames whose every frame changes the
        face area within the footage's own (``_fade_worst`` at most 1); where none does,
        the one whose worst frame changes least."""
        best, least = lo, np.inf
        for f in range(lo, hi + 1):
            worst = self._fade_worst(nxt, target, f)
            if worst <= 1.0:
                return f
            if worst < least:
                best, least = f, worst
        return best

    def _fade_worst(self, nxt: int, target: int, f: int) -> float:
        """The largest change from one frame to the next over a fade of ``f`` frames into
        ``target``, over the most a frame may change (``_fades_worst``)."""
        return float(self._fades_worst(nxt, np.array([target]), f)[0])

    def _fades_worst(self, nxt: int, targets: np.ndarray, f: int) -> np.ndarray:
        """For fades of ``f`` frames into each of ``targets``: the largest change from one
        frame to the next, from the frame shown last to the first plain frame after the
        fade (the stretch left held at its last frame where it ends first), over the most
        a frame may change: of the face area's thumbnail (``pixel_step``) or of its
        landmarks (``lm_step``; the morph moves them about linearly), whichever is
        further over."""
        g, s = self.g, self.s
        first = nxt if nxt >= 0 else s.cur
        last = first + int(g.left[first]) - 1 if nxt >= 0 else s.cur
        # Frame by frame: the frame shown last, the fade's mixes, the first plain frame.
        a = np.r_[s.cur, np.minimum(first + np.arange(f), last)]
        b = targets[:, None] + np.arange(f + 1)[None, :]
        w = (np.arange(1, f + 1) / (f + 1)).astype(np.float32)
        worst = np.zeros(len(targets), np.float32)
        for x, step in ((g.thumb, self.pixel_step), (g.lm, self.lm_step)):
            shape = (1, -1, *([1] * (x.ndim - 1)))
            xa = x[a].astype(np.float32)[None]           # (1, f + 1, ...)
            xb = x[b].astype(np.float32)                 # (k, f + 1, ...)
            ww = w.reshape(shape)
            mix = (1 - ww) * xa[:, 1:] + ww * xb[:, :f]  # (k, f, ...)
            shown = np.broadcast_to(xa[:, :1], (len(targets), *xa.shape[1:]))[:, :1]
            seq = np.concatenate([shown, mix, xb[:, f:]], axis=1)
            d = np.diff(seq, axis=1)
            change = np.abs(d).mean((2, 3)) if x is g.thumb else \
                np.linalg.norm(d, axis=3).mean(2)
            worst = np.maximum(worst, change.max(1) / max(step or 1.0, 1e-6))
        return worst

    def _fade_bound(self, nxt: int, target: int, want: tuple[int, ...]) -> int:
        """The longest fade a transition into ``target`` may have: the forced length,
        within the stretch entered (and within the one left, unless it may be held).
        (Keeping room for a stay after the fade as well was tried: on GRID's training
        clips it left more seams over the footage's 99th percentile, 3.6-4.1 % of seam
        frames against 2.0-2.1 %.)"""
        cap = self._cap(want)
        bound = min(max(cap, int(round(cap * self.cfg.forced_fade_scale))),
                    int(self.g.left[target]) - 1)
        if not self.cfg.hold_leaving:
            bound = min(bound, int(self.g.left[nxt]) if nxt >= 0 else 0)
        return bound

    def _nod_step(self, want: tuple[int, ...], nods: np.ndarray) -> Entry | None:
        """Where the speech wants a nod far enough ahead to reach one in time: play on if
        the stretch nods there anyway, else enter the footage where one of the person's
        nods lands on that frame (and on as many of the following wanted ones as can be).
        None: nothing to do for nods now (the plain step decides)."""
        g, s, c = self.g, self.s, self.cfg
        tol = c.nod_tolerance
        offs = np.flatnonzero(nods)
        offs = offs[self.k + offs > s.nods_upto]
        # Too close to enter a stretch for (the shortest cross-fade and the dip's start
        # come first); nearer than a full fade, the fade is shortened.
        reach = c.min_fade + c.nod_settle
        late = offs[offs < reach]
        if late.size:
            s.nods_upto = self.k + int(late.max())
        offs = offs[offs >= reach]
        if not offs.size or self.k <= s.hold_until:
            return None
        o = int(offs[0])
        s.nods_upto = self.k + o
        cur = s.cur
        nxt = cur + 1 if 0 <= cur < g.n - 1 and g.cont[cur] else -1
        if nxt >= 0 and g.left_in[want][nxt] > o + tol and \
                g.nod[max(0, nxt + o - tol): nxt + o + tol + 1].any():
            s.hold_until = self.k + o
            return None
        if nxt < 0:
            return None
        ok, cost = self._pool(cur, want, None)
        # Entering at T puts bank frame T + j on output frame k + j.
        t = np.flatnonzero(g.nod) - o
        t = t[(t >= 0)]
        t = t[ok[t] & (g.left_in[want][t] > o + tol) & (cost[t] <= self.accept_cost)]
        if not t.size:
            return None
        # Of those, the ones that also bring the person's nods where the next wanted ones
        # are (within the stretch).
        score = np.zeros(len(t))
        for extra in offs[1:]:
            j = t + int(extra)
            inside = g.left_in[want][t] > extra + tol
            near = np.zeros(len(t), bool)
            for d in range(-tol, tol + 1):
                near |= g.nod[np.clip(j + d, 0, g.n - 1)]
            score += inside & near
        best = t[score == score.max()]
        target = int(self.rng.choice(best))
        s.hold_until = self.k + o
        # Nods first: a switch planned through the old stretch is planned again (if there
        # is still time) once this nod has passed.
        s.switch_at = s.switch_tried = -1
        return self._transition(nxt, target, float(cost[target]), want, o - c.nod_settle)

    def _switch_step(self, want: tuple[int, ...], o: int) -> Entry | None:
        """The mode changes ``o`` frames from now: play on if the stretch changes state
        there too, else enter footage that does (the person's own way into silence or
        speech, and no seam at the change). None: nothing to do now."""
        g, s, c = self.g, self.s, self.cfg
        tol = c.nod_tolerance
        reach = c.min_fade + 2
        if not reach <= o <= reach + c.switch_window or self.k + o == s.switch_tried or \
                self.k <= s.hold_until:
            return None
        s.switch_tried = self.k + o
        cur = s.cur
        nxt = cur + 1 if 0 <= cur < g.n - 1 and g.cont[cur] else -1
        if nxt < 0:
            return None
        into = g.switch_into[want]
        # At or a little before the change (after it, the mode would have moved on while
        # the footage had not).
        for d in range(0, -tol - 1, -1):
            j = nxt + o + d
            if 0 <= j < g.n and into[j] and g.left_in[want][nxt] >= o + d:
                s.switch_at = self.k + o + d
                return None
        ok, cost = self._pool(cur, want, None, need=1)
        t = np.flatnonzero(into) - o
        t = t[t >= 0]
        t = t[ok[t] & (g.left_in[want][t] >= o) & (cost[t] <= self._accept(want))]
        if not t.size:
            return None
        target = int(self.rng.choice(t))
        s.switch_at = self.k + o
        return self._transition(nxt, target, float(cost[target]), want, o - 2)

    def _pool(self, src: int, want: tuple[int, ...], envelope: np.ndarray | None,
              need: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Which frames may be entered from ``src`` now, and each one's cost; ``need``:
        frames of the state a target must have ahead (default: a stay and a fade)."""
        g, c = self.g, self.cfg
        cost = g.costs(src, c.velocity_weight)
        stay = self._stay(want)
        if need is not None:
            room: int | np.ndarray = need
        elif c.room_by_need:
            room = stay + self._needed(cost, self._cap(want))
        else:
            room = stay + self._cap(want)
        ok = g.left_in[want] >= room
        # Not a few frames back or on in the stretch it is in (that is a stutter, not a
        # transition); further away in the same stretch is a transition like another, and
        # what was shown lately is left out below.
        lo, hi = max(0, src - stay), min(g.n, src + stay + c.fade)
        ok[lo:hi] &= ~_same_run(g, src, lo, hi)
        if not ok.any():
            return ok, cost
        # Left out: a target whose next few seconds were shown within the last minute
        # (unless nothing else is left).
        used = np.concatenate([[0], np.cumsum(self.k - self.last_used < self.recent)])
        ahead = np.minimum(np.arange(g.n) + self.ahead, g.n)
        fresh = ok & ((used[ahead] - used[:-1]) <= self.ahead // 4)
        # Nor a frame where a stretch was entered within the minute: on GRID's short
        # silences (0.7 s) the nearest match was often the stretch's own start a stay back,
        # so the walk went back to it again and again, a loop of a few hundred ms (a
        # quarter of reused frames let each turn through); 2.2-2.7 % of 2-second windows
        # came back within the minute. Where nothing is left, that rule goes last.
        unentered = self.k - self.entered >= self.recent
        for allowed in (fresh & unentered, ok & unentered, fresh):
            if allowed.any():
                ok = allowed
                break
        if envelope is not None and envelope.size:
            cost = cost + c.envelope_weight * self._envelope_cost(envelope)
        return ok, cost

    def _accept(self, want: tuple[int, ...]) -> float:
        return self.accept_silent if want == WANTS["silent"] else self.accept_cost

    def _choose(self, src: int, want: tuple[int, ...], envelope: np.ndarray | None
                ) -> tuple[int, float]:
        c = self.cfg
        ok, cost = self._pool(src, want, envelope)
        if not ok.any():
            return -1, float("inf")
        idx = np.flatnonzero(ok)
        good = idx[cost[idx] <= self._accept(want)]
        check = self.pixel_step is not None and c.pixel_candidates > 0
        nxt = src + 1 if src < self.g.n - 1 and self.g.cont[src] else -1

        def worst(ts: np.ndarray) -> np.ndarray:
            """Over 1: no fade brings that target in without a frame changing the face
            more than the footage's own does (``pixel_quantile``); at each target's
            longest fade, those of one length worked out together."""
            bounds = np.array([max(0, self._fade_bound(nxt, int(t), want)) for t in ts])
            out = np.empty(len(ts), np.float32)
            for f in np.unique(bounds):
                at = bounds == f
                out[at] = self._fades_worst(nxt, ts[at], int(f))
            return out

        if good.size:
            # Drawn uniformly among those within the budget that a fade brings in
            # smoothly, as far as a few draws find one (else the smoothest drawn): the
            # cost pools the face area into blocks and weighs it with the rest, so a
            # cheap frame can still be a jump.
            if not check:
                pick = int(self.rng.choice(good))
                return pick, float(cost[pick])
            draws = self.rng.permutation(good)[: c.pixel_candidates]
            v = worst(draws)
            fine = np.flatnonzero(v <= 1.0)
            pick = int(draws[fine[0]] if fine.size else draws[np.argmin(v)])
            return pick, float(cost[pick])
        order = idx[np.argsort(cost[idx])]
        if check:
            # Nothing within the budget: of the cheapest, those that some fade can bring
            # in smoothly (most seams over the footage's 99th percentile were these,
            # past any fade's help), else the smoothest of them.
            near = order[: c.pixel_candidates]
            v = worst(near)
            order = near[v <= 1.0] if (v <= 1.0).any() else near[[int(np.argmin(v))]]
        best = order[: c.choices]
        best = best[cost[best] <= c.choice_slack * max(float(cost[best[0]]), 1e-6)]
        pick = int(self.rng.choice(best))
        return pick, float(cost[pick])

    def _envelope_cost(self, envelope: np.ndarray) -> np.ndarray:
        g = self.g
        m = min(len(envelope), int(self.cfg.envelope_s * g.fps))
        if m == 0:
            return np.zeros(g.n, np.float32)
        env = np.clip((np.asarray(envelope[:m], np.float32) + 60) / 20, 0, 3)
        # Each frame's own next m frames of loudness (cut at the bank's end).
        idx = np.minimum(np.arange(g.n)[:, None] + np.arange(m)[None, :], g.n - 1)
        return np.abs(g.loud[idx] - env[None, :]).mean(1)


def silent_stay(g: MotionGraph, cfg: MotionConfig) -> int:
    """Frames of the shortest stay in silent footage for this bank: ``cfg.min_stay_s``,
    or ``cfg.shortest_silent_stay_s`` where its silences are short (``short_silences``).
    Two values, not a search between them: on GRID's training clips a stay of 0.4 s
    (the longest that passed the share) kept most of 0.6 s's faults (seam frames over
    the footage's 99th percentile 20-21 % against 27-34 %, silent motion-energy ratio
    50-54 % off against 58-60 %), where 0.3 s gave 13-17 % and 9-12 %. Once the walk no
    longer went back to the stretch it was in (``Walker._pool``), 0.2 s with a 6-frame
    fade (``short_silent_fade``) matched closer than 0.3 s with 8."""
    longest = max(1, int(round(cfg.min_stay_s * g.fps)))
    shortest = min(longest, max(1, int(round(cfg.shortest_silent_stay_s * g.fps))))
    return shortest if short_silences(g, cfg) else longest


def short_silences(g: MotionGraph, cfg: MotionConfig) -> bool:
    """Whether under ``silent_room_share`` of the bank's silent frames lie in stretches
    with room for a ``min_stay_s`` stay and a ``silent_fade``."""
    longest = max(1, int(round(cfg.min_stay_s * g.fps)))
    want = WANTS["silent"]
    inside = np.isin(g.state, want)
    before = np.concatenate([[False], inside[:-1] & g.cont[:-1]])
    lengths = g.left_in[want][inside & ~before]  # each silent stretch's length
    total = int(lengths.sum())
    roomy = int(lengths[lengths >= longest + cfg.silent_fade].sum())
    return total > 0 and roomy < cfg.silent_room_share * total


def _same_run(g: MotionGraph, src: int, lo: int, hi: int) -> np.ndarray:
    """Which frames in [lo, hi) lie in the same uninterrupted stretch as ``src``."""
    out = np.zeros(hi - lo, bool)
    if not lo <= src < hi:
        return out
    out[src - lo] = True
    j = src - 1
    while j >= lo and g.cont[j]:
        out[j - lo] = True
        j -= 1
    j = src
    while j < hi - 1 and g.cont[j]:
        j += 1
        out[j - lo] = True
    return out


def speech_activity(audio16k: np.ndarray, n_frames: int, fps: int, rate: int = 16000,
                    bridge_s: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Per video frame: whether the avatar is speaking, and the speech's loudness (dB).

    Loudness is the frame's RMS; speech is louder than 35 dB under the loudest frame and
    than -50 dBFS, with pauses shorter than ``bridge_s`` bridged (one utterance, one walk
    through speaking footage, not a switch at every breath).
    """
    db = frame_levels_db(audio16k, n_frames, fps, rate)
    if not n_frames:
        return np.zeros(0, bool), db
    active = db > max(-50.0, float(db.max()) - 35.0)
    return bridge_gaps(active, int(round(bridge_s * fps))), db


def bridge_gaps(mask: np.ndarray, gap: int) -> np.ndarray:
    """``mask`` with runs of False of at most ``gap`` between two Trues filled in."""
    out = mask.astype(bool).copy()
    idx = np.flatnonzero(out)
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        if 1 < b - a <= gap + 1:
            out[a:b] = True
    return out


def plan_walk(walker: Walker, active: np.ndarray, db: np.ndarray,
              nods: np.ndarray | None = None) -> list[Entry]:
    """The whole walk for speech known in advance (a file, a show): the walker sees each
    utterance's coming loudness as it enters it, and where nods should land (``nods``,
    per frame, from ``avatar.cues``) within the next ``NOD_HORIZON_S``."""
    out = []
    fps = walker.g.fps
    span = int(walker.cfg.envelope_s * fps)
    horizon = int(NOD_HORIZON_S * fps)
    switch = switch_distances(active)
    for i, speaking in enumerate(active):
        out.append(walker.next("speaking" if speaking else "silent",
                               db[i: i + span] if speaking else None,
                               nods[i: i + horizon] & active[i: i + horizon]
                               if speaking and nods is not None else None,
                               int(switch[i]) if switch[i] >= 0 else None))
    return out


def switch_distances(active: np.ndarray) -> np.ndarray:
    """Per frame: frames until ``active`` next changes (-1: it does not)."""
    out = np.full(len(active), -1, np.int64)
    nxt = -1
    for i in range(len(active) - 2, -1, -1):
        if active[i + 1] != active[i]:
            nxt = i + 1
        out[i] = nxt - i if nxt >= 0 else -1
    return out


NOD_HORIZON_S = 1.5
"""How far ahead a walk looks for the nods the speech wants: the first far enough off to
reach, and those after it that the same stretch could also bring."""
