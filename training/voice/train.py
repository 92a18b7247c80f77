"""Training the voice's acoustic model from the enrolment cache's utterances.

Same shape as the head's trainer: one ``State`` holds model, optimiser and progress; it is
checkpointed every few minutes (atomically, tensors only) and a killed run resumes from the
last checkpoint; each step returns a flat dict of named losses. Under ``torchrun`` every
process trains the acoustic model and the vocoder on its own batches with the gradients
averaged (DistributedDataParallel), and only the first writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avatar.audio import VOICE_MEL
from avatar.devices import autocast, compute_dtype
from avatar.errors import TwincastError
from avatar.models.voice import VOICE_PRESETS, AcousticModel, VoiceConfig
from training import presets
from training.dist import Dist
from training.loop import Checkpoint, Every, LoopConfig, Progress, train_loop, write_history
from training.progress import bar
from training.runs import config_digest, training_device
from training.threads import ThreadClock, probe_threads, threads_kept
from training.voice import plan as voice_plan
from training.voice.data import (
    PAD_SECONDS,
    Batcher,
    Utterance,
    load_utterances,
    mel_stats,
    pad_batch,
)
from training.voice.vocoder import (
    TrainedVocoder,
    VocoderTrainConfig,
    adapt_vocoder,
    read_wav,
    train_vocoder,
)

log = logging.getLogger(__name__)

PAD_FRAMES = round(PAD_SECONDS * VOICE_MEL.rate / VOICE_MEL.hop)
"""Frames of silence the training utterances carry either side (not speech to match)."""


@dataclass
class VoiceTrainConfig:
    """A voice training preset."""

    model: VoiceConfig = field(default_factory=VoiceConfig)
    steps: int = 8000
    max_frames: int = 6000
    """Mel frames per batch (about 70 s of speech at the 22.05 kHz hop of 256)."""
    lr: float = 2e-3
    max_minutes: float = 33.0
    """Cap on the acoustic model's wall time (the vocoder has its own)."""
    checkpoint_minutes: float = 3.0
    seed: int = 0
    split: str = "every-10th-held-out"
    """Which sentences the acoustic model learns from (see ``split_holdout``); named so a
    checkpoint made with another split starts over instead of resuming."""
    vocoder: VocoderTrainConfig | None = field(default_factory=VocoderTrainConfig)
    """None: no trained vocoder (Griffin-Lim at synthesis)."""
    precision: str = "auto"
    """``auto``: train under bfloat16 autocast where the device computes it natively (a
    quarter less time a step on this machine's CPU, so more steps in the same budget);
    ``fp32`` or ``bf16`` force one."""
    min_share: float = 0.28
    """Fewest of ``steps`` a usable voice needs: when the cap fits fewer on this host
    (measured before training), enrolment stops at once and says how long it would need.
    Set from the fewest measured to be usable: on an AMX Xeon (2026-12-02) 2,288 of the cpu
    preset's 8,000 steps (29 %, one core busy) spoke held-out LJ Speech 6.5 WER points
    above the real recordings and 2,914 (36 %, idle) 7.0. (A quarter, 2,093 steps, had
    given 24.5 points before the learning rate annealed by the cap.)"""
    refuse_short: bool = True
    """Stop before training when the cap fits fewer than ``min_share`` of the steps; off
    (a warning only) when the user set the cap (``--max-minutes``)."""
    lighter: VoiceConfig | None = None
    """A smaller model trained instead where the cap fits too few of ``model``'s steps on
    this host (measured before training) but enough of this one's; only under the preset's
    own cap (a cap the user set trains ``model`` however much of it fits)."""
    held_every: int = 100
    """Steps between scorings on the held-out sentences (curves and log only). Choosing the
    weights by the lowest held-out loss was tried and is worse: on LJ it picked step 600,
    whose held-out synthesis WER was 44.6 % against 23.7 % for the last step (2310)."""

    def digest(self) -> str:
        return config_digest(self, "vocoder")  # the vocoder is checkpointed apart


def voice_preset(name: str) -> VoiceTrainConfig:
    """The ``[NAME.voice]`` table of ``training/presets.toml`` over the defaults, with the
    runtime's model of the same name."""
    changes = presets.overrides(name, "voice")
    return presets.apply(VoiceTrainConfig(model=VOICE_PRESETS[name],
                                          lighter=VOICE_PRESETS.get(f"{name}-light")),
                         changes, "voice.")


def lighter_config(cfg: VoiceTrainConfig) -> VoiceTrainConfig | None:
    """The training with the preset's lighter model (its own checkpoint: another digest)."""
    if cfg.lighter is None:
        return None
    return dataclasses.replace(cfg, model=cfg.lighter, lighter=None)


