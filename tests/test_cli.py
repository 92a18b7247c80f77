from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT, run_cli


def test_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for cmd in ("sample", "enrol", "bench"):
        assert cmd in proc.stdout


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for flag in ("--workdir", "--transcript", "--preset", "--strict", "--minutes", "--size"):
        assert flag in readme
    proc = run_cli("enrol", "--help")
    for flag in ("--workdir", "--transcript", "--preset", "--strict", "--workers"):
        assert flag in proc.stdout


def test_enrol_requires_workdir(tmp_path: Path) -> None:
    proc = run_cli("enrol", tmp_path)
    assert proc.returncode == 2 and "--workdir" in proc.stderr
