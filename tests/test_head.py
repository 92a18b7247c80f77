"""Talking head: ci-preset training on the synthetic sample, the bundle, batched rendering
and every way a bundle or its input can be wrong."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import read_audio, read_frames, run_cli, write_av


def test_bundle_contract(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["schema"] == 1 and manifest["kind"] == "twincast-avatar"
    for name in ("head.safetensors", "idle.mp4", "idle.npz", "reference.png", "mask.png"):
        assert name in manifest["files"] and (bundle / name).is_file()
    assert not list(bundle.glob("*.pt"))  # no pickles in a bundle
    frames = read_frames(bundle / "idle.mp4")
    assert len(frames) == manifest["idle"]["frames"] >= 25
    assert frames[0].shape[:2] == (manifest["frame_size"][1], manifest["frame_size"][0])


def test_batch_across_sessions_and_compositing(bundle: Path) -> None:
    from avatar.avatar import Avatar, FrameRequest, pingpong

    av_ = Avatar.load(bundle, "cpu")
    rng = np.random.default_rng(0)
    mel = (av_.mel_mean + av_.mel_std * rng.standard_normal((2, 80, av_.mel_frames))
           ).astype(np.float32)
    reqs = [FrameRequest(idle_index=3, mel=mel[0], session="a"),
            FrameRequest(idle_index=av_.idle_frames + 4, mel=mel[1], session="b")]
    out = av_.render(reqs)
    assert len(out) == 2
    for req, frame in zip(reqs, out, strict=True):
        idle = av_.idle_frame(req.idle_index)
        assert frame.shape == idle.shape and frame.dtype == np.uint8
        diff = np.abs(frame.astype(int) - idle.astype(int)).sum(2) > 0
        ys, xs = np.nonzero(diff)
        assert len(ys) > 0
        # Only the lower face changes: the eyes' rows and the frame's corners stay put.
        box = av_.idle[pingpong(req.idle_index, av_.idle_frames)].box
        assert xs.min() >= box[0] and xs.max() < box[2]
        assert ys.min() >= box[1] and ys.max() < box[3]
    assert pingpong(av_.idle_frames, av_.idle_frames) == av_.idle_frames - 2


def test_render_cli_muxes_audio(bundle: Path, sample, tmp_path: Path) -> None:
    audio = read_audio(sample.video, 44100)[: 44100 * 2]
    wav = write_av(tmp_path / "speech.mp4", None, audio=audio, rate=44100)
    out = tmp_path / "out.mp4"
    proc = run_cli("render", bundle, "--audio", wav, "-o", out)
    assert proc.returncode == 0, proc.stderr
    frames = read_frames(out)
    assert abs(len(frames) - 50) <= 1
    back = read_audio(out)
    assert abs(len(back) / 16000 - 2.0) < 0.1


def test_empty_and_silent_audio(bundle: Path, tmp_path: Path) -> None:
    silent = write_av(tmp_path / "silent.mp4", None, audio=np.zeros(16000, np.float32))
    proc = run_cli("render", bundle, "--audio", silent, "-o", tmp_path / "s.mp4")
    assert proc.returncode == 0, proc.stderr
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    proc = run_cli("render", bundle, "--audio", empty, "-o", tmp_path / "e.mp4")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(empty) in proc.stderr
    assert not (tmp_path / "e.mp4").exists()


def _broken(bundle: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    b = tmp_path / f"b-{how}"
    shutil.copytree(bundle, b)
    if how == "missing":
        return tmp_path / "nowhere", "no such avatar bundle"
    if how == "tampered":
        with open(b / "head.safetensors", "ab") as f:
            f.write(b"\0")
        return b / "head.safetensors", "does not match"
    if how == "truncated":
        (b / "idle.mp4").unlink()
        return b / "idle.mp4", "missing from the avatar bundle"
    if how == "schema":
        m = json.loads((b / "manifest.json").read_text())
        m["schema"] = 99
        (b / "manifest.json").write_text(json.dumps(m))
        return b / "manifest.json", "schema version 99"
    if how == "no_manifest":
        (b / "manifest.json").unlink()
        return b / "manifest.json", "not an avatar bundle"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["missing", "tampered", "truncated", "schema", "no_manifest"])
def test_bad_bundles(how: str, bundle: Path, sample, tmp_path: Path) -> None:
    named, words = _broken(bundle, tmp_path, how)
    target = named.parent if how in ("tampered", "truncated", "schema", "no_manifest") else named
    proc = run_cli("render", target, "--audio", sample.video, "-o", tmp_path / "o.mp4")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("twincast: error:")]
    assert len(line) == 1 and str(named) in line[0] and words in line[0], proc.stderr


def test_features_cache_left_by_a_failed_run(sample, tmp_path: Path) -> None:
    from avatar.errors import TwincastError
    from avatar.models.head import HEAD_PRESETS
    from training.head.data import load_cache

    with pytest.raises(TwincastError, match="run 'twincast enrol' first"):
        load_cache(tmp_path, 48, 20, HEAD_PRESETS["ci"].region)


def test_training_resumes_from_its_checkpoint(bundle: Path) -> None:
    from training.head.train import head_preset, train_head

    work = bundle.parent.parent
    res = train_head(work / "features", work / "head", head_preset("ci"))
    assert res.resumed
    assert res.state.gen_step == head_preset("ci").gen_steps
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["head"]["plan"]["ran"]["gen"] == head_preset("ci").gen_steps


def test_a_short_cap_is_planned_not_cut(bundle: Path, tmp_path: Path) -> None:
    """A preset far too long for its cap: every stage gets some of the time and the sync
    loss its share of the generator's steps, and the plan ends the run, not the cap."""
    import dataclasses

    from training.head.train import head_preset, train_head

    cfg = dataclasses.replace(head_preset("ci"), gen_steps=100_000, max_minutes=0.3)
    res = train_head(bundle.parent.parent / "features", tmp_path / "head", cfg)
    plan = res.plan
    ran = plan["ran"]
    assert ran["lips"] >= 1 and ran["expert"] >= 1 and 10 <= ran["gen"] < 100_000
    assert plan["generator_share"] < 0.01
    # ci's sync loss joins halfway through the generator's planned steps (re-plans move
    # the end, not where it joined).
    assert 0.3 * ran["gen"] <= plan["sync_steps"] <= 0.7 * ran["gen"]
    # The plan ends the run near the cap; its last step may finish a little past it on a
    # busy host (CI saw 18.15 s against 18), where a cut would stop far short of the plan.
    assert res.seconds < cfg.max_minutes * 60 + 2.0
    saved = json.loads((tmp_path / "head" / "generator.json").read_text())
    assert saved["plan"]["ran"] == ran


