"""The texture bank: the person's own fine mouth detail lent to a soft painted mouth."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar import resample
from avatar import texture as tx
from tests.conftest import bundle_without, run_cli

S = 48
MASK_TOP = 0.25


def _mouths(n: int, seed: int = 0, size: int = S) -> np.ndarray:
    """(n, size, size, 3) uint8: a skin patch with a fixed fine texture (the person's skin)
    and a dark mouth whose opening varies, with teeth (a light band) when it is wide open."""
    rng = np.random.default_rng(seed)
    skin = rng.normal(0, 14, (size, size, 1)).astype(np.float32)  # the same in every frame
    k = size / S
    out = []
    for i in range(n):
        # Each frame its own sensor noise too: no two frames are the same picture.
        img = np.full((size, size, 3), (190, 140, 120), np.float32) + skin \
            + rng.normal(0, 3, (size, size, 1)).astype(np.float32)
        opening = 2 + 10 * (i % 7) / 6
        cv2.ellipse(img, (int(S // 2 * k), int(30 * k)), (int(12 * k), int(opening * k)), 0,
                    0, 360, (60, 20, 25), -1)
        if opening > 8:
            cv2.rectangle(img, (int((S // 2 - 8) * k), int((30 - int(opening) + 1) * k)),
                          (int((S // 2 + 8) * k), int(26 * k)), (235, 235, 225), -1)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def _t(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255


def _lap_var(x: torch.Tensor) -> float:
    grey = x[0].mean(0).numpy()[int(MASK_TOP * S) + 4:]
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def test_a_soft_mouth_gets_back_the_detail_of_the_same_shape() -> None:
    mouths = _mouths(70)
    bank = tx.build(mouths, MASK_TOP, tx.TextureConfig(entries=14, sigma=1.2))[0]
    real = _t(mouths[3:4])
    soft = _t(cv2.GaussianBlur(mouths[3], (0, 0), 1.5)[None])
    out = bank.apply(soft)
    # The blur took most of the fine detail away; the bank gives it back, in place: the
    # result is nearer the real mouth than the soft one was.
    assert _lap_var(soft) < 0.4 * _lap_var(real)
    assert _lap_var(out) > 0.8 * _lap_var(real)
    rows = slice(int(MASK_TOP * S) + 4, S)
    assert (out - real)[..., rows, :].abs().mean() < 0.6 * (soft - real)[..., rows, :].abs().mean()
    # Above the painted part nothing is touched (the generator keeps the frame there).
    top = int(MASK_TOP * S) - 3
    assert torch.equal(out[..., :top, :], soft[..., :top, :])


def test_a_mouth_enlarged_on_screen_gets_the_fine_band_of_its_screen_size() -> None:
    """A region painted at 48 px and shown at 96: the bank's fine bands, kept at 96 px from
    the same frames, put back the detail the enlargement cannot hold."""
    hi = _mouths(70, size=2 * S)
    # As the footage's regions are cut at both sizes: one map, scaled.
    lo = np.stack([np.clip(resample.warp(m, np.array([[0.5, 0, 0], [0, 0.5, 0]]), (S, S)),
                           0, 255).astype(np.uint8) for m in hi])
    bank, chosen = tx.build(lo, MASK_TOP, tx.TextureConfig(entries=14))
    bank = bank.with_fine(hi[chosen])
    assert bank.screen_size == 2 * S
    out, fine = bank.apply_fine(_t(lo[3:4]))
    assert fine is not None and fine.shape == (1, 3, 2 * S, 2 * S)
    painted = out[0].permute(1, 2, 0).numpy() * 255
    to_box = np.array([[2.0, 0, 0], [0, 2.0, 0]])
    plain = resample.warp(painted, to_box, (2 * S, 2 * S))
    band, sigma = tx.screen_band(fine[0].permute(1, 2, 0).numpy(), to_box, S, (2 * S, 2 * S),
                                 bank.fine_sigma)
    sharp = cv2.GaussianBlur(plain, (0, 0), sigma) + band
    rows = slice(int(MASK_TOP * 2 * S) + 8, 2 * S)
    real = hi[3].astype(np.float32)

    def lap(img: np.ndarray) -> float:
        return float(cv2.Laplacian(img.mean(2)[rows], cv2.CV_32F).var())

    assert lap(plain) < 0.5 * lap(real)
    assert lap(sharp) > 0.8 * lap(real)
    assert np.abs(sharp - real)[rows].mean() < 0.8 * np.abs(plain - real)[rows].mean()


def test_a_mouth_that_moves_changes_its_texture_more_smoothly_than_a_hard_switch() -> None:
    """Soft weights: a mouth opening from one entry's shape to the next moves the texture
    less between frames than taking the nearest entry alone does."""
    mouths = _mouths(70)
    a, b = mouths[4].astype(np.float32), mouths[5].astype(np.float32)

    def biggest_jump(softness: float) -> float:
        bank = tx.build(mouths, MASK_TOP, tx.TextureConfig(entries=14, softness=softness))[0]
        steps = [bank.apply(_t(cv2.GaussianBlur(a + (b - a) * w, (0, 0), 1.5)
                               .astype(np.uint8)[None])) for w in np.linspace(0, 1, 21)]
        return max(float((p - q).abs().max()) * 255 for p, q in zip(steps, steps[1:],
                                                                     strict=False))

    hard = biggest_jump(1e-4)
    assert hard > 80  # the nearest entry changing: a jump of its own texture
    assert biggest_jump(tx.TextureConfig().softness) < 0.7 * hard
    # A still mouth keeps a still texture.
    bank = tx.build(mouths, MASK_TOP, tx.TextureConfig(entries=14))[0]
    x = _t(cv2.GaussianBlur(a, (0, 0), 1.5).astype(np.uint8)[None])
    assert torch.equal(bank.apply(x), bank.apply(x.clone()))


def test_the_bank_is_built_the_same_way_twice_and_survives_a_file(tmp_path: Path) -> None:
    mouths = _mouths(50, seed=1)
    a = tx.build(mouths, MASK_TOP, tx.TextureConfig(entries=10))[0]
    b = tx.build(mouths, MASK_TOP, tx.TextureConfig(entries=10))[0]
    assert len(a) == 10
    assert np.array_equal(a._bands_np, b._bands_np)
    a.save(tmp_path / "t.npz")
    c = tx.TextureBank.load(tmp_path / "t.npz")
    assert c.cfg == a.cfg and c.size == S
    x = _t(mouths[:4])
    assert torch.equal(a.apply(x), c.apply(x))


def test_a_new_bank_keeps_the_paints_own_band_and_an_old_one_renders_as_it_did() -> None:
    assert tx.TextureConfig().fill_own
    saved = json.loads(json.dumps(tx.TextureConfig().__dict__))
    assert tx.TextureConfig.from_dict(saved).fill_own
    # A bank saved before the option existed has no such key: it stays off there.
    del saved["fill_own"]
    assert not tx.TextureConfig.from_dict(saved).fill_own


def test_enrolment_writes_a_bank_and_rendering_uses_it(bundle: Path) -> None:
    from avatar.avatar import Avatar

    manifest = json.loads((bundle / "manifest.json").read_text())
    name = manifest["head"]["texture"]
    assert name in manifest["files"]
    # The bundle's refiner, where it has one, takes the bank's place: without it, the bank.
    avatar = Avatar.load(bundle, refine=False)
    assert avatar.texture is not None and avatar.texture.size == avatar.size
    reqs = avatar.silent_requests(2)
    with_bank = avatar.render(reqs)
    avatar.texture = None
    without = avatar.render(reqs)
    assert any(not np.array_equal(a, b) for a, b in zip(with_bank, without, strict=True))


def test_a_bundle_without_a_bank_renders_and_train_texture_adds_one(
        bundle: Path, tmp_path: Path) -> None:
    from avatar.avatar import Avatar

    old = bundle_without(bundle, tmp_path, "texture", "texture")  # as bundles before banks
    work = old.parent.parent

    proc = run_cli("train", "texture", work)
    assert proc.returncode == 0, proc.stderr
    name = json.loads(proc.stdout)["texture"]
    after = json.loads((old / "manifest.json").read_text())
    assert after["head"]["texture"] == name and name in after["files"]
    assert Avatar.load(old, refine=False).texture is not None
    proc = run_cli("train", "texture", work)  # rebuilt: the new one replaces the old
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["texture"] != name and not (old / name).exists()


@pytest.mark.gpu
def test_the_bank_gives_the_same_texture_on_the_gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    mouths = _mouths(40)
    bank = tx.build(mouths, MASK_TOP, tx.TextureConfig(entries=8))[0]
    x = _t(mouths[:6])
    cpu = bank.apply(x)
    gpu = bank.to("cuda:0").apply(x.cuda()).cpu()
    assert (cpu - gpu).abs().max() < 1 / 255


def _two_equal_neighbours(cfg: tx.TextureConfig, lows: bool = False
                          ) -> tuple[tx.TextureBank, torch.Tensor]:
    """A bank whose first two entries (unrelated noise textures) are equally near a painted
    mouth and whose third is far, and that mouth (soft, with a texture of its own)."""
    rng = np.random.default_rng(5)
    painted = _t(cv2.GaussianBlur(_mouths(1)[0], (0, 0), 1.0)[None])
    d = tx.describe(painted, MASK_TOP, cfg.grid)[0].numpy()
    e = np.zeros_like(d)
    e[0] = 0.05
    descriptors = np.stack([d + e, d - e, d + 20 * e])
    bands = rng.normal(0, 16, (3, 3, S, S)).round().clip(-127, 127).astype(np.int8)
    # Lows of black: no entry agrees with the painted mouth anywhere.
    low = np.zeros((3, 3, S, S), np.uint8) if lows else None
    return tx.TextureBank(descriptors, bands, MASK_TOP, cfg, lows=low), painted


def test_gain_gives_a_blend_of_two_textures_the_energy_of_one() -> None:
    rows = slice(int(MASK_TOP * S) + 4, S - 4)

    def band_var(cfg: tx.TextureConfig) -> float:
        bank, painted = _two_equal_neighbours(cfg)
        out = bank.apply(painted)
        return float((out - tx.blur(out, cfg.sigma))[..., rows, :].var())

    one = band_var(tx.TextureConfig(tolerance=0, neighbours=1))
    half = band_var(tx.TextureConfig(tolerance=0))
    full = band_var(tx.TextureConfig(tolerance=0, gain_cap=1.5))
    # Half and half of two unrelated textures keeps half the variance of one; scaled by
    # sqrt(2) (under the cap) it is back to one's.
    assert half < 0.6 * one
    assert 0.85 * one < full < 1.15 * one


def test_fill_own_keeps_the_paints_band_where_no_entry_agrees() -> None:
    rows = slice(int(MASK_TOP * S) + 4, S - 4)
    for fill, lo, hi in ((False, 0.0, 0.5), (True, 0.9, 1.1)):
        bank, painted = _two_equal_neighbours(tx.TextureConfig(fill_own=fill), lows=True)
        out = bank.apply(painted)
        own = (painted - tx.blur(painted, 1.2))[..., rows, :].var()
        kept = (out - tx.blur(out, 1.2))[..., rows, :].var()
        assert lo * own <= kept <= hi * own, (fill, kept / own)


def test_the_outline_gate_lends_less_on_the_mouths_edges_than_beside_them() -> None:
    # Without fill_own, so what goes over the coarse picture is the bank's alone.
    bank, painted = _two_equal_neighbours(tx.TextureConfig(tolerance=0, edge=12,
                                                           fill_own=False))
    plain, _ = _two_equal_neighbours(tx.TextureConfig(tolerance=0, fill_own=False))
    # What each puts over the paint's coarse picture (its own band is replaced).
    low = tx.blur(painted, 1.2)
    lent = (bank.apply(painted) - low).abs()[0].mean(0)
    lent_plain = (plain.apply(painted) - low).abs()[0].mean(0)
    # The dark mouth's outline in the painted picture: its strongest coarse gradient rows.
    grey = tx.blur(painted, 2.4)[0].mean(0) * 255
    gy, gx = torch.gradient(grey)
    g = (gx * gx + gy * gy).sqrt()
    rows = slice(int(MASK_TOP * S) + 4, S - 4)
    on = g[rows] > torch.quantile(g[rows], 0.9)
    off = g[rows] < torch.quantile(g[rows], 0.3)
    ratio = lent[rows][on].mean() / lent[rows][off].mean()
    ratio_plain = lent_plain[rows][on].mean() / lent_plain[rows][off].mean()
    assert ratio < 0.6 * ratio_plain, (ratio, ratio_plain)


def test_fill_own_keeps_the_enlarged_paints_band_at_the_screens_size() -> None:
    """Where no entry agrees, the fine band compositing puts in at the screen's size is the
    paint's own (enlarged) band under fill_own, and next to nothing without it."""
    big = 2 * S
    regions = np.random.default_rng(6).integers(0, 255, (3, big, big, 3), dtype=np.uint8)
    for fill in (False, True):
        bank, painted = _two_equal_neighbours(tx.TextureConfig(fill_own=fill), lows=True)
        bank = bank.with_fine(regions)
        fine = bank.apply_fine(painted)[1]
        up = torch.nn.functional.interpolate(painted * 255, size=(big, big), mode="bicubic",
                                             align_corners=False)
        own = up - tx.blur(up, bank.fine_sigma)
        rows = slice(int(MASK_TOP * big) + 8, big - 8)
        err = (fine - own)[..., rows, :].abs().mean() / own[..., rows, :].abs().mean()
        assert (err < 0.1) if fill else (err > 0.9), (fill, float(err))
