"""Training the vocoder on the person's own recordings: random speech segments, their mel
from the enrolment cache in, the real waveform out; multi-resolution STFT and mel losses.
Checkpointed and resumable like the other trainers."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatar import atomic
from avatar.errors import TwincastError
from avatar.models.vocoder import Vocoder, VocoderConfig, stft_loss
from training.progress import bar
from training.runs import config_digest, plot_curves

log = logging.getLogger(__name__)


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

    def digest(self) -> str:
        return config_digest(self)


@dataclass
class TrainedVocoder:
    model: Vocoder
    seconds: float
    steps: int


def _read_wav(path: Path) -> np.ndarray:
    from scipy.io import wavfile  # soundfile is not on every training machine

    _, pcm = wavfile.read(str(path))
    return (pcm.astype(np.float32) / 32768.0) if pcm.dtype == np.int16 else pcm.astype(np.float32)


class SegmentSampler:
    """Random segments inside the utterances of one or more enrolment caches."""

    def __init__(self, sources: Sequence[Path], frames: int, hop: int, seed: int = 0):
        self.frames, self.hop = frames, hop
        self.rng = np.random.default_rng(seed)
        self.items: list[tuple[np.ndarray, np.ndarray, int, int]] = []
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
                        cache[cid] = (_read_wav(wav), z["mel22"])
                audio, mel = cache[cid]
                a = int(u["start"] * 22050 / hop)
                b = min(mel.shape[1], int(u["end"] * 22050 / hop), len(audio) // hop)
                if b - a > frames:
                    self.items.append((audio, mel, a, b))
        if not self.items:
            raise TwincastError("no utterance is long enough to train the vocoder on")
        lengths = np.array([b - a for _, _, a, b in self.items], float)
        self.p = lengths / lengths.sum()

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


def train_vocoder(sources: Sequence[Path], out_dir: Path, cfg: VocoderTrainConfig,
                  device: torch.device) -> TrainedVocoder:
    import torchaudio

    from avatar.vocoder import MelSpec

    spec = MelSpec()
    sampler = SegmentSampler(sources, cfg.segment_frames, cfg.model.hop, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = Vocoder(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.8, 0.99))
    mel_fn = torchaudio.transforms.MelSpectrogram(
        sample_rate=spec.rate, n_fft=spec.n_fft, hop_length=spec.hop, n_mels=spec.n_mels,
        f_max=spec.f_max, power=1.0, norm="slaney", mel_scale="slaney").to(device)
    ckpt = out_dir / "vocoder.pt"
    step, seconds, history = 0, 0.0, []
    if ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=True)
        if saved.get("config_digest") == cfg.digest():
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            step, seconds = int(saved["step"]), float(saved["seconds"])
            history = json.loads(saved["history"])
            sampler.rng = np.random.default_rng(cfg.seed + step)
            log.info("resuming vocoder training at step %d", step)

    def save() -> None:
        with atomic.atomic_path(ckpt, ".pt") as tmp:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "seconds": seconds, "history": json.dumps(history),
                        "config_digest": cfg.digest()}, tmp)

    start = time.monotonic() - seconds
    deadline = start + cfg.max_minutes * 60
    last = time.monotonic()
    model.train()
    with bar(cfg.steps, "vocoder", "step", initial=step) as pb:
        while step < cfg.steps:
            if time.monotonic() > deadline:
                log.warning("vocoder training stopped at its %g-minute cap", cfg.max_minutes)
                break
            for g in opt.param_groups:
                g["lr"] = cfg.lr * max(0.1, 1 - step / cfg.steps)
            m, w = (torch.from_numpy(x).to(device) for x in sampler.batch(cfg.batch))
            pred = model(m)
            spec_loss = stft_loss(pred, w)
            mel_loss = F.l1_loss(torch.log(mel_fn(pred).clamp(min=1e-5)),
                                 torch.log(mel_fn(w).clamp(min=1e-5)))
            loss = spec_loss + cfg.mel_weight * mel_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            step += 1
            seconds = time.monotonic() - start
            losses = {"vocoder/stft": float(spec_loss.detach()),
                      "vocoder/mel": float(mel_loss.detach())}
            if step % 10 == 0 or step == cfg.steps:
                history.append({"step": step, "seconds": round(seconds, 1),
                                **{k: round(v, 5) for k, v in losses.items()}})
            pb.update(1)
            pb.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in losses.items()},
                           refresh=False)
            if time.monotonic() - last > cfg.checkpoint_minutes * 60:
                save()
                last = time.monotonic()
    seconds = time.monotonic() - start
    save()
    atomic.write_json(out_dir / "vocoder_history.json", history)
    plot_curves(history, out_dir / "vocoder_curves.png")
    model.eval()
    return TrainedVocoder(model, seconds, step)