@dataclass
class VoiceState:
    model: AcousticModel
    opt: torch.optim.Optimizer
    progress: Progress = field(default_factory=Progress)
    best_loss: float = float("inf")
    """The lowest held-out loss so far, and its step (reported, not used to choose)."""
    best_step: int = 0
    net: torch.nn.Module | None = None
    """The model as trained: itself, or its DistributedDataParallel wrapper."""

    @property
    def step(self) -> int:
        return self.progress.step

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                **self.progress.state_dict(), "best_loss": self.best_loss,
                "best_step": self.best_step}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.opt.load_state_dict(d["opt"])
        self.progress.load_state_dict(d)
        self.best_loss = float(d.get("best_loss", float("inf")))
        self.best_step = int(d.get("best_step", 0))

    def score_held_out(self, loss: float) -> bool:
        """Note ``loss`` if it is the lowest held-out loss yet."""
        if loss >= self.best_loss:
            return False
        self.best_loss, self.best_step = loss, self.step
        return True


@dataclass
class TrainedVoice:
    """What export needs of a training: the model and how its mels are scaled."""

    model: AcousticModel
    mel_mean: np.ndarray
    mel_std: np.ndarray
    seconds: float
    steps: int
    utterances: int
    vocoder: TrainedVocoder | None = None
    duration_scale: float = 1.0
    """Real over synthesised speech length on the training sentences, said piece by piece
    as ``Voice.speak`` says them (see ``calibrate_durations``)."""
    plan: dict = field(default_factory=dict)
    """Per stage: planned and run steps, measured speed (``training.voice.plan``)."""
    main: bool = True
    """Whether this process writes the results (the first of a ``torchrun`` job)."""


def _lr_factor(step: int, steps: int, time_done: float = 0.0) -> float:
    """Warm up over 300 steps, then decay linearly to a twentieth at the end of the run:
    the end is whichever comes first of the step count and the wall-time cap
    (``time_done`` is the fraction of the cap used), so a run stopped by its cap has
    annealed too instead of stopping at a high learning rate."""
    done = max(step / max(steps, 1), time_done)
    return min(1.0, (step + 1) / 300) * max(0.05, 1 - done)


def train_step(state: VoiceState, batcher: Batcher, mean: np.ndarray, std: np.ndarray,
               device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    b = batcher.batch(mean, std)
    t = {k: torch.from_numpy(v).to(device) for k, v in b.items()}
    state.model.train()
    net = state.net or state.model
    with autocast(device, dtype):
        _, losses = net(t["tokens"], t["n_sym"], t["mels"], t["n_frames"])
    total = losses["voice/mel"] + losses["voice/prior"] + losses["voice/duration"]
    state.opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), 5.0)
    state.opt.step()
    return {k: float(v.detach()) for k, v in losses.items()}


@dataclass
class _Setup:
    """What the acoustic model's training starts from: the utterances, the model and its
    optimiser (resumed from the checkpoint in ``out_dir`` where it matches ``cfg``)."""

    utts: list[Utterance]
    train_utts: list[Utterance]
    held: list[Utterance]
    mean: np.ndarray
    std: np.ndarray
    batcher: Batcher
    state: VoiceState
    ckpt: Checkpoint
    dtype: torch.dtype
    max_threads: int

    @classmethod
    def load(cls, dirs: list[Path], out_dir: Path, cfg: VoiceTrainConfig,
             dev: torch.device, dist: Dist | None = None) -> _Setup:
        dist = dist or Dist()
        utts = sorted((u for d in dirs for u in load_utterances(d, marks=cfg.model.marks)),
                      key=lambda u: -u.mel.shape[1])
        ckpt = Checkpoint(out_dir / "checkpoint.pt", cfg.digest())
        saved = ckpt.load(dev)
        if saved:
            mean, std = saved["mel_mean"].numpy(), saved["mel_std"].numpy()
        else:
            mean, std = mel_stats(utts)
        train_utts, held = split_holdout(utts)
        longest = train_utts[0].mel.shape[1]
        batcher = Batcher(train_utts, max(cfg.max_frames, longest), seed=dist.seed(cfg.seed))
        torch.manual_seed(cfg.seed)
        model = AcousticModel(cfg.model).to(dev)
        state = VoiceState(model, torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                                    weight_decay=1e-6))
        if saved:
            state.load_state_dict(saved)
            batcher.rng = np.random.default_rng(dist.seed(cfg.seed) + state.step)
            if dist.main:
                log.info("resuming voice training at step %d", state.step)
        max_threads = torch.get_num_threads() if dev.type == "cpu" else 1
        return cls(utts, train_utts, held, mean, std, batcher, state, ckpt,
                   compute_dtype(dev, cfg.precision), max_threads)


