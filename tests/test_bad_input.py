"""Every kind of bad footage gets one line naming the file, exit code 2, no traceback, and
leaves the workdir fit for a later good run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_audio, read_frames, run_cli, write_av


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, sample) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    frames = read_frames(sample.video)
    audio = read_audio(sample.video)
    rng = np.random.default_rng(0)
    files: dict[str, Path] = {}
    files["zero_byte"] = d / "empty.mp4"
    files["zero_byte"].write_bytes(b"")
    data = sample.video.read_bytes()
    files["truncated"] = d / "truncated.mp4"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"] = d / "notes.mp4"
    files["text"].write_text("these are my notes, not a video\n" * 20)
    files["audio_only"] = write_av(d / "voice.mp4", None, audio=audio)
    files["no_audio"] = write_av(d / "silent.mp4", frames[:75])
    blank = [np.full((256, 256, 3), 90 + (i % 25), np.uint8) for i in range(75)]
    noise = (rng.standard_normal(16000 * 3) * 0.05).astype(np.float32)
    files["no_face"] = write_av(d / "wall.mp4", blank, audio=noise)
    twins = [np.concatenate([f, f[:, ::-1]], axis=1) for f in frames[:75]]
    files["two_faces"] = write_av(d / "twins.mp4", twins, audio=audio[: 16000 * 3])
    files["one_second"] = write_av(d / "short.mp4", frames[:25], audio=audio[:16000])
    files["missing"] = d / "does-not-exist.mp4"
    return files


EXPECTED = {
    "zero_byte": "empty",
    "truncated": "cannot be read as video",
    "text": "cannot be read as video",
    "audio_only": "no video track",
    "no_audio": "no audio track",
    "no_face": "no face found",
    "two_faces": "two or more faces",
    "one_second": "only 1.0 s long",
    "missing": "no such file",
}


def _assert_one_line_error(proc, path: Path, words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("twincast: error:")]
    assert len(errors) == 1, proc.stderr
    assert str(path) in errors[0] and words in errors[0], errors[0]


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_footage(case: str, bad: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = run_cli("enrol", bad[case], "--workdir", work)
    _assert_one_line_error(proc, bad[case], EXPECTED[case])
    # Nothing half-written: no report or manifest claims a finished enrolment.
    assert not (work / "features" / "report.json").exists()
    assert not list(work.rglob("*.tmp*"))


def test_unwritable_workdir(sample, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    work = blocker / "work"  # a path under a regular file can never be created
    proc = run_cli("enrol", sample.video, "--workdir", work)
    _assert_one_line_error(proc, work, "cannot write there")


def test_bad_runs_do_not_poison_a_later_good_run(bad: dict[str, Path], sample,
                                                 tmp_path: Path) -> None:
    work = tmp_path / "work"
    for case in ("truncated", "no_face", "two_faces"):
        assert run_cli("enrol", bad[case], "--workdir", work).returncode == 2
    clip = tmp_path / "good.mp4"
    shutil.copy(sample.video, clip)
    proc = run_cli("enrol", clip, "--transcript", sample.transcript, "--workdir", work,
                   "--preset", "ci", "--features-only")
    assert proc.returncode == 0, proc.stderr
    report = (work / "features" / "report.json").read_text()
    assert '"clips": 1' in report


def test_folder_with_a_bad_clip_names_that_clip(bad: dict[str, Path], sample,
                                                tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(sample.video, folder / "good.mp4")
    shutil.copy(bad["no_audio"], folder / "mute.mp4")
    proc = run_cli("enrol", folder, "--workdir", tmp_path / "w")
    _assert_one_line_error(proc, folder / "mute.mp4", "no audio track")


def test_strict_turns_warnings_into_errors_and_leaves_no_trainable_cache(sample,
                                                                       tmp_path: Path) -> None:
    work = tmp_path / "w"
    # The 7-second sample has far less than 3 minutes of speech: a warning, fatal if strict.
    proc = run_cli("enrol", sample.video, "--transcript", sample.transcript, "--workdir", work,
                   "--preset", "ci", "--strict", "--features-only")
    assert proc.returncode == 2
    assert "min of usable speech" in proc.stderr and "report.txt" in proc.stderr
    assert (work / "features" / "report.json").exists()  # the report says why
    assert not (work / "features" / "manifest.json").exists()
    proc = run_cli("train", "head", work, "--preset", "ci")
    assert proc.returncode == 2 and "run 'twincast enrol' first" in proc.stderr
