"""The paint's colour cast: measured at export on the enrolment's frames, taken off the
paint's interior at render time (avatar/colour.py, training/head/colour_fit.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar.colour import interior_weight, rgb_shift, to_lab
from tests.conftest import assert_only_box_changed, bundle_copy, bundle_without, run_cli
from training.head.colour_fit import MIN_FRAMES, measure_cast

S = 48


def _geometry() -> tuple[np.ndarray, np.ndarray]:
    """A blend weight like a bundle's (1 in the middle, fading out towards the edges) and
    its ring."""
    yy, xx = np.mgrid[:S, :S].astype(np.float32)
    r = np.hypot(yy - S / 2, xx - S / 2) / (S / 2)
    region_mask = np.clip((1.0 - r) / 0.5, 0, 1).astype(np.float32)
    return region_mask, (region_mask > 0.15) & (region_mask < 0.6)


def _faces(n: int, seed: int = 0) -> np.ndarray:
    """Skin with a red mouth of varying size in the middle, a little noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, S, S, 3), np.uint8)
    yy, xx = np.mgrid[:S, :S]
    for k in range(n):
        img = np.full((S, S, 3), (190, 150, 130), np.float32)
        h = 3 + k % 6
        mouth = (np.abs(yy - S / 2) < h) & (np.abs(xx - S / 2) < 10)
        img[mouth] = (160, 70, 70)
        out[k] = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    return out


def _cast_interior(real: np.ndarray, lab: tuple[float, float, float],
                   region_mask: np.ndarray) -> np.ndarray:
    """``real`` with a CIELAB cast inside the paint's interior only (as the generator's)."""
    w = interior_weight(region_mask)[..., None]
    out = []
    for r in real:
        shifted = to_lab(r.astype(np.float32)) + np.array(lab, np.float32)
        rgb = cv2.cvtColor(shifted, cv2.COLOR_Lab2RGB) * 255
        out.append(np.clip(r + (rgb - r) * w, 0, 255).round().astype(np.uint8))
    return np.stack(out)


def test_a_cast_inside_the_paint_is_measured_and_its_shift_takes_it_off() -> None:
    region_mask, ring = _geometry()
    real = _faces(40)
    painted = _cast_interior(real, (1.0, -2.0, -1.0), region_mask)
    fit = measure_cast(painted, real, ring, region_mask)
    assert fit is not None and fit.frames == 40
    assert np.allclose(fit.lab_cast, (1.0, -2.0, -1.0), atol=0.35), fit.lab_cast
    assert fit.delta_e_before > 2.0 and fit.delta_e_after < 0.5
    # The RGB shift, added over the interior as rendering adds it, takes most of it off.
    fixed = np.clip(painted + fit.rgb_shift * interior_weight(region_mask)[..., None], 0, 255)
    again = measure_cast(fixed.round().astype(np.uint8), real, ring, region_mask)
    assert again is not None and np.linalg.norm(again.lab_cast) < 0.4, again.lab_cast
    # No cast, nothing to take off, and no per-frame model to carry.
    none = measure_cast(real, real, ring, region_mask)
    assert none is not None and np.linalg.norm(none.lab_cast) < 0.05
    assert none.linear is None and none.held_out["constant"] < 0.05


def test_a_cast_that_follows_the_light_is_taken_off_frame_by_frame() -> None:
    """The generator paints in its reference's light; the frames' light varies (0.8-1.2).
    The ring shows each frame's light, so the per-frame model takes off what one shift
    cannot, on frames it was not fitted on, and rendering's correction does the same."""
    import torch

    from avatar.paint_cast import PaintCast

    region_mask, ring = _geometry()
    base = _faces(80)
    light = np.random.default_rng(3).uniform(0.8, 1.2, len(base))
    real = np.clip(base * light[:, None, None, None], 0, 255).astype(np.uint8)
    painted = _cast_interior(base, (1.0, -2.0, -1.0), region_mask)
    fit = measure_cast(painted, real, ring, region_mask)
    assert fit is not None and fit.linear is not None, fit
    assert fit.held_out["linear"] < 0.6 * fit.held_out["constant"], fit.held_out
    assert fit.to_dict()["linear"] == fit.linear.to_dict()

    # Rendering's side: new frames in other light, corrected by PaintCast before the
    # colour match, scored as measure_cast scores them.
    light = np.random.default_rng(4).uniform(0.8, 1.2, 40)
    base = _faces(40, seed=1)
    real = np.clip(base * light[:, None, None, None], 0, 255).astype(np.uint8)
    painted = _cast_interior(base, (1.0, -2.0, -1.0), region_mask)

    def corrected(cast: PaintCast) -> np.ndarray:
        p = torch.from_numpy(painted).permute(0, 3, 1, 2).float() / 255
        r = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255
        out = (p + cast(p, r)).clamp(0, 1) * 255
        return out.round().byte().permute(0, 2, 3, 1).numpy()

    dev = torch.device("cpu")
    one = measure_cast(corrected(PaintCast(region_mask, ring, dev, shift=fit.rgb_shift)),
                       real, ring, region_mask)
    each = measure_cast(corrected(PaintCast(region_mask, ring, dev, linear=fit.linear)),
                        real, ring, region_mask)
    assert one is not None and each is not None
    assert each.delta_e_before < 0.6 * one.delta_e_before, (each.delta_e_before,
                                                            one.delta_e_before)


