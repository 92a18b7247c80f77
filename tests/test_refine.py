"""The refiner: a person-specific detail stage on the paint, trained at export
(avatar/models/refine.py, training/head/refine.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar.models.refine import RefineConfig, Refiner, sharpen
from tests.conftest import assert_only_box_changed, bundle_copy, bundle_without, run_cli
from training.head.refine import (
    RefineTrainConfig,
    choose_sharpen,
    held_out_split,
    score,
    train_refiner,
)

S = 48


def _mouths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Real regions (skin with fine stripes of texture and a dark mouth of varying size)
    and a soft paint of them (the real ones blurred, as a generator paints)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    texture = 18 * np.sign(np.sin(xx * np.pi / 3 + yy * 0.7))[..., None]
    real = np.empty((n, S, S, 3), np.uint8)
    for k in range(n):
        img = np.full((S, S, 3), (180, 140, 120), np.float32) + texture
        h = 3 + k % 7
        img[(np.abs(yy - 30) < h) & (np.abs(xx - S / 2) < 12)] = (120, 40, 50)
        real[k] = np.clip(img + rng.normal(0, 1, img.shape), 0, 255).astype(np.uint8)
    paint = np.stack([cv2.GaussianBlur(r, (0, 0), 1.0) for r in real])
    return paint, real


def test_an_untrained_refiner_returns_the_paint_as_it_is() -> None:
    paint = torch.rand(2, 3, 40, 40)
    assert torch.equal(Refiner(RefineConfig())(paint), paint)


def test_a_folded_refiner_works_at_half_the_side_and_untrained_changes_nothing() -> None:
    from avatar.models.refine import scale_for

    assert [scale_for(n) for n in (48, 96, 128, 160, 256)] == [1, 1, 1, 2, 2]
    assert RefineConfig.from_dict({"channels": 32, "blocks": 5}).scale == 1  # old bundles
    with pytest.raises(ValueError, match="scale 1 or 2"):
        RefineConfig.from_dict({"scale": 3})
    folded = Refiner(RefineConfig(scale=2))
    paint = torch.rand(2, 3, 40, 40)
    assert torch.equal(folded(paint), paint)
    # Its blocks see 20x20: a quarter of the full-size refiner's multiply-adds a frame.
    seen = []
    folded.body[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
    torch.nn.init.normal_(folded.out.weight, std=0.1)
    out = folded(paint)
    assert seen == [torch.Size([20, 20])] and out.shape == paint.shape
    assert not torch.equal(out, paint)
    with pytest.raises(ValueError, match="divisible by 2"):
        folded(torch.rand(1, 3, 41, 40))


def test_sharpen_lifts_only_the_fine_band() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(sharpen(x, 0.0), x)
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(sharpen(flat, 1.0), flat)  # no detail, nothing to lift
    y = sharpen(x, 0.5)
    # The band lifted averages to zero: colour stays, the detail grows.
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=5e-3)
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32)
    def energy(t: torch.Tensor) -> float:
        return float(torch.nn.functional.conv2d(t[:, :1], lap[None, None]).var())
    assert energy(y) > 1.5 * energy(x)


def test_a_softer_paint_is_sharpened_more_and_never_past_the_paints_faithfulness() -> None:
    rng = np.random.default_rng(1)
    grain = cv2.GaussianBlur(rng.normal(0, 60, (30 * S, S, 3)).astype(np.float32), (0, 0), 1.5)
    real = np.clip(150 + grain.reshape(30, S, S, 3), 0, 255).astype(np.uint8)
    inner = np.ones((S, S), bool)
    inner[:12] = False

    def paint(blur: float) -> np.ndarray:
        # Lighter than the frame, so the frame lends it none of its own detail.
        return np.stack([np.clip(cv2.GaussianBlur(r, (0, 0), blur).astype(int) + 25, 0, 255)
                         .astype(np.uint8) for r in real])

    soft, softer = paint(0.6), paint(0.9)
    a_soft, rep_soft = choose_sharpen(soft, real, inner, 0.0)
    a_softer, rep_softer = choose_sharpen(softer, real, inner, 0.0)
    assert 0 < a_soft < a_softer
    for rep in (rep_soft, rep_softer):
        # Chosen where its sharpness on the frame comes nearest the real's.
        assert rep["sharpness"] == pytest.approx(1.0, abs=0.1)
        assert abs(np.log(rep["sharpness"])) <= min(abs(np.log(c["sharpness"]))
                                                    for c in rep["curve"])
        assert rep["curve"][0]["amount"] == 0 and rep["curve"][0]["sharpness"] < 0.7
    # Where any lift leaves the paint less faithful than the floor, none is chosen.
    floor = score(soft, real, inner)[1] + 1.0
    assert choose_sharpen(soft, real, inner, floor)[0] == 0
    assert choose_sharpen(soft, real, inner, 0.0, RefineTrainConfig(sharpen_max=0))[0] == 0


def test_held_out_frames_are_whole_clips_or_the_last_sixth_of_one() -> None:
    clips = np.repeat(np.arange(12), 5)
    held = held_out_split(clips, 6)
    assert set(clips[held]) == {0, 6} and not set(clips[~held]) & {0, 6}
    one = held_out_split(np.zeros(60, int), 6)
    assert one[-10:].all() and not one[:-10].any()


@pytest.mark.parametrize(("scale", "precision"), [(1, "fp32"), (1, "bf16"), (2, "auto")])
def test_the_refiner_puts_back_detail_the_paint_lost_on_held_out_frames(
        scale: int, precision: str) -> None:
    """In either precision (bfloat16 forward passes, as rendering runs the refiner)."""
    from avatar.devices import compute_dtype

    paint, real = _mouths(72)
    region_mask = np.zeros((S, S), np.float32)
    region_mask[12:, 4:-4] = 1.0
    clip_of = np.arange(72) // 6
    # Batches of four 16-px crops: on a host without native bfloat16 (AVX2 only) the
    # bf16 case of eight 32-px crops took 105-120 s, this 24 s, and each case still
    # sharpens the paint four- to six-fold.
    cfg = RefineTrainConfig(steps=300, batch=4, crop=16, check_every=100, max_minutes=5,
                            scale=scale, precision=precision)
    result = train_refiner(paint, real, clip_of, region_mask, 0.25, cfg)
    assert result is not None
    assert result.refiner.cfg.scale == scale
    assert all(p.dtype == torch.float32 for p in result.refiner.parameters())
    rep = result.report
    assert rep["scale"] == scale
    bf16 = compute_dtype(torch.device("cpu"), precision) == torch.bfloat16
    assert rep["precision"] == ("bf16" if bf16 else "fp32")
    # Scored on whole clips it never trained on.
    assert rep["held_out_frames"] == 2 * 6 and rep["steps"] == 300
    assert rep["paint"]["sharpness"] < 0.2
    assert rep["chosen"]["sharpness"] > 2 * rep["paint"]["sharpness"]
    assert rep["chosen"]["psnr_db"] >= rep["paint"]["psnr_db"]
    # The report's figures are the refiner's own on those frames.
    held = held_out_split(clip_of, 6)
    from training.head.refine import refine_numpy

    energy, psnr = score(refine_numpy(result.refiner, paint[held]), real[held],
                         region_mask >= 0.98)
    assert energy == pytest.approx(rep["chosen"]["sharpness"], abs=1e-3)
    assert psnr == pytest.approx(rep["chosen"]["psnr_db"], abs=1e-2)


def test_the_refiner_s_plan_keeps_the_critic_s_share_of_the_steps_that_fit() -> None:
    from training.head.refine_plan import plan_refiner

    # Everything fits: the nominal plan.
    p = plan_refiner(2500, 0.2, 0, None, 0.05, 0.1, 1000.0)
    assert (p.steps, p.critic_from) == (2500, 500)
    # Less time than the nominal plan needs: fewer steps, the critic still joins at a
    # fifth of them.
    p = plan_refiner(2500, 0.2, 100, None, 0.05, 0.1, 60.0)
    n = int((60.0 + 100 * 0.05) / (0.2 * 0.05 + 0.8 * 0.1))
    assert (p.steps, p.critic_from) == (n, round(0.2 * n))
    # Once it has joined it stays; the rest of the time is critic steps.
    p = plan_refiner(2500, 0.2, 300, 150, 0.05, 0.1, 10.0)
    assert (p.steps, p.critic_from) == (400, 150)
    # No time left: no more steps.
    assert plan_refiner(2500, 0.2, 40, None, 0.05, 0.1, -5.0).steps == 40


def test_a_refiner_cut_short_by_its_cap_still_trains_with_its_critic(monkeypatch) -> None:
    """Planned from measured step times: a fixed 100,000 steps never reached the critic's
    step in a few seconds; the plan brings it in at a fifth of the steps that fit."""
    import training.head.refine

    # Every checkpoint scores as the paint does, so one is kept whatever a few seconds of
    # training made of it: the plan is what is looked at here.
    monkeypatch.setattr(training.head.refine, "score", lambda *a: (1.0, 30.0))
    paint, real = _mouths(36)
    region_mask = np.zeros((S, S), np.float32)
    region_mask[12:, 4:-4] = 1.0
    cfg = RefineTrainConfig(steps=100_000, batch=8, crop=32, max_minutes=0.15,
                            check_every=100_000)
    result = train_refiner(paint, real, np.arange(36) // 6, region_mask, 0.25, cfg)
    assert result is not None
    rep = result.report
    assert 10 < rep["plan"] < 100_000
    assert rep["critic_from_step"] < rep["steps"]
    assert rep["steps"] >= 0.5 * rep["plan"]
    assert {"plain", "critic"} <= set(rep["seconds_per_step"])


def test_a_refiner_less_faithful_than_the_paint_is_not_kept() -> None:
    paint, real = _mouths(36)
    region_mask = np.ones((S, S), np.float32)
    # The paint is the real frame itself: nothing a refiner does can be more faithful.
    cfg = RefineTrainConfig(steps=20, batch=4, crop=32, max_minutes=5)
    assert train_refiner(real, real, np.arange(36) // 6, region_mask, 0.25, cfg) is None
    assert train_refiner(paint[:10], real[:10], np.zeros(10, int), region_mask, 0.25,
                         cfg) is None  # too few frames


def test_enrolment_trains_a_refiner_that_changes_only_the_painted_box(bundle: Path) -> None:
    from avatar.avatar import Avatar

    refine = json.loads((bundle / "manifest.json").read_text())["head"]["refine"]
    assert (bundle / refine["file"]).is_file()
    assert refine["report"]["chosen"]["psnr_db"] >= refine["report"]["paint"]["psnr_db"]
    avatar = Avatar.load(bundle)
    assert 0 <= refine["sharpen"] <= RefineTrainConfig().sharpen_max
    assert avatar.sharpen == refine["sharpen"]
    assert refine["report"]["sharpen"]["amount"] == refine["sharpen"]
    # The refiner takes the texture bank's place; without it the bank comes back.
    assert avatar.refiner is not None and avatar.texture is None
    assert Avatar.load(bundle, refine=False).texture is not None
    reqs = avatar.silent_requests(2)
    refined = avatar.render(reqs)
    avatar.refiner = None
    assert_only_box_changed(refined, avatar.render(reqs), avatar.idle[0].box)


def test_a_bundle_without_a_refiner_renders_and_train_refine_adds_one(
        bundle: Path, tmp_path: Path) -> None:
    from avatar.avatar import Avatar

    old = bundle_without(bundle, tmp_path, "refine", "refiner")  # as bundles before them
    work = old.parent.parent

    proc = run_cli("train", "refine", work, "--preset", "ci", "--steps", "30")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["head"]["refine"]["file"] == out["refine"]
    assert out["refine"] in manifest["files"] and (old / out["refine"]).is_file()
    # The colour cast was measured again, on the refined paint.
    assert manifest["head"]["colour"]["frames"] > 0
    assert Avatar.load(old).refiner is not None
    # Again, folded this time: the new weights replace the old ones, and it renders.
    proc = run_cli("train", "refine", work, "--preset", "ci", "--steps", "30", "--scale", "2")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)["refine"]
    assert again != out["refine"] and not (old / out["refine"]).exists()
    assert (old / again).is_file()
    assert json.loads((old / "manifest.json").read_text())["head"]["refine"]["config"][
        "scale"] == 2
    avatar = Avatar.load(old)
    assert avatar.refiner is not None and avatar.refiner.cfg.scale == 2
    frames = avatar.render(avatar.silent_requests(2))
    assert len(frames) == 2 and frames[0].ndim == 3


@pytest.mark.parametrize(("key", "value"), [
    ("file", ""), ("file", "missing.safetensors"), ("config", {"channels": "wide"}),
    ("config", {"channels": 16}), ("config", {"scale": 2}), ("config", {"scale": 4}),
    ("sharpen", -0.5), ("sharpen", "much"), ("sharpen", 9)])
def test_a_damaged_refiner_is_a_one_line_error(bundle: Path, tmp_path: Path,
                                               key: str, value: object) -> None:
    bad = tmp_path / "b"
    shutil.copytree(bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["head"]["refine"][key] = value
    (bad / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("bench", "render", bad, "--batches", "1")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    assert "refine" in errors[0] or "missing.safetensors" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_refine_without_an_enrolment_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_cli("train", "refine", tmp_path / "nowhere", "--steps", "5")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    proc = run_cli("train", "refine", tmp_path, "--steps", "0")
    assert proc.returncode != 0 and "--steps" in proc.stderr
    proc = run_cli("train", "refine", tmp_path, "--preset", "demo")
    assert proc.returncode != 0 and "trains no refiner" in proc.stderr
    assert "Traceback" not in proc.stderr
    if not torch.cuda.is_available():
        proc = run_cli("train", "refine", tmp_path, "--device", "cuda:0")
        assert proc.returncode != 0 and "CUDA is not available" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_retrain_that_keeps_no_refiner_leaves_the_bundle_as_it_was(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.head.refine as refine_mod
    from training.head.export import add_refine

    work = tmp_path / "w"
    (work / "avatars").mkdir(parents=True)
    copy = work / "avatars" / bundle.name
    shutil.copytree(bundle, copy)
    before = (copy / "manifest.json").read_bytes()
    files = sorted(p.name for p in copy.iterdir())
    monkeypatch.setattr(refine_mod, "train_refiner", lambda *a, **k: None)
    assert add_refine(copy, bundle.parent.parent / "features",
                      RefineTrainConfig(steps=5)) == {}
    assert (copy / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in copy.iterdir()) == files


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_refine_on_cuda(bundle: Path, tmp_path: Path) -> None:
    from avatar.avatar import Avatar

    old = bundle_without(bundle, tmp_path, "refine", "refiner")
    proc = run_cli("train", "refine", old.parent.parent, "--preset", "ci", "--steps", "30",
                   "--device", "cuda:0")
    assert proc.returncode == 0, proc.stderr
    assert Avatar.load(old).refiner is not None


def test_bench_render_says_which_refiner_it_timed(bundle: Path) -> None:
    seen = {}
    for asked, extra in (("keep", ()), ("off", ()), ("fresh", ("--model-size", "64"))):
        proc = run_cli("bench", "render", bundle, "--batches", "1", "--seconds", "0.2",
                       "--refiner", asked, *extra)
        assert proc.returncode == 0, proc.stderr
        seen[asked] = json.loads(proc.stdout)["refiner"]
    assert seen == {"keep": "bundle", "off": "none", "fresh": "untrained"}


def test_a_refiner_from_before_sharpen_renders_unsharpened(bundle: Path,
                                                           tmp_path: Path) -> None:
    from avatar.avatar import Avatar
    from training.head.fidelity import grey, laplacian_var

    avatar = Avatar.load(bundle_copy(bundle, tmp_path, "refine.sharpen"))
    assert avatar.refiner is not None and avatar.sharpen == 0.0
    reqs = avatar.silent_requests(2)
    plain = avatar.render(reqs)
    avatar.sharpen = 1.0
    lifted = avatar.render(reqs)
    box = avatar.idle[0].box
    assert_only_box_changed(lifted, plain, box)
    x0, y0, x1, y1 = box
    inside = np.ones((y1 - y0, x1 - x0), bool)
    def energy(f: np.ndarray) -> float:
        return laplacian_var(grey(f[y0:y1, x0:x1].astype(np.float32)), inside)
    assert energy(lifted[0]) > energy(plain[0])
