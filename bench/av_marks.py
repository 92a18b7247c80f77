"""A/V offset read from the invisible marks both tracks carry (``avatar.watermark``).

Every frame a session sends carries a time code in its shading, and its voice the same
time code in a faint noise, both laid down on the session's own clock: the blocks of the
two marks start at the same stream instants (a block is 128 chips of 80 ms in both). A
viewer that records what it received, with each frame's and each 20 ms of sound's arrival
time, finds where each block starts in each track; the same block's start in video and
in sound, compared by arrival, is how far the picture trails its sound on the way to this
viewer (negative: it leads). Why this and not the mouth: it needs no face, no speech
model and no assumption that the mouth rests in silence (the motion bank's footage moves
its mouth between sentences, and the mouth-against-loudness lag then had nothing to line
up), and it reads the same on any avatar and any host. What it does not see: a mouth
painted for the wrong sound inside one frame, which ``eval head`` (lag) measures.

Which block is which needs no time code: the sync (the mark's channel 0, the same in
every block) says where blocks start in each track, and the two tracks are far less than
half a block (5.12 s) apart, so the block starts nearest each other in arrival are the
same block. A window of a few seconds is then enough where decoding a time code needs
whole blocks and a clean copy; the codes that do decode are a check (a pair whose codes
disagree is left out and counted).

Where the frames' RTP timestamps are known (a live viewer has them), each track is laid
out on its own stream clock, a block's start is found there (to the frame, to the
sample), and the moment it arrived is the median over the window's frames of arrival
minus stream time: no one frame's jitter moves it. Without them (a copy from elsewhere)
frames are placed by arrival: a video block's start to about a frame (40 ms at 25 fps),
the sound's to its 20 ms frame's arrival. The median over a window's blocks is the
figure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar.mark_code import Reading


@dataclass(frozen=True)
class MarkSkew:
    """What one recorded window gave."""

    skew_ms: float | None
    """Median over blocks of video arrival minus sound arrival for the same stream instant:
    positive = the picture trails its sound. None: a track's sync was not found."""
    pairs: int
    """Block starts found in both tracks."""
    spread_ms: float | None
    """Largest minus smallest per-block figure: how steady the offset was in the window."""
    codes_agree: int
    codes_disagree: int
    """Pairs whose time codes decoded in both tracks, and agreed / did not (left out)."""
    video_sync_z: float
    audio_sync_z: float

    def describe(self) -> dict:
        return {"skew_ms": None if self.skew_ms is None else round(self.skew_ms, 1),
                "pairs": self.pairs,
                "spread_ms": None if self.spread_ms is None else round(self.spread_ms, 1),
                "codes_agree": self.codes_agree, "codes_disagree": self.codes_disagree,
                "video_sync_z": round(self.video_sync_z, 1),
                "audio_sync_z": round(self.audio_sync_z, 1)}


def _starts(reading: Reading, span_s: float, block_s: float
            ) -> list[tuple[float, int | None]]:
    """Every block start the sync puts inside a copy ``span_s`` long (seconds into it),
    with its time code where that block decoded; none where the sync was not found."""
    if reading.sync_z < reading.min_z or not reading.blocks:
        return []
    base = reading.blocks[0].start_s
    codes = {round((b.start_s - base) / block_s): b.utc_second for b in reading.blocks}
    first = int(np.ceil(-base / block_s - 1e-9))
    last = int(np.floor((span_s - base) / block_s + 1e-9))
    return [(base + k * block_s, codes.get(k)) for k in range(first, last + 1)]


def _by_pts(pts: np.ndarray | None, times: np.ndarray, clock: float
            ) -> np.ndarray | None:
    """``pts`` as given where every item has one (the RTP timestamps aiortc hands on,
    from its first packet) and they span about what the arrivals do (at ``clock`` per
    second), else None: a stream whose timestamps jumped is laid out by arrival instead
    of on a grid minutes or hours long."""
    if pts is None or not len(times):
        return None
    pts = np.asarray(pts, np.int64)
    if len(pts) != len(times) or (pts < 0).any():
        return None
    span = (pts.max() - pts.min()) / clock
    return pts if span <= 2 * (float(np.ptp(times)) + 10.0) else None


