"""The enrolment features stage: footage files in, the enrolment cache out.

Work is cut into units (one per clip segment for video, one per clip for audio, one per clip
for text) that run in a pool of worker processes. Each unit writes its result atomically
with the key of its inputs inside, so a killed run resumes with the units it had not
finished, and a changed file, setting or transcript recomputes only what it affects.

Layout of ``WORKDIR/features/`` (DESIGN.md §2)::

    manifest.json            clips of this run, settings, tool version
    report.json, report.txt  the quality report
    utterances.jsonl         one utterance per line: clip, start, end, text, words
    mask.png                 lower-face mask in crop space
    clips/ID/meta.json       source, sizes, crop streams, per-clip measures
    clips/ID/frames.npz      per-frame arrays at 25 fps (landmarks T×478×3, pose T×33×4, …)
    clips/ID/audio.npz       vad, loudness, f0 (100 Hz), mel16, mel22
    clips/ID/audio16k.wav, audio22k.wav
    clips/ID/crops/*.mp4     aligned face crops, one stream per segment
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatar import atomic
from avatar.errors import TwincastError, path_error
from training.config import FeaturesConfig
from training.ingest import ClipInfo
from training.progress import QueueBar

log = logging.getLogger(__name__)

# Per-worker-process state, set once by the pool initializer (never per unit).
_progress_queue: Any = None
_trackers: dict[str, Any] = {}


@dataclass(frozen=True)
class ClipJob:
    info: ClipInfo
    digest: str
    text: str | None
    dir: Path

    @property
    def id(self) -> str:
        return self.info.clip_id


@dataclass(frozen=True)
class Segment:
    index: int
    start: int
    stop: int


def segments(info: ClipInfo, cfg: FeaturesConfig) -> list[Segment]:
    step = max(1, int(cfg.segment_seconds * cfg.fps))
    return [Segment(i, a, min(a + step, info.n_frames))
            for i, a in enumerate(range(0, info.n_frames, step))]


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:20]


def _has_key(path: Path, key: str) -> bool:
    """True if ``path`` is a finished unit output made from the same inputs."""
    if not path.exists():
        return False
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                return str(z["key"]) == key
        return json.loads(path.read_text()).get("key") == key
    except (OSError, ValueError, KeyError, EOFError):
        return False  # a torn or foreign file: recompute it


# ---------------------------------------------------------------- worker side

def _init_worker(q: Any, quiet_native: bool = False) -> None:
    global _progress_queue
    _progress_queue = q
    if quiet_native:
        from avatar.quiet import silence_native_stderr_for_good

        silence_native_stderr_for_good()
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Workers already fill the cores; nested thread pools would only fight. Set before any
    # numerical library loads in this fresh (spawned) process.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import cv2

    cv2.setNumThreads(1)


def _tick_factory() -> Callable[[int], None]:
    pending = [0]

    def tick(n: int) -> None:
        pending[0] += n
        if pending[0] >= 10 and _progress_queue is not None:
            _progress_queue.put(pending[0])
            pending[0] = 0
    return tick


def video_unit(job: ClipJob, seg: Segment, cfg: FeaturesConfig, key: str) -> str:
    from training.video_features import Trackers, process_segment

    # One set of trackers per worker process and settings (see Trackers).
    tkey = cfg.visual_digest()
    if tkey not in _trackers:
        _trackers[tkey] = Trackers.create(cfg)
    out_npz = job.dir / "video" / f"seg-{seg.index:04d}.npz"
    out_mp4 = job.dir / "crops" / f"seg-{seg.index:04d}.mp4"
    arrays = process_segment(job.info, seg.start, seg.stop, cfg, out_mp4, _tick_factory(),
                             _trackers[tkey])
    atomic.save_npz(out_npz, key=np.array(key), **arrays)
    return str(out_npz)


def audio_unit(job: ClipJob, cfg: FeaturesConfig, key: str) -> dict[str, float]:
    import soundfile as sf
    import torch

    torch.set_num_threads(1)

    from training import audio_features
    from training.ingest import decode_audio

    rates = cfg.audio.rates
    audio = decode_audio(job.info.path, rates)
    for rate in rates:
        with atomic.atomic_path(job.dir / f"audio{rate // 1000}k.wav", ".wav") as tmp:
            sf.write(tmp, audio[rate], rate, subtype="PCM_16", format="WAV")
    feats = audio_features.compute(audio[rates[0]], audio[rates[1]], cfg.audio)
    atomic.save_npz(job.dir / "audio.npz", key=np.array(key),
                    stats=np.array(json.dumps(feats.stats)), **feats.arrays())
    return feats.stats


def text_unit(job: ClipJob, cfg: FeaturesConfig, key: str) -> list[dict]:
    import soundfile as sf

    from training.utterances import make_utterances
    from training.vad import speech_segments

    hop_s = cfg.audio.hop_ms / 1000
    with np.load(job.dir / "audio.npz") as z:
        vad, db = z["vad"], z["loudness_db"]
    words = None
    if job.text:
        from training.align import shared_aligner

        audio16, _ = sf.read(job.dir / "audio16k.wav", dtype="float32")
        words = shared_aligner().align(audio16, job.text)
    utts = make_utterances(job.id, speech_segments(vad, hop_s), db, hop_s,
                           job.info.duration, cfg.audio.max_utterance_s,
                           cfg.audio.min_pause_s, words)
    result = [u.to_json() for u in utts]
    atomic.write_json(job.dir / "utterances.json", {"key": key, "utterances": result,
                                                    "aligned": words is not None})
    return result


# ---------------------------------------------------------------- parent side

class _InlineExecutor(cf.Executor):
    """Runs units in this process (``workers=0``): for debugging and profiling."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller via the future
            f.set_exception(e)
        return f


