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

The same held-out frames then choose how much rendering sharpens the refined paint
(``choose_sharpen``): the refiner's sharpness swings from checkpoint to checkpoint (0.78 to
0.98 of the real's at the working size on three GRID enrolments) and the warp back onto the
frame takes a further tenth, so a fixed amount would over-sharpen one bundle and leave
another soft.
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

from avatar import resample
from avatar.colour import PAINTED
from avatar.detail import keep_detail
from avatar.devices import autocast, compute_dtype
from avatar.errors import TwincastError
from avatar.models.refine import SHARPEN_SIGMA, RefineConfig, Refiner, scale_for, sharpen
from training.head.fidelity import grey, laplacian_var
from training.head.refine_plan import RefinePlan, plan_refiner
from training.progress import bar

log = logging.getLogger(__name__)

PROBE_AT = 8
"""Steps run before the first plan: their times past the first three (warm-up)."""


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
    replan_every: int = 50
    """Steps between re-plans from the measured step times (``refine_plan``)."""
    plan_margin: float = 0.95
    """Share of the cap the plan fills: the cap itself never cuts the critic's part."""
    held_out_every: int = 6
    """Every this many clips one is held out to choose the checkpoint."""
    max_frames: int = 3000
    """Enrolment frames painted for it (evenly spaced; the texture bank's candidates)."""
    sharpen_max: float = 1.5
    """Most the refined paint's finest band may be lifted (``choose_sharpen``); 0: never."""
    sharpen_step: float = 0.05
    sharpen_frames: int = 240
    """Held-out frames (evenly spaced) the sharpen amount is chosen on."""
    sharpen_slack_db: float = 0.25
    """How far below the generator's own paint (PSNR at the working size) sharpening may
    take the refined paint: lifting detail whose place is not exact costs a little PSNR,
    and a refiner kept at barely the paint's PSNR would otherwise get none."""
    scale: int = 0
    """The refiner's ``scale`` (``avatar.models.refine``): 1, 2, or 0 for the working
    size's (``scale_for``)."""
    precision: str = "auto"
    """As the head's (``HeadTrainConfig.precision``): the refiner's and the critic's
    forward passes under bfloat16 autocast where the device has it natively, as rendering
    runs the refiner; weights, optimisers and losses float32."""
    seed: int = 0


