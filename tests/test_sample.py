"""The synthetic presenter: deterministic, the asked-for size, and its ground truth is what
the face mesh measures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import read_frames, run_cli


def test_sample_files(sample) -> None:
    with np.load(sample.truth) as t:
        assert t["mouth_opening"].shape == (180,)
        assert t["blink"].any()
        assert t["mouth_opening"].max() > 2 * t["mouth_opening"].min()
    frames = read_frames(sample.video)
    assert len(frames) == 180 and frames[0].shape == (256, 256, 3)
    words = json.loads(sample.words.read_text())["words"]
    assert len(words) >= 5
    assert sample.transcript.read_text().strip()


def test_the_sample_has_a_known_mannerism(sample) -> None:
    """It nods on long words (the head dips, then comes back) and sways more while
    speaking than while silent."""
    with np.load(sample.truth) as t:
        onsets, fps = t["nod_onsets_s"], int(t["fps"])
        y, iod = t["head_shift_px"][:, 1], float(t["iod_px"])
        speaking, roll = t["speaking"], t["head_roll_deg"]
    letters = json.loads(sample.words.read_text())["config"]["nod_letters"]
    long_words = [w["start"] for w in json.loads(sample.words.read_text())["words"]
                  if sum(c.isalpha() for c in w["word"]) >= letters]
    assert len(onsets) == len(long_words) >= 1
    for t0 in onsets:
        i = int(round((t0 + 0.2) * fps))   # mid-nod
        if i + 8 < len(y):
            assert y[i] - min(y[max(0, i - 8)], y[i + 8]) > 0.03 * iod
    step = np.abs(np.diff(roll))
    assert step[speaking[1:]].mean() > 1.2 * step[~speaking[1:]].mean()


def test_same_seed_same_bytes_other_seed_other_script(tmp_path: Path) -> None:
    # Fresh processes, as a user runs it: espeak-ng keeps state between sentences within
    # one process, so only a fresh run is byte-for-byte repeatable.
    outs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        proc = run_cli("sample", "--out", tmp_path / name, "--minutes", "0.1",
                       "--size", "128x128", "--seed", seed)
        assert proc.returncode == 0, proc.stderr
        outs.append(tmp_path / name)
    assert (outs[0] / "sample.mp4").read_bytes() == (outs[1] / "sample.mp4").read_bytes()
    assert (outs[0] / "truth.npz").read_bytes() == (outs[1] / "truth.npz").read_bytes()
    assert (outs[0] / "transcript.txt").read_text() != (outs[2] / "transcript.txt").read_text()


def test_sample_cli_size_and_bad_size(tmp_path: Path) -> None:
    proc = run_cli("sample", "--out", tmp_path / "s", "--minutes", "0.1", "--size", "320x180")
    assert proc.returncode == 0, proc.stderr
    frames = read_frames(tmp_path / "s" / "sample.mp4")
    assert frames[0].shape == (180, 320, 3)
    proc = run_cli("sample", "--out", tmp_path / "t", "--size", "big")
    assert proc.returncode == 2 and "WIDTHxHEIGHT" in proc.stderr
    proc = run_cli("sample", "--out", tmp_path / "u", "--minutes", "0.01")
    assert proc.returncode == 2 and "at least 0.1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_features_recover_the_sample_truth(sample, tmp_path: Path) -> None:
    from bench.features import bench_align, compare_sample_truth
    from training.config import features_preset
    from training.enrol import enrol_features

    res = enrol_features([sample.video], tmp_path / "w", features_preset("ci", workers=1),
                         transcript=sample.transcript)
    assert res.report["one_face_share"] > 0.99
    truth = compare_sample_truth(res.dir, sample.truth)
    # The face mesh sees the mouth the presenter was drawn with.
    assert truth["mouth_opening_corr"] > 0.9
    align = bench_align(res.dir, sample.words)
    assert align["median_ms"] < 60
