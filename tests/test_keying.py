"""Keyed output: on a real GRID frame the person stays and the background becomes the key
colour."""

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "grid_s1" / "eval"


def test_background_becomes_the_key_colour() -> None:
    import av

    from streaming.keying import Keyer

    clip = sorted(DATA.glob("*.mpg"))
    if not clip:
        pytest.skip("../shared/data/grid_s1 is not here")
    with av.open(str(clip[0])) as c:
        rgb = next(c.decode(video=0)).to_ndarray(format="rgb24")
    keyer = Keyer((0, 255, 0))
    try:
        out = keyer(rgb)
        mask = keyer.mask(rgb)
    finally:
        keyer.close()
    h, w = mask.shape
    assert out.shape == rgb.shape and out.dtype == np.uint8
    # GRID frames: the speaker in the middle, plain backdrop in the top corners.
    assert mask[h // 2 - 10: h // 2 + 10, w // 2 - 10: w // 2 + 10].mean() > 0.9
    corners = np.concatenate([out[:20, :20].reshape(-1, 3), out[:20, -20:].reshape(-1, 3)])
    assert np.abs(corners.astype(int) - [0, 255, 0]).max() <= 2
    face = out[h // 2, w // 2].astype(int)
    assert np.abs(face - rgb[h // 2, w // 2].astype(int)).max() <= 2
