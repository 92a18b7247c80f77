"""The idle chooser prefers a short quiet stretch with the mouth closed over a long one
with talking in it."""

import json

import numpy as np

from training.head.idle import choose_idle


def _clip(root, cid: str, opening: np.ndarray, speech: np.ndarray) -> dict:
    t = len(opening)
    lm = np.zeros((t, 478, 3), np.float32)
    lm[:, 33, 0], lm[:, 263, 0] = 100.0, 200.0  # eye corners 100 px apart
    lm[:, 13, 1], lm[:, 14, 1] = 300.0, 300.0 + 100.0 * opening
    d = root / "clips" / cid
    d.mkdir(parents=True)
    np.savez(d / "frames.npz", n_faces=np.ones(t, int), landmarks_raw=lm,
             head_translation=np.tile([0.0, 0.0, 100.0], (t, 1)))
    np.savez(d / "audio.npz", vad=np.repeat(speech, 4))  # 100 hops/s from 25 fps
    return {"id": cid, "dir": f"clips/{cid}"}


def test_idle_avoids_speech_and_open_mouth(tmp_path):
    rng = np.random.default_rng(0)
    talking = 0.02 + 0.1 * rng.random(100)  # 4 s, talking throughout
    mixed_open = np.r_[0.1 * rng.random(60), np.full(40, 0.002)]  # last 1.6 s closed
    mixed_vad = np.r_[np.ones(60), np.zeros(40)]
    clips = [_clip(tmp_path, "talk", talking, np.ones(100)),
             _clip(tmp_path, "mixed", mixed_open, mixed_vad)]
    (tmp_path / "manifest.json").write_text(json.dumps({"fps": 25, "clips": clips}))
    c = choose_idle(tmp_path, seconds=6.0, fps=25)
    assert c.clip == "mixed"
    assert c.start >= 60 and c.stop - c.start >= 25


def test_sample_truth_only_for_samples(tmp_path) -> None:  # noqa: ANN001
    from training.evaluate_head import _sample_truth

    (tmp_path / "sample.mp4").write_bytes(b"")
    np.savez(tmp_path / "truth.npz", mouth_opening=np.arange(10.0))
    assert _sample_truth(tmp_path / "sample.mp4", 8).tolist() == list(range(8))
    assert _sample_truth(tmp_path / "sample.mp4", 12) is None  # not the same footage
    assert _sample_truth(tmp_path / "other.mp4", 8) is None
