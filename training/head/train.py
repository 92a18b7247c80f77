"""Training the talking head: first the lip-sync expert, then the generator with L1, the
expert's sync loss and (gpu preset) a patch discriminator.

One ``State`` holds models, optimisers and progress; it is checkpointed every few minutes
(atomically, tensors only, loaded with ``weights_only=True``) and a killed run resumes from
the last checkpoint. Each step returns a flat dict of named losses.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avatar import atomic
from avatar.devices import autocast, compute_dtype
from avatar.errors import TwincastError
from avatar.models.head import (
    HEAD_PRESETS,
    HeadConfig,
    HeadGenerator,
    SyncExpert,
    blank_lower,
)
from avatar.models.lips import LIP_POINTS, lip_loss
from training import presets
from training.dist import Dist
from training.head.data import Sampler, lip_split, load_cache
from training.head.expert_check import ExpertCheck, check_expert
from training.head.losses import gradient_loss, temporal_loss, texture_loss
from training.head.plan import KINDS, Allocation, Planner, describe
from training.head.refine import RefineTrainConfig
from training.head.resolution import resolve
from training.loop import Checkpoint, LoopConfig, Progress, train_loop, write_history
from training.runs import config_digest, training_device
from training.threads import probe_threads, threads_kept

log = logging.getLogger(__name__)


@dataclass
class HeadTrainConfig:
    """A training preset: model size, steps and loss weights."""

    model: HeadConfig = field(default_factory=HeadConfig)
    batch: int = 8
    """Windows per step; each window is ``model.sync_frames`` consecutive frames."""
    lip_steps: int = 6000
    """Steps of the lip predictor alone (cheap: audio in, 8 numbers out) before the expert
    and the generator; it keeps learning alongside the generator afterwards."""
    lip_batch: int = 64
    expert_steps: int = 1500
    gen_steps: int = 4000
    max_minutes: float = 55.0
    """Wall-clock cap for the whole training: it stops there, checkpointed, whatever the
    step counts say."""
    precision: str = "auto"
    """``auto``: the generator's and the expert's steps run under bfloat16 autocast where
    the device computes it natively (the weights, optimisers and losses stay float32), so
    more of the plan fits in the cap; ``fp32`` or ``bf16`` force one. On the AMX Xeon a
    ``cpu``-preset generator step at batch 8 took 0.61 s against 1.10 at 96 px and 1.60
    against 3.34 at 160 px (two threads); a CPU without native bfloat16 trains in float32
    as before."""
    lr: float = 1e-3
    lip_noise: float = 0.002
    """Std of the noise added to the real lip points the generator is trained on (crop
    fractions; 0.5 px on a 256 px crop)."""
    sync_weight: float = 0.05
    """Weight of the sync loss: how far the expert scores a generated window below the real
    window with the same audio (a hinge at the real one: a generator is never paid for
    pleasing the expert more than the person's own mouth does, which is how it games a
    weak expert)."""
    sync_min_auc: float = 0.6
    """The sync loss joins only if the expert, judged in eval mode on held-out windows
    (``training.head.expert_check``), tells in-sync from shifted audio at least this well
    (AUC; 0.5 is a coin). A weaker expert is one the generator learns to fool rather than
    learn sync from; the generator then trains on L1 and the lip sketch alone."""
    sync_from: float = 0.3
    """Fraction of the generator steps after which the sync loss joins (a generator that
    cannot draw a face yet gets no use from it)."""
    gan_weight: float = 0.0
    """Patch-discriminator weight; 0 disables it (ci, cpu)."""
    detail_weight: float = 0.5
    """Weight of the multi-scale gradient loss (``losses.gradient_loss``): keeps teeth, lip
    lines and skin texture that L1 alone blurs away."""
    texture_weight: float = 0.0
    """Weight of the local detail-energy loss (``losses.texture_loss``): a price on a mouth
    with less fine detail than the real one, wherever exactly the detail sits. At 5 on a
    fresh GRID enrolment it added little sharpness (0.497 to 0.509 with ``avatar.detail``)
    and cost 2.6 dB of PSNR and 0.7 ΔE of colour, so no preset uses it yet."""
    temporal_weight: float = 0.5
    """Weight of the frame-to-frame change loss (``losses.temporal_loss``): no shimmer
    where the real mouth is still."""
    max_size: int = 0
    """Largest working size the footage may ask for (``training.head.resolution``): the
    model paints at ``model.size`` unless the mouth region spans more pixels on screen than
    ``max_upscale`` times that; 0 keeps ``model.size`` whatever the footage."""
    max_upscale: float = 1.25
    output_max_side: int = 1280
    """The bundle's idle footage (and so the stream) is at most this large: a 1080p source
    streams at 720p on a CPU, where encoding 1080p live does not keep up. The working size
    follows the mouth's size in this output, not in the source."""
    checkpoint_minutes: float = 3.0
    seed: int = 0
    refine_steps: int = 2500
    """Steps of the refiner (``training.head.refine``), trained at export on the person's
    own frames; 0: no refiner, the bundle renders the generator's paint as it is."""
    refine_minutes: float = 8.0
    """Wall-clock cap of the refiner's training, on top of ``max_minutes``."""

    def digest(self) -> str:
        # The refiner trains after the generator, from its saved weights: not part of it.
        # Precision changes the speed, not what is learnt: a checkpoint resumes in either.
        return config_digest(self, "refine_steps", "refine_minutes", "precision")

    def refine_config(self) -> RefineTrainConfig:
        return RefineTrainConfig(steps=self.refine_steps, max_minutes=self.refine_minutes,
                                 seed=self.seed, precision=self.precision)