@dataclass
class VoiceFit:
    """The training this host's cap fits, decided before any training: the preset's, or
    the one with its lighter model; its utterances, model and optimiser loaded, and the
    measured speed of its step (so training does not measure again)."""

    cfg: VoiceTrainConfig
    setup: _Setup
    clock: ThreadClock
    planned: int
    lighter: bool = False
    """The preset's lighter model (its own did not fit)."""


def fit_voice(sources: Sequence[Path], out_dir: Path, cfg: VoiceTrainConfig,
              dev: torch.device, retry: str = voice_plan.RETRY_TRAIN,
              dist: Dist | None = None) -> VoiceFit:
    """Time the acoustic model's step on this host and choose what to train: the preset's
    model where its cap fits enough of its steps, else its lighter model where that fits
    (a one-line error, saying ``retry``, where neither does). A run already under way
    resumes with the model it began with. Trains nothing. Under ``torchrun`` every process
    decides from the slowest process's speed, so all choose the same."""
    dist = dist or Dist()
    light = lighter_config(cfg) if cfg.refuse_short else None
    if light is not None and Checkpoint(out_dir / "checkpoint.pt", light.digest()).matches():
        options = [light]
    elif light is not None and Checkpoint(out_dir / "checkpoint.pt", cfg.digest()).matches():
        options = [cfg]
    else:
        options = [cfg] + ([light] if light is not None else [])
    for i, option in enumerate(options):
        last = i == len(options) - 1
        s = _Setup.load(list(sources), out_dir, option, dev, dist)
        clock = ThreadClock()
        if s.state.step >= option.steps:
            return VoiceFit(option, s, clock, option.steps, option is light)
        speed = dist.largest(probe_acoustic(clock, s.state, s.batcher, s.mean, s.std, dev,
                                            s.dtype, option, s.max_threads))
        if last or voice_plan.fits(speed, option.max_minutes, option.steps, option.min_share,
                                   s.state.step, s.state.progress.seconds):
            planned = voice_plan.check_fits(speed, option.max_minutes, option.steps,
                                            option.min_share, s.state.step,
                                            s.state.progress.seconds, option.refuse_short,
                                            retry)
            log.info("voice step speed on this host: %.3f s on %d thread(s): the %g-minute "
                     "cap fits %d of the preset's %d steps%s", speed,
                     clock.threads.get("acoustic", s.max_threads), option.max_minutes,
                     planned, option.steps, " (its lighter model)" if option is light else "")
            return VoiceFit(option, s, clock, planned, option is light)
        log.info("the preset's voice model runs a step in %.2f s here, too slow for its "
                 "%g-minute cap: trying its lighter model", speed, option.max_minutes)
    raise AssertionError("unreachable")


def check_voice_fits(sources: Sequence[Path], out_dir: Path, cfg: VoiceTrainConfig,
                     device: str = "cpu", retry: str = voice_plan.RETRY_TRAIN) -> VoiceFit:
    """``fit_voice`` on ``device``: an enrolment checks this before its head's half hour
    and passes the answer on to ``train_voice``."""
    return fit_voice(sources, out_dir, cfg, training_device(device), retry)


STAGES = ("acoustic", "vocoder")
"""Stages that can be trained alone (``train_voice(only=...)``)."""


