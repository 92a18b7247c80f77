"""Where a gpu-preset head training step's time goes, on the device: ``gen_step`` (with the
sync loss and the patch discriminator, as most of the generator's stage runs) timed alone on
the GPU at two working sizes and two batches, in float32 (TF32) and under bfloat16 autocast,
and the CUDA kernels of one step (in the precision training picks there) at the last size.

    python3 scripts/gpu_step_profile.py FEATURES OUT_JSON   # FEATURES: a packed cache

Device checks only; try it on a CPU with DEVICE=cpu STEPS=1 SIZES=64 BATCHES=4.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from avatar.devices import compute_dtype
from training.head.data import Sampler, load_cache
from training.head.train import build_state, gen_step, head_preset


def main(features: Path, out: Path) -> None:
    dev = torch.device(os.environ.get("DEVICE", "cuda:0"))
    steps = int(os.environ.get("STEPS", "8"))
    sizes = [int(s) for s in os.environ.get("SIZES", "128,272").split(",")]
    batches = [int(b) for b in os.environ.get("BATCHES", "48,16").split(",")]
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results: list[dict] = []
    for size in sizes:
        base = head_preset("gpu")
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, size=size))
        clips, _ = load_cache(features, size, cfg.model.mel_frames, cfg.model.region, None)
        sampler = Sampler(clips, cfg.model.sync_frames)
        for batch in batches:
            cfg_b = dataclasses.replace(cfg, batch=batch)
            for amp in (False, True):
                state = build_state(cfg_b, dev)
                state.expert.requires_grad_(False)
                # As training runs it: forward passes under autocast, backward outside.
                dtype = torch.bfloat16 if amp else torch.float32
                for _ in range(2):  # warm-up: cuDNN's autotuning
                    gen_step(state, sampler, cfg_b, dev, True, dtype)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                    torch.cuda.reset_peak_memory_stats(dev)
                t0 = time.perf_counter()
                for _ in range(steps):
                    gen_step(state, sampler, cfg_b, dev, True, dtype)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                sec = (time.perf_counter() - t0) / steps
                t1 = time.perf_counter()
                for _ in range(steps):
                    sampler.batch(batch, False)
                r = {"size": size, "batch": batch, "bf16_autocast": amp,
                     "s_per_step": round(sec, 4),
                     "images_per_s": round(batch * cfg.model.sync_frames / sec, 1),
                     "sampler_s": round((time.perf_counter() - t1) / steps, 4),
                     "peak_gb": round(torch.cuda.max_memory_allocated(dev) / 1e9, 2)
                     if dev.type == "cuda" else None}
                print(json.dumps(r), flush=True)
                results.append(r)
    table = ""
    if dev.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        dtype = compute_dtype(dev)  # the precision training picks there
        state = build_state(cfg, dev)
        state.expert.requires_grad_(False)
        gen_step(state, sampler, cfg, dev, True, dtype)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                gen_step(state, sampler, cfg, dev, True, dtype)
            torch.cuda.synchronize(dev)
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        print(table)
    out.write_text(json.dumps({"runs": results, "profile": table}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
