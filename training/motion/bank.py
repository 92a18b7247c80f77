"""The motion bank: the person's own footage, cut into usable stretches, for the runtime to
walk through (``avatar.motion``).

Every frame of the enrolment footage is labelled from the features already extracted:
``speaking`` (voice activity, with short pauses bridged), ``listening`` (silent, within a
moment of speech) or ``idle`` (longer silence). Frames the runtime must not show are
dropped: no face or more than one, blur far below the clip's own, and the frame after a cut
(an edited video's jump is never treated as motion). What remains is written at the output
size as short H.264 chunks (``motion/NNNN.mp4``, ``chunk`` frames each), so the runtime can
start reading at any frame by decoding at most one chunk, and ``motion.npz`` holds what the
motion graph matches on: head pose, face position and size, a few landmarks, the shoulders,
a small grey thumbnail of the face area, the state and the speech loudness of each frame.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar import atomic
from avatar.motion import IDLE, LISTENING, SPEAKING, bridge_gaps
from avatar.video_io import VideoWriter
from training.audio_features import frame_hops
from training.face import mouth_opening
from training.ingest import iter_frames, probe

log = logging.getLogger(__name__)

STATE_NAMES = ("idle", "listening", "speaking")
LANDMARKS = (1, 33, 263, 61, 291, 152, 105, 334)
"""Nose tip, outer eye corners, mouth corners, chin, brows: the points matched across a
transition and whose speed the seam figure measures."""


@dataclass(frozen=True)
class BankConfig:
    chunk: int = 32
    """Frames per stored chunk: the most the runtime decodes to reach any frame."""
    crf: int = 20
    tune: str | None = None
    """x264's tuning for the chunks. ``"fastdecode"`` (no CABAC, no deblocking) decodes a
    720p frame in 3.5 ms instead of 5.7 (this Xeon; the deblocking filter is the
    difference) for 8 % more bytes, but its frames are blockier (0.3 dB PSNR on the
    smooth synthetic sample) and the rendered output re-encodes them worse (a test that
    compares two renders outside their label saw 2.2 grey levels of difference instead of
    under 2): not the default."""
    min_run_s: float = 0.5
    """Stretches of usable frames shorter than this are dropped (no room to blend)."""
    bridge_s: float = 0.3
    """Pauses in speech shorter than this still count as speaking."""
    listen_s: float = 1.5
    """Silence within this of speech is listening; beyond it, idle."""
    blur_floor: float = 0.35
    """A frame sharper than this share of its clip's median Laplacian variance is kept."""
    cut_factor: float = 6.0
    cut_floor: float = 10.0
    """A frame-to-frame change (mean absolute grey level, 32x32 thumbnail) over both this
    many times the clip's median change and this many levels is a cut."""
    thumb: int = 24


MIN_SECONDS = {"speaking": 20.0, "silent": 10.0}
"""Below this much footage of the avatar's speaking or silent (listening and idle) behaviour
the bank reports it short: the walk through it repeats itself within a minute."""


@dataclass
class BankResult:
    frames: int
    chunk_files: list[str]
    index: str
    seconds: dict[str, float]
    """Seconds of each state (idle, listening, speaking)."""
    behaviour: dict[str, float]
    """Seconds of what the avatar does with them: speaking, silent (listening + idle)."""
    short: list[str]
    """Behaviours with less than ``MIN_SECONDS``."""
    dropped: dict[str, int]
    bytes: int


def frame_states(vad100: np.ndarray, n: int, fps: int, cfg: BankConfig) -> np.ndarray:
    """Per video frame: SPEAKING, LISTENING or IDLE from the 100 Hz voice activity."""
    speech = vad100[frame_hops(n, fps, len(vad100))].astype(bool) if len(vad100) \
        else np.zeros(n, bool)
    # Bridge short pauses inside speech: a breath between words is still speaking.
    speech = bridge_gaps(speech, int(round(cfg.bridge_s * fps)))
    states = np.full(n, IDLE, np.int8)
    idx = np.flatnonzero(speech)
    if idx.size:
        # Frames to the nearest speech frame: the speech frames either side of each.
        pos = np.arange(n)
        j = np.searchsorted(idx, pos)
        after = np.abs(idx[np.minimum(j, idx.size - 1)] - pos)
        before = np.abs(pos - idx[np.maximum(j - 1, 0)])
        states[np.minimum(before, after) <= cfg.listen_s * fps] = LISTENING
    states[speech] = SPEAKING
    return states