def train_voice(sources: Path | Sequence[Path], out_dir: Path, cfg: VoiceTrainConfig,
                device: str = "cpu", only: str | None = None,
                retry: str = voice_plan.RETRY_TRAIN, fit: VoiceFit | None = None
                ) -> TrainedVoice | None:
    """Train (or resume) in ``out_dir`` on the utterances of one or more enrolment caches
    (a video enrolment's ``features``, a voice-only ``voice_features``): writes
    checkpoint.pt, history.json, curves.png.

    ``only`` (one of STAGES) trains that stage alone and returns None: the acoustic model
    and the vocoder's first stage are independent, so two processes can train them side by
    side (on one GPU, which neither fills); a later call without ``only`` resumes both,
    already finished, then adapts the vocoder, calibrates and returns the voice. ``retry``:
    what a refusal (too slow a host for the cap) tells the user to do; ``fit``: what
    ``check_voice_fits`` chose (measured again here without it)."""
    if only not in (None, *STAGES):
        raise ValueError(f"unknown stage {only!r}")
    dev = training_device(device)
    dist = Dist.from_env(dev)
    dev = dist.place(dev)
    out_dir.mkdir(parents=True, exist_ok=True)
    dirs = [sources] if isinstance(sources, Path) else list(sources)
    if only == "vocoder":
        if cfg.vocoder is None:
            raise TwincastError("this preset has no trained vocoder (it synthesises with "
                                "Griffin-Lim); train its acoustic model alone or all of it")
        train_vocoder(dirs, out_dir, cfg.vocoder, dev, dist)
        return None
    if fit is None:
        fit = fit_voice(dirs, out_dir, cfg, dev, retry, dist)
    cfg, s, clock = fit.cfg, fit.setup, fit.clock
    utts, train_utts, held, batcher, state = s.utts, s.train_utts, s.held, s.batcher, s.state
    mean, std, ckpt, dtype, max_threads = s.mean, s.std, s.ckpt, s.dtype, s.max_threads
    longest = train_utts[0].mel.shape[1]
    if dist.main:
        log.info("voice training in %s%s", "bfloat16 autocast" if dtype == torch.bfloat16
                 else "float32", f" on {dist.world} processes" if dist.world > 1 else "")
    state.net = dist.wrap(state.model, dev)

    def save() -> None:
        if not dist.main:
            return
        ckpt.save({**state.state_dict(), "mel_mean": torch.from_numpy(mean),
                   "mel_std": torch.from_numpy(std)})

    def score() -> dict[str, float]:
        scores = held_out_loss(state.model, held, mean, std, dev)
        state.score_held_out(scores["held/mel"] + scores["held/duration"])
        return scores

    step = clock.timed("acoustic", lambda: train_step(state, batcher, mean, std, dev, dtype),
                       max_threads)
    with threads_kept():
        train_loop(LoopConfig("voice", cfg.steps, cfg.max_minutes, cfg.checkpoint_minutes),
                   state.progress, step, save,
                   lr=lambda step, used: cfg.lr * _lr_factor(step, cfg.steps, used),
                   optimizers=[state.opt],
                   hooks=[Every(cfg.held_every, score)] if held else [],
                   agree=dist.largest if dist.world > 1 else None, main=dist.main)
    save()
    plan = {"acoustic": voice_plan.stage_summary(cfg.steps, state.step, clock, "acoustic")}
    plan["acoustic"]["precision"] = "bf16" if dtype == torch.bfloat16 else "fp32"
    if fit.lighter:
        plan["acoustic"]["model"] = "lighter"
    if dist.main:
        write_history(state.progress, out_dir)
    if held and dist.main:
        log.info("voice: lowest held-out loss %.3f at step %d of %d", state.best_loss,
                 state.best_step, state.step)
    if only == "acoustic":
        return None
    vocoder = None
    if cfg.vocoder is not None:
        vocoder = train_vocoder(dirs, out_dir, cfg.vocoder, dev, dist)
        if cfg.vocoder.adapt_minutes > 0 and cfg.vocoder.adapt_steps > 0:
            pairs = teacher_forced_mels(state.model, train_utts, mean, std, dev,
                                        max(cfg.max_frames, longest), cfg.vocoder.model.hop)
            vocoder = adapt_vocoder(vocoder, pairs, out_dir, cfg.vocoder, dev,
                                    weights_digest(state.model), dist)
        plan.update(vocoder.plan)
    if dist.world > 1:
        # The replicas must have stayed one model (the same averaged gradients and learning
        # rate at every step); each process says what it holds.
        log.info("process %d of %d: acoustic weights %s%s", dist.rank, dist.world,
                 weights_digest(state.model), "" if vocoder is None else
                 f", vocoder weights {weights_digest(vocoder.model)}")
    # Durations are calibrated on sentences the model never learned from: on its own
    # training sentences it is right by heart, and too fast on new ones.
    scale = calibrate_durations(state.model, held or utts, dev)
    if dist.main:
        log.info("speaking-rate calibration on %d %s sentences: durations x %.3f",
                 len(held or utts), "held-out" if held else "training", scale)
    return TrainedVoice(state.model, mean, std, state.progress.seconds, state.step,
                        len(utts), vocoder, scale, plan, dist.main)


PROBE_STEPS = 4
"""Timed acoustic steps per thread count (after one untimed warm-up step)."""


