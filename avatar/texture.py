"""Fine texture for the painted mouth, taken from the person's own frames.

The generator paints the mouth softer than the camera saw it: trained with pixel losses, it
averages away every detail whose exact place it cannot predict (the edges of the teeth, the
lines of the lips, stubble). ``avatar.detail`` lends the frame's own fine detail where the
paint agrees with the frame, which leaves exactly the moving mouth soft. This module lends
it detail from other moments of the same person: at enrolment a bank of the mouth region
from the training footage is kept, chosen to cover the mouth's shapes (closed, open, teeth
showing); at render each painted mouth finds the entries whose coarse picture is nearest
its own and takes their fine band (what a Gaussian blur of ``sigma`` removes) in place of
its own soft one. The coarse picture, and so the mouth's shape, stays the generator's.

Weights fall off with distance and reach 0 where the next entry out would come in (a
soft nearest neighbour), so a still mouth keeps a still texture and a moving one changes
it with less of a jump than the nearest entry alone would make. Each entry lends detail
only where its coarse picture matches the painted one's. The bank holds training frames
only; held-out frames never enter it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatar import atomic
from avatar.device_composite import blur
from avatar.models.head import region_keep_mask

log = logging.getLogger(__name__)

STEP = 0.5
"""Levels (0-255) per stored unit: the fine band fits in int8 at half a level's precision."""


@dataclass(frozen=True)
class TextureConfig:
    entries: int = 256
    """Mouths kept in the bank (k-means centres' nearest real frames). On GRID's training
    clips held out from the bank, 256 kept PSNR where 128 lost 0.05 dB."""
    sigma: float = 1.2
    """Generator pixels: detail finer than this Gaussian's blur is the band exchanged."""
    grid: int = 12
    """Cells per side of the coarse picture that mouths are compared by."""
    neighbours: int = 2
    """Entries blended per mouth (4 gave the same figures on GRID's held-out training clips
    at twice the cost: with ``softness`` this small the nearest two carry the weight)."""
    softness: float = 0.03
    """How fast a farther entry's weight falls: at a distance (1 + softness) times the
    nearest one's it is 1/e of the nearest's. Blended textures cancel each other's detail
    (0.1: sharpness 0.43 on GRID's held-out training clips; 0.03: 0.49; the nearest alone
    0.53, with more change between frames)."""
    own: float = 0.0
    """Share of the painted mouth's own fine band kept next to the bank's."""
    tolerance: float = 24.0
    """Coarse difference (0-255 levels, the largest channel) between the painted mouth and
    an entry at which that entry's detail there is down to 1/e: where its lips or teeth
    are elsewhere, its edges would draw a second mouth (ghost edges), so it lends nothing
    there. 0: no such check. On GRID's training clips held out from the bank, unchecked
    detail took the mouth-opening correlation from 0.887 to 0.845 (the face mesh reads the
    ghost edges) for sharpness 0.37 -> 0.50; 24 kept 0.878 for 0.45; 12 gained nothing."""
    fill_own: bool = True
    """Where no entry lends (its coarse picture disagrees there), keep the paint's own fine
    band instead of leaving that spot at the coarse picture alone (at the screen's size
    too, where the bank has fine bands: the paint's own band enlarged). On four bundles
    (two of the synthetic sample, two of GRID) it gave back a little of the bank's
    lip-sync cost and added 0.02-0.05 sharpness, for 0.03-0.15 dB PSNR and 0.01-0.03 more
    change in silence; it costs about 2 % of the frame rate at batch 1 (a 160 px model
    over 720p on a 2-core AVX2 EPYC: 27.0 against 26.5 frames/s, 73 against 75 CPU ms a
    frame, median of three). Saved with the bank: banks built before it was the default
    keep it off."""
    edge: float = 0.0
    """Coarse gradient (levels per working pixel) of the painted mouth at which lent detail
    is down to 1/e: the lip and teeth outlines keep the paint's own band, where an entry's
    outline a pixel off would move the edge the eye and the face mesh read. 0: no check.
    With ``fill_own``, 12 on held-out renders of the synthetic sample (demo bundle) kept the
    truth correlation the bank otherwise costs (0.897 -> 0.922; 0.925 without a bank) but
    halved the sharpness it gives (0.490 -> 0.262; 0.214 without). Softer gates (40, 60)
    kept most of the sharpness but gained lip sync only on the synthetic face (GRID's
    outlines are softer: no change there); figures in the README. Off."""
    gain_cap: float = 0.0
    """Scale the blended bands back towards the energy one band has, at most this much (two
    unrelated textures mixed half and half keep 1/sqrt(2) of it, so the mix is softer than
    any entry); 0: no scaling. Measured on held-out renders of the synthetic sample (demo
    bundle, 96 px shown at 140): sharpness 0.444 -> 0.534 with 1.5, 0.590 with 1.25 and
    ``fill_own``, 0.656 with 1.5 and ``fill_own`` (these two with ``fill_own`` at the
    working size only, as it was then), but PSNR 20.76 -> 20.64 / 20.52 / 20.41
    dB and change in silence 1.15 -> 1.20 / 1.22 / 1.23 of the real (louder unmatched
    detail, and its flicker in silence): off until a cost-free form is found."""

    @classmethod
    def from_dict(cls, d: dict) -> TextureConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        # A bank saved before ``fill_own`` existed rendered without it.
        known.setdefault("fill_own", False)
        return cls(**known)