def test_too_few_frames_or_no_interior_measure_nothing() -> None:
    region_mask, ring = _geometry()
    real = _faces(MIN_FRAMES - 1)
    assert measure_cast(real, real, ring, region_mask) is None
    flat = np.minimum(region_mask, 0.5)  # nowhere all paint
    assert measure_cast(_faces(40), _faces(40), ring, flat) is None


def test_the_shift_is_zero_on_the_ring_and_inverts_the_cast_at_its_colour() -> None:
    region_mask, ring = _geometry()
    assert np.all(interior_weight(region_mask)[ring] == 0)
    assert interior_weight(region_mask).max() == 1
    colour = np.array([180.0, 120.0, 110.0], np.float32)
    shift = rgb_shift(np.array([0.8, -1.5, -0.6]), colour)
    back = to_lab((colour + shift).reshape(1, 1, 3))[0, 0] - to_lab(colour.reshape(1, 1, 3))[0, 0]
    # OpenCV's float CIELAB conversion is itself good to about 0.1 units (table-based).
    assert np.allclose(back, (-0.8, 1.5, 0.6), atol=0.15), back


def test_enrolment_measures_the_cast_and_rendering_takes_it_off_the_interior_only(
        bundle: Path) -> None:
    from avatar.avatar import Avatar

    colour = json.loads((bundle / "manifest.json").read_text())["head"]["colour"]
    assert colour["frames"] >= MIN_FRAMES and len(colour["rgb_shift"]) == 3
    # Both corrections were scored on frames they were not fitted on.
    assert set(colour["delta_e_held_out"]) == {"constant", "linear"}
    avatar = Avatar.load(bundle)
    assert avatar.cast is not None
    reqs = avatar.silent_requests(2)
    cast = avatar.render(reqs)
    avatar.cast = None
    # Outside the painted box nothing moves.
    assert_only_box_changed(cast, avatar.render(reqs), avatar.idle[0].box)


def test_a_bundle_without_the_measurement_renders_and_train_colour_adds_it(
        bundle: Path, tmp_path: Path) -> None:
    from avatar.avatar import Avatar

    old = bundle_without(bundle, tmp_path, "colour", "cast")  # as before the measurement
    work = old.parent.parent

    proc = run_cli("train", "colour", work)
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout)["colour"]
    assert json.loads((old / "manifest.json").read_text())["head"]["colour"] == measured
    assert Avatar.load(old).cast is not None


def test_a_cast_renders_with_the_colour_match_it_was_measured_after(
        bundle: Path, tmp_path: Path, monkeypatch) -> None:
    import avatar.avatar as avatar_module
    from avatar.avatar import Avatar
    from avatar.colour import TOLERANCE, UNWEIGHTED, match_colour

    colour = json.loads((bundle / "manifest.json").read_text())["head"]["colour"]
    assert colour["ring_tolerance"] == TOLERANCE
    assert Avatar.load(bundle).colour_tolerance == TOLERANCE
    # A cast measured before the colour match weighed its ring (no ring_tolerance) keeps
    # the unweighted match: the cast is what was left after that one.
    avatar = Avatar.load(bundle_copy(bundle, tmp_path, "colour.ring_tolerance"))
    assert avatar.colour_tolerance == UNWEIGHTED
    used: list[float] = []

    def spy(*args, **kwargs):  # noqa: ANN202
        used.append(args[4])
        return match_colour(*args, **kwargs)

    monkeypatch.setattr(avatar_module, "match_colour", spy)
    avatar.render(avatar.silent_requests(2))
    assert used == [UNWEIGHTED] * 2


@pytest.mark.parametrize(("key", "value"), [
    ("rgb_shift", [1.0, 2.0]), ("rgb_shift", [1.0, 2.0, 1e9]), ("rgb_shift", "red"),
    ("linear", {"mean": [0] * 6, "weights": [[0, 0, 0]] * 5, "bias": [0, 0, 0]}),
    ("linear", {"mean": [0] * 6, "weights": [[0, 0, 0]] * 6, "bias": [0, 0, 1e9]}),
    ("linear", "red"), ("ring_tolerance", -1), ("ring_tolerance", "wide")])
def test_a_damaged_measurement_is_a_one_line_error(bundle: Path, tmp_path: Path,
                                                   key: str, value: object) -> None:
    bad = tmp_path / "b"
    shutil.copytree(bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["head"]["colour"][key] = value
    (bad / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("bench", "render", bad, "--batches", "1")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and key in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
