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


def test_stream_bad_input_is_one_line(tmp_path: Path) -> None:
    bad_show = tmp_path / "show.toml"
    bad_show.write_text('[[segment]]\nsay = "hi"\nspeed = 2\n')
    chat_show = tmp_path / "chat.toml"
    chat_show.write_text('[chat]\ntwitch = "shop"\n[[segment]]\nqa = 60\n')
    filter_show = tmp_path / "filter.toml"
    filter_show.write_text('[chat]\nfilter = "no_such_mod:keep"\n[[segment]]\nqa = 60\n')
    llm = ("--llm", "http://127.0.0.1:9/v1", "--llm-model", "m")
    for args, words in (
            (("--rtmp", "rtmp://127.0.0.1/live/k", "--show", str(chat_show)), "--llm"),
            (("--rtmp", "rtmp://127.0.0.1/live/k", "--show", str(filter_show), *llm),
             "cannot be loaded"),
            (("--rtmp", "http://example.com/live"), "rtmp://"),
            (("--rtmp", "rtmp://127.0.0.1/live/k", "--show", str(bad_show)), "line 3"),
            (("--rtmp", "rtmp://127.0.0.1/live/k", "--show", str(tmp_path / "no.toml")),
             "no such show file"),
            (("--rtmp", "rtmp://127.0.0.1/live/k", "--key", "green"), "RRGGBB")):
        proc = run_cli("stream", tmp_path / "bundle", *args)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_render_show_bad_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("repeat = 1\n")
    proc = run_cli("render", tmp_path / "bundle", "--show", empty, "-o", tmp_path / "o.mp4")
    assert proc.returncode == 2 and "empty" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_label_is_one_line_on_every_output_command(tmp_path: Path) -> None:
    for cmd, extra, label, words in (
            ("render", ("--text", "hi", "-o", tmp_path / "o.mp4"), "  ", "empty"),
            ("serve", (), "K\u00fcnstlich", "ASCII"),
            ("stream", ("--rtmp", "rtmp://127.0.0.1/live/k"), "  ", "empty")):
        proc = run_cli(cmd, tmp_path / "bundle", *extra, "--label", label)
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert "--label" in proc.stderr and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_serve_admission_shares_out_of_range_are_one_line(tmp_path: Path) -> None:
    for flag, value in (("--lost-share", "1.5"), ("--lost-share", "-0.1"),
                        ("--host-share", "2"), ("--max-batch", "0")):
        proc = run_cli("serve", tmp_path / "bundle", flag, value)
        assert proc.returncode == 2, proc.stderr
        assert flag in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
