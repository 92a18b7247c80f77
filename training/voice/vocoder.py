"""Training the vocoder on the person's own recordings: random speech segments, their mel
from the enrolment cache in, the real waveform out; multi-resolution STFT and mel losses.
Then a short adaptation: the same losses with the acoustic model's own (teacher-forced)
mels in, so the vocoder learns to make the real waveform from the smoother mels it will
be given at synthesis. Both stages are checkpointed and resumable like the other trainers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatar.audio import VOICE_MEL
from avatar.errors import TwincastError
from avatar.models.vocoder import Vocoder, VocoderConfig, stft_loss
from training.dist import Dist
from training.loop import Checkpoint, LoopConfig, Progress, train_loop, write_history
from training.runs import config_digest
from training.threads import ThreadClock, probe_threads, threads_kept
from training.voice.plan import CAP_MARGIN, stage_minutes, stage_summary

log = logging.getLogger(__name__)

ADAPT_FIELDS = ("adapt_steps", "adapt_minutes", "adapt_lr", "adapt_min_share")
"""Settings of the adaptation stage only (the first stage's checkpoint ignores them)."""


@dataclass
class VocoderTrainConfig:
    model: VocoderConfig = field(default_factory=VocoderConfig)
    steps: int = 10000
    batch: int = 12
    segment_frames: int = 32
    """Mel frames per training segment (32 x 256 samples, about 0.37 s)."""
    lr: float = 1e-3
    mel_weight: float = 1.0
    max_minutes: float = 15.0
    checkpoint_minutes: float = 3.0
    seed: int = 0
    adapt_steps: int = 4000
    adapt_minutes: float = 4.0
    """Adaptation to the acoustic model's mels, after the first stage (0: none). On held-out
    training sentences four minutes of it (about 2,400 steps here) took the synthesised
    speech's likeness from 0.826 to 0.844 on LJ Speech and its WER from 13.9 % to 5.6 % on
    GRID (0.814 to 0.816 likeness; LJ's WER 12.9 % to 14.4 %, two words)."""
    adapt_lr: float = 2e-4
    min_share: float = 0.55
    adapt_min_share: float = 0.4
    """Step floors of the two stages: where a stage's cap fits fewer of its steps on this
    host, its cap is lengthened to fit them (``training.voice.plan.stage_minutes``; at most
    ``max_stretch`` times the cap). Idle 2-core hosts fit more (an AMX Xeon: 73 % and
    47 %, likeness 0.881 on ljspeech/eval); the same Xeon with one core busy ran 38 % and
    25 % (likeness 0.849)."""
    max_stretch: float = 2.0

    def digest(self) -> str:
        return config_digest(self, *ADAPT_FIELDS)  # the adaptation is checkpointed apart

    def adapt_digest(self, acoustic: str) -> str:
        """The adaptation's checkpoint holds for these settings and one acoustic model."""
        return hashlib.sha256(f"{config_digest(self)}:{acoustic}".encode()).hexdigest()[:16]


@dataclass
class TrainedVocoder:
    model: Vocoder
    seconds: float
    steps: int
    adapt_seconds: float = 0.0
    adapt_steps: int = 0
    plan: dict = field(default_factory=dict)
    """Per stage (vocoder, vocoder_adapt): planned and run steps, measured speed."""


def read_wav(path: Path) -> np.ndarray:
    from scipy.io import wavfile  # soundfile is not on every training machine

    _, pcm = wavfile.read(str(path))
    return (pcm.astype(np.float32) / 32768.0) if pcm.dtype == np.int16 else pcm.astype(np.float32)


Segment = tuple[np.ndarray, np.ndarray, int, int]
"""(waveform, mel, first frame, end frame): frames [a, b) of the mel are that stretch of
the waveform (frame t at sample t * hop)."""


class SegmentSampler:
    """Random fixed-length segments inside stretches of speech."""

    def __init__(self, items: Sequence[Segment], frames: int, hop: int, seed: int = 0):
        self.frames, self.hop = frames, hop
        self.rng = np.random.default_rng(seed)
        self.items = [it for it in items if it[3] - it[2] > frames]
        if not self.items:
            raise TwincastError("no utterance is long enough to train the vocoder on")
        lengths = np.array([b - a for _, _, a, b in self.items], float)
        self.p = lengths / lengths.sum()

    @classmethod
    def from_caches(cls, sources: Sequence[Path], frames: int, hop: int, seed: int = 0
                    ) -> SegmentSampler:
        """The utterances of one or more enrolment caches, with their cached mels."""
        items: list[Segment] = []
        for d in sources:
            manifest = json.loads((d / "manifest.json").read_text())
            dirs = {c["id"]: d / c["dir"] for c in manifest["clips"]}
            cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for line in (d / "utterances.jsonl").read_text().splitlines():
                u = json.loads(line)
                cid = u["clip"]
                if cid not in cache:
                    wav = dirs[cid] / "audio22k.wav"
                    if not wav.exists():
                        raise TwincastError(f"{dirs[cid]}: the enrolment cache lacks "
                                            "audio22k.wav; re-run 'twincast enrol'")
                    with np.load(dirs[cid] / "audio.npz") as z:
                        cache[cid] = (read_wav(wav), z["mel22"])
                audio, mel = cache[cid]
                a = int(u["start"] * VOICE_MEL.rate / hop)
                b = min(mel.shape[1], int(u["end"] * VOICE_MEL.rate / hop), len(audio) // hop)
                items.append((audio, mel, a, b))
        return cls(items, frames, hop, seed)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """mels (n, n_mels, F) and waveforms (n, (F - 1) * hop)."""
        mels, wavs = [], []
        f, hop = self.frames, self.hop
        for k in self.rng.choice(len(self.items), n, p=self.p):
            audio, mel, a, b = self.items[int(k)]
            s = int(self.rng.integers(a, b - f))
            mels.append(mel[:, s: s + f])
            wavs.append(audio[s * hop: (s + f - 1) * hop])
        return np.stack(mels), np.stack(wavs)


@dataclass
class _Stage:
    """One resumable stretch of vocoder training."""

    name: str
    ckpt: Path
    digest: str
    steps: int
    minutes: float
    min_share: float
    stretch: float
    """At most this many times ``minutes`` to reach ``min_share`` of ``steps``."""
    lr: Callable[[int, float], float]
    """Learning rate at a step, given the share of the cap used."""


PROBE_STEPS = 6
"""Timed steps per thread count before a stage plans its cap (about 1-2 s each on a CPU)."""


def _fit(model: Vocoder, sampler: SegmentSampler, stage: _Stage, cfg: VocoderTrainConfig,
         device: torch.device, dist: Dist) -> tuple[int, float, dict]:
    """Train ``model`` through one stage (resuming from its checkpoint when that was made
    for the same digest); returns the stage's steps, seconds and plan summary. The step is
    timed first on throwaway copies (one thread and all of them, on a CPU: with another
    process busy, one can be faster, and the other count is tried again every few minutes,
    ``training.threads``), and the stage's cap is lengthened where it fits fewer than its
    floor of steps at that speed. Under ``torchrun`` the processes plan from the slowest
    one's speed, train on their own segments with the gradients averaged, and the first
    writes the checkpoint and curves."""
    import torchaudio

    spec = VOICE_MEL

    def adamw(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=stage.lr(0, 0.0), betas=(0.8, 0.99))

    opt = adamw(model.parameters())
    mel_fn = torchaudio.transforms.MelSpectrogram(
        sample_rate=spec.rate, n_fft=spec.n_fft, hop_length=spec.hop, n_mels=spec.n_mels,
        f_max=spec.f_max, power=1.0, norm="slaney", mel_scale="slaney").to(device)
    progress = Progress()
    ckpt = Checkpoint(stage.ckpt, stage.digest)
    saved = ckpt.load(device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        progress.load_state_dict(saved)
        sampler.rng = np.random.default_rng(dist.seed(cfg.seed) + progress.step)
        if dist.main:
            log.info("resuming %s training at step %d", stage.name, progress.step)

    def save() -> None:
        if not dist.main:
            return
        ckpt.save({"model": model.state_dict(), "opt": opt.state_dict(),
                   **progress.state_dict()})

    def stepper(net: Vocoder, optim: torch.optim.Optimizer, data: SegmentSampler
                ) -> Callable[[], dict[str, float]]:
        def step() -> dict[str, float]:
            m, w = (torch.from_numpy(x).to(device) for x in data.batch(cfg.batch))
            pred = net(m)
            spec_loss = stft_loss(pred, w)
            mel_loss = F.l1_loss(torch.log(mel_fn(pred).clamp(min=1e-5)),
                                 torch.log(mel_fn(w).clamp(min=1e-5)))
            loss = spec_loss + cfg.mel_weight * mel_loss
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            optim.step()
            return {f"{stage.name}/stft": float(spec_loss.detach()),
                    f"{stage.name}/mel": float(mel_loss.detach())}
        return step

    model.train()
    max_threads = torch.get_num_threads() if device.type == "cpu" else 1
    clock = ThreadClock()
    minutes = stage.minutes
    if progress.step < stage.steps:
        minutes = _plan_minutes(clock, stage, progress, max_threads, device,
                                lambda: stepper(*_throwaway(model, opt, adamw, sampler,
                                                                 cfg.seed)), dist)
    net = dist.wrap(model, device)
    with threads_kept():
        train_loop(LoopConfig(stage.name, stage.steps, minutes, cfg.checkpoint_minutes),
                   progress, clock.timed(stage.name, stepper(net, opt, sampler),
                                         max_threads), save, lr=stage.lr, optimizers=[opt],
                   agree=dist.largest if dist.world > 1 else None, main=dist.main)
    save()
    if dist.main:
        write_history(progress, stage.ckpt.parent, f"{stage.name}_")
    model.eval()
    return progress.step, progress.seconds, stage_summary(stage.steps, progress.step, clock,
                                                          stage.name, minutes)


def _throwaway(model: Vocoder, opt: torch.optim.Optimizer,
               make_opt: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
               sampler: SegmentSampler, seed: int
               ) -> tuple[Vocoder, torch.optim.Optimizer, SegmentSampler]:
    """Copies to time steps on: the real model, optimiser and sampler stay as they were."""
    net = copy.deepcopy(model)
    optim = make_opt(net.parameters())
    optim.load_state_dict(opt.state_dict())
    data = copy.copy(sampler)
    data.rng = np.random.default_rng(seed + 7919)
    return net, optim, data


def _plan_minutes(clock: ThreadClock, stage: _Stage, progress: Progress, max_threads: int,
                  device: torch.device, make_step: Callable[[], Callable[[], dict]],
                  dist: Dist) -> float:
    """Time the stage's step, pick the thread count and return the stage's cap on this
    host (its preset's, or longer to fit its floor of steps)."""
    options = [1, max_threads] if max_threads > 1 else [max_threads]
    wait = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe_threads(clock, stage.name, make_step(), options, PROBE_STEPS, wait)
    clock.choose_threads()
    speed = dist.largest(clock.speed(stage.name))
    minutes = stage_minutes(speed, stage.minutes, stage.steps, stage.min_share, progress.step,
                            progress.seconds, stage.stretch)
    if minutes > stage.minutes and dist.main:
        fit = min(stage.steps, int((minutes * 60 * CAP_MARGIN - progress.seconds) / speed)
                  + progress.step)
        log.info("%s: a step takes %.2f s on %d thread(s) here; its %g-minute cap would fit "
                 "fewer than %.0f %% of its %d steps, so it gets %.1f minutes (about %d "
                 "steps)", stage.name, speed, clock.threads.get(stage.name, max_threads),
                 stage.minutes, 100 * stage.min_share, stage.steps, minutes, fit)
    return minutes


def train_vocoder(sources: Sequence[Path], out_dir: Path, cfg: VocoderTrainConfig,
                  device: torch.device, dist: Dist | None = None) -> TrainedVocoder:
    """The first stage: real mels of the enrolment caches in, real waveforms out."""
    dist = dist or Dist()
    sampler = SegmentSampler.from_caches(sources, cfg.segment_frames, cfg.model.hop,
                                         dist.seed(cfg.seed))
    torch.manual_seed(cfg.seed)
    model = Vocoder(cfg.model).to(device)
    # The decay ends at whichever comes first, the step count or the cap (as the acoustic
    # model's): a stage its cap stops on a slow host has annealed too.
    stage = _Stage("vocoder", out_dir / "vocoder.pt", cfg.digest(), cfg.steps,
                   cfg.max_minutes, cfg.min_share, cfg.max_stretch,
                   lambda step, used: cfg.lr * max(0.1, 1 - max(step / cfg.steps, used)))
    steps, seconds, plan = _fit(model, sampler, stage, cfg, device, dist)
    return TrainedVocoder(model, seconds, steps, plan={"vocoder": plan})


def adapt_vocoder(vocoder: TrainedVocoder, pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                  out_dir: Path, cfg: VocoderTrainConfig, device: torch.device,
                  acoustic: str, dist: Dist | None = None) -> TrainedVocoder:
    """The second stage: fine-tune on ``pairs`` of (the acoustic model's mel (n_mels, T),
    the real waveform (T * hop,)) of its training sentences. ``acoustic`` identifies that
    model: its checkpoint is redone for another one, the first stage's is kept."""
    dist = dist or Dist()
    sampler = SegmentSampler([(w, m, 0, min(m.shape[1], len(w) // cfg.model.hop))
                              for m, w in pairs], cfg.segment_frames, cfg.model.hop,
                             dist.seed(cfg.seed))
    stage = _Stage("vocoder_adapt", out_dir / "vocoder_adapt.pt", cfg.adapt_digest(acoustic),
                   cfg.adapt_steps, cfg.adapt_minutes, cfg.adapt_min_share, cfg.max_stretch,
                   lambda step, used: cfg.adapt_lr)
    steps, seconds, plan = _fit(vocoder.model, sampler, stage, cfg, device, dist)
    return TrainedVocoder(vocoder.model, vocoder.seconds, vocoder.steps, seconds, steps,
                          {**vocoder.plan, "vocoder_adapt": plan})
