"""Training the refiner (``avatar.models.refine``) at export, on the person's own frames.

The generator re-paints the enrolment's frames (their own audio), and the refiner learns to
turn each paint into the real frame's region: an L1 loss keeps it faithful, a small patch
critic that sees only the fine bands (what a 3x3 mean removes, and what a 7x7 mean removes
from that) asks for detail with the texture of the real mouth's. Random crops keep a
step's cost independent of the working size. The weights rendering uses are an
exponential moving average of the trained ones (an adversarial loss swings; the average
does not).

Clips held out from the refiner's training choose it: every ``check_every`` steps the
average is scored there (high-frequency energy over the real's, PSNR of the painted
interior), and the checkpoint kept is the one whose energy ratio is nearest 1 among those
at least as faithful as the paint itself (PSNR not below the paint's). Where none is, the
bundle goes without a refiner and renders as before.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar.colour import PAINTED
from avatar.models.refine import RefineConfig, Refiner
from training.head.fidelity import grey, laplacian_var
from training.progress import bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineTrainConfig:
    steps: int = 2500
    max_minutes: float = 8.0
    """Wall-clock cap of the refiner's training (on top of the head's own cap)."""
    batch: int = 16
    crop: int = 64
    lr: float = 1e-3
    disc_lr: float = 2e-4
    gan_weight: float = 0.1
    gan_from: float = 0.2
    """Share of the steps trained on L1 alone before the discriminator joins."""
    critic_bands: int = 2
    """Bands the critic sees: 1, the finest (what a 3x3 mean removes); 2, also the next
    one (what a 7x7 mean removes from the 3x3 mean). On GRID's training clips held out
    from the refiner (the idle host's `cpu` bundle; ``eval head`` on them), 2 gave
    sharpness 0.75 against 0.70, PSNR 30.7 against 30.4 dB, change in silence 0.94 against
    0.89, with a smoother course between checkpoints: with the finest band alone the
    critic asks for detail finer than the camera's, which the warp back onto the frame
    takes out again."""
    average: float = 0.01
    """Weight of each new step in the moving average rendering uses."""
    check_every: int = 250
    held_out_every: int = 6
    """Every this many clips one is held out to choose the checkpoint."""
    max_frames: int = 3000
    """Enrolment frames painted for it (evenly spaced; the texture bank's candidates)."""
    seed: int = 0


@dataclass
class RefineResult:
    refiner: Refiner
    report: dict


class _FineCritic(nn.Module):
    """Scores overlapping patches of fine bands as real or refined."""

    def __init__(self, bands: int, ch: int = 32):
        super().__init__()
        self.bands = bands
        self.net = nn.Sequential(
            nn.Conv2d(3 * bands, ch, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch * 2, ch * 2, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch * 2, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x``: an image (B, 3, H, W), scored on its bands where ``weight`` (the paint's
        blend weight) shows them."""
        return self.net(fine_bands(x, self.bands) * weight)


def _mean(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, 1)


def fine_bands(x: torch.Tensor, bands: int) -> torch.Tensor:
    """What a 3x3 mean removes (the band the generator paints soft), and with ``bands`` 2
    the band below it, side by side in channels."""
    if bands not in (1, 2):
        raise ValueError(f"critic_bands is 1 or 2, not {bands}")
    m3 = _mean(x, 3)
    if bands == 1:
        return x - m3
    return torch.cat([x - m3, m3 - _mean(x, 7)], 1)


def held_out_split(clip_of: np.ndarray, every: int) -> np.ndarray:
    """Boolean mask of the frames held out: whole clips (every ``every``-th of those
    present), or, with a single clip, its last sixth."""
    clips = np.unique(clip_of)
    if len(clips) >= 2:
        held = np.isin(clip_of, clips[::every])
        if 0 < held.sum() < len(held):
            return held
    held = np.zeros(len(clip_of), bool)
    held[len(held) - max(1, len(held) // every):] = True
    return held


def score(paint: np.ndarray, real: np.ndarray, inner: np.ndarray) -> tuple[float, float]:
    """(energy ratio, PSNR) of ``paint`` against ``real`` (N, S, S, 3) over ``inner``:
    the variance of the Laplacian, as ``eval head`` measures sharpness, and the PSNR."""
    e_p = np.mean([laplacian_var(grey(p.astype(np.float32)), inner) for p in paint])
    e_r = np.mean([laplacian_var(grey(r.astype(np.float32)), inner) for r in real])
    mse = float(((paint.astype(np.float32) - real.astype(np.float32))[:, inner] ** 2).mean())
    return float(e_p / max(e_r, 1e-9)), float(10 * np.log10(255.0 ** 2 / max(mse, 1e-9)))


def _tensor(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(dev).permute(0, 3, 1, 2).float().div(255)


@torch.no_grad()
def refine_numpy(refiner: Refiner, paint: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, S, S, 3) uint8 paint -> refined, the same."""
    dev = next(refiner.parameters()).device
    out = []
    for a in range(0, len(paint), batch):
        r = refiner(_tensor(paint[a:a + batch], dev)).clamp(0, 1)
        out.append((r * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else paint.copy()


def train_refiner(paint: np.ndarray, real: np.ndarray, clip_of: np.ndarray,
                  region_mask: np.ndarray, mask_top: float,
                  cfg: RefineTrainConfig = RefineTrainConfig(),
                  device: str = "cpu") -> RefineResult | None:
    """``paint``/``real``: (N, S, S, 3) uint8 regions of the same frames (the generator's
    paint with the frame's own audio, and the real one); ``clip_of``: (N,) each frame's
    clip; ``region_mask``: the blend weight over the region (where the paint shows).
    None when too few frames, no step fits, or no checkpoint is as faithful as the paint."""
    inner = region_mask >= PAINTED
    held = held_out_split(clip_of, cfg.held_out_every)
    if len(paint) < 20 or inner.sum() < 16 or cfg.steps <= 0:
        return None
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    s = paint.shape[1]
    top = min(int(mask_top * s), s - 8)
    crop = min(cfg.crop, s - top)
    train_p, train_r = _tensor(paint[~held], dev), _tensor(real[~held], dev)
    weight = torch.from_numpy(region_mask).to(dev)[None, None]
    net = Refiner(RefineConfig()).to(dev)
    average = copy.deepcopy(net).requires_grad_(False)
    critic = _FineCritic(cfg.critic_bands).to(dev)
    opt = torch.optim.Adam(net.parameters(), cfg.lr)
    opt_c = torch.optim.Adam(critic.parameters(), cfg.disc_lr, betas=(0.5, 0.999))
    base_energy, base_psnr = score(paint[held], real[held], inner)
    checks: list[dict] = []
    best: tuple[float, dict, Refiner] | None = None
    gan_at = int(cfg.gan_from * cfg.steps)
    start = time.monotonic()
    cap = cfg.max_minutes * 60
    step = 0

    def check() -> None:
        nonlocal best
        average.eval()
        energy, psnr = score(refine_numpy(average, paint[held]), real[held], inner)
        c = {"step": step, "sharpness": round(energy, 4), "psnr_db": round(psnr, 3)}
        checks.append(c)
        if psnr >= base_psnr and energy > 0:
            far = abs(float(np.log(energy)))
            if best is None or far < best[0]:
                best = (far, c, copy.deepcopy(average))

    with bar(cfg.steps, "refiner", "step") as pb:
        while step < cfg.steps and time.monotonic() - start < cap:
            idx = torch.randint(0, len(train_p), (cfg.batch,), generator=gen)
            oy = top + int(torch.randint(0, s - top - crop + 1, (1,), generator=gen))
            ox = int(torch.randint(0, s - crop + 1, (1,), generator=gen))
            x = train_p[idx, :, oy:oy + crop, ox:ox + crop]
            y = train_r[idx, :, oy:oy + crop, ox:ox + crop]
            w = weight[..., oy:oy + crop, ox:ox + crop]
            out = net(x)
            loss = ((out - y).abs() * w).mean()
            if step >= gan_at:
                opt_c.zero_grad()
                loss_c = (F.relu(1 - critic(y, w)).mean()
                          + F.relu(1 + critic(out.detach(), w)).mean())
                loss_c.backward()
                opt_c.step()
                loss = loss - cfg.gan_weight * critic(out, w).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                # Early on the average follows closely (a short run is not all lag).
                share = max(cfg.average, 9.0 / (10.0 + step))
                for pa, pn in zip(average.parameters(), net.parameters(), strict=True):
                    pa.lerp_(pn, share)
            step += 1
            pb.update(1)
            if step % cfg.check_every == 0 and step > gan_at:
                check()
    if not checks or checks[-1]["step"] != step:
        check()
    seconds = time.monotonic() - start
    report = {"steps": step, "planned_steps": cfg.steps, "seconds": round(seconds, 1),
              "held_out_frames": int(held.sum()),
              "paint": {"sharpness": round(base_energy, 4), "psnr_db": round(base_psnr, 3)},
              "checks": checks}
    if best is None:
        log.warning("refiner: no checkpoint was as faithful as the paint on %d held-out "
                    "frames (PSNR %.2f dB); the bundle renders without one",
                    int(held.sum()), base_psnr)
        return None
    report["chosen"] = best[1]
    log.info("refiner: %d steps in %.0f s; on %d held-out frames sharpness %.2f -> %.2f, "
             "PSNR %.2f -> %.2f dB", step, seconds, int(held.sum()), base_energy,
             best[1]["sharpness"], base_psnr, best[1]["psnr_db"])
    refiner = best[2].cpu().eval()
    return RefineResult(refiner, report)