def _video_starts(times: np.ndarray, feats: np.ndarray, fps: float, block_s: float,
                  pts: np.ndarray | None) -> tuple[list[tuple[float, int | None]], float]:
    """Block starts in the video by arrival (s) with their codes, and the sync's z.

    With the frames' timestamps (90 kHz), frames are placed on the stream's own grid and a
    block's start is the moment its first frame's timestamp arrives, by the median over
    every frame of arrival minus stream time: exact to the frame and free of any one
    frame's jitter. Without, the frames are placed by arrival (to about a frame)."""
    from avatar.video_mark import on_grid, read_video_at

    order = np.argsort(times, kind="stable")
    times, feats = times[order], feats[order]
    if pts is None:
        # The frames as a player shows them, on a grid from the first arrival: a session
        # that skipped frames still reads in time.
        grid = on_grid(times, feats, fps)
        reading = read_video_at(grid, fps)
        starts = _starts(reading, (len(grid) - 1) / fps, block_s)
        return [(float(times[0] + t), u) for t, u in starts], reading.sync_z
    pts = pts[order]
    slot = np.round((pts - pts.min()) * fps / 90000).astype(int)
    # Frames the session skipped: the one before stays on screen, as a player shows it.
    held = np.maximum.accumulate(np.where(np.isin(np.arange(slot.max() + 1), slot),
                                          np.arange(slot.max() + 1), 0))
    grid = np.zeros((slot.max() + 1, feats.shape[1]))
    grid[slot] = feats
    grid = grid[held]
    reading = read_video_at(grid, fps)
    lead = float(np.median(times - (pts - pts.min()) / 90000))  # arrival of stream time 0
    return [(lead + t, u) for t, u in _starts(reading, (len(grid) - 1) / fps, block_s)], \
        reading.sync_z


def _audio_starts(times: np.ndarray, pieces: list[np.ndarray], rate: int, block_s: float,
                  pts: np.ndarray | None) -> tuple[list[tuple[float, int | None]], float]:
    """Block starts in the sound by arrival (s) with their codes, and the sync's z; with
    the frames' timestamps (at ``rate``), placed as the video's are."""
    from avatar.audio_mark import read_audio

    if pts is not None:
        # In the stream's order, a gap (a lost frame) left silent so the chips keep time.
        at = pts - pts.min()
        x = np.zeros(int(at.max()) + max(len(p) for p in pieces), np.float32)
        for p, q in zip(pieces, at, strict=True):
            x[q:q + len(p)] = p
        reading = read_audio(x, rate)
        lead = float(np.median(times - at / rate))
        return [(lead + t, u) for t, u in _starts(reading, (len(x) - 1) / rate, block_s)], \
            reading.sync_z
    x = np.concatenate(pieces).astype(np.float32)
    first = np.r_[0, np.cumsum([len(p) for p in pieces])[:-1]]
    reading = read_audio(x, rate)
    out = []
    for t, u in _starts(reading, (len(x) - 1) / rate, block_s):
        n = t * rate
        # The 20 ms frame that held the block's first sample, and the sample's place in it.
        j = int(np.searchsorted(first, n, side="right") - 1)
        out.append((float(times[j] + (n - first[j]) / rate), u))
    return out, reading.sync_z


def mark_skew(video_times: np.ndarray, video_feats: np.ndarray, audio_times: np.ndarray,
              audio_pieces: list[np.ndarray], audio_rate: int, fps: float = 25.0,
              video_pts: np.ndarray | None = None, audio_pts: np.ndarray | None = None
              ) -> MarkSkew:
    """The A/V offset of one recorded window: ``video_feats`` are
    ``avatar.video_mark.thumbnail_features`` of each received frame, ``audio_pieces`` each
    received audio frame as mono float samples at ``audio_rate``; times are arrivals (s);
    ``*_pts`` each frame's RTP timestamp as received (90 kHz video, ``audio_rate`` sound),
    where known."""
    from avatar.audio_mark import CHIP_S
    from avatar.mark_code import BLOCK_CHIPS

    block_s = BLOCK_CHIPS * CHIP_S
    vt = np.asarray(video_times, np.float64)
    at = np.asarray(audio_times, np.float64)
    vb, vz = ([], 0.0) if len(vt) < 2 else \
        _video_starts(vt, np.asarray(video_feats), fps, block_s, _by_pts(video_pts, vt, 90000))
    ab, az = ([], 0.0) if not audio_pieces else \
        _audio_starts(at, audio_pieces, audio_rate, block_s,
                      _by_pts(audio_pts, at, audio_rate))
    figs, agree, disagree = [], 0, 0
    for tv, uv in vb:
        if not ab:
            break
        ta, ua = min(ab, key=lambda b: abs(b[0] - tv))
        if abs(ta - tv) >= block_s / 2:  # this block's start is outside the sound's window
            continue
        if uv is not None and ua is not None:
            if uv != ua:
                disagree += 1
                continue
            agree += 1
        figs.append((tv - ta) * 1000)
    return MarkSkew(skew_ms=float(np.median(figs)) if figs else None, pairs=len(figs),
                    spread_ms=float(max(figs) - min(figs)) if figs else None,
                    codes_agree=agree, codes_disagree=disagree, video_sync_z=float(vz),
                    audio_sync_z=float(az))