def head_preset(name: str) -> HeadTrainConfig:
    """The ``[NAME.head]`` table of ``training/presets.toml`` over the defaults, with the
    runtime's model of the same name."""
    changes = presets.overrides(name, "head")
    return presets.apply(HeadTrainConfig(model=HEAD_PRESETS[name]), changes, "head.")


class PatchDiscriminator(nn.Module):
    """Scores overlapping patches of the lower face as real or generated."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for c in (width, width * 2, width * 4):
            layers += [nn.Conv2d(cin, c, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = c
        layers.append(nn.Conv2d(cin, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class State:
    gen: HeadGenerator
    expert: SyncExpert
    opt_gen: torch.optim.Optimizer
    opt_expert: torch.optim.Optimizer
    opt_lips: torch.optim.Optimizer
    cfg: HeadTrainConfig
    disc: PatchDiscriminator | None = None
    opt_disc: torch.optim.Optimizer | None = None
    progress: Progress = field(default_factory=Progress)
    plan: Allocation | None = None
    """The planned step counts (``training.head.plan``); None until the first plan (the
    preset's counts stand until then)."""
    gen_train: nn.Module | None = None
    """The generator as trained: itself, or its DistributedDataParallel wrapper."""
    expert_train: nn.Module | None = None
    disc_train: nn.Module | None = None
    expert_check: ExpertCheck | None = None
    """The expert judged on held-out windows when its stage ended (None before)."""

    # The three stages run one after another, so one step count says where each stands.
    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def planned(self) -> Allocation:
        if self.plan is None:
            c = self.cfg
            return Allocation(c.lip_steps, c.expert_steps, c.gen_steps,
                              int(round(c.sync_from * c.gen_steps)))
        return self.plan

    @property
    def lip_step(self) -> int:
        return min(self.step, self.planned.lips)

    @property
    def expert_step(self) -> int:
        return min(max(self.step - self.planned.lips, 0), self.planned.expert)

    @property
    def gen_step(self) -> int:
        return max(self.step - self.planned.lips - self.planned.expert, 0)

    @property
    def stage(self) -> str:
        p = self.planned
        if self.step < p.lips:
            return "lips"
        return "expert" if self.step < p.lips + p.expert else "gen"

    @property
    def sync_allowed(self) -> bool:
        """The preset has a sync loss and the expert passed its check (or is not judged
        yet: the generator's stage judges it before its first step)."""
        return self.cfg.sync_weight > 0 and (
            self.expert_check is None or self.expert_check.passes(self.cfg.sync_min_auc))

    @property
    def sync_on(self) -> bool:
        return self.sync_allowed and self.gen_step >= self.planned.sync_at

    @property
    def done(self) -> bool:
        p = self.planned
        return self.step >= p.lips + p.expert + p.gen

    @property
    def seconds(self) -> float:
        return self.progress.seconds

    def state_dict(self) -> dict:
        d = {"gen": self.gen.state_dict(), "expert": self.expert.state_dict(),
             "opt_gen": self.opt_gen.state_dict(), "opt_expert": self.opt_expert.state_dict(),
             "opt_lips": self.opt_lips.state_dict(), **self.progress.state_dict(),
             **{f"plan_{k}": v for k, v in self.planned.to_dict().items()}}
        if self.expert_check is not None:
            c = self.expert_check
            d["expert_check"] = torch.tensor(
                [np.nan if v is None else v for v in (c.auc, c.windows, c.in_sync, c.shifted)],
                dtype=torch.float64)
        if self.disc is not None and self.opt_disc is not None:
            d["disc"] = self.disc.state_dict()
            d["opt_disc"] = self.opt_disc.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        self.gen.load_state_dict(d["gen"])
        self.expert.load_state_dict(d["expert"])
        self.opt_gen.load_state_dict(d["opt_gen"])
        self.opt_expert.load_state_dict(d["opt_expert"])
        self.opt_lips.load_state_dict(d["opt_lips"])
        if self.disc is not None and "disc" in d:
            self.disc.load_state_dict(d["disc"])
            self.opt_disc.load_state_dict(d["opt_disc"])
        if "step" not in d:  # checkpoints made before the shared loop counted each stage
            d = {**d, "step": int(d["lip_step"]) + int(d["expert_step"]) + int(d["gen_step"])}
        self.progress.load_state_dict(d)
        if "expert_check" in d:
            auc, n, pos, neg = (None if np.isnan(v) else float(v)
                                for v in d["expert_check"].tolist())
            self.expert_check = ExpertCheck(auc, int(n or 0), pos, neg)
        if "plan_gen" in d:  # checkpoints made before planning ran the preset's counts
            self.plan = Allocation(*(int(d[f"plan_{k}"]) for k in ("lips", "expert", "gen",
                                                                  "sync_at")))


def _tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """uint8 (B, W, S, S, 3) images -> float (B, W, 3, S, S); mels get a channel axis."""
    def img(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device).permute(0, 1, 4, 2, 3).float() / 255.0
    return {"regions": img(batch["regions"]), "refs": img(batch["refs"]),
            "mels": torch.from_numpy(batch["mels"]).to(device).unsqueeze(2),
            "sync_mel": torch.from_numpy(batch["sync_mel"]).to(device).unsqueeze(1),
            "label": torch.from_numpy(batch["label"]).to(device),
            "lips": torch.from_numpy(batch["lips"]).to(device),
            "lip_train": torch.from_numpy(batch["lip_train"]).to(device)}


def lip_step(state: State, sampler: Sampler, cfg: HeadTrainConfig, device: torch.device,
             dist: Dist) -> dict[str, float]:
    """One step of the lip predictor alone, on windows of its training frames."""
    b = sampler.lip_batch(cfg.lip_batch // cfg.model.sync_frames + 1)
    n, w = b["mels"].shape[:2]
    mel = torch.from_numpy(b["mels"]).to(device).reshape(n * w, 1, *b["mels"].shape[-2:])
    lips = torch.from_numpy(b["lips"]).to(device).reshape(n * w, -1, 2)
    model = state.gen.lips
    model.train()
    z = model.standardised(mel).view(n, w, -1)
    loss = lip_loss(z, model.standardise(lips).view(n, w, -1),
                    torch.ones(n, w, device=device), model.weights())
    state.opt_lips.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_grads(model.parameters())
    state.opt_lips.step()
    return {"lips/loss": float(loss.detach())}


def expert_step(state: State, sampler: Sampler, cfg: HeadTrainConfig,
                device: torch.device, dtype: torch.dtype = torch.float32
                ) -> dict[str, float]:
    # The held-out side of the lip split stays unseen: the expert is judged there.
    b = _tensors(sampler.batch(cfg.batch * 2, negatives=True, held_out=False), device)
    state.expert.train()
    expert = state.expert_train or state.expert
    with autocast(device, dtype):
        cos = expert(b["regions"], b["sync_mel"])
    p = ((cos.float() + 1) / 2).clamp(1e-6, 1 - 1e-6)
    loss = F.binary_cross_entropy(p, b["label"])
    state.opt_expert.zero_grad(set_to_none=True)
    loss.backward()
    state.opt_expert.step()
    with torch.no_grad():
        cos = state.expert(b["regions"], b["sync_mel"])
        acc = ((cos > 0).float() == b["label"]).float().mean()
    return {"expert/loss": float(loss.detach()), "expert/acc": float(acc)}


def gen_step(state: State, sampler: Sampler, cfg: HeadTrainConfig,
             device: torch.device, sync: bool, dtype: torch.dtype = torch.float32
             ) -> dict[str, float]:
    with autocast(device, dtype):
        total, losses, target, out = _gen_losses(state, sampler, cfg, device, sync)
    state.opt_gen.zero_grad(set_to_none=True)
    total.backward()
    state.opt_gen.step()
    disc = state.disc_train or state.disc
    if disc is not None and state.opt_disc is not None:
        # One forward for real and fake together: DDP expects one forward per backward.
        with autocast(device, dtype):
            scores = disc(torch.cat([target, out.detach()])).float()
        real_s, fake_s = scores.chunk(2)
        d_loss = F.relu(1 - real_s).mean() + F.relu(1 + fake_s).mean()
        state.opt_disc.zero_grad(set_to_none=True)
        d_loss.backward()
        state.opt_disc.step()
        losses["disc/loss"] = d_loss
    return {k: float(v.detach()) for k, v in losses.items()}


def _gen_losses(state: State, sampler: Sampler, cfg: HeadTrainConfig, device: torch.device,
                sync: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor,
                                     torch.Tensor]:
    """One batch's generator losses: (total, each by name, the real and painted regions)."""
    b = _tensors(sampler.batch(cfg.batch), device)
    n, w = b["regions"].shape[:2]
    s = cfg.model.size
    target = b["regions"].reshape(n * w, 3, s, s)
    ref = b["refs"].reshape(n * w, 3, s, s)
    mel = b["mels"].reshape(n * w, 1, *b["mels"].shape[-2:])
    lips = b["lips"].reshape(n * w, -1, 2)
    # A little noise on the real lips: the predicted ones the generator meets later are
    # never exactly where the face mesh put them.
    noisy = lips + cfg.lip_noise * torch.randn_like(lips)
    state.gen.train()
    out, l1, lip_z = (state.gen_train or state.gen)(
        ref, blank_lower(target, cfg.model.mask_top), mel, target, noisy)
    lip_target = state.gen.lips.standardise(lips).view(n, w, -1)
    lip = lip_loss(lip_z.view(n, w, -1), lip_target, b["lip_train"], state.gen.lips.weights())
    losses = {"gen/l1": l1, "lips/loss": lip}
    total = l1 + lip
    if cfg.detail_weight > 0:
        detail = gradient_loss(out, target)
        losses["gen/detail"] = detail
        total = total + cfg.detail_weight * detail
    if cfg.texture_weight > 0:
        texture = texture_loss(out, target)
        losses["gen/texture"] = texture
        total = total + cfg.texture_weight * texture
    if cfg.temporal_weight > 0:
        temporal = temporal_loss(out.view(n, w, 3, s, s), target.view(n, w, 3, s, s))
        losses["gen/temporal"] = temporal
        total = total + cfg.temporal_weight * temporal
    if sync:
        state.expert.eval()
        p = ((state.expert(out.reshape(n, w, 3, s, s), b["sync_mel"]) + 1) / 2)
        with torch.no_grad():
            p_real = (state.expert(b["regions"], b["sync_mel"]) + 1) / 2
        with torch.autocast(device.type, enabled=False):  # logs in full precision
            gap = (torch.log(p_real.float().clamp(1e-6, 1))
                   - torch.log(p.float().clamp(1e-6, 1)))
            sync_loss = F.relu(gap).mean()
        losses["gen/sync"] = sync_loss
        losses["gen/sync_gap"] = gap.mean()  # below 0: the expert prefers the generated
        total = total + cfg.sync_weight * sync_loss
    disc = state.disc_train or state.disc
    if disc is not None and state.opt_disc is not None:
        fake_score = disc(out).float()
        adv = F.relu(1 - fake_score).mean()  # hinge: push fakes above the margin
        losses["gen/adv"] = adv
        total = total + cfg.gan_weight * adv
    return total.float(), losses, target, out


PROBE_STEPS = {"lips": 12, "expert": 3, "gen": 3, "sync": 3}
"""Timed steps per kind and thread count (after one untimed warm-up step)."""


def probe_speeds(state: State, sampler: Sampler, cfg: HeadTrainConfig, dev: torch.device,
                 dist: Dist, planner: Planner, dtype: torch.dtype = torch.float32) -> None:
    """Time each kind of step still to come on a throwaway copy of the models, at each
    thread count worth trying, so the first plan is made from this host's speed. The probe
    does not touch the training's models, optimisers, data order or random numbers (it
    works on copies, its own sampler and a forked RNG)."""
    t_start = time.perf_counter()
    max_threads = torch.get_num_threads()
    # One thread first: with another process busy on a core, a step on two threads can
    # take twenty times as long, and a first step that slow ends that option's probe.
    options = [1, max_threads] if dev.type == "cpu" and dist.world == 1 and max_threads > 1 \
        else [max_threads]
    trial = copy.deepcopy(state)
    data = copy.copy(sampler)
    data.rng = np.random.default_rng(cfg.seed + 7919)
    stage = state.stage
    kinds = [k for k in KINDS if KINDS.index(k) >= KINDS.index(stage)]
    if cfg.sync_weight <= 0:
        kinds = [k for k in kinds if k != "sync"]
    if cfg.expert_steps <= 0:  # nothing to plan: an unprobed kind counts as free
        kinds = [k for k in kinds if k != "expert"]
    run = {"lips": lambda: lip_step(trial, data, cfg, dev, dist),
           "expert": lambda: expert_step(trial, data, cfg, dev, dtype),
           "gen": lambda: gen_step(trial, data, cfg, dev, False, dtype),
           "sync": lambda: gen_step(trial, data, cfg, dev, True, dtype)}
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for kind in kinds:
            if kind == "gen":
                trial.expert.requires_grad_(False)  # as in the generator's stage
            probe_threads(planner, kind, run[kind], options, PROBE_STEPS[kind],
                          lambda: _wait(dev))
    if "sync" not in kinds:  # no sync loss: its steps are generator steps
        planner.set_probe("sync", max_threads, planner.speed("gen"))
    planner.choose_threads()
    log.info("head step speed on this host: %s (%.0f s to measure)",
             ", ".join(f"{k} {planner.speed(k):.3f} s on {planner.threads.get(k)} thread(s)"
                       for k in kinds), time.perf_counter() - t_start)


def _wait(dev: torch.device) -> None:
    """Let queued GPU work finish, so a timing covers it."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build_state(cfg: HeadTrainConfig, device: torch.device) -> State:
    torch.manual_seed(cfg.seed)
    gen = HeadGenerator(cfg.model).to(device)
    expert = SyncExpert(cfg.model).to(device)
    st = State(gen=gen, expert=expert,
               opt_gen=torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=(0.5, 0.999)),
               opt_expert=torch.optim.Adam(expert.parameters(), lr=cfg.lr),
               opt_lips=torch.optim.Adam(gen.lips.parameters(), lr=1e-3), cfg=cfg)
    if cfg.gan_weight > 0:
        st.disc = PatchDiscriminator().to(device)
        st.opt_disc = torch.optim.Adam(st.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    return st


@dataclass
class TrainedHead:
    """What export needs of a training: the generator and how it was made."""

    gen: HeadGenerator
    mel_stats: tuple[float, float]
    seconds: float
    expert_steps: int
    gen_steps: int
    lips: dict = field(default_factory=dict)
    """The lip predictor on its held-out frames (see ``calibrate_lips``)."""
    plan: dict = field(default_factory=dict)
    """How much of the preset's plan ran within the cap (``plan.Planner.summary``)."""


@dataclass
class HeadTrainResult:
    state: State
    mel_stats: tuple[float, float]
    seconds: float
    resumed: bool
    dist: Dist = field(default_factory=Dist)

    lips: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)

    def trained(self) -> TrainedHead:
        return TrainedHead(self.state.gen, self.mel_stats, self.seconds,
                           self.state.expert_step, self.state.gen_step, self.lips, self.plan)


def save_trained(head: TrainedHead, out_dir: Path) -> None:
    """generator.safetensors + generator.json: small enough to bring back from a GPU
    machine and export there-free (``twincast train head --export-only``)."""
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in head.gen.state_dict().items()}
    with atomic.atomic_path(out_dir / "generator.safetensors", ".safetensors") as tmp:
        save_file(weights, str(tmp))
    atomic.write_json(out_dir / "generator.json", {
        "config": dataclasses.asdict(head.gen.cfg), "mel_stats": list(head.mel_stats),
        "seconds": round(head.seconds, 1), "expert_steps": head.expert_steps,
        "gen_steps": head.gen_steps, "lips": head.lips, "plan": head.plan})