def _runs(ok: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], ok.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def build_bank(features_dir: Path, out_dir: Path, size: tuple[int, int], fps: int,
               cfg: BankConfig | None = None,
               progress: Callable[[int], None] | None = None, folder: str = "motion",
               index: str = "motion.npz") -> BankResult:
    """Write ``FOLDER/*.mp4`` and ``INDEX`` under ``out_dir`` (the bundle being written) at
    ``size`` (width, height). Returns what was kept."""
    cfg = cfg or BankConfig()
    width, height = size
    manifest = json.loads((features_dir / "manifest.json").read_text())
    clips = manifest["clips"]
    # Pass 1 (features only): what to keep, and the face area all thumbnails are cut from.
    plans = []
    boxes = []
    for ci, c in enumerate(clips):
        d = features_dir / c["dir"]
        meta = json.loads((d / "meta.json").read_text())
        with np.load(d / "frames.npz") as z:
            f = {k: z[k] for k in ("n_faces", "crop_affine", "head_euler", "landmarks_raw",
                                   "pose", "blur")}
        with np.load(d / "audio.npz") as z:
            vad, loud = z["vad"], z["loudness_db"]
        n = len(f["n_faces"])
        sx, sy = width / meta["width"], height / meta["height"]
        lm = f["landmarks_raw"][:, :, :2] * (sx, sy)
        ok = (f["n_faces"] == 1) & np.isfinite(f["head_euler"]).all(1) & \
            np.isfinite(lm).all((1, 2))
        blur = f["blur"]
        med = np.nanmedian(blur[ok]) if ok.any() else 0.0
        sharp = np.nan_to_num(blur, nan=0.0) >= cfg.blur_floor * med
        states = frame_states(vad, n, fps, cfg)
        hops = frame_hops(n, fps, len(loud))
        plans.append(dict(clip=ci, dir=d, meta=meta, n=n, ok=ok, sharp=sharp, states=states,
                          lm=lm, f=f, sx=sx, sy=sy,
                          loud=loud[hops] if len(loud) else np.full(n, -80.0)))
        if ok.any():
            pts = lm[ok]
            boxes.append(np.stack([pts[..., 0].min(1), pts[..., 1].min(1),
                                   pts[..., 0].max(1), pts[..., 1].max(1)], 1))
    if not boxes:
        raise ValueError("no frame with one face: nothing for the motion bank")
    bx = np.median(np.concatenate(boxes), axis=0)
    cx, cy = (bx[0] + bx[2]) / 2, (bx[1] + bx[3]) / 2
    half = 0.6 * max(bx[2] - bx[0], bx[3] - bx[1])
    face_box = np.array([max(0, cx - half), max(0, cy - half), min(width, cx + half),
                         min(height, cy + half)], np.float32)

    cols: dict[str, list] = {k: [] for k in (
        "clip", "source_frame", "crop_affine", "state", "cont", "euler", "centre", "iod",
        "landmarks", "shoulders", "thumb", "loudness_db", "opening")}
    dropped = {"no_face": 0, "blur": 0, "cut": 0, "short": 0}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / folder).mkdir(exist_ok=True)
    files: list[str] = []
    writer: VideoWriter | None = None
    written = 0
    min_run = max(2, int(round(cfg.min_run_s * fps)))
    try:
        for p in plans:
            meta = p["meta"]
            info = probe(Path(meta["source"]), meta["clip"], fps, 0.0)
            # Pass A (small frames): where the cuts are. Pass B writes the kept frames, so
            # a long clip is never held in memory.
            grey = [cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (32, 32),
                               interpolation=cv2.INTER_AREA).astype(np.float32)
                    for _, rgb in iter_frames(info, fps, 0, p["n"], max_side=160)]
            n = min(len(grey), p["n"])
            change = np.array([0.0] + [float(np.abs(grey[i] - grey[i - 1]).mean())
                                       for i in range(1, n)])
            med = float(np.median(change[1:])) if n > 2 else 0.0
            cut = (change > cfg.cut_factor * med) & (change > cfg.cut_floor)
            ok, sharp = p["ok"][:n], p["sharp"][:n]
            dropped["no_face"] += int((~ok).sum())
            dropped["blur"] += int((ok & ~sharp).sum())
            dropped["cut"] += int(cut.sum())
            keep = ok & sharp
            # A cut ends a run: the frames either side are never played in a row.
            runs = []
            for a, b in _runs(keep):
                starts = [a] + [i for i in range(a + 1, b) if cut[i]] + [b]
                runs += [(s, e) for s, e in zip(starts[:-1], starts[1:], strict=True)]
            last = np.full(n, -1)
            for a, b in runs:
                if b - a < min_run:
                    dropped["short"] += b - a
                else:
                    last[a:b] = b - 1
            f = p["f"]
            for i, rgb in iter_frames(info, fps, 0, n):
                if progress:
                    progress(1)
                if last[i] < 0:
                    continue
                if rgb.shape[1] != width or rgb.shape[0] != height:
                    rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
                if writer is None or writer.frames == cfg.chunk:
                    if writer is not None:
                        writer.close()
                    name = f"{folder}/{len(files):04d}.mp4"
                    files.append(name)
                    writer = VideoWriter(out_dir / name, fps, width, height, crf=cfg.crf,
                                         tune=cfg.tune)
                writer.write(rgb)
                written += 1
                _append_frame(cols, p, f, i, i < last[i], face_box, rgb, cfg.thumb)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    if not written:
        raise ValueError("no stretch of usable frames long enough for the motion bank")
    arrays = {k: np.asarray(v) for k, v in cols.items()}
    arrays["crop_affine"] = arrays["crop_affine"].astype(np.float32)
    atomic.save_npz(out_dir / index, face_box=face_box, fps=np.int32(fps),
                    chunk=np.int32(cfg.chunk), **arrays)
    states = arrays["state"]
    seconds = {name: round(float((states == s).sum()) / fps, 1)
               for s, name in enumerate(STATE_NAMES)}
    have = {"speaking": seconds["speaking"], "silent": seconds["listening"] + seconds["idle"]}
    size_bytes = sum((out_dir / f).stat().st_size for f in files + [index])
    return BankResult(frames=written, chunk_files=files, index=index, seconds=seconds,
                      behaviour=have, short=[k for k, v in have.items() if v < MIN_SECONDS[k]],
                      dropped=dropped, bytes=size_bytes)