def probe_acoustic(clock: ThreadClock, state: VoiceState, batcher: Batcher, mean: np.ndarray,
                   std: np.ndarray, dev: torch.device, dtype: torch.dtype,
                   cfg: VoiceTrainConfig, max_threads: int) -> float:
    """Time the acoustic model's step on throwaway copies (at one thread and at all of
    them, on a CPU) and pick the faster count; returns its seconds a step."""
    t0 = time.perf_counter()
    trial = copy.deepcopy(state)
    data = copy.copy(batcher)
    data.rng = np.random.default_rng(cfg.seed + 7919)
    options = [1, max_threads] if max_threads > 1 else [max_threads]
    wait = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        probe_threads(clock, "acoustic", lambda: train_step(trial, data, mean, std, dev, dtype),
                      options, PROBE_STEPS, wait)
    clock.choose_threads()
    log.debug("voice step measured in %.0f s", time.perf_counter() - t0)
    return clock.speed("acoustic")


HOLDOUT_EVERY = 10
"""With at least twice this many utterances, every HOLDOUT_EVERY-th is kept out of the
acoustic model's training for the speaking-rate calibration."""


def split_holdout(utts: list) -> tuple[list, list]:
    """(training, held-out) utterances; nothing is held out from a small enrolment."""
    if len(utts) < 2 * HOLDOUT_EVERY:
        return utts, []
    held = [u for i, u in enumerate(utts) if i % HOLDOUT_EVERY == HOLDOUT_EVERY // 2]
    keep = [u for i, u in enumerate(utts) if i % HOLDOUT_EVERY != HOLDOUT_EVERY // 2]
    return keep, held


@torch.no_grad()
def held_out_loss(model: AcousticModel, held: list, mean: np.ndarray, std: np.ndarray,
                  device: torch.device) -> dict[str, float]:
    """Mean mel and duration losses on sentences the model does not learn from (the same
    losses as training, in evaluation mode)."""
    model.eval()
    sums = {"held/mel": 0.0, "held/duration": 0.0}
    for u in held:
        tokens = torch.from_numpy(u.tokens)[None].to(device)
        mel = torch.from_numpy((u.mel - mean[:, None]) / std[:, None]).float()[None].to(device)
        _, losses = model(tokens, torch.tensor([tokens.shape[1]], device=device), mel,
                          torch.tensor([mel.shape[2]], device=device))
        sums["held/mel"] += float(losses["voice/mel"])
        sums["held/duration"] += float(losses["voice/duration"])
    model.train()
    return {k: v / max(len(held), 1) for k, v in sums.items()}


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of a model's weights (what a later stage trained on its outputs depends on)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def teacher_forced_mels(model: AcousticModel, utts: list[Utterance], mean: np.ndarray,
                        std: np.ndarray, device: torch.device, max_frames: int,
                        hop: int = VOICE_MEL.hop) -> list[tuple[np.ndarray, np.ndarray]]:
    """(the model's mel, the real waveform) for each utterance: the mel is predicted with
    the model's own alignment to the recording (its durations are the real ones), so it
    lines up with the real audio frame for frame, and it is as smooth as at synthesis."""
    model.eval()
    recordings: dict[Path, np.ndarray] = {}
    out = []
    with bar(len(utts), "vocoder: the acoustic model's mels", "utt") as pb:
        for us in Batcher(utts, max_frames).each():
            b = {k: torch.from_numpy(v).to(device) for k, v in pad_batch(us, mean, std).items()}
            pred, _ = model(b["tokens"], b["n_sym"], b["mels"], b["n_frames"])
            pred = pred.float().cpu().numpy() * std[None, :, None] + mean[None, :, None]
            for k, u in enumerate(us):
                if u.audio is None:
                    raise ValueError(f"utterance {u.key} does not say where its audio is")
                if u.audio not in recordings:
                    recordings[u.audio] = read_wav(u.audio)
                pcm = recordings[u.audio]
                t = min(u.mel.shape[1], len(pcm) // hop - u.first_frame)
                start = u.first_frame * hop
                out.append((pred[k, :, :t].astype(np.float32),
                            pcm[start: start + t * hop]))
                pb.update(1)
    return out


@torch.no_grad()
def calibrate_durations(model: AcousticModel, utts: list, device: torch.device,
                        limit: int = 200) -> float:
    """One factor on every predicted duration so that the training sentences, said piece by
    piece as at synthesis, last as long as their recordings. A duration model fitted in the
    log domain predicts geometric means (short), and pieces lose the pauses between them;
    both make the voice speak too fast without it. The runtime's cap on the silence before
    the first word is left out here: it shortens the lead-in, not the speaking rate."""
    model.eval()
    real = synth = 0.0
    for u in utts[:limit]:
        for ids in u.pieces:
            _, frames = model.synthesise(torch.from_numpy(ids)[None].to(device))
            synth += float(frames.sum())
        real += u.mel.shape[1] - 2 * PAD_FRAMES
    return float(np.clip(real / max(synth, 1.0), 0.5, 2.5))
