"""The invisible watermark's message and its spreading, shared by the video and audio marks.

Both marks carry the same 80-bit message, repeated in blocks of 128 *chips* (a chip is two
video frames, or 80 ms of audio, so a block lasts 10.24 s at 25 fps): the bundle's 32-bit
mark id, the block's UTC start second (32 bits) and a CRC-16 over both. A mark has several
*channels* (spatial patterns in the video, pairs of frequency bands in the audio) and each
channel carries one ±1 chip at a time:

* channel 0 carries a fixed pseudo-random sync sequence, the same in every block: a reader
  finds where blocks start by correlating with it, and how strongly it correlates is the
  detection's confidence;
* the other channels carry the message: every (channel, chip) slot holds one message bit,
  scrambled by a pseudo-random sign, each bit spread over 8-11 slots across the block so
  that a burst of damage (a scene cut, a pause in speech) costs each bit only a few.

A reader needs no original: the mark is found from the marked copy alone. Classic
spread-spectrum in the style of Cox et al. and of broadcast audience-measurement codes;
written here because the maintained libraries either conflict with our OpenCV wheel
(``invisible-watermark`` pulls in ``opencv-python``, and its DWT-DCT mark is read on a
fixed block grid that a crop shifts) or download model weights at run time (``trustmark``);
see README, "Provenance".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np

BLOCK_CHIPS = 128
ID_BITS = 32
TIME_BITS = 32
CRC_BITS = 16
MESSAGE_BITS = ID_BITS + TIME_BITS + CRC_BITS
SYNC_SEED = 0x7C1A57
LAYOUT_SEED = 0x5EED
MIN_SYNC_Z = 5.0
"""A sync peak this many deviations above the other offsets' correlations counts as a mark
(a block must also pass its CRC). On unmarked footage the highest of a clip's 256 video
offsets stays near 3; the audio reader tries every sample of a block (163,840 lags), so
its highest reaches 5.5 by chance and it asks for ``MIN_SYNC_Z_AUDIO``."""
MIN_SYNC_Z_AUDIO = 8.0


def mark_id(files: dict[str, str]) -> int:
    """A bundle's 32-bit mark id: from the sha256 of every file it holds (its manifest's
    ``files``), so the same bundle always marks with the same id and any change to its
    weights gives another."""
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def format_id(value: int) -> str:
    return f"{value:08x}"


def crc16(bits: np.ndarray) -> int:
    """CRC-16/CCITT over a bit array (most significant first)."""
    reg = 0xFFFF
    for b in bits:
        top = ((reg >> 15) & 1) ^ int(b)
        reg = (reg << 1) & 0xFFFF
        if top:
            reg ^= 0x1021
    return reg


def _to_bits(value: int, n: int) -> np.ndarray:
    return np.array([(value >> (n - 1 - i)) & 1 for i in range(n)], np.uint8)


def _from_bits(bits: np.ndarray) -> int:
    return int("".join(str(int(b)) for b in bits), 2)


def encode(ident: int, utc_second: int) -> np.ndarray:
    """The 80 message bits (0/1) for one block."""
    body = np.concatenate([_to_bits(ident & 0xFFFFFFFF, ID_BITS),
                           _to_bits(utc_second & 0xFFFFFFFF, TIME_BITS)])
    return np.concatenate([body, _to_bits(crc16(body), CRC_BITS)])


def decode(bits: np.ndarray) -> tuple[int, int] | None:
    """(mark id, UTC second) when the CRC holds, else None."""
    body = bits[:ID_BITS + TIME_BITS]
    if crc16(body) != _from_bits(bits[ID_BITS + TIME_BITS:]):
        return None
    return _from_bits(body[:ID_BITS]), _from_bits(body[ID_BITS:])


@lru_cache(maxsize=4)
def sync_chips() -> np.ndarray:
    """Channel 0's ±1 sequence, one block long; balanced so it has no DC to hide in."""
    rng = np.random.default_rng(SYNC_SEED)
    return rng.permutation(np.repeat([-1.0, 1.0], BLOCK_CHIPS // 2))


@lru_cache(maxsize=8)
def layout(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """For the data channels 1..channels-1: which message bit each (channel, chip) slot
    carries and the slot's scrambling sign; both (channels - 1, BLOCK_CHIPS)."""
    slots = (channels - 1) * BLOCK_CHIPS
    rng = np.random.default_rng(LAYOUT_SEED + channels)
    bit = rng.permutation(np.arange(slots) % MESSAGE_BITS).reshape(channels - 1, BLOCK_CHIPS)
    sign = rng.choice([-1.0, 1.0], size=(channels - 1, BLOCK_CHIPS))
    return bit, sign


def block_chips(channels: int, ident: int, utc_second: int) -> np.ndarray:
    """The ±1 chips of every channel for one block: (channels, BLOCK_CHIPS)."""
    bits = encode(ident, utc_second).astype(np.float64) * 2 - 1
    bit, sign = layout(channels)
    return np.vstack([sync_chips()[None], bits[bit] * sign])


class ChipSource:
    """The chips for a stream whose chip 0 is at UTC time ``t0``; blocks are made once."""

    def __init__(self, channels: int, ident: int, t0: float, chip_s: float):
        self.channels, self.ident, self.t0, self.chip_s = channels, ident, t0, chip_s
        self._cache: dict[int, np.ndarray] = {}

    def block_second(self, b: int) -> int:
        return int(self.t0 + b * BLOCK_CHIPS * self.chip_s)

    def chips(self, c: int) -> np.ndarray:
        """Every channel's chip number ``c`` (from the stream's start)."""
        b, j = divmod(c, BLOCK_CHIPS)
        block = self._cache.get(b)
        if block is None:
            if len(self._cache) > 4:
                self._cache.clear()
            block = self._cache[b] = block_chips(self.channels, self.ident,
                                                 self.block_second(b))
        return block[:, j]


@dataclass(frozen=True)
class Block:
    """One block read from a copy."""
    start_s: float
    """Where it starts in the copy, in seconds."""
    ident: int | None
    utc_second: int | None
    margin: float
    """The weakest bit's soft value over the mean: near 0 means a bit was nearly flipped."""
    bits: np.ndarray
    """The 80 hard bits read (whether or not the CRC held): for bit accuracy."""

    def describe(self) -> dict:
        out: dict = {"at_s": round(self.start_s, 2), "ok": self.ident is not None}
        if self.ident is not None and self.utc_second is not None:
            out["id"] = format_id(self.ident)
            out["time"] = datetime.fromtimestamp(self.utc_second, UTC).isoformat()
        return out


@dataclass(frozen=True)
class Reading:
    """What a copy held: the sync's strength and every block read."""
    sync_z: float
    blocks: list[Block]
    min_z: float = MIN_SYNC_Z

    @property
    def found(self) -> bool:
        return self.sync_z >= self.min_z and any(b.ident is not None for b in self.blocks)

    @property
    def ident(self) -> int | None:
        ids = [b.ident for b in self.blocks if b.ident is not None]
        return max(set(ids), key=ids.count) if ids else None


CHASE_BITS = 4
"""A block whose CRC fails is tried again with every combination of its 4 least certain
bits flipped (16 tries): most failed blocks miss by a bit or two, and those are the bits
the reader was least sure of. The CRC then has 16 chances instead of one to pass by luck
(1 in 4,096 per block), on top of the sync that had to be found first."""


def _chase(hard: np.ndarray, soft: np.ndarray) -> tuple[int, int] | None:
    weak = np.argsort(np.abs(soft))[:CHASE_BITS]
    for mask in range(1, 1 << CHASE_BITS):
        trial = hard.copy()
        for i, b in enumerate(weak):
            if mask >> i & 1:
                trial[b] ^= 1
        got = decode(trial)
        if got is not None:
            return got
    return None


def _robust(x: np.ndarray) -> np.ndarray:
    """Each channel scaled to unit spread, so no one channel's noise outvotes the rest."""
    s = np.median(np.abs(x), axis=-1, keepdims=True) * 1.4826 + 1e-9
    return x / s


def read(chips: list[np.ndarray], chip_s: float, start_s: float = 0.0,
         sync_z: float | None = None, min_z: float = MIN_SYNC_Z) -> Reading:
    """Find and decode blocks in chip estimates.

    ``chips`` holds one (channels, n) array per sub-chip phase tried (a video reader tries
    both frames a chip may start on; an audio reader eight 10 ms steps); a chip that could
    not be measured (silence) is 0; chip 0 of phase 0 starts ``start_s`` into the copy.
    ``sync_z``: the sync's strength when the caller measured it finer than chips (the audio
    reader does, sample by sample). Returns the best phase's blocks.
    """
    sync = sync_chips()
    scores = []
    for est in chips:
        e0 = _robust(est[0])
        n = len(e0)
        if n < BLOCK_CHIPS // 4:
            scores.append(np.zeros(BLOCK_CHIPS))
            continue
        idx = np.arange(n)
        scores.append(np.array([float(e0 @ sync[(idx - o) % BLOCK_CHIPS])
                                for o in range(BLOCK_CHIPS)]))
    table = np.array(scores)
    best = np.unravel_index(int(np.argmax(table)), table.shape)
    peak = table[best]
    # The peak's neighbours (the next phase, the chips either side) share part of its
    # chips: they are not evidence of anything, so they stay out of the background.
    near = (np.abs((np.arange(BLOCK_CHIPS) - best[1] + BLOCK_CHIPS // 2) % BLOCK_CHIPS
                   - BLOCK_CHIPS // 2) <= 1)
    others = table[:, ~near].ravel()
    z = float((peak - others.mean()) / (others.std() + 1e-9)) if sync_z is None else sync_z
    phase, offset = int(best[0]), int(best[1])
    est = _robust(chips[phase])
    bit, sign = layout(est.shape[0])
    blocks: list[Block] = []
    n = est.shape[1]
    for start in range(offset - BLOCK_CHIPS, n, BLOCK_CHIPS):
        lo, hi = max(start, 0), min(start + BLOCK_CHIPS, n)
        if hi - lo < BLOCK_CHIPS // 2:  # too little of this block is in the copy
            continue
        j = np.arange(lo - start, hi - start)
        soft = np.zeros(MESSAGE_BITS)
        np.add.at(soft, bit[:, j].ravel(), (est[1:, lo:hi] * sign[:, j]).ravel())
        hard = (soft > 0).astype(np.uint8)
        got = decode(hard)
        if got is None:
            got = _chase(hard, soft)
        margin = float(np.abs(soft).min() / (np.abs(soft).mean() + 1e-9))
        blocks.append(Block(start_s=start_s + (start + phase / len(chips)) * chip_s,
                            ident=got[0] if got else None,
                            utc_second=got[1] if got else None, margin=margin, bits=hard))
    return Reading(sync_z=z, blocks=blocks, min_z=min_z)