def _executor(workers: int, q: Any, ray: bool = False) -> cf.Executor:
    if ray:
        from training.ray_units import RayExecutor

        return RayExecutor(q)
    if workers <= 0:
        _init_worker(q)
        return _InlineExecutor()
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                  initializer=_init_worker, initargs=(q, True))


def _run_all(ex: cf.Executor, calls: list[tuple[Callable[..., Any], tuple]],
             also: list[Future] | None = None) -> list[Any]:
    """Run units (and wait for ``also``, already submitted elsewhere); on the first failure
    cancel the rest and raise it."""
    futures = [ex.submit(fn, *args) for fn, args in calls] + (also or [])
    try:
        for f in cf.as_completed(futures):
            f.result()
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return [f.result() for f in futures]


@dataclass
class FeaturesResult:
    dir: Path
    clips: list[dict]
    utterances: list[dict]
    report: dict
    computed_units: int
    reused_units: int


def run_features(jobs: list[ClipJob], features_dir: Path, cfg: FeaturesConfig,
                 strict: bool = False, ray: bool = False) -> FeaturesResult:
    """``ray``: units run as tasks on the Ray cluster this process has joined
    (``training.ray_units``) instead of in ``cfg.workers`` local processes."""
    from training import crop_size, quality

    _remove_leftovers(features_dir)
    cfg = crop_size.sized([j.info for j in jobs], cfg)
    if ray:
        from training.ray_units import progress_queue

        q = progress_queue()
    else:
        q = mp.get_context("spawn").Queue() if cfg.workers > 0 else _LocalQueue()
    vdig, adig = cfg.visual_digest(), cfg.audio_digest()
    video_calls, audio_calls = [], []
    reused = 0
    todo_frames = 0
    for job in jobs:
        for seg in segments(job.info, cfg):
            key = _key(job.digest, vdig, seg.start, seg.stop)
            if _has_key(job.dir / "video" / f"seg-{seg.index:04d}.npz", key):
                reused += 1
                continue
            video_calls.append((video_unit, (job, seg, cfg, key)))
            todo_frames += seg.stop - seg.start
        akey = _key(job.digest, adig)
        if _has_key(job.dir / "audio.npz", akey):
            reused += 1
        else:
            audio_calls.append((audio_unit, (job, cfg, akey)))
    # Longest units first keeps both workers busy until the end.
    video_calls.sort(key=lambda c: -(c[1][1].stop - c[1][1].start))
    total = sum(j.info.n_frames for j in jobs)
    log.info("%d clips, %d frames: %d units to compute, %d reused from the cache",
             len(jobs), total, len(video_calls) + len(audio_calls), reused)
    # Audio units run in a pool of their own: only they need torch (~0.5 GB per process),
    # so the video workers stay small.
    with _executor(cfg.workers, q, ray) as ex, _executor(min(cfg.workers, 1), q, ray) as aex, \
            QueueBar(q, total, "features") as pbar:
        pbar.update(total - todo_frames)
        audio_futures = [aex.submit(fn, *args) for fn, args in audio_calls]
        _run_all(ex, video_calls, also=audio_futures)
        aex.shutdown()  # frees the torch process before the text stage
        clips = [_assemble_clip(job, cfg) for job in jobs]
        _check_faces(clips, cfg)
        text_calls = []
        text_results: dict[str, list[dict]] = {}
        for job in jobs:
            tkey = _key(job.digest, adig,
                        hashlib.sha256((job.text or "").encode()).hexdigest(),
                        job.text is not None)
            path = job.dir / "utterances.json"
            if _has_key(path, tkey):
                reused += 1
                text_results[job.id] = json.loads(path.read_text())["utterances"]
            else:
                text_calls.append((text_unit, (job, cfg, tkey)))
        for (_, args), res in zip(text_calls, _run_all(ex, text_calls), strict=True):
            text_results[args[0].id] = res
    utterances = [u for job in jobs for u in text_results[job.id]]
    atomic.write_text(features_dir / "utterances.jsonl",
                      "".join(json.dumps(u) + "\n" for u in utterances))
    _write_mask(features_dir, clips, cfg)
    report = quality.build_report(clips, utterances, cfg, features_dir,
                                  have_transcript=any(j.text for j in jobs))
    atomic.write_json(features_dir / "report.json", report)
    atomic.write_text(features_dir / "report.txt", quality.summary(report))
    computed = len(video_calls) + len(audio_calls) + len(text_calls)
    if quality.blocking_gates(report, strict):
        # The manifest marks a cache fit for training: a failed gate leaves none, so the
        # training stages ask for a new enrolment instead of learning from it.
        (features_dir / "manifest.json").unlink(missing_ok=True)
        quality.raise_for_gates(report, strict, features_dir)
    from avatar.version import __version__

    # How many workers made it is no property of the cache (the same bytes either way).
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "workers"}
    atomic.write_json(features_dir / "manifest.json", {
        "schema": 1, "tool": f"twincast {__version__}", "fps": cfg.fps,
        "config": settings,
        "clips": [{"id": c["clip"], "dir": f"clips/{c['clip']}", "source": c["source"],
                   "digest": c["digest"], "frames": c["n_frames"]} for c in clips],
    })
    return FeaturesResult(features_dir, clips, utterances, report, computed, reused)


