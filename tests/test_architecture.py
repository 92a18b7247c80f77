"""The package rules of ARCHITECTURE.md, checked on the source: who may import whom, and
that the server runs with the ``[serve]`` install alone."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

OWN = ("avatar", "streaming", "training", "bench", "twincast")
MAY_IMPORT = {
    "avatar": {"avatar"},
    "streaming": {"avatar", "streaming"},
    "training": {"avatar", "training"},
    "bench": {"avatar", "streaming", "training", "bench"},
    "twincast": set(OWN),
}
"""Each package's own imports. The bundle on disk is the only contract between training
and the runtime; the measuring tools are imported by the command line and tests only."""

TRAINING_ONLY = {"mediapipe", "pocketsphinx", "resemblyzer", "matplotlib", "librosa",
                 "skimage"}
TRANSPORT_FREE = ("streaming/scheduler.py", "streaming/speech.py")
"""Rendering order and speech timing know nothing of HTTP or WebRTC, so any worker (a
single server, a cluster worker, a livestream) can drive them."""
TRANSPORTS = {"aiohttp", "aiortc", "av"}
THIRD_PARTY_ALLOWED = {
    # Background keying is the [key] extra, imported only when a stream asks for it.
    ("streaming/keying.py", "mediapipe"),
    # Conversation mode's built-in recogniser is the [listen] extra, imported only when a
    # conversation session's turn is transcribed without --stt.
    ("streaming/listening.py", "pocketsphinx"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in a file, inside functions too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(root: Path) -> list[str]:
    bad = []
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for line, top in imports_of(path):
                if top in OWN and top not in allowed:
                    bad.append(f"{rel}:{line} imports {top}")
                if package in ("avatar", "streaming") and top in TRAINING_ONLY and \
                        (rel, top) not in THIRD_PARTY_ALLOWED:
                    bad.append(f"{rel}:{line} imports {top} (a training package)")
                if rel in TRANSPORT_FREE and top in TRANSPORTS:
                    bad.append(f"{rel}:{line} imports {top} (a transport)")
    return bad


def test_imports_follow_the_package_rules():
    assert violations(ROOT) == []


def test_integrations_talk_to_twincast_over_the_network_only():
    """integrations/ (the pipecat service) run in environments of their own, without
    twincast installed: they may import none of its packages."""
    bad = []
    for path in sorted((ROOT / "integrations").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if "/.venv/" in rel or "/build/" in rel:
            continue
        bad += [f"{rel}:{line} imports {top}" for line, top in imports_of(path) if top in OWN]
    assert bad == []


def test_the_rule_check_finds_a_forbidden_import(tmp_path: Path):
    for package in OWN:
        (tmp_path / package).mkdir()
    (tmp_path / "streaming" / "bad.py").write_text(
        "def f():\n    from training.face import mouth_opening\n    import bench.serve\n")
    (tmp_path / "avatar" / "worse.py").write_text("import matplotlib.pyplot as plt\n")
    (tmp_path / "training" / "ok.py").write_text("from avatar import atomic\n")
    (tmp_path / "streaming" / "scheduler.py").write_text("import aiortc\n")
    assert violations(tmp_path) == [
        "avatar/worse.py:1 imports matplotlib (a training package)",
        "streaming/bad.py:2 imports training",
        "streaming/bad.py:3 imports bench",
        "streaming/scheduler.py:1 imports aiortc (a transport)",
    ]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def install_closure(extras: set[str]) -> set[str]:
    """Canonical names of the distributions ``pip install 'twincast[EXTRAS]'`` brings, from
    the installed package metadata (what pyproject.toml declares)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [("twincast", frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # an optional platform dependency that is not installed here
        for text in requires:
            req = Requirement(text)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(e) for e in envs):
                continue
            key = _canon(req.name)
            if key == "twincast":
                todo.append((key, frozenset(req.extras)))
            elif key not in seen:
                seen.add(key)
                todo.append((key, frozenset(req.extras)))
    return seen


def blocked_modules(extras: set[str]) -> list[str]:
    """Top-level modules that only distributions outside the install provide, and the
    project's own packages that the role leaves out."""
    allowed = install_closure(extras)
    blocked = {"training", "bench"}
    for module, dists in metadata.packages_distributions().items():
        # Standard-library names some old backport distributions also claim stay usable.
        if module in OWN or module.startswith("_") or module in sys.stdlib_module_names \
                or "/" in module:
            continue
        if not any(_canon(d) in allowed for d in dists):
            blocked.add(module)
    return sorted(blocked)


SERVE_ONLY = textwrap.dedent("""
    import importlib.abc, json, sys, urllib.request
    from pathlib import Path

    BLOCKED = set(json.loads(sys.argv[1]))

    class NotInstalled(importlib.abc.MetaPathFinder):
        # As if the [serve] install were all there is: these modules are not installed.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (not in [serve])",
                                          name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    # A probe for an optional package (yarl looks for pydantic_core) finds nothing, as it
    # would where the package is not installed, instead of failing.
    import importlib.util
    _find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, package=None: None \
        if name.split(".")[0] in BLOCKED else _find_spec(name, package)
    from streaming.app import Server, ServerConfig, bundle_names
    from streaming.routes import RunningServer
    import streaming.metrics, streaming.openapi, streaming.rtmp, streaming.show
    import streaming.tracks

    bundle = Path(sys.argv[2])
    server = Server(bundle_names([bundle]), ServerConfig(host_share=None, lost_share=None,
                                                         token="t", allow_unconsented=True))
    server.load()
    running = RunningServer(server)
    try:
        def get(path):
            req = urllib.request.Request(running.url + path,
                                         headers={"Authorization": "Bearer t"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.read()
        avatars = json.loads(get("/v1/avatars"))["avatars"]
        get("/metrics")
        get("/v1/openapi.json")
        voice = server.voices[avatars[0]["name"]]
        speech = voice.say("Hello there.")
    finally:
        running.stop()
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"avatars": avatars, "speech_samples": int(len(speech)),
                      "leaked": leaked}))
""")


def test_blocked_modules_cover_the_training_packages():
    blocked = set(blocked_modules({"serve"}))
    assert {"mediapipe", "pocketsphinx", "resemblyzer", "matplotlib", "librosa", "training",
            "bench"} <= blocked
    assert not {"torch", "aiortc", "aiohttp", "av", "numpy", "cv2"} & blocked


@pytest.mark.slow
def test_server_runs_with_the_serve_install_alone(bundle: Path):
    proc = subprocess.run([sys.executable, "-c", SERVE_ONLY,
                           json.dumps(blocked_modules({"serve"})), str(bundle)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    from avatar.bundle import read_manifest
    from avatar.watermark import bundle_mark_id

    assert out["avatars"] == [{"name": "presenter", "voice": True, "consent": "unconsented",
                               "mark_id": bundle_mark_id(read_manifest(bundle).files)}]
    assert out["speech_samples"] > 0
    assert out["leaked"] == []


def test_a_missing_role_is_one_line_naming_the_install(monkeypatch, capsys):
    import twincast.cli as cli

    def needs_aiortc(args: object) -> int:
        raise ModuleNotFoundError("No module named 'aiortc'", name="aiortc")

    monkeypatch.setattr(cli, "cmd_serve", needs_aiortc)
    assert cli.main(["serve", "some/bundle"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("twincast: error: 'serve' needs aiortc, which this install lacks; install "
                   "it with: pip install 'twincast[serve]'")


def test_a_command_checks_its_role_before_it_starts(monkeypatch, tmp_path: Path, capsys):
    """Nothing is made when the role's packages are missing: the check comes first."""
    import importlib.util

    import twincast.cli as cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mediapipe" else real(name, *a))
    work = tmp_path / "work"
    assert cli.main(["enrol", str(tmp_path), "--workdir", str(work)]) == 2
    assert "'enrol' needs mediapipe" in capsys.readouterr().err
    assert not work.exists()
    assert cli._missing_role("serve") is None and cli._missing_role("render") is None


GPU_MACHINE_LACKS = ["mediapipe", "aiortc", "aiohttp", "phonemizer", "espeakng_loader",
                     "pocketsphinx", "pypinyin", "resemblyzer", "prometheus_client"]


def test_the_gpu_training_path_needs_torch_alone():
    """scripts/gpu_check.sh and gpu_voice_check.sh train from packed caches on a machine
    with torch and torchaudio but none of these: their modules must import without them."""
    code = textwrap.dedent("""
        import importlib.abc, json, sys
        LACKS = set(json.loads(sys.argv[1]))

        class Lacks(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in LACKS:
                    raise ModuleNotFoundError(name, name=name)

        sys.meta_path.insert(0, Lacks())
        import bench.runtime, training.head.pack, training.head.train  # noqa: F401
        import training.voice.pack, training.voice.train, training.voice.vocoder  # noqa
        import twincast.cli
        twincast.cli.build_parser().parse_args(["train", "voice", "w", "--preset", "gpu"])
        assert twincast.cli._missing_role("train") is None
    """)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(GPU_MACHINE_LACKS)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
