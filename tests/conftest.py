"""Shared fixtures: real recordings from ../shared/data and tiny synthetic footage."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
GRID = DATA / "grid_s1"
LJ = DATA / "ljspeech"

os.environ.setdefault("TWINCAST_PROGRESS", "0")
# Renders sign their files with an operator key made on first use: the tests' own, not
# one in the home folder of whoever runs them.
os.environ.setdefault("TWINCAST_KEYS", tempfile.mkdtemp(prefix="twincast-keys-"))


def run_cli(*args: object, cwd: Path | None = None, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    """Run ``twincast`` as a user would, in a fresh interpreter."""
    env = dict(os.environ, TWINCAST_PROGRESS="0", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "twincast.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=env,
                          timeout=timeout)


def write_av(path: Path, frames: list[np.ndarray] | None, fps: int = 25,
             audio: np.ndarray | None = None, rate: int = 16000, fmt: str = "mp4",
             vcodec: str = "libx264", acodec: str = "aac") -> Path:
    """Write a file with a video track and/or an audio track (either may be None), in any
    container and codecs PyAV can encode."""
    with av.open(str(path), "w", format=fmt) as out:
        vs = as_ = None
        if frames is not None:
            vs = out.add_stream(vcodec, rate=fps)
            vs.height, vs.width = frames[0].shape[:2]
            vs.pix_fmt = "yuvj420p" if vcodec == "mjpeg" else "yuv420p"
        if audio is not None:
            as_ = out.add_stream(acodec, rate=rate)
            as_.layout = "mono"
        if vs is not None:
            for f in frames:
                for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(p)
            for p in vs.encode():
                out.mux(p)
        if as_ is not None:
            sample_fmt = as_.format.name
            data = audio.reshape(1, -1)
            data = (np.clip(data, -1, 1) * 32767).astype(np.int16) if sample_fmt == "s16" \
                else data.astype(np.float32)
            fr = av.AudioFrame.from_ndarray(data, format=sample_fmt, layout="mono")
            fr.sample_rate = rate
            fr.pts = 0
            for p in as_.encode(fr):
                out.mux(p)
            for p in as_.encode():
                out.mux(p)
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def read_audio(path: Path, rate: int = 16000) -> np.ndarray:
    from training.ingest import decode_audio

    return decode_audio(path, [rate])[rate]


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory):
    """A 7-second synthetic presenter at 256x256 (files: video, transcript, truth, words)."""
    from training.sample.presenter import SampleConfig, write_sample

    out = tmp_path_factory.mktemp("sample")
    return write_sample(out, SampleConfig(minutes=0.12, width=256, height=256, seed=3))


@pytest.fixture(scope="session")
def grid_train() -> Path:
    if not (GRID / "train").is_dir():
        pytest.skip("../shared/data/grid_s1 is not present")
    return GRID / "train"


def bundle_copy(bundle: Path, tmp_path: Path, drop: str) -> Path:
    """A copy of the enrolled ``bundle`` in a work folder of its own that shares the
    enrolment cache, with its manifest's ``head.<drop>`` removed (as bundles made before
    that part existed): for ``twincast train ...`` to add it back. ``drop`` may name a key
    inside a section (``refine.sharpen``). Returns the copy."""
    import json
    import shutil

    work = tmp_path / "w"
    (work / "avatars").mkdir(parents=True)
    old = work / "avatars" / bundle.name
    shutil.copytree(bundle, old)
    (work / "features").symlink_to(bundle.parent.parent / "features")
    manifest = json.loads((old / "manifest.json").read_text())
    *path, key = drop.split(".")
    section = manifest["head"]
    for name in path:
        section = section[name]
    gone = section.pop(key)
    if path:  # a key inside a section: its files stay
        gone = None
    if isinstance(gone, dict):  # a section naming its own file
        gone = gone.get("file")
    if isinstance(gone, str) and gone in manifest["files"]:  # a file of its own
        del manifest["files"][gone]
        (old / gone).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    return old


def bundle_without(bundle: Path, tmp_path: Path, drop: str, attr: str) -> Path:
    """``bundle_copy`` that also checks the copy loads without that part (``Avatar.<attr>``
    None) and still renders a frame."""
    from avatar.avatar import Avatar

    old = bundle_copy(bundle, tmp_path, drop)
    avatar = Avatar.load(old)
    assert getattr(avatar, attr) is None
    assert len(avatar.render(avatar.silent_requests(1))) == 1
    return old


def assert_only_box_changed(a: list, b: list, box: tuple[int, int, int, int]) -> None:
    """Two renders of the same requests differ somewhere, and in the first frame only
    inside ``box`` (x0, y0, x1, y1): the painted region."""
    import numpy as np

    diff = [np.abs(x.astype(int) - y.astype(int)) for x, y in zip(a, b, strict=True)]
    assert any(d.max() > 0 for d in diff)
    x0, y0, x1, y1 = box
    outside = diff[0].copy()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() == 0


@pytest.fixture(scope="session")
def bundle(sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample enrolled with the ci preset: features, head, voice, bundle."""
    work = tmp_path_factory.mktemp("enrolled")
    proc = run_cli("enrol", sample.video, "--transcript", sample.transcript, "--workdir", work,
                   "--preset", "ci", "--name", "presenter")
    assert proc.returncode == 0, proc.stderr
    assert (work / "head" / "curves.png").exists()
    return work / "avatars" / "presenter"
