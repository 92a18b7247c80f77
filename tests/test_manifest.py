"""The bundle contract: the typed manifest reads every schema-1 manifest written so far
(``tests/data/manifest_v1.json`` was written by the exporter before the types existed),
writes the same JSON back, and refuses what it cannot read with one line."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avatar.audio import FACE_MEL, VOICE_MEL, MelSpec, log_mel
from avatar.bundle import read_manifest, sha256_file
from avatar.errors import TwincastError
from avatar.manifest import READS, Manifest, ManifestError

OLD = json.loads((Path(__file__).parent / "data" / "manifest_v1.json").read_text())


def test_a_schema_1_manifest_reads_and_writes_back_the_same():
    m = Manifest.from_dict(copy.deepcopy(OLD))
    assert m.name == "presenter" and m.fps == 25 and m.frame_size == (256, 256)
    assert m.head is not None and m.head.mel.spec == FACE_MEL
    assert m.voice is not None and m.voice.mel.spec == VOICE_MEL
    assert m.voice.vocoder.kind == "griffin-lim"
    assert m.to_dict() == OLD


def test_vocos_and_voice_only_sections_round_trip():
    d = copy.deepcopy(OLD)
    d["voice"]["vocoder"] = {"kind": "vocos", "file": "vocoder.safetensors",
                             "config": {"dim": 8}, "train_seconds": 1.5, "steps": 3,
                             "adapt_seconds": 0.5, "adapt_steps": 2}
    d["voice"]["weights"] = "float16"
    assert Manifest.from_dict(copy.deepcopy(d)).to_dict() == d
    voice_only = {k: d[k] for k in ("schema", "kind", "name", "created", "tool", "voice",
                                    "files")}
    m = Manifest.from_dict(copy.deepcopy(voice_only))
    assert m.head is None and m.idle is None and m.to_dict() == voice_only


def test_the_motion_section_round_trips_and_is_optional():
    d = copy.deepcopy(OLD)
    d["motion"] = {"frames": 64, "chunk": 32, "files": ["motion/0000.mp4", "motion/0001.mp4"],
                   "index": "motion.npz", "seconds": {"idle": 0.0, "listening": 1.0,
                                                      "speaking": 1.6},
                   "short": ["speaking", "silent"], "bytes": 1234, "cues": "nods.npz",
                   "cue_report": {"nods": 30, "used": True}}
    m = Manifest.from_dict(copy.deepcopy(d))
    assert m.motion is not None and m.motion.files[1] == "motion/0001.mp4"
    assert m.motion.cues == "nods.npz"
    assert m.to_dict() == d
    assert Manifest.from_dict(copy.deepcopy(OLD)).motion is None  # older bundles
    # Banks made before nod cues: none.
    older = copy.deepcopy(d)
    del older["motion"]["cues"], older["motion"]["cue_report"]
    assert Manifest.from_dict(older).motion.cues is None
    d["motion"]["files"] = []
    with pytest.raises(ManifestError, match="motion.files"):
        Manifest.from_dict(d)


def test_an_unknown_schema_names_what_it_found_and_what_it_reads():
    with pytest.raises(ManifestError, match=r"schema version 7, but this twincast reads "
                       rf"version {READS[0]}"):
        Manifest.from_dict({**OLD, "schema": 7})


@pytest.mark.parametrize("change, message", [
    (lambda d: d["head"].pop("config"), "lacks head.config"),
    (lambda d: d["head"]["mel"].update(mean="loud"), "head.mel.mean should be a float"),
    (lambda d: d["voice"]["vocoder"].update(kind="wavenet"), "unknown vocoder 'wavenet'"),
    (lambda d: d["voice"]["mel"].update(mean=[0.0]), "1 means and 80 deviations"),
    (lambda d: d.update(frame_size=[256]), "frame_size should be"),
    (lambda d: d.pop("fps"), "lacks fps, frame_size or crop_size"),
])
def test_a_damaged_manifest_is_one_clear_error(change, message):
    d = copy.deepcopy(OLD)
    change(d)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(d)


def test_a_damaged_bundle_names_its_manifest(tmp_path: Path):
    d = copy.deepcopy(OLD)
    d["voice"].pop("symbols")
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(TwincastError) as e:
        read_manifest(tmp_path, verify=False)
    assert str(e.value).startswith(str(tmp_path / "manifest.json"))
    assert "lacks voice.symbols" in str(e.value)


def test_the_face_mel_is_the_one_log_mel_computes():
    x = np.random.default_rng(0).standard_normal(FACE_MEL.rate // 2).astype(np.float32)
    assert np.array_equal(FACE_MEL(x), log_mel(x))
    assert VOICE_MEL.to_dict() == {"rate": 22050, "n_fft": 1024, "hop": 256, "n_mels": 80,
                                   "f_max": 8000.0}
    assert MelSpec(16000, 512, 160, win=400).to_dict()["win"] == 400


@pytest.mark.slow
def test_a_bundle_with_the_old_manifest_loads_speaks_and_renders(bundle: Path,
                                                                  tmp_path: Path):
    """The weights of today's ci bundle under the manifest written before the types: the
    loaders read it as they read a new one."""
    from avatar.avatar import Avatar
    from avatar.voice import Voice

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    d = copy.deepcopy(OLD)
    d["files"] = {name: sha256_file(old / name) for name in d["files"]}
    (old / "manifest.json").write_text(json.dumps(d, indent=2))
    avatar = Avatar.load(old)
    frames = avatar.render(avatar.silent_requests(2))
    assert len(frames) == 2 and frames[0].shape == (256, 256, 3)
    audio = Voice.load(old).say("Hello.")
    assert audio.size > 0 and np.abs(audio).max() > 0.01


def test_file_names_stay_inside_the_bundle_and_have_digests(tmp_path):
    """A manifest may not send the loader outside its folder, nor have it open a file whose
    digest it does not give."""
    import json

    from avatar.bundle import read_manifest
    from avatar.errors import TwincastError

    for bad in ("../../etc/passwd", "/etc/passwd", "a\\..\\b", "c:x"):
        d = copy.deepcopy(OLD)
        d["head"]["file"] = bad
        with pytest.raises(ManifestError, match="not a plain path inside the bundle"):
            Manifest.from_dict(d)
    d = copy.deepcopy(OLD)
    d["files"] = {**d["files"], "../x": "0" * 64}
    with pytest.raises(ManifestError, match="'../x'"):
        Manifest.from_dict(d)
    # Named by a section but missing from the digests: refused before anything is read.
    d = copy.deepcopy(OLD)
    d["head"]["file"] = "other.safetensors"
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(TwincastError, match="other.safetensors.*has no digest"):
        read_manifest(bundle)


def test_bundle_videos_are_read_as_mp4_only(tmp_path):
    """A file named .mp4 that is something else is not read as whatever FFmpeg guesses
    (a crafted playlist could name other files or URLs): the bundle's videos are opened
    with the MP4 demuxer only. A raw y4m stream stands in for the impostor: guessed, it
    decodes."""
    from avatar.decode import DecodeError, rgb_frames

    fake = tmp_path / "idle.mp4"
    frame = b"FRAME\n" + bytes(16 * 16) + bytes([128]) * (2 * 8 * 8)
    fake.write_bytes(b"YUV4MPEG2 W16 H16 F25:1 Ip A1:1 C420jpeg\n" + frame * 3)
    assert len(list(rgb_frames(fake))) == 3  # what a guess would have read
    with pytest.raises(DecodeError):
        list(rgb_frames(fake, container="mp4"))
