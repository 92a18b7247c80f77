"""The image-fidelity figures of ``eval head`` (training.head.fidelity) on frames whose
answer is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from training.head.fidelity import Area, Tally


def textured(n: int, seed: int = 0, size: int = 96) -> list[np.ndarray]:
    """Frames of a fine random texture, drifting a little from frame to frame."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (size + 8, size + 8, 3)).astype(np.float32),
                            (0, 0), 1.0)
    return [np.clip(base[k % 3: k % 3 + size, 0:size] + 60, 0, 255).astype(np.uint8)
            for k in range(n)]


def area(size: int = 96) -> Area:
    blend = np.zeros((size, size), np.float32)
    blend[16:80, 16:80] = 1.0
    blend = cv2.GaussianBlur(blend, (0, 0), 3.0)
    return Area((0, 0, size, size), blend, 1.0)


def figures(real: list[np.ndarray], gen: list[np.ndarray]) -> dict:
    t = Tally()
    t.add_clip(real, gen, [area()] * len(real), np.ones(len(real), bool))
    return t.figures()


def test_the_real_frames_score_as_perfect():
    real = textured(6)
    f = figures(real, [r.copy() for r in real])
    assert f["sharpness_ratio"] == pytest.approx(1.0)
    assert f["seam_ratio"] == pytest.approx(1.0)
    assert f["silence_change_ratio"] == pytest.approx(1.0)
    assert f["ssim"] == pytest.approx(1.0)
    assert f["colour_delta_e"] == pytest.approx(0.0, abs=1e-4)
    assert f["psnr_db"] is None  # no error at all
    assert f["silent_pairs"] == 5


def test_a_soft_mouth_loses_sharpness_and_structure():
    real = textured(4)
    soft = [cv2.resize(cv2.resize(r, (32, 32), interpolation=cv2.INTER_AREA), (96, 96),
                       interpolation=cv2.INTER_LINEAR) for r in real]
    f = figures(real, soft)
    assert f["sharpness_ratio"] < 0.5
    assert f["ssim"] < 0.9
    assert f["psnr_db"] < 40


def test_a_colour_cast_and_a_box_show():
    real = textured(4)
    cast = [np.clip(r.astype(np.int16) + (12, 0, -12), 0, 255).astype(np.uint8) for r in real]
    f = figures(real, cast)
    assert f["colour_delta_e"] > 5
    # A hard-edged square pasted without feathering: a step along the blend's edge.
    boxed = []
    for r in real:
        g = r.copy()
        g[14:82, 14:82] = np.clip(g[14:82, 14:82].astype(np.int16) + 40, 0, 255)
        boxed.append(g)
    assert figures(real, boxed)["seam_ratio"] > 1.2


def test_shimmer_in_silence_shows():
    real = [textured(1)[0]] * 5  # a still face
    rng = np.random.default_rng(1)
    shimmer = [np.clip(r.astype(np.int16) + rng.integers(-6, 7, r.shape), 0,
                       255).astype(np.uint8) for r in real]
    t = Tally()
    t.add_clip(real, shimmer, [area()] * 5, np.ones(5, bool))
    # A perfectly still real mouth: the ratio has no denominator, the change is reported.
    assert t.figures()["silence_change_ratio"] is None
    moving = textured(5)
    noisy = [np.clip(r.astype(np.int16) + rng.integers(-12, 13, r.shape), 0,
                     255).astype(np.uint8) for r in moving]
    assert figures(moving, noisy)["silence_change_ratio"] > 1.2


def test_colour_field_follows_light_across_the_region():
    from avatar.colour import match_colour

    size = 96
    real = textured(1, size=size)[0].astype(np.float32)
    # The paint is the real region without a light gradient running left to right.
    ramp = np.linspace(-20, 20, size, dtype=np.float32)[None, :, None]
    painted = real - ramp
    ring = np.zeros((size, size), bool)
    ring[:6], ring[-6:], ring[:, :6], ring[:, -6:] = True, True, True, True
    inner = (slice(20, 76), slice(20, 76))
    err = {mode: np.abs(match_colour(painted, real, ring, mode) - real)[inner].mean()
           for mode in ("mean", "field")}
    assert err["field"] < 0.5 * err["mean"]
    with pytest.raises(ValueError):
        match_colour(painted, real, ring, "nope")