def test_eval_head_report(bundle: Path, grid_train: Path, tmp_path: Path) -> None:
    from tests.conftest import GRID

    clips = sorted((GRID / "eval").glob("*.mpg"))[:2]
    out = tmp_path / "eval"
    proc = run_cli("eval", "head", bundle, "--footage", *clips, "-o", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    for key in ("mouth_opening_corr", "std_ratio", "silent_opening_generated",
                "silent_opening_real", "lag_frames_real", "lag_frames_generated",
                "leakage_corr"):
        assert key in report
    assert report["clips"] == 2 and report["face_found_generated"] > 0.9
    assert np.isfinite(report["silent_opening_real"])
    assert (out / "side_by_side.mp4").exists() and (out / "contact_sheet.png").exists()
    fid = report["fidelity"]
    assert fid["frames"] > 100 and fid["model_size"] == 48
    for key in ("sharpness_ratio", "ssim", "colour_delta_e", "seam_ratio", "psnr_db"):
        assert np.isfinite(fid[key]), key
    # GRID's mouth region is about 100 px on screen: the ci model's 48 px are enlarged
    # about twice (the cpu model's 96 px about 1.04 times).
    assert 1.5 < fid["upscale"] < 3
    mouths = cv2.imread(str(out / "mouths.png"))
    assert mouths is not None and mouths.shape[0] >= 2 * 30
    proc = run_cli("eval", "head", bundle, "--footage", clips[0], "-o", tmp_path / "one")
    assert proc.returncode == 2 and "at least two" in proc.stderr


def test_data_parallel_training_under_torchrun(bundle: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo) stand in for two GPUs: same code path as the gpu preset."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    work = tmp_path / "ddp"
    shutil.copytree(bundle.parent.parent / "features", work / "features")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, TWINCAST_PROGRESS="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533",
                           "-m", "twincast.cli", "train", "head", str(work), "--preset", "ci",
                           "--name", "ddp"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((work / "avatars" / "ddp" / "manifest.json").read_text())
    assert manifest["head"]["gen_steps"] == 40
    assert (work / "head" / "generator.safetensors").exists()
    history = json.loads((work / "head" / "history.json").read_text())
    # The processes plan from shared figures, so they ran one plan to its end (all of the
    # preset's steps where the host fits them in the cap, fewer on a slow one).
    # The history is kept every 10 steps: its last entry is within 10 of the plan's end.
    ran = manifest["head"]["plan"]["ran"]
    total = ran["lips"] + ran["expert"] + ran["gen"]
    assert ran["gen"] > 0 and 0 <= total - history[-1]["step"] < 10, (ran, history[-1])


def test_train_elsewhere_then_export_only(bundle: Path, tmp_path: Path) -> None:
    """The GPU route: train without the footage (--no-export), export later (--export-only)."""
    work = tmp_path / "w"
    shutil.copytree(bundle.parent.parent / "features", work / "features")
    proc = run_cli("train", "head", work, "--preset", "ci", "--no-export")
    assert proc.returncode == 0, proc.stderr
    assert not (work / "avatars").exists()
    proc = run_cli("train", "head", work, "--preset", "ci", "--export-only", "--name", "late")
    assert proc.returncode == 0, proc.stderr
    assert (work / "avatars" / "late" / "manifest.json").exists()
    empty = tmp_path / "empty"
    shutil.copytree(bundle.parent.parent / "features", empty / "features")
    proc = run_cli("train", "head", empty, "--export-only")
    assert proc.returncode == 2 and "train the head first" in proc.stderr


def test_exporting_the_face_again_keeps_the_bundle_s_voice(bundle: Path,
                                                          tmp_path: Path) -> None:
    """``train head`` on an enrolment replaces its bundle: the voice trained with it stays
    (it was dropped, and the avatar went silent)."""
    from avatar.bundle import read_manifest

    work = tmp_path / "again"
    shutil.copytree(bundle.parent.parent, work)
    before = read_manifest(work / "avatars" / "presenter")
    assert before.voice is not None
    proc = run_cli("train", "head", work, "--preset", "ci", "--export-only",
                   "--name", "presenter")
    assert proc.returncode == 0, proc.stderr
    after = read_manifest(work / "avatars" / "presenter")  # every digest checked
    assert after.voice == before.voice and after.created >= before.created
    assert after.files[after.voice.file] == before.files[before.voice.file]


def test_lip_gain_restores_the_range_of_a_shrunk_prediction() -> None:
    """A predictor that says the right shape at 60 % of its size gets a gain of ~1/0.6 on
    the components it predicts, and its held-out correlation is measured, not assumed."""
    import torch

    from avatar.models.head import HEAD_PRESETS, HeadGenerator
    from avatar.models.lips import N_LIP
    from training.head.data import ClipData
    from training.head.train import calibrate_lips, set_lip_stats

    rng = np.random.default_rng(0)
    t = 200
    opening = np.abs(np.sin(np.arange(t) / 3.0))
    base = rng.normal(0.5, 0.05, (N_LIP, 2)).astype(np.float32)
    lips = np.repeat(base[None], t, 0)
    lips[:, :, 1] += 0.05 * opening[:, None] * np.linspace(-1, 1, N_LIP)[None, :]
    lips += rng.normal(0, 1e-4, lips.shape).astype(np.float32)
    clip = ClipData("c", np.zeros((t, 8, 8, 3), np.uint8), np.zeros((t, 80, 40), np.float32),
                    np.ones(t, bool), np.ones(t, bool), lips, np.arange(t) < 150)
    gen = HeadGenerator(HEAD_PRESETS["ci"])
    set_lip_stats(gen, [clip])
    truth = {}

    def shrunk(mel: torch.Tensor) -> torch.Tensor:
        return 0.6 * truth["z"][: len(mel)]

    held = clip.lips[150:]
    truth["z"] = gen.lips.standardise(torch.from_numpy(held))
    gen.lips.standardised = shrunk  # type: ignore[method-assign]
    report = calibrate_lips(gen, [clip], torch.device("cpu"))
    assert report["val_frames"] == 50 and report["val_opening_corr"] > 0.99
    assert abs(float(gen.lips.gain[0]) - 1 / 0.6) < 0.05
    assert abs(report["val_opening_std_ratio"] - 1.0) < 0.05


def test_folded_batchnorm_and_precision(bundle: Path) -> None:
    """Folding BatchNorm into the convolutions changes nothing but rounding; bfloat16
    renders within a few grey levels of float32; a wrong precision is a clear error."""
    import torch

    from avatar.avatar import Avatar, FrameRequest
    from avatar.devices import compute_dtype
    from avatar.errors import TwincastError
    from avatar.models.fold import fold_batchnorm
    from avatar.models.head import HeadConfig, HeadGenerator

    torch.manual_seed(0)
    gen = HeadGenerator(HeadConfig(size=48, width=8, audio_dim=32, lip_dim=32)).eval()
    for m in gen.modules():  # running statistics a trained model would have
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    folded = fold_batchnorm(gen)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    args = (torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48), torch.randn(2, 1, 80, 40))
    assert torch.allclose(gen.generate(*args), folded.generate(*args), atol=1e-4)

    out, mel = {}, None
    for precision in ("fp32", "bf16"):
        av = Avatar.load(bundle, "cpu", precision=precision)
        if mel is None:  # the same speech-like input for both
            mel = (av.mel_mean + av.mel_std * np.random.default_rng(1).standard_normal(
                (4, av.gen.cfg.mel_bins, av.mel_frames))).astype(np.float32)
        out[precision] = np.stack(av.render([FrameRequest(i, m) for i, m in enumerate(mel)]))
    diff = np.abs(out["fp32"].astype(int) - out["bf16"].astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 24
    assert compute_dtype(torch.device("cpu"), "fp32") == torch.float32
    with pytest.raises(TwincastError, match="precision"):
        compute_dtype(torch.device("cpu"), "fp8")


def test_the_speed_probe_leaves_training_untouched(bundle: Path) -> None:
    """probe_speeds times real steps, but on copies: the models, optimisers, the sampler's
    draws and torch's random numbers are as they were, so a probed run trains exactly as
    an unprobed one would."""
    import torch

    from training.head.data import Sampler, load_cache
    from training.head.plan import Planner
    from training.head.train import Dist, build_state, head_preset, probe_speeds

    cfg = head_preset("ci")
    clips, _ = load_cache(bundle.parent.parent / "features", cfg.model.size,
                          cfg.model.mel_frames, cfg.model.region)
    sampler = Sampler(clips, cfg.model.sync_frames, seed=1)
    state = build_state(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in state.state_dict()["gen"].items()}
    expert = {k: v.clone() for k, v in state.expert.state_dict().items()}
    rng_state = sampler.rng.bit_generator.state
    torch.manual_seed(5)
    planner = Planner({"lips": cfg.lip_steps, "expert": cfg.expert_steps,
                       "gen": cfg.gen_steps}, cfg.sync_from, cfg.max_minutes * 60)
    probe_speeds(state, sampler, cfg, torch.device("cpu"), Dist(), planner)
    assert all(planner.speed(k) > 0 for k in ("lips", "expert", "gen", "sync"))
    after = state.gen.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(expert[k], v) for k, v in state.expert.state_dict().items())
    assert not state.opt_gen.state and not state.opt_expert.state  # no step was taken
    assert sampler.rng.bit_generator.state == rng_state
    probed = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(probed, torch.rand(3))
    assert state.step == 0
    # A preset without the expert's stage and the sync loss (cpu, demo) times neither: the
    # expert costs nothing in its plan and a sync-stage step is priced as a plain one.
    plain = replace(cfg, expert_steps=0, sync_weight=0.0)
    planner = Planner({"lips": plain.lip_steps, "expert": 0, "gen": plain.gen_steps},
                      plain.sync_from, plain.max_minutes * 60)
    probe_speeds(state, sampler, plain, torch.device("cpu"), Dist(), planner)
    assert planner.speed("expert") == 0 and planner.speed("gen") > 0
    assert planner.speed("sync") > 0


