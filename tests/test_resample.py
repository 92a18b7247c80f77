"""The mouth's way to the screen keeps its detail: a perfect generator (one that paints the
frame's own region back) leaves the frame nearly as sharp as it was."""

import cv2
import numpy as np

from avatar import resample
from avatar.avatar import _composite, prepare_frames
from training.head.fidelity import Area, Tally


def _textured_frame(seed: int, h: int = 240, w: int = 320) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(128, 40, (h, w, 3)).astype(np.float32)
    # Fine texture like skin and stubble: mostly 1-3 px detail, not single-pixel noise.
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 0.8), 0, 255).astype(np.uint8)


def _paint_back(frames: list[np.ndarray], scale: float, size: int = 48) -> dict:
    """Figures of frames whose region (``size`` px, ``scale`` screen px per region px, at a
    sub-pixel offset) is painted back over itself."""
    mask = np.zeros((size, size), np.float32)
    mask[4:-4, 4:-4] = 1.0
    mask = cv2.GaussianBlur(mask, (0, 0), 2)
    ring = (mask > 0.15) & (mask < 0.6)
    tally = Tally()
    for i, frame in enumerate(frames):
        # Crop pixels == region pixels here; the crop sits at a fractional offset.
        a = np.array([[1 / scale, 0, -(100.37 + i * 0.21) / scale],
                      [0, 1 / scale, -(80.61 + i * 0.13) / scale]])
        (idle,) = prepare_frames([frame], a[None], np.eye(3), mask, ring, size)
        # Detail off: this measures the warps alone (kept detail would hand the frame's own
        # pixels back wherever the paint agrees, and the paint here is the frame itself).
        out = _composite(idle, np.rint(idle.region.transpose(1, 2, 0) * 255).astype(np.uint8),
                         "mean", "off")
        tally.add_clip([frame], [out], [Area(idle.box, idle.blend[..., 0], scale)],
                       np.zeros(1, bool))
    return tally.figures()


def test_a_perfect_mouth_stays_sharp_at_about_one_to_one():
    figures = _paint_back([_textured_frame(s) for s in range(3)], scale=1.04)
    # Bilinear warps both ways keep about half of the Laplacian's variance here.
    assert figures["sharpness_ratio"] > 0.8, figures
    assert figures["psnr_db"] > 35, figures


def test_an_enlarged_mouth_is_not_claimed_sharp():
    # The same region shown twice as large: interpolated pixels cannot hold the detail, and
    # the figure must say so (it is what the upscale figure warns about).
    figures = _paint_back([_textured_frame(s) for s in range(2)], scale=2.0)
    assert figures["sharpness_ratio"] < 0.5, figures


def test_shrinking_warps_average_instead_of_aliasing():
    # A fine checkerboard reduced to a third: area averaging gives flat grey; plain
    # point sampling would keep a strong pattern.
    board = (np.indices((300, 300)).sum(0) % 2 * 255).astype(np.uint8)
    m = np.array([[1 / 3, 0, 0.0], [0, 1 / 3, 0.0]])
    out = resample.warp(board, m, (100, 100))
    assert abs(float(out[10:-10, 10:-10].mean()) - 127.5) < 10
    assert float(out[10:-10, 10:-10].std()) < 20
    assert abs(resample.scale_of(m) - 1 / 3) < 1e-9
