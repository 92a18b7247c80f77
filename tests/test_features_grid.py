"""The enrolment cache contract (DESIGN.md §2) on real GRID footage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import GRID, run_cli

CLIPS = ("bbaf2n", "bbaf3s", "bbaf4p")


@pytest.fixture(scope="module")
def enrolled(grid_train: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("grid")
    clips = d / "clips"
    clips.mkdir()
    for c in CLIPS:
        shutil.copy(grid_train / f"{c}.mpg", clips / f"{c}.mpg")
    work = d / "work"
    proc = run_cli("enrol", clips, "--transcript", GRID / "transcripts.tsv", "--workdir", work,
                   "--preset", "ci", "--features-only")
    assert proc.returncode == 0, proc.stderr
    assert "footage" in proc.stdout  # the readable summary
    return work


def test_per_frame_arrays(enrolled: Path) -> None:
    feats = enrolled / "features"
    manifest = json.loads((feats / "manifest.json").read_text())
    assert [c["id"] for c in manifest["clips"]] == list(CLIPS)
    for c in manifest["clips"]:
        meta = json.loads((feats / c["dir"] / "meta.json").read_text())
        t = meta["n_frames"]
        assert t == 74 or t == 75  # 3.0 s at 25 fps, as the container's duration rounds
        with np.load(feats / c["dir"] / "frames.npz") as z:
            assert z["landmarks"].shape == (t, 478, 3)
            assert z["landmarks_raw"].shape == (t, 478, 3)
            assert z["pose"].shape == (t, 33, 4)
            assert z["crop_affine"].shape == (t, 2, 3)
            assert z["head_rotation"].shape == (t, 3, 3)
            assert (z["n_faces"] == 1).mean() >= 0.99
            # The face sits mid-frame in GRID; landmarks are in source pixels.
            nose = z["landmarks"][:, 1, :2]
            assert 100 < nose[:, 0].mean() < 260 and 60 < nose[:, 1].mean() < 230
            # Rotation matrices are orthonormal.
            r = z["head_rotation"][0]
            np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-4)
        with np.load(feats / c["dir"] / "audio.npz") as z:
            n = len(z["vad"])
            assert abs(n - 300) <= 2  # 10 ms hop over 3 s
            assert z["mel16"].shape == (80, n)
            assert z["mel22"].shape[0] == 80
            assert 0.2 < z["vad"].mean() < 0.9
            voiced = z["f0_hz"][z["f0_hz"] > 0]
            assert 70 < np.median(voiced) < 200  # a man's voice
        crops = meta["crops"]
        from tests.conftest import read_frames

        frames = read_frames(feats / c["dir"] / crops[0]["file"])
        assert len(frames) == t and frames[0].shape == (256, 256, 3)
    assert (feats / "mask.png").exists()


def test_utterances_have_aligned_text(enrolled: Path) -> None:
    lines = (enrolled / "features" / "utterances.jsonl").read_text().splitlines()
    utts = [json.loads(x) for x in lines]
    by_clip = {}
    for u in utts:
        assert u["end"] - u["start"] <= 12.5
        by_clip.setdefault(u["clip"], []).append(u["text"])
    assert " ".join(by_clip["bbaf2n"]) == "bin blue at f two now"


def test_alignment_matches_grid_timings(enrolled: Path) -> None:
    from bench.features import bench_align

    res = bench_align(enrolled / "features", GRID / "align")
    assert res["boundaries"] >= 30
    assert res["median_ms"] <= 60


def test_report_and_gates(enrolled: Path) -> None:
    report = json.loads((enrolled / "features" / "report.json").read_text())
    for key in ("minutes_footage", "minutes_usable", "one_face_share", "face_width_px",
                "blur_laplacian_var", "brightness_mean", "audio_level_dbfs", "clipping_share",
                "snr_db", "minutes_speech", "landmark_jitter_px", "gates"):
        assert key in report
    assert report["one_face_share"] >= 0.99
    gates = {g["name"]: g for g in report["gates"]}
    # 3 clips hold ~4 s of speech: the speech gate must say so.
    assert not gates["speech"]["passed"]
    assert "min of usable speech" in gates["speech"]["message"]
    j = report["landmark_jitter_px"]
    assert j["smoothed"] < j["raw"]


@pytest.mark.slow
def test_the_features_stage_on_a_ray_cluster_writes_the_local_cache(enrolled: Path,
                                                                     tmp_path: Path) -> None:
    """The same clips through the features stage as Ray tasks on a head and two worker
    nodes (``enrol --ray``): the local run's cache, byte for byte (each unit starts its
    trackers and aligner afresh, so nothing depends on which worker did what)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        proc = run_cli("enrol", enrolled.parent / "clips", "--transcript",
                       GRID / "transcripts.tsv", "--workdir", tmp_path, "--preset", "ci",
                       "--features-only", "--ray", cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    local, remote = enrolled / "features", tmp_path / "features"
    files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file())
    differ = [str(f) for f in files if (local / f).read_bytes() != (remote / f).read_bytes()]
    assert differ == [], differ


def test_rerun_reuses_everything_and_transcript_change_redoes_text(enrolled: Path,
                                                                   tmp_path: Path) -> None:
    clips = enrolled.parent / "clips"
    proc = run_cli("enrol", clips, "--transcript", GRID / "transcripts.tsv", "--workdir",
                   enrolled, "--preset", "ci", "--features-only")
    assert proc.returncode == 0
    assert "0 units to compute" in proc.stderr
    frames = enrolled / "features" / "clips" / "bbaf2n" / "frames.npz"
    tsv = tmp_path / "t.tsv"
    tsv.write_text("bbaf2n\tbin blue at f two now\nbbaf3s\tbin blue at f three soon\n")
    before = (enrolled / "features" / "clips" / "bbaf2n" / "video" / "seg-0000.npz").stat()
    proc = run_cli("enrol", clips, "--transcript", tsv, "--workdir", enrolled, "--preset", "ci",
                   "--features-only")
    assert proc.returncode == 0, proc.stderr
    after = (enrolled / "features" / "clips" / "bbaf2n" / "video" / "seg-0000.npz").stat()
    assert before.st_mtime_ns == after.st_mtime_ns
    assert frames.exists()
    utts = [json.loads(x) for x in
            (enrolled / "features" / "utterances.jsonl").read_text().splitlines()]
    assert all(u["text"] == "" or u["text"] is None for u in utts if u["clip"] == "bbaf4p")
