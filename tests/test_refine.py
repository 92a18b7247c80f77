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

from avatar.models.refine import RefineConfig, Refiner
from tests.conftest import assert_only_box_changed, bundle_without, run_cli
from training.head.refine import RefineTrainConfig, held_out_split, score, train_refiner

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


def test_held_out_frames_are_whole_clips_or_the_last_sixth_of_one() -> None:
    clips = np.repeat(np.arange(12), 5)
    held = held_out_split(clips, 6)
    assert set(clips[held]) == {0, 6} and not set(clips[~held]) & {0, 6}
    one = held_out_split(np.zeros(60, int), 6)
    assert one[-10:].all() and not one[:-10].any()


def test_the_refiner_puts_back_detail_the_paint_lost_on_held_out_frames() -> None:
    paint, real = _mouths(72)
    region_mask = np.zeros((S, S), np.float32)
    region_mask[12:, 4:-4] = 1.0
    clip_of = np.arange(72) // 6
    cfg = RefineTrainConfig(steps=300, batch=8, crop=32, check_every=100, max_minutes=5)
    result = train_refiner(paint, real, clip_of, region_mask, 0.25, cfg)
    assert result is not None
    rep = result.report
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
    # Again: the new weights replace the old ones.
    proc = run_cli("train", "refine", work, "--preset", "ci", "--steps", "30")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)["refine"]
    assert again != out["refine"] and not (old / out["refine"]).exists()
    assert (old / again).is_file()


@pytest.mark.parametrize(("key", "value"), [
    ("file", ""), ("file", "missing.safetensors"), ("config", {"channels": "wide"}),
    ("config", {"channels": 16})])
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