def _append_frame(cols: dict[str, list], p: dict, f: dict, i: int, cont: bool,
                  face_box: np.ndarray, rgb: np.ndarray, thumb: int) -> None:
    sx, sy = p["sx"], p["sy"]
    a = f["crop_affine"][i].astype(np.float64).copy()
    # The crop transform maps source pixels; the bank is stored at the output size.
    a[:, 0] /= sx
    a[:, 1] /= sy
    lm = p["lm"][i]
    iod = float(np.linalg.norm(lm[33] - lm[263]))
    pose = f["pose"][i]
    sh = np.full(4, np.nan, np.float32)
    if np.isfinite(pose[11:13]).all() and pose[11:13, 3].min() > 0.5:
        sh = (pose[11:13, :2] * (sx, sy)).reshape(-1).astype(np.float32)
    x0, y0, x1, y1 = face_box.astype(int)
    grey = cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    cols["clip"].append(p["clip"])
    cols["source_frame"].append(i)
    cols["crop_affine"].append(a)
    cols["state"].append(int(p["states"][i]))
    cols["cont"].append(bool(cont))
    cols["euler"].append(f["head_euler"][i].astype(np.float32))
    cols["centre"].append(lm[list(LANDMARKS)].mean(0).astype(np.float32))
    cols["iod"].append(np.float32(iod))
    cols["landmarks"].append(lm[list(LANDMARKS)].astype(np.float32))
    cols["shoulders"].append(sh)
    cols["thumb"].append(cv2.resize(grey, (thumb, thumb), interpolation=cv2.INTER_AREA))
    cols["loudness_db"].append(np.float32(p["loud"][i]))
    cols["opening"].append(np.float32(mouth_opening(f["landmarks_raw"][i])))