def load_trained(out_dir: Path) -> TrainedHead:
    from safetensors.torch import load_file

    meta_path = out_dir / "generator.json"
    if not meta_path.exists():
        raise TwincastError(f"{out_dir}: no trained generator here (generator.json is "
                            "missing); train the head first")
    meta = json.loads(meta_path.read_text())
    gen = HeadGenerator(HeadConfig.from_dict(meta["config"]))
    gen.load_state_dict(load_file(str(out_dir / "generator.safetensors")))
    return TrainedHead(gen, tuple(meta["mel_stats"]), float(meta["seconds"]),
                       int(meta["expert_steps"]), int(meta["gen_steps"]),
                       meta.get("lips", {}), meta.get("plan", {}))


def train_head(features_dir: Path, out_dir: Path, cfg: HeadTrainConfig,
               device: str = "cpu") -> HeadTrainResult:
    """Train (or resume) in ``out_dir``; writes checkpoint.pt, history.json, curves.png.

    Under ``torchrun`` every process trains on its own batches and gradients are averaged
    (DistributedDataParallel); only rank 0 writes files.
    """
    dev = training_device(device)
    dist = Dist.from_env(dev)
    dev = dist.place(dev)
    if dev.type == "cuda":
        # Fixed shapes every step: let cuDNN pick its fastest kernels, and TF32 matmuls.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # The working size follows the footage (before the digest: a checkpoint is of one size).
    model, resolution = resolve(features_dir, cfg.model, cfg.max_size, cfg.max_upscale,
                                cfg.output_max_side)
    cfg = dataclasses.replace(cfg, model=model)
    ckpt = Checkpoint(out_dir / "checkpoint.pt", cfg.digest())
    saved = ckpt.load(dev)
    mel_stats = tuple(saved["mel_stats"]) if saved else None
    clips, mel_stats = load_cache(features_dir, cfg.model.size, cfg.model.mel_frames,
                                  cfg.model.region, mel_stats)
    sampler = Sampler(clips, cfg.model.sync_frames, seed=dist.seed(cfg.seed))
    state = build_state(cfg, dev)
    set_lip_stats(state.gen, clips)
    planner = Planner({"lips": cfg.lip_steps, "expert": cfg.expert_steps,
                       "gen": cfg.gen_steps}, cfg.sync_from, cfg.max_minutes * 60)
    if saved:
        state.load_state_dict(saved)
        sampler.rng = np.random.default_rng(dist.seed(cfg.seed) + state.step)
        planner.spent.update({k: float(saved.get(f"plan_spent_{k}", 0.0)) for k in
                              planner.spent})
        log.info("resuming head training at lip step %d, expert step %d, generator step %d",
                 state.lip_step, state.expert_step, state.gen_step)
    if state.stage == "gen":
        state.expert.requires_grad_(False)
    max_threads = torch.get_num_threads()
    dtype = compute_dtype(dev, cfg.precision)
    if dist.main and not state.done:
        log.info("head training in %s", "bfloat16 autocast" if dtype == torch.bfloat16
                 else "float32")
    if not state.done:
        probe_speeds(state, sampler, cfg, dev, dist, planner, dtype)
    if dist.world > 1:
        state.gen_train = dist.wrap(state.gen, dev)
        if state.stage != "gen":
            state.expert_train = dist.wrap(state.expert, dev)
        if state.disc is not None:
            state.disc_train = dist.wrap(state.disc, dev)

    def replan() -> None:
        before = state.planned
        stage = state.stage
        order = ("lips", "expert", "gen")
        fixed = {k: getattr(before, k) for k in order[:order.index(stage)]}
        done = {"lips": state.lip_step, "expert": state.expert_step, "gen": state.gen_step}
        # Every process plans from the same figures: the slowest speeds, the longest time
        # spent per stage and in all. Any figure left to one process (its own time per
        # stage did) gives the processes different plans; they then change stage at
        # different steps and meet in different collectives (gloo aborted the run).
        stages = sorted(planner.spent)
        figures = dist.max_values([planner.speed(k) for k in KINDS] +
                                  [planner.spent[k] for k in stages] + [state.seconds])
        planner.spent.update(zip(stages, figures[len(KINDS):-1], strict=True))
        joined = before.sync_at if stage == "gen" and state.sync_on else None
        speeds = dict(zip(KINDS, figures[:len(KINDS)], strict=True))
        if not state.sync_allowed:  # the steps after sync_at are plain generator steps
            speeds["sync"] = speeds["gen"]
        state.plan = planner.replan(done, figures[-1], fixed, joined, speeds)

    if planner.speeds and not state.done:
        replan()
        p = state.planned
        if p.gen < cfg.gen_steps and dist.main:
            log.warning("this host fits %d of the generator's %d steps in the %g-minute cap "
                        "(%.0f%%%s); the plan keeps every stage%s their shares", p.gen,
                        cfg.gen_steps, cfg.max_minutes, 100 * p.gen / cfg.gen_steps,
                        f"; {p.gen - p.sync_at} with the sync loss" if cfg.sync_weight > 0
                        else "", " and the sync loss" if cfg.sync_weight > 0 else "")
    last_stage = [""]

    def judge_expert() -> None:
        """Before the generator's first step (or on resuming a run from before this
        check): may the expert teach it?"""
        state.expert_check = check_expert(state.expert, sampler, dev)
        c = state.expert_check
        if not dist.main:
            return
        if c.auc is None:
            log.info("the sync expert could not be judged (no held-out windows); the sync "
                     "loss joins as planned")
        elif c.passes(cfg.sync_min_auc):
            log.info("sync expert on %d held-out windows: AUC %.3f (in sync %.3f, shifted "
                     "%.3f); the sync loss joins as planned", c.windows, c.auc, c.in_sync,
                     c.shifted)
        else:
            log.warning("the sync expert tells in-sync from shifted audio on held-out "
                        "windows only at AUC %.3f (below %.2f), too weakly to teach the "
                        "generator; it trains without the sync loss (the lip sketch still "
                        "drives the mouth)", c.auc, cfg.sync_min_auc)

    def until() -> bool:
        if not planner.speeds:  # resumed after its plan was done: nothing was measured
            return state.done
        if state.stage == "gen" and state.expert_check is None and cfg.sync_weight > 0:
            judge_expert()
        stage = state.stage
        if stage != last_stage[0] or state.step % planner.cfg.replan_steps == 0:
            replan()
            stage = state.stage  # a re-plan can end the current stage
            if stage == "gen" and state.expert_check is None and cfg.sync_weight > 0:
                judge_expert()
            if stage != last_stage[0]:
                p = state.planned
                joins = (f" (the sync loss from step {p.sync_at})" if state.sync_allowed
                         else " (no sync loss)")
                log.info("head stage %s: %d steps planned%s", stage, getattr(p, stage),
                         joins if stage == "gen" else "")
                if stage == "gen":
                    # From here the expert only judges: it must not learn from the generator.
                    state.expert.requires_grad_(False)
                last_stage[0] = stage
        return state.done

    def step() -> dict[str, float]:
        stage = state.stage
        kind = "sync" if stage == "gen" and state.sync_on else stage
        threads = max_threads
        if dev.type == "cpu" and dist.world == 1:
            threads = planner.threads_for(kind, time.monotonic(), max_threads)
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        t0 = time.perf_counter()
        if stage == "lips":
            losses = lip_step(state, sampler, cfg, dev, dist)
        elif stage == "expert":
            losses = expert_step(state, sampler, cfg, dev, dtype)
        else:
            losses = gen_step(state, sampler, cfg, dev, kind == "sync", dtype)
        _wait(dev)
        planner.after_step(kind, threads, time.perf_counter() - t0, stage, time.monotonic())
        return losses

    def save() -> None:
        ckpt.save({**state.state_dict(), "mel_stats": list(mel_stats),
                   **{f"plan_spent_{k}": v for k, v in planner.spent.items()}})

    loop = LoopConfig("head", cfg.lip_steps + cfg.expert_steps + cfg.gen_steps,
                      cfg.max_minutes, cfg.checkpoint_minutes)
    with threads_kept():
        train_loop(loop, state.progress, step, save, any_rank=dist.any, main=dist.main,
                   until=until)
    ran = {"lips": state.lip_step, "expert": state.expert_step, "gen": state.gen_step}
    sync_steps = max(state.gen_step - state.planned.sync_at, 0) if state.sync_allowed else 0
    plan = {**planner.summary(ran, sync_steps, cfg.sync_weight > 0),
            "resolution": resolution.to_dict(),
            "precision": "bf16" if dtype == torch.bfloat16 else "fp32"}
    if state.expert_check is not None:
        plan["expert"] = {**state.expert_check.to_dict(), "min_auc": cfg.sync_min_auc,
                          "sync_loss": state.sync_allowed}
    if dist.main:
        log.info("%s", describe(plan))
    lips: dict = {}
    if dist.main:
        lips = calibrate_lips(state.gen, clips, dev)
        if lips.get("val_opening_corr") is not None:
            log.info("lip predictor on %d held-out frames: mouth-opening correlation %.3f, "
                     "gain %.2f", lips["val_frames"], lips["val_opening_corr"],
                     lips["gain_mean"])
        save()
        write_history(state.progress, out_dir)
    result = HeadTrainResult(state, mel_stats, state.seconds, saved is not None, dist, lips,
                             plan)
    if dist.main:
        save_trained(result.trained(), out_dir)
    return result


