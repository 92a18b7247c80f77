"""Nod cues: nods found in footage, a speech-to-nod model learned only where the speech
foretells them, and a walk that lands the person's own nods where the speech wants them
(offline and in a live session)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from avatar.cues import BANDS, NodCues, bank_nods, nod_peaks
from avatar.motion import SPEAKING, MotionConfig, MotionGraph, Walker
from tests.test_motion import _index
from training.motion.cues import fit_nod_cues

FPS = 25


def _dip(n: int, at: list[int], depth: float = 0.1, length: int = 10) -> np.ndarray:
    """A head height trace (inter-ocular distances) dipping at each frame of ``at``."""
    y = np.zeros(n)
    t = np.arange(n)
    for a in at:
        u = (t - a) / length
        inside = (u >= 0) & (u < 1)
        y[inside] = np.maximum(y[inside], depth * np.sin(np.pi * u[inside]) ** 2)
    return y


def test_nods_are_found_where_the_head_dips_and_never_across_a_seam() -> None:
    n = 300
    y = _dip(n, [40, 120, 200])
    lm = np.zeros((n, 8, 2))
    lm[:, :, 1] = y[:, None]
    assert list(nod_peaks(lm, FPS)) == [45, 125, 205]  # the lowest point, mid-nod
    index = {"state": np.full(n, SPEAKING), "iod": np.full(n, 50.0),
             "landmarks": (lm * 50).astype(np.float32), "cont": np.ones(n, bool)}
    assert list(np.flatnonzero(bank_nods(index, FPS))) == [45, 125, 205]
    index["cont"][124] = False   # a seam mid-nod: each side alone is no nod
    index["cont"][n - 1] = False
    found = np.flatnonzero(bank_nods(index, FPS))
    assert 45 in found and 205 in found and not any(120 <= f <= 130 for f in found)


def _cued_bank(n: int, seed: int, cued: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Speech rows with a burst in the low bands every second or so, and a bank whose head
    dips five frames after each burst (``cued``) or at unrelated times."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(-4, 1, (n, BANDS)).astype(np.float32)
    bursts = np.cumsum(rng.integers(20, 40, n // 20))
    bursts = bursts[bursts < n - 20]
    rows[bursts, :5] += 4
    dips = bursts if cued else np.sort(rng.choice(np.arange(10, n - 20), len(bursts), False))
    y = _dip(n, list(dips))
    lm = np.zeros((n, 8, 2), np.float32)
    lm[:, :, 1] = 50 * (y[:, None] + rng.normal(0, 0.002, (n, 8)))
    index = {"state": np.full(n, SPEAKING), "iod": np.full(n, 50.0), "landmarks": lm,
             "cont": np.r_[np.ones(n - 1, bool), False], "clip": np.zeros(n, int),
             "source_frame": np.arange(n)}
    return rows, index


def test_the_nod_model_is_learned_only_where_speech_foretells_nods() -> None:
    rows, index = _cued_bank(3000, 0, cued=True)
    cues, report = fit_nod_cues([rows], index, FPS)
    assert cues is not None and report["used"]
    assert report["recall"] > 0.8 and report["precision"] > 0.8
    # It calls nods where the bursts are, in speech it has not seen.
    fresh, fresh_index = _cued_bank(1000, 1, cued=True)
    called = np.flatnonzero(cues.peaks(cues.probability(fresh), FPS))
    real = np.flatnonzero(bank_nods(fresh_index, FPS))
    found = np.mean([np.any(np.abs(called - r) <= 2) for r in real])
    assert found > 0.8
    # Nods unrelated to the speech: no model (the walk ignores nods), and why.
    rows, index = _cued_bank(3000, 0, cued=False)
    cues, report = fit_nod_cues([rows], index, FPS)
    assert cues is None and not report["used"] and "F1" in report["why"]


def test_saved_cues_load_back(tmp_path: Path) -> None:
    rows, index = _cued_bank(2000, 2, cued=True)
    cues, _ = fit_nod_cues([rows], index, FPS)
    assert cues is not None
    cues.save(tmp_path / "nods.npz")
    back = NodCues.load(tmp_path / "nods.npz")
    assert np.allclose(back.probability(rows), cues.probability(rows), atol=1e-6)
    assert back.threshold == cues.threshold


def _nodding_graph() -> MotionGraph:
    """The synthetic bank, its speaking footage nodding about every second."""
    index = _index(runs=12, length=400, seed=4)
    n = len(index["state"])
    rng = np.random.default_rng(5)
    at = [int(a) for a in np.cumsum(rng.integers(20, 32, n // 20)) if a < n - 12
          and index["state"][a] == SPEAKING and index["state"][min(n - 1, a + 12)] == SPEAKING]
    index["landmarks"] = index["landmarks"] + \
        (60 * _dip(n, at))[:, None, None] * np.array([0, 1], np.float32)
    return MotionGraph(index, FPS)


def _on_time(g: MotionGraph, entries: list, wanted: np.ndarray) -> float:
    """The share of wanted nods with one of the footage's nods shown within two frames."""
    hits = []
    for k in np.flatnonzero(wanted):
        near = [f for e in entries[max(0, k - 2): k + 3] for f in e.frames()]
        hits.append(bool(g.nod[near].any()))
    return float(np.mean(hits))