def _remove_leftovers(features_dir: Path) -> None:
    """Temporary files of a run that was killed mid-write: never complete, never read."""
    import shutil

    if not features_dir.exists():
        return
    for p in features_dir.rglob(".*.tmp*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


class _LocalQueue:
    """Queue stand-in for inline runs: the bar thread reads it like a real one."""

    def __init__(self) -> None:
        import queue

        self._q: Any = queue.Queue()

    def put(self, n: int) -> None:
        self._q.put(n)

    def get(self, timeout: float) -> int:
        return self._q.get(timeout=timeout)


def _assemble_clip(job: ClipJob, cfg: FeaturesConfig) -> dict:
    """Join a clip's segment arrays into frames.npz and describe the clip in meta.json."""
    segs = segments(job.info, cfg)
    parts = []
    for seg in segs:
        with np.load(job.dir / "video" / f"seg-{seg.index:04d}.npz") as z:
            parts.append({k: z[k] for k in z.files if k != "key"})
    frames = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    with np.load(job.dir / "audio.npz") as z:
        audio_stats = json.loads(str(z["stats"]))
    n = job.info.n_frames
    one = frames["n_faces"] == 1
    meta = {
        "clip": job.id,
        "source": str(job.info.path),
        "digest": job.digest,
        "fps": cfg.fps,
        "n_frames": n,
        "duration": job.info.duration,
        "width": job.info.width,
        "height": job.info.height,
        "source_fps": job.info.source_fps,
        "crop_size": cfg.face.crop_size,
        "crops": [{"file": f"crops/seg-{s.index:04d}.mp4", "start": s.start, "stop": s.stop}
                  for s in segs],
        "audio": audio_stats,
        "face": {
            "one_face_share": float(one.mean()) if n else 0.0,
            "no_face_share": float((frames["n_faces"] == 0).mean()) if n else 0.0,
            "multi_face_share": float((frames["n_faces"] > 1).mean()) if n else 0.0,
        },
    }
    atomic.save_npz(job.dir / "frames.npz", **frames)
    atomic.write_json(job.dir / "meta.json", meta)
    meta["_frames"] = frames  # kept in memory for the report, never written to meta.json
    return meta


def _check_faces(clips: list[dict], cfg: FeaturesConfig) -> None:
    need = cfg.gates.min_clip_one_face_share
    for c in clips:
        f = c["face"]
        if f["one_face_share"] >= need:
            continue
        if f["multi_face_share"] >= f["no_face_share"]:
            problem = (f"two or more faces in {f['multi_face_share']:.0%} of frames; "
                       "footage must show only the person being enrolled")
        else:
            problem = f"no face found in {f['no_face_share']:.0%} of frames"
        raise path_error(c["source"], f"{problem} (need one face in at least {need:.0%}); "
                         "remove this clip or re-shoot it")


def _write_mask(features_dir: Path, clips: list[dict], cfg: FeaturesConfig) -> None:
    import cv2

    from training.face import lower_face_mask

    size = cfg.face.crop_size
    pts = []
    for c in clips:
        fr = c["_frames"]
        ok = fr["n_faces"] >= 1
        lm, m = fr["landmarks"][ok][::5, :, :2], fr["crop_affine"][ok][::5]
        if len(lm):
            # Landmarks into crop space: x' = A x + b, per frame.
            pts.append(np.einsum("tij,tnj->tni", m[:, :, :2], lm) + m[:, None, :, 2])
    if not pts:
        raise TwincastError("no face found in any clip")
    median = np.median(np.concatenate(pts), axis=0)
    mask = lower_face_mask(median, size)
    ok, png = cv2.imencode(".png", mask)
    atomic.write_bytes(features_dir / "mask.png", png.tobytes())