def test_colour_field_reads_the_light_only_where_paint_and_frame_show_the_same():
    from avatar.colour import match_colour

    size = 96
    real = textured(1, size=size)[0].astype(np.float32)
    painted = real - 10  # the paint's light is 10 levels darker than the frame's
    # Its jaw dropped below the frame's: along the bottom of the ring it shows skin where
    # the frame shows a dark collar, a difference of the picture and not of the light.
    painted[-6:, 24:72] = np.clip(real[-6:, 24:72] + 90, 0, 255)
    ring = np.zeros((size, size), bool)
    ring[:6], ring[-6:], ring[:, :6], ring[:, -6:] = True, True, True, True
    chin = (slice(56, 76), slice(24, 72))  # the painted area nearest that stretch

    def err(**kw: float) -> float:
        return float(np.abs(match_colour(painted, real, ring, **kw) - real)[chin].mean())

    # Every ring pixel counted alike (the field before) tints the chin by tens of levels.
    assert err(tolerance=np.inf) > 10
    assert err() < 1.0


def test_the_frames_detail_comes_back_only_where_the_paint_agrees():
    from avatar.detail import keep_detail

    frame = textured(1)[0].astype(np.float32)
    soft = cv2.GaussianBlur(frame, (0, 0), 1.0)
    # The paint agrees with the frame everywhere but a dark mouth it drew where the frame
    # has none: the frame's detail returns around it, not inside it.
    painted = soft.copy()
    cv2.ellipse(painted, (48, 48), (18, 10), 0, 0, 360, (20, 10, 10), -1)
    out = keep_detail(painted, frame, 1.0)
    lap = lambda x, m: cv2.Laplacian(x.mean(2), cv2.CV_32F)[m].var()  # noqa: E731
    mouth = np.zeros((96, 96), np.uint8)
    cv2.ellipse(mouth, (48, 48), (14, 7), 0, 0, 360, 1, -1)
    skin = np.ones((96, 96), bool)
    skin[20:76, 16:80] = False
    mouth = mouth.astype(bool)
    assert lap(out, skin) > 0.7 * lap(frame, skin) > 2 * lap(soft, skin)
    assert np.abs(out - painted)[mouth].max() < 4
    # Sharpness with another clip's audio is tallied on the frames passed through.
    t = Tally()
    real = textured(3)
    passed = list(t.add_other_audio(real, [cv2.GaussianBlur(r, (0, 0), 1.5) for r in real],
                                    [area()] * 3))
    assert len(passed) == 3
    assert t.figures()["sharpness_ratio_other_audio"] < 0.5


def test_where_paint_and_frame_half_agree_the_mix_keeps_their_detail():
    from avatar.detail import keep_detail

    rng = np.random.default_rng(0)

    def grain() -> np.ndarray:
        return cv2.GaussianBlur(rng.normal(0, 20, (96, 96)).astype(np.float32), (0, 0),
                                0.7)[..., None].repeat(3, 2)

    def fine(x: np.ndarray) -> np.ndarray:
        return (x - cv2.GaussianBlur(x, (0, 0), 1.5))[16:80, 16:80]

    frame = 120 + grain()
    # Coarse pictures 6.7 levels apart: the frame's detail weighs a half everywhere.
    offset = 8 * np.sqrt(np.log(2))
    painted = 120 + offset + grain()  # detail of its own, unrelated to the frame's
    mixed = fine(keep_detail(painted, frame, 1.0))
    between = (fine(painted).var() + fine(frame).var()) / 2
    # A plain cross-fade would keep half of that.
    assert 0.8 * between < mixed.var() < 1.25 * between
    # The same detail in both: passed on as it is, not amplified.
    same = fine(keep_detail(frame + offset, frame, 1.0))
    assert np.abs(same - fine(frame)).max() < 0.5


def test_texture_loss_prices_missing_detail_not_its_exact_place():
    import torch

    from training.head.losses import gradient_loss, texture_loss

    target = torch.from_numpy(np.stack(textured(2, size=48))).permute(0, 3, 1, 2).float() / 255
    soft = torch.nn.functional.avg_pool2d(target, 3, 1, 1)
    moved = torch.roll(target, shifts=(1, 1), dims=(-2, -1))  # the same detail, 1 px off
    # Sample-by-sample, the moved detail costs more than none; by local energy, less.
    assert gradient_loss(moved, target) > gradient_loss(soft, target)
    assert texture_loss(moved, target) < 0.5 * texture_loss(soft, target)
    assert float(texture_loss(target, target)) == 0.0