@dataclass
class RefineResult:
    refiner: Refiner
    report: dict
    sharpen: float = 0.0
    """How much rendering sharpens the refined paint (``avatar.models.refine.sharpen``)."""


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
    dtype = compute_dtype(dev, cfg.precision)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    s = paint.shape[1]
    top = min(int(mask_top * s), s - 8)
    scale = cfg.scale or scale_for(s)
    if s % scale:
        raise TwincastError(f"a refiner of scale {scale} needs an even working size, not "
                            f"{s} px; train it with --scale 1")
    first = -(-top // scale) * scale
    crop = min(cfg.crop, s - first)
    crop -= crop % (2 * scale)  # whole pixels at the context branch's size
    train_p, train_r = _tensor(paint[~held], dev), _tensor(real[~held], dev)
    weight = torch.from_numpy(region_mask).to(dev)[None, None]
    net = Refiner(RefineConfig(scale=scale)).to(dev)
    average = copy.deepcopy(net).requires_grad_(False)
    critic = _FineCritic(cfg.critic_bands).to(dev)
    opt = torch.optim.Adam(net.parameters(), cfg.lr)
    opt_c = torch.optim.Adam(critic.parameters(), cfg.disc_lr, betas=(0.5, 0.999))
    base_energy, base_psnr = score(paint[held], real[held], inner)
    checks: list[dict] = []
    best: tuple[float, dict, Refiner] | None = None
    plan = RefinePlan(cfg.steps, int(cfg.gan_from * cfg.steps))
    joined: int | None = None
    took: dict[str, list[float]] = {"plain": [], "critic": [], "check": []}
    start = time.monotonic()
    cap = cfg.max_minutes * 60
    step = 0

    def check() -> None:
        nonlocal best
        t0 = time.perf_counter()
        average.eval()
        energy, psnr = score(refine_numpy(average, paint[held]), real[held], inner)
        c = {"step": step, "sharpness": round(energy, 4), "psnr_db": round(psnr, 3)}
        checks.append(c)
        if psnr >= base_psnr and energy > 0:
            far = abs(float(np.log(energy)))
            if best is None or far < best[0]:
                best = (far, c, copy.deepcopy(average))
        took["check"].append(time.perf_counter() - t0)

    def train_step(with_critic: bool, update: bool = True) -> None:
        idx = torch.randint(0, len(train_p), (cfg.batch,), generator=gen)
        # Folded (scale 2), crops start on the grid the whole paint is folded on.
        oy = first + scale * int(torch.randint(0, (s - first - crop) // scale + 1, (1,),
                                               generator=gen))
        ox = scale * int(torch.randint(0, (s - crop) // scale + 1, (1,), generator=gen))
        x = train_p[idx, :, oy:oy + crop, ox:ox + crop]
        y = train_r[idx, :, oy:oy + crop, ox:ox + crop]
        w = weight[..., oy:oy + crop, ox:ox + crop]
        with autocast(dev, dtype):
            out = net(x).float()
        loss = ((out - y).abs() * w).mean()
        if with_critic:
            opt_c.zero_grad()
            with autocast(dev, dtype):
                real_s, fake_s = critic(y, w).float(), critic(out.detach(), w).float()
            loss_c = F.relu(1 - real_s).mean() + F.relu(1 + fake_s).mean()
            loss_c.backward()
            if update:
                opt_c.step()
            with autocast(dev, dtype):
                adv = critic(out, w).float()
            loss = loss - cfg.gan_weight * adv.mean()
        opt.zero_grad()
        loss.backward()
        if not update:  # a timing probe: nothing learnt
            opt.zero_grad()
            opt_c.zero_grad()
            return
        opt.step()
        with torch.no_grad():
            # Early on the average follows closely (a short run is not all lag).
            share = max(cfg.average, 9.0 / (10.0 + step))
            for pa, pn in zip(average.parameters(), net.parameters(), strict=True):
                pa.lerp_(pn, share)

    def replan() -> RefinePlan:
        recent = {k: took[k][-cfg.replan_every:] for k in ("plain", "critic")}
        # (A plan whose critic joins within the warm-up has timed only one kind.)
        plain = float(np.median(recent["plain"] or recent["critic"]))
        crit = float(np.median(recent["critic"] or recent["plain"]))
        # The checks still to come are paid from the same cap.
        per_check = float(np.median(took["check"])) if took["check"] else 0.0
        left = cfg.plan_margin * cap - (time.monotonic() - start) \
            - per_check * max(0, plan.steps - step) / cfg.check_every
        return plan_refiner(cfg.steps, cfg.gan_from, step, joined, plain, crit, left)

    with bar(cfg.steps, "refiner", "step") as pb:
        while step < plan.steps and time.monotonic() - start < cap:
            if step == PROBE_AT and joined is None:
                # Both kinds of step timed before the plan is made (the critic's cost a
                # few passes that learn nothing), the first few left out as warm-up.
                for _ in range(3):
                    t0 = time.perf_counter()
                    train_step(True, update=False)
                    took["critic"].append(time.perf_counter() - t0)
            if step >= PROBE_AT and (step - PROBE_AT) % cfg.replan_every == 0:
                plan = replan()
                if pb.total != plan.steps:
                    pb.total = plan.steps
                    pb.refresh()
            with_critic = step >= plan.critic_from
            if with_critic and joined is None:
                joined = step
                took["critic"].clear()  # measured as they run from now on
            t0 = time.perf_counter()
            train_step(with_critic)
            if step >= 3:
                took["critic" if with_critic else "plain"].append(time.perf_counter() - t0)
            step += 1
            pb.update(1)
            if step % cfg.check_every == 0 and step > plan.critic_from:
                check()
    if not checks or checks[-1]["step"] != step:
        check()
    gan_at = plan.critic_from
    seconds = time.monotonic() - start
    report = {"steps": step, "planned_steps": cfg.steps, "plan": plan.steps,
              "seconds": round(seconds, 1), "critic_from_step": min(gan_at, step),
              "seconds_per_step": {k: round(float(np.median(v)), 4)
                                   for k, v in took.items() if v},
              "scale": scale, "precision": "bf16" if dtype == torch.bfloat16 else "fp32",
              "held_out_frames": int(held.sum()),
              "paint": {"sharpness": round(base_energy, 4), "psnr_db": round(base_psnr, 3)},
              "checks": checks}
    if best is None:
        top = max(checks, key=lambda c: c["psnr_db"])
        log.warning("refiner: no checkpoint was as faithful as the paint on %d held-out "
                    "frames (PSNR %.2f dB; the best of %d checkpoints %.2f dB at step %d "
                    "of %d, with the critic from step %d); the bundle renders without one",
                    int(held.sum()), base_psnr, len(checks), top["psnr_db"], top["step"],
                    step, min(gan_at, step))
        return None
    report["chosen"] = best[1]
    log.info("refiner: %d steps in %.0f s; on %d held-out frames sharpness %.2f -> %.2f, "
             "PSNR %.2f -> %.2f dB", step, seconds, int(held.sum()), base_energy,
             best[1]["sharpness"], base_psnr, best[1]["psnr_db"])
    refiner = best[2].cpu().eval()
    amount, report["sharpen"] = choose_sharpen(
        refine_numpy(refiner, paint[held]), real[held], inner,
        base_psnr - cfg.sharpen_slack_db, cfg)
    if amount > 0:
        log.info("refiner: rendering sharpens its paint by %.2f (held-out sharpness on the "
                 "frame %.2f -> %.2f, PSNR %.2f dB at the working size)", amount,
                 report["sharpen"]["curve"][0]["sharpness"], report["sharpen"]["sharpness"],
                 report["sharpen"]["psnr_db"])
    return RefineResult(refiner, report, amount)


def _sharpened(x: np.ndarray, amount: float) -> np.ndarray:
    """(N, S, S, 3) uint8 -> the same through ``sharpen`` (rendering's own function)."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)
    out = sharpen(t, amount).clamp(0, 1).mul(255).round().byte()
    return out.permute(0, 2, 3, 1).numpy()


def on_the_frame(refined: np.ndarray, real: np.ndarray, seed: int = 0) -> np.ndarray:
    """What eval head's reconstruction setting shows of ``refined`` (N, S, S, 3) uint8
    over ``real``, simulated at the working size: each paint moved by a random sub-pixel
    shift with the compositor's resampler (the warp back onto the frame rarely lands on
    whole pixels) and composited with the real crop's detail kept where the two agree
    (``avatar.detail``; the real crop stands in for the frame). On GRID's `cpu` bundle
    this predicted 0.73 / 0.90 / 1.02 of the real's sharpness where ``eval head`` on
    training clips held out from the refiner measured 0.73 / 0.86 / 0.96."""
    rng = np.random.default_rng(seed)
    s = refined.shape[1]
    out = np.empty(refined.shape, np.float32)
    for i, (p, r) in enumerate(zip(refined, real, strict=True)):
        dx, dy = rng.uniform(-0.5, 0.5, 2)
        moved = resample.warp(p.astype(np.float32), np.array([[1, 0, dx], [0, 1, dy]]),
                              (s, s))
        out[i] = np.clip(keep_detail(moved, r.astype(np.float32), 1.0), 0, 255)
    return out


def choose_sharpen(refined: np.ndarray, real: np.ndarray, inner: np.ndarray,
                   floor_psnr: float, cfg: RefineTrainConfig = RefineTrainConfig()
                   ) -> tuple[float, dict]:
    """The amount rendering sharpens ``refined`` (held-out crops, (N, S, S, 3) uint8) by:
    the one whose sharpness on the frame (``on_the_frame``) is nearest the real's, among
    those whose sharpened paint keeps a PSNR at the working size of at least
    ``floor_psnr`` (the generator's own paint's, less ``sharpen_slack_db``). Returns it
    and the report (the amounts tried, as far as the energy passed the real's)."""
    pick = np.unique(np.linspace(0, len(refined) - 1, min(cfg.sharpen_frames, len(refined)))
                     .astype(int))
    refined, real = refined[pick], real[pick]
    curve: list[dict] = []
    best: tuple[float, float, dict] | None = None
    amounts = np.arange(0, cfg.sharpen_max + 1e-9, cfg.sharpen_step) if cfg.sharpen_max > 0 \
        else np.zeros(1)
    for amount in amounts:
        paint = _sharpened(refined, float(amount))
        _, psnr = score(paint, real, inner)
        if psnr < floor_psnr and amount > 0:
            break  # on GRID every further step lowered the PSNR more
        energy, _ = score(on_the_frame(paint, real, cfg.seed), real, inner)
        c = {"amount": round(float(amount), 3), "sharpness": round(energy, 4),
             "psnr_db": round(psnr, 3)}
        curve.append(c)
        far = abs(float(np.log(max(energy, 1e-9))))
        if best is None or far < best[0]:
            best = (far, float(amount), c)
        if energy >= 1.0:
            break  # the energy only grows with the amount
    assert best is not None
    return best[1], {**best[2], "sigma": SHARPEN_SIGMA, "frames": len(pick), "curve": curve}
