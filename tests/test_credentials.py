"""Signed Content Credentials (C2PA) in the files `render` writes, read back by `verify`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli

from avatar.credentials import make_operator_key, read_credentials
from avatar.watermark import bundle_mark_id


@pytest.fixture()
def speech(tmp_path: Path) -> Path:
    t = np.arange(int(16000 * 2.0)) / 16000
    tone = 0.2 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    path = tmp_path / "speech.wav"
    sf.write(str(path), tone.astype(np.float32), 16000)
    return path


def test_render_signs_content_credentials_that_say_synthetic(
        bundle: Path, speech: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avatar.bundle import read_manifest

    monkeypatch.setenv("TWINCAST_KEYS", str(tmp_path / "keys"))
    out = tmp_path / "clip.mp4"
    proc = run_cli("render", bundle, "--audio", speech, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "made an operator signing key" in proc.stderr  # the first use makes one
    got = read_credentials(out)
    assert got is not None and got["valid"] and got["synthetic"]
    assert not got["trusted"]  # a private CA: on no trust list
    assert got["avatar"]["avatar"] == "presenter"
    assert got["avatar"]["mark_id"] == bundle_mark_id(read_manifest(bundle).files)
    assert got["generator"].startswith("twincast")

    # Bytes of the picture changed after signing, or the manifest itself damaged: either
    # way the manifest no longer checks out, and verify says so in one line.
    for name, marker, skip, n, flip, why in (("changed", b"mdat", 2000, 16, 0xFF, "mismatch"),
                                             ("damaged", b"c2pa", 300, 40, 0x55, "")):
        data = bytearray(out.read_bytes())
        at = data.find(marker) + skip
        data[at:at + n] = bytes(b ^ flip for b in data[at:at + n])
        copy = tmp_path / f"{name}.mp4"
        copy.write_bytes(bytes(data))
        proc = run_cli("verify", copy)
        assert "Traceback" not in proc.stderr
        assert "c2pa: a manifest is there but does not check out" in proc.stdout
        assert why in proc.stdout


def test_render_signs_with_the_operators_own_certificate(
        bundle: Path, speech: Path, tmp_path: Path) -> None:
    chain, key = make_operator_key(tmp_path / "operator")
    out = tmp_path / "clip.mp4"
    proc = run_cli("render", bundle, "--audio", speech, "-o", out, "--sign-cert", chain,
                   "--sign-key", key, "--no-watermark")
    assert proc.returncode == 0, proc.stderr
    got = read_credentials(out)
    assert got is not None and got["valid"] and got["avatar"]["mark_id"] is None
    assert got["signed_by"].startswith("twincast on ")

    # A key that is not one: refused before rendering, one line, no file left.
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    out2 = tmp_path / "clip2.mp4"
    proc = run_cli("render", bundle, "--audio", speech, "-o", out2, "--sign-cert", chain,
                   "--sign-key", bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a usable signing certificate and key" in proc.stderr.strip().splitlines()[-1]
    assert not out2.exists() and not list(tmp_path.glob(".clip2*"))

    proc = run_cli("render", bundle, "--audio", speech, "-o", out2, "--sign-cert", chain)
    assert proc.returncode == 2
    assert "--sign-cert and --sign-key go together" in proc.stderr

    proc = run_cli("render", bundle, "--audio", speech, "-o", out2, "--no-c2pa")
    assert proc.returncode == 0, proc.stderr
    assert read_credentials(out2) is None