def describe(regions: torch.Tensor, mask_top: float, grid: int) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> (B, grid * grid): the painted part's coarse grey picture,
    its mean removed (a change of light does not make a different mouth)."""
    s = regions.shape[-1]
    grey = (regions[:, 0] * 0.299 + regions[:, 1] * 0.587 + regions[:, 2] * 0.114)
    low = F.adaptive_avg_pool2d(grey[:, None, int(mask_top * s):], (grid, grid)).flatten(1)
    return low - low.mean(1, keepdim=True)


class TextureBank:
    """The bank: each entry's coarse description, its coarse picture and its fine band at
    the working size (and at the screen's size where the region is enlarged there)."""

    def __init__(self, descriptors: np.ndarray, bands: np.ndarray, mask_top: float,
                 cfg: TextureConfig = TextureConfig(), fine: np.ndarray | None = None,
                 lows: np.ndarray | None = None):
        if bands.ndim != 4 or bands.shape[1] != 3 or bands.shape[2] != bands.shape[3]:
            raise ValueError(f"bands must be (N, 3, S, S), got {bands.shape}")
        if len(descriptors) != len(bands) or not len(bands):
            raise ValueError("descriptors and bands must hold the same, non-zero count")
        if fine is not None and (fine.shape[:2] != bands.shape[:2]
                                 or fine.shape[2] != fine.shape[3]):
            raise ValueError(f"fine bands must be (N, 3, H, H) for the same entries, got "
                             f"{fine.shape}")
        self.cfg = cfg
        self.mask_top = mask_top
        self.size = int(bands.shape[-1])
        self._desc_np = descriptors.astype(np.float32)
        self._bands_np = bands.astype(np.int8)
        self._fine_np = None if fine is None else fine.astype(np.int8)
        if lows is not None and lows.shape != bands.shape:
            raise ValueError(f"lows must match the bands' shape, got {lows.shape}")
        self._lows_np = None if lows is None else lows.astype(np.uint8)
        self.device = torch.device("cpu")
        self._put(self.device)

    @property
    def screen_size(self) -> int | None:
        """Side of the fine bands (the region's size on screen), or None without them."""
        return None if self._fine_np is None else int(self._fine_np.shape[-1])

    @property
    def fine_sigma(self) -> float:
        """The fine bands' blur, in their own pixels: the same band as ``cfg.sigma`` at the
        working size, seen at the screen's resolution."""
        return self.cfg.sigma * (self.screen_size or self.size) / self.size

    def _put(self, device: torch.device) -> None:
        self.device = device
        self.desc = torch.from_numpy(self._desc_np).to(device)
        # Kept as int8 until gathered: a 160 px bank of 256 is 20 MB so, 79 as float32.
        self.bands = torch.from_numpy(self._bands_np).to(device)
        self.fine = None if self._fine_np is None else torch.from_numpy(self._fine_np).to(device)
        self.lows = None if self._lows_np is None else torch.from_numpy(self._lows_np).to(device)
        # The rows the generator paints (where it keeps the frame, nothing is lent).
        self.rows = 1 - region_keep_mask(self.size, self.mask_top, device)

    def to(self, device: torch.device | str) -> TextureBank:
        self._put(torch.device(device))
        return self

    def __len__(self) -> int:
        return len(self._bands_np)

    def with_fine(self, regions: np.ndarray) -> TextureBank:
        """The bank with fine bands from its entries' regions at screen size ((N, H, H, 3)
        uint8, in the bank's order)."""
        t = torch.from_numpy(regions).permute(0, 3, 1, 2).float()
        sigma = self.cfg.sigma * regions.shape[1] / self.size
        fine = np.clip(np.rint((t - blur(t, sigma)).numpy() / STEP), -127, 127)
        return TextureBank(self._desc_np, self._bands_np, self.mask_top, self.cfg,
                           fine.astype(np.int8), self._lows_np)

    # ------------------------------------------------------------------ rendering
    def _weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each mouth's nearest entries and their weights (summing to 1)."""
        cfg = self.cfg
        d = torch.cdist(describe(x, self.mask_top, cfg.grid), self.desc)
        k = min(cfg.neighbours, len(self))
        dist, idx = d.topk(min(k + 1, len(self)), dim=1, largest=False)
        nearest = dist[:, :1].clamp_min(1e-6)
        e = torch.exp(-(dist / nearest - 1) / cfg.softness)
        # Less the weight the next entry out would have: the last kept entry's weight is
        # 0 where it and the next trade places, so the texture never jumps from one to the
        # other (with the top k alone, two of three nearly equal entries swapping moved a
        # pixel by 88 levels between frames).
        w = e[:, :k] - (e[:, k:k + 1] if e.shape[1] > k else 0)
        w = w.clamp_min(0) + 1e-9  # all k + 1 equally near: the k share alike
        return idx[:, :k], w / w.sum(1, keepdim=True)

    def _agree(self, low: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        """(B, k, 1, S, S): where each chosen entry shows what the painted mouth shows at
        coarse scale (1) and where not (towards 0); None where not checked."""
        if self.lows is None or self.cfg.tolerance <= 0:
            return None
        # Compared coarser than the band (twice its blur again): a painted mouth is softer
        # than the footage, and at the band's own scale every real edge would disagree.
        # The entries' side is stored that coarse (blurring it per frame was 2/3 of this).
        diff = (blur(low * 255, 2 * self.cfg.sigma)[:, None]
                - self.lows[idx].float()).abs().amax(2)
        agree = torch.exp(-(diff / self.cfg.tolerance) ** 2)
        # Smoothed so the weight has no edges of its own (a hard one would draw a line).
        return blur(agree, self.cfg.sigma)[:, :, None]

    def _off_outline(self, low: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, S, S): 1 away from the painted mouth's coarse outlines, towards 0 on
        them (``cfg.edge``)."""
        grey = blur(low, 2 * self.cfg.sigma) * 255
        grey = grey[:, 0] * 0.299 + grey[:, 1] * 0.587 + grey[:, 2] * 0.114
        gy, gx = torch.gradient(grey, dim=(1, 2))
        keep = torch.exp(-(gx * gx + gy * gy) / self.cfg.edge ** 2)
        return blur(keep[:, None], self.cfg.sigma)[:, None]

    @staticmethod
    def _mix(bands: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in levels (0-255 units): the entries' bands, each weighted per pixel
        by ``weight`` ((B, k, 1, h, w), resized to the bands' size where it differs)."""
        b = bands[idx].float()
        if weight.shape[-1] != b.shape[-1]:
            weight = F.interpolate(weight.flatten(1, 2), size=b.shape[-2:], mode="bilinear",
                                   align_corners=False)[:, :, None]
        return (b * weight).sum(1) * STEP

    def apply(self, painted: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) painted regions in [0, 1] -> the same with the bank's fine band."""
        return self.apply_fine(painted)[0]

    def apply_fine(self, painted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``apply``, and where the bank has fine bands each mouth's mix of them ((B, 3, H,
        H) in levels), for compositing to put in at the screen's scale (``screen``)."""
        if painted.shape[-1] != self.size:
            raise ValueError(f"the bank is for {self.size} px mouths, not {painted.shape[-1]}")
        x = painted.float()
        idx, w = self._weights(x)
        low = blur(x, self.cfg.sigma)
        agree = self._agree(low, idx)
        if self.cfg.edge > 0:
            outline = self._off_outline(low)
            agree = outline if agree is None else agree * outline
        # Each entry's weight at each pixel, and the paint's own band's.
        weight = w[:, :, None, None, None].expand(-1, -1, 1, *x.shape[-2:])
        if agree is not None:
            weight = weight * agree
        lent = weight.sum(1)  # (B, 1, S, S)
        own_w = torch.full_like(lent, self.cfg.own)
        if self.cfg.fill_own:
            own_w = own_w + (1 - self.cfg.own) * (1 - lent).clamp_min(0)
        if self.cfg.gain_cap > 0:
            energy = (own_w ** 2 + (weight ** 2).sum(1)).sqrt()
            gain = ((own_w + lent) / energy.clamp_min(1e-6)).clamp(1, self.cfg.gain_cap)
            weight = weight * gain[:, None]
            own_w = own_w * gain
        band = self._mix(self.bands, idx, weight) / 255
        own = (x - low) * own_w
        out = x + self.rows * (low + own + band - x)
        fine = None if self.fine is None else self._mix(self.fine, idx, weight)
        if fine is not None and self.cfg.fill_own:
            # Compositing replaces the enlarged paint's band with this one: the paint's own
            # share goes in here, its working-size band enlarged to the screen's size. (The
            # band of the enlarged paint, a bicubic enlargement and a second blur at that
            # size, scored the same on held-out renders of the sample, truth 0.957,
            # sharpness 0.489, PSNR 21.47, at about three times the cost: 2.3-3.6 against 0.2-0.9
            # ms a 720p frame at batch 1 on a 2-core AVX2 EPYC.)
            fine = fine + F.interpolate((x - low) * own_w * 255, size=fine.shape[-2:],
                                        mode="bicubic", align_corners=False)
        return out.clamp(0, 1).to(painted.dtype), fine

    # ------------------------------------------------------------------ files
    def save(self, path: Path) -> None:
        extra = {} if self._fine_np is None else {"fine": self._fine_np}
        if self._lows_np is not None:
            extra["lows"] = self._lows_np
        atomic.save_npz(path, compress=True, descriptors=self._desc_np, bands=self._bands_np,
                        **extra,
                        mask_top=np.float32(self.mask_top),
                        config=np.array(json.dumps(asdict(self.cfg))))

    @classmethod
    def load(cls, path: Path) -> TextureBank:
        with np.load(path, allow_pickle=False) as z:
            cfg = TextureConfig.from_dict(json.loads(str(z["config"])))
            return cls(z["descriptors"], z["bands"], float(z["mask_top"]), cfg,
                       z["fine"] if "fine" in z.files else None,
                       z["lows"] if "lows" in z.files else None)


# ---------------------------------------------------------------------- building
def build(regions: np.ndarray, mask_top: float, cfg: TextureConfig = TextureConfig(),
          seed: int = 0) -> tuple[TextureBank, np.ndarray]:
    """A bank from candidate mouth regions ((N, S, S, 3) uint8, training frames): k-means
    over their coarse pictures, and for each centre the real frame nearest it (a real
    frame, not the centre: an average of mouths has no texture of its own). Returns the
    bank and which of ``regions`` it holds, in its order (for ``with_fine``)."""
    if regions.ndim != 4 or regions.shape[-1] != 3 or not len(regions):
        raise ValueError(f"regions must be (N, S, S, 3) and non-empty, got {regions.shape}")
    descs = []
    for a in range(0, len(regions), 256):  # bounded memory over long footage
        t = torch.from_numpy(regions[a:a + 256]).permute(0, 3, 1, 2).float() / 255
        descs.append(describe(t, mask_top, cfg.grid).numpy())
    desc = np.concatenate(descs)
    chosen = _representatives(desc, min(cfg.entries, len(desc)), seed)
    t = torch.from_numpy(regions[chosen]).permute(0, 3, 1, 2).float()
    low = blur(t, cfg.sigma)
    bands = np.clip(np.rint((t - low).numpy() / STEP), -127, 127).astype(np.int8)
    # What ``_agree`` compares: the coarse picture blurred once more, as the painted one is.
    lows = np.clip(np.rint(blur(low, 2 * cfg.sigma).numpy()), 0, 255).astype(np.uint8)
    log.info("texture bank: %d mouths from %d candidate frames", len(chosen), len(regions))
    return TextureBank(desc[chosen], bands, mask_top, cfg, lows=lows), chosen


def _representatives(x: np.ndarray, k: int, seed: int, iters: int = 25) -> np.ndarray:
    """Indices of ``k`` distinct rows of ``x``, each the nearest to a k-means centre
    (k-means++ start, a seeded generator: the same footage gives the same bank)."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres.append(x[rng.choice(len(x), p=p)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    for _ in range(iters):
        assign = _sqdist(x, c).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    dist = _sqdist(c, x)
    chosen: list[int] = []
    for j in range(k):  # nearest real frame per centre, no frame twice
        for i in np.argsort(dist[j]):
            if i not in chosen:
                chosen.append(int(i))
                break
    return np.array(chosen)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None]


def screen_band(fine: np.ndarray, to_box: np.ndarray, size: int, box: tuple[int, int],
                sigma: float) -> tuple[np.ndarray, float]:
    """One mouth's fine band ((H, H, 3) float32 levels over the region at screen size) put
    into its screen box, and the blur (screen pixels) that takes the same band out of the
    painted box. ``to_box``: working-size region pixels (``size``) -> box pixels; ``box``:
    (w, h); ``sigma``: the band's blur in its own pixels (``TextureBank.fine_sigma``)."""
    from avatar import resample

    m = np.asarray(to_box, np.float64).copy()
    # Both sizes are cut from the frame by one map scaled (region pixels -> crop pixels is
    # side / size times x, training.head.data.candidate_regions), so fine pixels reach the
    # box through the working size's map scaled by size / H.
    m[:, :2] *= size / fine.shape[0]
    return resample.warp(fine, m, box), sigma * resample.scale_of(m)