def set_lip_stats(gen: HeadGenerator, clips: list) -> None:
    """The person's lip-shape components, from the lip predictor's training frames."""
    _, lips = lip_split(clips, train=True)
    if len(lips) < 2:
        _, lips = lip_split(clips, train=False)
    if len(lips) > 1:
        gen.lips.fit_shapes(torch.from_numpy(lips))


_UPPER, _LOWER = LIP_POINTS.index(13), LIP_POINTS.index(14)  # inner lips, mid-line


@torch.no_grad()
def calibrate_lips(gen: HeadGenerator, clips: list, device: torch.device,
                   max_gain: float = 2.0) -> dict:
    """Measure the lip predictor on its held-out frames and set its per-coordinate gain.

    A squared-error model predicts the *expected* mouth, which moves less than the real
    one by the factor of its correlation; the gain per shape component (held-out std of
    the truth over the prediction's, at least 1 and capped) gives the mouth back its range.
    Correlations are not changed by it."""
    mels, lips = lip_split(clips, train=False)
    if len(mels) < 25:
        return {}
    was_training = gen.training
    gen.eval()
    z = torch.cat([gen.lips.standardised(torch.from_numpy(mels[a:a + 256]).unsqueeze(1)
                                         .to(device)).cpu()
                   for a in range(0, len(mels), 256)]).numpy()
    gen.train(was_training)
    truth = gen.lips.standardise(torch.from_numpy(lips).to(device)).cpu().numpy()
    r = np.array([np.corrcoef(z[:, k], truth[:, k])[0, 1] if z[:, k].std() > 1e-9 else 0.0
                  for k in range(z.shape[1])])
    gain = np.clip(truth.std(0) / (z.std(0) + 1e-6), 1.0, max_gain).astype(np.float32)
    # Only components the audio really predicts get their range back: scaling up a poor
    # prediction adds motion that is mostly wrong.
    gain[~(r > 0.3)] = 1.0
    gen.lips.gain.copy_(torch.from_numpy(gain).to(gen.lips.gain.device))
    pred = gen.lips.points(torch.from_numpy(z * gain).to(device)).cpu().numpy()

    def opening(p: np.ndarray) -> np.ndarray:
        return p[:, _LOWER, 1] - p[:, _UPPER, 1]

    o_pred, o_true = opening(pred), opening(lips)
    ok = np.std(o_pred) > 1e-9 and np.std(o_true) > 1e-9
    return {"val_frames": int(len(mels)),
            "val_opening_corr": round(float(np.corrcoef(o_pred, o_true)[0, 1]), 4)
            if ok else None,
            "val_opening_std_ratio": round(float(np.std(o_pred) / max(np.std(o_true),
                                                                       1e-9)), 4),
            "gain_mean": round(float(gain.mean()), 3)}
