from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar.errors import TwincastError
from training.align import espeak_to_arpabet, normalise, number_words
from training.smoothing import OneEuroFilter
from training.transcript import read_transcript


def test_one_euro_removes_jitter_but_follows_motion() -> None:
    rng = np.random.default_rng(0)
    f = OneEuroFilter(25, min_cutoff=1.5, beta=8.0)
    still = [f(np.array([100.0]) + rng.normal(0, 0.5, 1), scale=60) for _ in range(100)]
    assert np.std(still[20:]) < 0.5 * 0.5
    # A fast move (a head turn of a whole inter-ocular distance) is followed within frames.
    moved = [f(np.array([160.0]), scale=60) for _ in range(5)]
    assert moved[-1][0] > 155


def test_transcript_forms(tmp_path: Path) -> None:
    tsv = tmp_path / "t.tsv"
    tsv.write_text("a\thello there\nb.mp4\tgood morning\n")
    assert read_transcript(tsv, ["a", "b", "c"]) == {"a": "hello there", "b": "good morning"}
    plain = tmp_path / "t.txt"
    plain.write_text("Hello there.\nHow are you?\n")
    assert read_transcript(plain, ["x"]) == {"x": "Hello there. How are you?"}
    with pytest.raises(TwincastError, match="plain text but 2 clips"):
        read_transcript(plain, ["x", "y"])
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    with pytest.raises(TwincastError, match="empty"):
        read_transcript(empty, ["x"])


def test_normalise_and_g2p() -> None:
    assert number_words(42) == "forty two"
    assert number_words(1905) == "one thousand nine hundred five"
    assert normalise("It's 7 o'clock!") == ["it's", "seven", "o'clock"]
    assert espeak_to_arpabet("h@l'oU") == "HH AH L OW"
