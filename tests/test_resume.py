"""A run killed with SIGKILL resumes without redoing finished work."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli


def test_sigkill_midway_then_resume(grid_train: Path, tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for f in sorted(grid_train.glob("*.mpg"))[:8]:
        shutil.copy(f, clips / f.name)
    work = tmp_path / "work"
    env = dict(os.environ, TWINCAST_PROGRESS="0")
    # One worker keeps the run slow enough to be killed in the middle.
    proc = subprocess.Popen([sys.executable, "-m", "twincast.cli", "enrol", str(clips),
                             "--workdir", str(work), "--workers", "1", "--preset", "ci",
                             "--features-only"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    seg_dir = work / "features" / "clips"
    deadline = time.monotonic() + 180
    done: list[Path] = []
    while time.monotonic() < deadline:
        done = list(seg_dir.glob("*/video/seg-*.npz"))
        if len(done) >= 3:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list(seg_dir.glob("*/video/seg-*.npz"))
    assert 3 <= len(done) < 8, "kill should land midway"
    assert not (work / "features" / "report.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in done}

    result = run_cli("enrol", clips, "--workdir", work, "--preset", "ci", "--features-only")
    assert result.returncode == 0, result.stderr
    # Finished segments were reused as they were, not recomputed.
    for p, stamp in stamps.items():
        assert p.stat().st_mtime_ns == stamp, p
    m = re.search(r"(\d+) units to compute, (\d+) reused from the cache", result.stderr)
    assert m, result.stderr
    computed, reused = int(m.group(1)), int(m.group(2))
    assert reused >= len(done) and computed > 0  # resumed: some work left, none redone
    assert len(list(seg_dir.glob("*/frames.npz"))) == 8
    assert (work / "features" / "report.json").exists()
    assert not list((work / "features").rglob(".*.tmp*"))  # the killed run's scraps are gone