def test_the_walk_lands_the_persons_nods_where_the_speech_wants_them() -> None:
    from avatar.motion import plan_walk

    g = _nodding_graph()
    assert g.nod.sum() > 60
    n = 1000
    active = np.zeros(n, bool)
    for a in range(25, n - 100, 250):
        active[a: a + 200] = True            # 8 s utterances, 2 s pauses
    wanted = np.zeros(n, bool)
    rng = np.random.default_rng(6)
    for a in range(25, n - 100, 250):
        for t in a + np.cumsum(rng.integers(25, 50, 6)):
            if t < a + 190:
                wanted[t] = True
    db = np.where(active, -20.0, -80.0)
    blind = plan_walk(Walker(g, MotionConfig(), seed=1), active, db)
    led = plan_walk(Walker(g, MotionConfig(), seed=1), active, db, nods=wanted)
    assert _on_time(g, led, wanted) >= 0.8
    assert _on_time(g, led, wanted) > _on_time(g, blind, wanted) + 0.3
    # Still forwards everywhere, and speaking footage while speaking.
    assert all(e.a >= 0 for e in led)
    plain = [k for k in range(n) if active[k] and led[k].b < 0 and k > 40]
    assert np.mean([g.state[led[k].a] == SPEAKING for k in plain]) > 0.9


def test_a_live_session_nods_where_its_speech_wants(bundle: Path) -> None:
    """A real avatar and scheduler with a cue model that calls a nod on every loud frame
    peak: the session computes the calls as the voice's audio arrives and the walk brings
    the footage's nods there."""
    from avatar.avatar import Avatar
    from streaming.scheduler import Lane, Scheduler, SchedulerConfig
    from streaming.session import Session, SessionConfig
    from tests.test_session import Chunk, FakeVoice

    class PulseVoice(FakeVoice):
        """A tone swelling and fading over each word: a loudness peak mid-word."""

        def speak(self, text: str, pace: float = 1.0):  # noqa: ANN201
            t = np.arange(int(0.4 * 22050)) / 22050
            for _ in text.split():
                tone = np.sin(2 * np.pi * 200 * t) * np.sin(np.pi * t / 0.4) ** 2
                yield Chunk((0.3 * tone).astype(np.float32), 22050)

    av = Avatar.load(bundle)
    g = av.bank.graph
    # The bank is short: call every fifth speaking frame a nod, so there are some to use.
    g.nod = (g.state == SPEAKING) & (np.arange(g.n) % 5 == 0)
    width = 12 * BANDS
    w1 = np.zeros((width, 1), np.float32)
    w1[6 * BANDS: 7 * BANDS] = 1.0 / BANDS   # the frame's own loudness (log-mel, shifted
    # above zero by the bias)
    av.cues = NodCues(w1=w1, b1=np.full(1, 20.0, np.float32), w2=np.full((1, 1), 0.2, np.float32),
                      b2=np.full(1, -3.0, np.float32), mean=np.zeros(width, np.float32),
                      std=np.ones(width, np.float32), threshold=0.0)
    sch = Scheduler([Lane("cpu0", {"a": av})], SchedulerConfig(max_batch=8))
    sch.start()

    async def run() -> tuple[list, Session, np.ndarray | None, int]:
        s = Session("a", av, PulseVoice(), sch, SessionConfig())
        s.start()
        s.clock.start()
        said = None
        shown = []
        for k in range(110):
            await s.clock.wait_until(k / 25)
            if k == 5:
                s.say("one two three four five six seven eight nine ten eleven twelve")
            if s.queue and s.queue[0].nods is not None:
                said = s.queue[0]
            s.video_frame(k)
            shown.append(s.motion.entries[k])
        await s.close()
        return shown, s, None if said is None else said.nods, \
            -1 if said is None else said.start_frame

    try:
        shown, s, nods, start = asyncio.run(run())
    finally:
        sch.stop()
    assert nods is not None and nods.any() and start > 0
    wanted = np.zeros(len(shown), bool)
    at = start + np.flatnonzero(nods)
    wanted[at[at < len(shown)]] = True
    assert wanted.sum() >= 3
    assert _on_time(g, shown, wanted) >= 0.6


def test_a_damaged_cue_file_is_named(bundle: Path, tmp_path: Path) -> None:
    import json
    import shutil

    import pytest

    from avatar.avatar import Avatar
    from avatar.errors import TwincastError

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    from avatar.bundle import sha256_file

    (copy / "nods.npz").write_bytes(b"not an npz")
    m["motion"]["cues"] = "nods.npz"
    m["files"]["nods.npz"] = sha256_file(copy / "nods.npz")
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TwincastError, match="nods.npz.*cannot be read"):
        Avatar.load(copy)
