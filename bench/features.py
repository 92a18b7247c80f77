"""``twincast bench features`` and ``twincast bench align``: speed, memory and accuracy of
the features stage, printed as JSON."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avatar.errors import TwincastError, path_error
from training.config import FeaturesConfig


def _tree_memory_kb(root: int) -> tuple[int, int]:
    """(RSS, PSS) in kB of ``root`` and all its descendants (Linux /proc).

    RSS counts a shared library once in every process that maps it, so its sum over worker
    processes is an upper bound; PSS splits shared pages between their users and sums to
    what the tree really holds.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss, pss


class PeakRss:
    """Samples the memory of this process and its workers until stopped."""

    def __init__(self, interval: float = 0.2):
        self.peak_kb = 0
        self.peak_pss_kb = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        rss, pss = _tree_memory_kb(os.getpid())
        self.peak_kb = max(self.peak_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def bench_features(footage: Sequence[Path], cfg: FeaturesConfig,
                   transcript: Path | None = None, workdir: Path | None = None) -> dict:
    from training.enrol import enrol_features

    with tempfile.TemporaryDirectory(prefix="twincast-bench-") as tmp:
        sample_truth = None
        if not footage:
            from training.sample.presenter import SampleConfig, write_sample

            files = write_sample(Path(tmp) / "sample", SampleConfig(minutes=1.0))
            footage, transcript = [files.video], files.transcript
            sample_truth = files.truth
        elif len(footage) == 1 and (footage[0].parent / "truth.npz").exists():
            sample_truth = footage[0].parent / "truth.npz"
        work = workdir or Path(tmp) / "work"
        t0 = time.perf_counter()
        with PeakRss() as mem:
            result = enrol_features(footage, work, cfg, transcript=transcript)
        seconds = time.perf_counter() - t0
        report = result.report
        out = {
            "frames": report["frames"],
            "seconds": round(seconds, 2),
            "fps": round(report["frames"] / seconds, 1),
            "realtime_factor": round(report["frames"] / cfg.fps / seconds, 2),
            "peak_rss_mb": round(mem.peak_kb / 1024, 1),
            "peak_pss_mb": round(mem.peak_pss_kb / 1024, 1),
            "workers": cfg.workers,
            "clips": report["clips"],
            "one_face_share": report["one_face_share"],
            "landmark_jitter_px": report["landmark_jitter_px"],
            "aligned_words": report["aligned_words"],
            "units_computed": result.computed_units,
            "units_reused": result.reused_units,
        }
        if sample_truth is not None:
            out["sample_truth"] = compare_sample_truth(result.dir, sample_truth)
        return out


def compare_sample_truth(features_dir: Path, truth_path: Path) -> dict:
    """How well the features recover the synthetic presenter's known mouth and blinks."""
    from training.face import mouth_opening

    clips = json.loads((features_dir / "manifest.json").read_text())["clips"]
    with np.load(features_dir / clips[0]["dir"] / "frames.npz") as z:
        raw = z["landmarks_raw"]
    with np.load(truth_path) as t:
        truth = t["mouth_opening"][: len(raw)]
    ok = np.isfinite(raw[:, 0, 0])
    measured = np.array([mouth_opening(lm) if k else np.nan for lm, k in zip(raw, ok,
                                                                                  strict=True)])
    r = float(np.corrcoef(measured[ok], truth[ok])[0, 1])
    return {"mouth_opening_corr": round(r, 4),
            "mouth_opening_mean_measured": round(float(np.nanmean(measured)), 4),
            "mouth_opening_mean_truth": round(float(truth.mean()), 4)}


def _read_grid_align(path: Path) -> list[tuple[str, float, float]]:
    words = []
    for line in path.read_text().split("\n"):
        parts = line.split()
        if len(parts) == 3 and parts[2] != "sil":
            words.append((parts[2], int(parts[0]) / 25000, int(parts[1]) / 25000))
    return words


def bench_align(features_dir: Path, truth: Path) -> dict:
    """Word-boundary error of the cache's aligned words against reference timings: a folder
    of GRID ``.align`` files, or a sample's ``words.json`` (word starts only)."""
    utt_file = features_dir / "utterances.jsonl"
    if not utt_file.exists():
        raise path_error(utt_file, "not found; run 'twincast enrol ... --transcript' first")
    by_clip: dict[str, list[dict]] = {}
    for line in utt_file.read_text().splitlines():
        u = json.loads(line)
        by_clip.setdefault(u["clip"], []).extend(u.get("words", []))
    errors: list[float] = []
    missing = 0
    if truth.is_dir():
        for clip, words in by_clip.items():
            ref_file = truth / f"{clip}.align"
            if not ref_file.exists():
                continue
            ref = _read_grid_align(ref_file)
            if [w["word"] for w in words] != [w for w, _, _ in ref]:
                missing += 1
                continue
            for w, (_, a, b) in zip(words, ref, strict=True):
                errors += [abs(w["start"] - a), abs(w["end"] - b)]
    elif truth.name.endswith(".json"):
        ref = json.loads(truth.read_text())["words"]
        words = [w for ws in by_clip.values() for w in ws]
        import difflib

        from training.align import normalise

        flat = [(w, r["start"]) for r in ref for w in normalise(r["word"])[:1]]
        # espeak-ng's word events and the transcript's words can differ in a few places
        # (abbreviations, numbers); compare the words both sides agree on.
        sm = difflib.SequenceMatcher(a=[w for w, _ in flat], b=[w["word"] for w in words],
                                     autojunk=False)
        for block in sm.get_matching_blocks():
            for k in range(block.size):
                errors.append(abs(words[block.b + k]["start"] - flat[block.a + k][1]))
        missing = len(flat) - sum(b.size for b in sm.get_matching_blocks())
    else:
        raise path_error(truth, "expected a folder of .align files or a words.json")
    if not errors:
        raise TwincastError("no clip could be compared with the reference timings")
    e = np.array(errors) * 1000
    return {"boundaries": int(e.size), "unmatched": missing,
            "median_ms": round(float(np.median(e)), 1), "mean_ms": round(float(e.mean()), 1),
            "p90_ms": round(float(np.percentile(e, 90)), 1),
            "within_50ms": round(float(np.mean(e <= 50)), 4)}
