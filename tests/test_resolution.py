"""The crop and the model's working size follow the footage's face size."""

import dataclasses

import numpy as np
import pytest

from training import crop_size
from training.config import FeaturesConfig, features_preset
from training.head import resolution


def test_crop_grows_with_the_face_within_bounds():
    cfg = FeaturesConfig()
    # GRID: a face that fills a 185 px crop at 1:1 fits the default 256 px crop.
    assert crop_size.choose(185.0, cfg) == cfg.face.crop_size
    # A close 1080p face (a 480 px crop at 1:1): shrunk at most 1.25x, to a multiple of 32.
    side = crop_size.choose(480.0, cfg)
    assert side % 32 == 0 and 480 / 1.25 <= side < 480 / 1.25 + 32
    # A huge face is capped; growth can be switched off; no face measured keeps the default.
    assert crop_size.choose(5000.0, cfg) == cfg.face.max_crop_size
    fixed = dataclasses.replace(cfg, face=dataclasses.replace(cfg.face, max_crop_size=0))
    assert crop_size.choose(480.0, fixed) == cfg.face.crop_size
    assert crop_size.choose(float("nan"), cfg) == cfg.face.crop_size


def test_working_size_follows_the_mouth_region():
    # GRID: the region spans ~100 source px, so the preset's 96 px is enlarged only 1.04x.
    assert resolution.choose(100.0, 138, 96, 160, 1.25) == 96
    # A larger mouth: the smallest multiple of 16 that keeps the enlargement at 1.25x ...
    size = resolution.choose(180.0, 207, 96, 256, 1.25)
    assert size % 16 == 0 and 180 / size <= 1.25 and 180 / (size - 16) > 1.25
    # ... capped by the preset and by the crop's own pixels; a preset without max_size
    # keeps its size; so does a cache where no face was measured.
    assert resolution.choose(300.0, 207, 96, 160, 1.25) == 160
    assert resolution.choose(300.0, 150, 96, 256, 1.25) == 144
    assert resolution.choose(300.0, 207, 96, 0, 1.25) == 96
    assert resolution.choose(float("nan"), 207, 96, 256, 1.25) == 96


def test_a_large_face_gets_a_large_crop(tmp_path):
    """Measured on real footage of a close face: synthetic 800x800 frames of the sample
    presenter, whose face fills most of the frame."""
    from training.ingest import clip_ids, find_footage, probe
    from training.sample.presenter import SampleConfig, write_sample

    s = write_sample(tmp_path / "s", SampleConfig(minutes=0.1, width=800, height=800, seed=4))
    cfg = features_preset("ci", workers=1)
    files = find_footage([s.video])
    info = probe(files[0], clip_ids(files)[0], cfg.fps, 1.0)
    natural = crop_size.measure([info], cfg)
    assert natural > 360, natural
    sized = crop_size.sized([info], cfg)
    assert sized.face.crop_size == crop_size.choose(natural, cfg) > cfg.face.crop_size
    assert sized.visual_digest() != cfg.visual_digest()  # cached crops of another size redo


@pytest.mark.parametrize("side", [256, 384])
def test_region_measured_in_source_pixels(tmp_path, side):
    """A cache whose crops map 2 source px to 1 crop px: the region spans twice its crop
    pixels in the source, whatever the crop's size."""
    import json

    clip = tmp_path / "clips" / "a"
    clip.mkdir(parents=True)
    (tmp_path / "manifest.json").write_text(json.dumps({"clips": [{"dir": "clips/a"}]}))
    (clip / "meta.json").write_text(json.dumps({"crop_size": side, "width": 1920,
                                                "height": 1080}))
    a = np.tile(np.array([[0.5, 0, 3], [0, 0.5, 7]], np.float32), (10, 1, 1))
    np.savez(clip / "frames.npz", n_faces=np.ones(10, np.uint8), crop_affine=a)
    src, crop_px = resolution.measure(tmp_path, 0.5)
    assert crop_px == side // 2
    assert src == pytest.approx(side)
    # Shown at 1280x720 (the cpu preset's output), the region is two thirds as large.
    assert resolution.measure(tmp_path, 0.5, 1280)[0] == pytest.approx(side * 2 / 3)
