"""Consent at enrolment: the statement, the code, the voice and the face checked against
the footage (``training.consent``), and the server's refusal of unconsented avatars."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from avatar import atomic
from avatar.errors import TwincastError
from tests.conftest import LJ, read_audio, read_frames, run_cli, write_av
from training import consent as C

CODE = "0-0-6-3"
"""A fixed code (the tests must not depend on which code a draw gives)."""


def _challenge(work: Path, code: str = CODE, name: str = "Eileen Collins",
               minutes: float = 30) -> C.Challenge:
    now = time.time()
    ch = C.Challenge(name=name, code=code, issued=now, expires=now + minutes * 60)
    atomic.write_json(C.challenge_path(work), asdict(ch))
    return ch


def _reading(out: Path, ch: C.Challenge, name: str) -> Path:
    """The sample presenter reading ``ch``'s statement on camera."""
    from training.sample.presenter import SampleConfig, write_sample

    cfg = SampleConfig(width=256, height=256, seed=3, read=(ch.spoken,), name=name)
    return write_sample(out, cfg).video


@pytest.fixture(scope="module")
def footage(sample) -> C.Footage:
    return C.Footage.read([sample.video], C.ConsentConfig())


@pytest.fixture(scope="module")
def reading(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("consent")
    return _reading(out, C.Challenge("Eileen Collins", CODE, 0, 0), "consent")


def test_the_person_reading_their_code_is_accepted(tmp_path: Path, footage, reading):
    _challenge(tmp_path)
    result = C.check(reading, tmp_path, footage)
    assert result.accepted, result.reasons
    assert result.code_heard == CODE
    assert result.voice_similarity >= C.ConsentConfig().voice_min
    assert result.face_distance <= C.ConsentConfig().face_max
    section = result.manifest(C.ConsentConfig())
    assert section["status"] == "verified" and section["code"] == CODE
    assert section["clip_sha256"] == C.hashlib.sha256(reading.read_bytes()).hexdigest()


def test_a_wrong_code_or_another_enrolments_statement_is_refused(tmp_path: Path, footage,
                                                                   reading):
    # The same recording against a fresh challenge: its code is not the one read.
    _challenge(tmp_path, code="3-9-1-4")
    result = C.check(reading, tmp_path, footage)
    assert not result.accepted
    assert any("code heard" in r and "3-9-1-4" in r for r in result.reasons)
    # Another enrolment's statement (another name and code), read by the same presenter.
    _challenge(tmp_path, code="7-2-5-1", name="Ada Lovelace")
    result = C.check(reading, tmp_path, footage)
    assert not result.accepted and result.code_heard != "7-2-5-1"


def test_another_speaker_is_refused(tmp_path: Path, footage, reading):
    """The sample's face with LJ Speech's voice (a real woman reading) is not the footage."""
    if not LJ.is_dir():
        pytest.skip("../shared/data/ljspeech is not present")
    from avatar.audio import load_audio

    voice = np.concatenate([load_audio(f, 16000) for f in sorted((LJ / "train").glob(
        "*.flac"))[:2]])
    clip = write_av(tmp_path / "dub.mp4", read_frames(reading)[:150], audio=voice)
    _challenge(tmp_path)
    result = C.check(clip, tmp_path, footage)
    assert not result.accepted
    assert any("voice is not the footage's" in r for r in result.reasons), result.reasons


def test_unusable_recordings_are_one_clear_error(tmp_path: Path, footage, reading):
    frames = read_frames(reading)[:50]
    cases = {
        "silent.mp4": (write_av(tmp_path / "silent.mp4", frames,
                                audio=np.zeros(32000, np.float32)), "no speech"),
        "audio.m4a": (write_av(tmp_path / "audio.m4a", None, audio=read_audio(reading),
                               fmt="mp4"), "no video"),
        "noface.mp4": (write_av(tmp_path / "noface.mp4",
                                [np.full((128, 128, 3), 90, np.uint8)] * 50,
                                audio=read_audio(reading)), "no face"),
    }
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    cases["bad.mp4"] = (bad, "cannot be read")
    _challenge(tmp_path)
    for clip, words in cases.values():
        with pytest.raises(TwincastError, match=words):
            C.check(clip, tmp_path, footage)
    with pytest.raises(TwincastError, match="expired"):
        C.check(reading, tmp_path, footage, now=time.time() + 31 * 60)
    with pytest.raises(TwincastError, match="no consent statement was issued"):
        C.check(reading, tmp_path / "elsewhere", footage)


def test_issue_makes_fresh_codes_and_checks_the_name(tmp_path: Path):
    a = C.issue(tmp_path, "  Eileen   Collins ")
    assert a.name == "Eileen Collins" and len(a.code.split("-")) == 4
    assert a.text == f"I, Eileen Collins, agree that twincast may create a digital double " \
                     f"of me. Code {a.code}."
    assert C.load_challenge(tmp_path) == a
    codes = {C.issue(tmp_path, "Eileen Collins").code for _ in range(20)}
    assert len(codes) > 10
    for name in ("", "R2-D2", "x" * 61):
        with pytest.raises(TwincastError, match="--name"):
            C.issue(tmp_path, name)
    C.challenge_path(tmp_path).write_text("{")
    with pytest.raises(TwincastError, match="damaged"):
        C.load_challenge(tmp_path)


def test_the_cli_prints_the_statement_and_enrol_refuses_a_bad_recording(tmp_path: Path,
                                                                        sample, reading):
    work = tmp_path / "work"
    proc = run_cli("consent", "--workdir", work, "--name", "Eileen Collins")
    assert proc.returncode == 0, proc.stderr
    code = C.load_challenge(work).code
    assert f"Code {code}." in proc.stdout and "valid until" in proc.stdout
    silent = write_av(tmp_path / "silent.mp4", read_frames(sample.video)[:50],
                      audio=np.zeros(32000, np.float32))
    proc = run_cli("enrol", sample.video, "--workdir", work, "--preset", "ci",
                   "--consent", silent)
    assert proc.returncode == 2 and "no speech" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (work / "features").exists() and not (work / "avatars").exists()
    # A readable recording of the wrong code: refused with the reasons, and recorded.
    _challenge(work, code="3-9-1-4")
    proc = run_cli("enrol", sample.video, "--workdir", work, "--preset", "ci",
                   "--consent", reading)
    assert proc.returncode == 2 and "consent refused" in proc.stderr, proc.stderr
    assert "is not 3-9-1-4" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert json.loads(C.record_path(work).read_text())["status"] == "refused"
    assert not (work / "features").exists()
    _challenge(work, minutes=-1)
    proc = run_cli("enrol", sample.video, "--workdir", work, "--consent", reading)
    assert proc.returncode == 2 and "expired" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_record_goes_into_the_bundles_manifest(tmp_path: Path):
    from avatar.manifest import Manifest

    bundle = tmp_path / "avatars" / "x"
    assert C.bundle_consent(bundle) is None
    C.write_record(tmp_path, {"status": "refused", "code": CODE})
    assert C.bundle_consent(bundle) is None
    C.write_record(tmp_path, {"status": "verified", "code": CODE})
    section = C.bundle_consent(bundle)
    m = Manifest(name="x", created="", tool="", files={"a": "0"}, consent=section)
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.consented and again.consent["code"] == CODE
    assert not dataclasses.replace(m, consent=None).consented


def test_serve_refuses_an_unconsented_avatar_unless_allowed(tmp_path: Path, bundle: Path):
    from avatar.bundle import read_manifest, write_manifest
    from streaming.app import Server, ServerConfig

    assert not read_manifest(bundle).consented
    with pytest.raises(TwincastError, match="--allow-unconsented"):
        Server({"presenter": bundle}, ServerConfig())
    assert Server({"presenter": bundle}, ServerConfig(allow_unconsented=True)).consent == \
        {"presenter": "unconsented"}
    copy = tmp_path / "presenter"
    shutil.copytree(bundle, copy)
    write_manifest(copy, read_manifest(copy).replace(consent={"status": "verified"}))
    assert Server({"presenter": copy}, ServerConfig()).consent == {"presenter": "verified"}
    proc = run_cli("serve", bundle, "--port", "0")
    assert proc.returncode == 2 and "--allow-unconsented" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