def test_training_steps_compute_in_the_precision_asked_and_keep_float32_weights(
        bundle: Path) -> None:
    """Under bfloat16 the generator's and the expert's forward passes compute in it (where
    the device has it natively that halves a step) while their weights, optimisers and
    losses stay float32; in float32 nothing changes. The bundle's plan records which the
    enrolment used: bfloat16 exactly where the CPU has it natively."""
    import torch

    from avatar.devices import bf16_native
    from training.head.data import Sampler, load_cache
    from training.head.train import build_state, expert_step, gen_step, head_preset

    cpu = torch.device("cpu")
    cfg = head_preset("ci")
    clips, _ = load_cache(bundle.parent.parent / "features", cfg.model.size,
                          cfg.model.mel_frames, cfg.model.region)
    sampler = Sampler(clips, cfg.model.sync_frames, seed=1)
    state = build_state(cfg, cpu)
    painted: list[torch.dtype] = []
    scored: list[torch.dtype] = []
    # What their convolutions compute in (their outputs are blended or normalised in
    # float32 either way).
    def first_conv(model: torch.nn.Module) -> torch.nn.Module:
        return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))

    first_conv(state.gen).register_forward_hook(lambda m, i, o: painted.append(o.dtype))
    first_conv(state.expert).register_forward_hook(lambda m, i, o: scored.append(o.dtype))
    for dtype in (torch.float32, torch.bfloat16):
        painted.clear()
        scored.clear()
        gen_before = [p.detach().clone() for p in state.gen.parameters()]
        losses = {**expert_step(state, sampler, cfg, cpu, dtype),
                  **gen_step(state, sampler, cfg, cpu, True, dtype)}
        assert painted and set(painted) == {dtype}
        # (The expert's accuracy, a logged figure, is measured in float32 after its step.)
        assert dtype in scored and set(scored) <= {dtype, torch.float32}
        assert all(np.isfinite(v) for v in losses.values()) and "gen/sync" in losses
        params = [*state.gen.parameters(), *state.expert.parameters(),
                  *(state.disc.parameters() if state.disc is not None else [])]
        assert all(p.dtype == torch.float32 for p in params)
        assert any(not torch.equal(a, b)
                   for a, b in zip(gen_before, state.gen.parameters(), strict=True))
    plan = json.loads((bundle / "manifest.json").read_text())["head"]["plan"]
    assert plan["precision"] == ("bf16" if bf16_native(cpu) else "fp32")


def test_bench_render_at_another_working_size(bundle: Path) -> None:
    proc = run_cli("bench", "render", bundle, "--model-size", "64", "--batches", "1,2",
                   "--seconds", "0.2")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model_size"] == 64 and set(out["fps_by_batch"]) == {"1", "2"}
    assert out["weights"].startswith("untrained")
    bad = run_cli("bench", "render", bundle, "--model-size", "100")
    assert bad.returncode == 2 and "multiple of 16" in bad.stderr
    assert "Traceback" not in bad.stderr
