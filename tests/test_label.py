"""The visible disclosure label: where it goes, what it changes, what it refuses, and that
offline renders carry it unless turned off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar.label import CORNERS, Label, LabelConfig


def _frame(h: int = 288, w: int = 360) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(90, 170, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("corner", CORNERS)
def test_the_label_sits_in_its_corner_and_changes_nothing_else(corner: str) -> None:
    frame = _frame()
    before = frame.copy()
    label = Label(LabelConfig(corner=corner))
    out = label.apply(frame)
    assert out is not frame and np.array_equal(frame, before)  # the input is kept as is
    x0, y0, x1, y1 = label.box(360, 288)
    changed = np.argwhere((out != frame).any(axis=2))
    assert changed[:, 0].min() >= y0 and changed[:, 0].max() < y1
    assert changed[:, 1].min() >= x0 and changed[:, 1].max() < x1
    # In the named corner, a few pixels in from the edges.
    assert (x0 < 30) == corner.endswith("left") and (y0 < 30) == corner.startswith("top")
    box = out[y0:y1, x0:x1].mean(axis=2)
    # A dark box behind white text: readable on any picture.
    assert np.percentile(box, 20) < 80 and box.max() > 200


def test_the_label_scales_with_the_frame_and_fits_tiny_ones() -> None:
    label = Label()
    heights = {}
    for w, h in ((360, 288), (1280, 720), (1920, 1080), (40, 30)):
        out = label.apply(_frame(h, w))
        assert out.shape == (h, w, 3)
        x0, y0, x1, y1 = label.box(w, h)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        heights[h] = y1 - y0
    assert heights[1080] > 2 * heights[288] and heights[720] > heights[288]


def test_off_means_untouched_and_bad_settings_are_refused() -> None:
    frame = _frame()
    assert Label(LabelConfig(enabled=False)).apply(frame) is frame
    for bad in ({"text": "  "}, {"text": "x" * 61}, {"text": "KI-generiert \u2713"},
                {"corner": "middle"}):
        with pytest.raises(ValueError):
            LabelConfig(**bad)
    LabelConfig(text="", enabled=False)  # no text needed when it is off


def test_render_carries_the_label_unless_turned_off(bundle: Path, tmp_path: Path) -> None:
    from avatar.audio import SPEECH_RATE
    from avatar.avatar import Avatar
    from avatar.credentials import SigningConfig
    from avatar.offline import render_audio
    from avatar.provenance import Provenance
    from avatar.watermark import WatermarkConfig
    from tests.conftest import read_frames

    avatar = Avatar.load(bundle)
    t = np.arange(SPEECH_RATE) / SPEECH_RATE
    audio = (0.2 * np.sin(2 * np.pi * 220 * t) * (t > 0.3)).astype(np.float32)
    on, off = tmp_path / "on.mp4", tmp_path / "off.mp4"
    # Only the label differs: no marks (their time codes would differ), no credentials.
    plain = dict(watermark=WatermarkConfig(enabled=False), signing=SigningConfig(enabled=False))
    render_audio(avatar, audio, on, provenance=Provenance(**plain))
    render_audio(avatar, audio, off,
                 provenance=Provenance(label=LabelConfig(enabled=False), **plain))
    a, b = read_frames(on), read_frames(off)
    assert len(a) == len(b) == 25
    h, w = a[0].shape[:2]
    x0, y0, x1, y1 = Label().box(w, h)
    for fa, fb in zip(a, b, strict=True):
        inside = np.abs(fa[y0:y1, x0:x1].astype(int) - fb[y0:y1, x0:x1]).mean()
        outside = np.abs(fa[:y0 - 8].astype(int) - fb[:y0 - 8]).mean()
        # Outside, only the encoder's doing: a frame that differs anywhere is coded
        # differently everywhere, and the difference carries from frame to frame (the
        # test bundle's walk: 0.2 at the start, 1.8-2.2 levels by the tenth frame); the
        # label itself is 60 levels off the plain frame inside its box.
        assert inside > 20 and outside < 3, (inside, outside)
