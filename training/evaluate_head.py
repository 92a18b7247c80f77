"""``twincast eval head``: lip sync of a bundle measured on held-out footage, without leaks.

For each held-out clip the avatar speaks the clip's audio over the bundle's *own idle
footage*, and the face mesh measures the mouth it draws; that mouth opening is compared with
the real clip's (DESIGN.md §5). Driving over the held-out clip's own frames would let the
model copy the true mouth from the jaw and the crop box, so that is done only as a leakage
control, with *another* clip's audio: its correlation with the real mouth must stay low.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar import atomic
from avatar.audio import SPEECH_RATE, frame_levels_db, mel_windows
from avatar.avatar import Avatar, FrameRequest
from avatar.errors import TwincastError
from avatar.video_io import VideoWriter
from training import face as F
from training.audio_features import speech_per_frame
from training.config import FaceConfig
from training.head.fidelity import Area, Tally
from training.ingest import ClipInfo, clip_ids, decode_audio, find_footage, iter_frames, probe
from training.progress import bar
from training.smoothing import OneEuroFilter

log = logging.getLogger(__name__)
MAX_LAG = 4
"""Frames searched either way for the audio-visual lag (160 ms): wider windows alias onto
the syllable rhythm (~5 frames), which correlates almost as well as the true lag."""
SHEET_COLUMNS = 8
"""Frames of the contact sheet, evenly spaced over the first two held-out clips."""


@dataclass
class HeldOut:
    """One held-out clip's measurements. Its frames are decoded again when needed
    (``frames``) rather than kept, so 1080p footage fits in memory one clip at a time."""

    clip: str
    info: ClipInfo
    fps: int
    audio16: np.ndarray
    opening: np.ndarray
    """Real mouth opening per frame (NaN where no face)."""
    affines: np.ndarray
    envelope: np.ndarray
    """Audio level (dB) per video frame."""
    silent: np.ndarray
    truth: np.ndarray | None = None
    """Ground-truth mouth opening per frame, for ``twincast sample`` footage (its
    truth.npz), on the same scale."""

    @property
    def n(self) -> int:
        return len(self.opening)

    def frames(self) -> Iterator[np.ndarray]:
        return (rgb for _, rgb in iter_frames(self.info, self.fps, 0, self.n))


def _sample_truth(path: Path, n: int) -> np.ndarray | None:
    """The synthetic sample's ground truth, when ``path`` is a sample written by
    ``twincast sample`` (sample.mp4 beside its truth.npz)."""
    truth = path.parent / "truth.npz"
    if path.name != "sample.mp4" or not truth.exists():
        return None
    with np.load(truth) as z:
        t = z["mouth_opening"].astype(np.float64)
    return t[:n] if len(t) >= n else None


class _Mouths:
    """Mouth openings measured frame by frame as frames stream past (face mesh), with the
    crop transforms when asked for."""

    def __init__(self, cfg: FaceConfig, want_affines: bool = False) -> None:
        self.cfg = cfg
        self.tracker: F.FaceTracker | None = None
        self.smoother = OneEuroFilter(25, cfg.smooth_min_cutoff, cfg.smooth_beta) \
            if want_affines else None
        self.opening: list[float] = []
        self.affines: list[np.ndarray | None] = []

    def __enter__(self) -> _Mouths:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def add(self, frame: np.ndarray) -> None:
        size = (frame.shape[1], frame.shape[0])
        if self.tracker is None:
            self.tracker = F.FaceTracker.quiet(self.cfg, frame)
        obs = self.tracker(frame, size)
        if obs.landmarks is None:
            self.opening.append(np.nan)
            self.affines.append(None)
            return
        self.opening.append(F.mouth_opening(obs.landmarks))
        if self.smoother is not None:
            sm = self.smoother(obs.landmarks, F.interocular(obs.landmarks))
            self.affines.append(F.crop_transform(sm, self.cfg.crop_size))

    def openings(self) -> np.ndarray:
        return np.array(self.opening, dtype=np.float64)

    def crop_affines(self) -> np.ndarray:
        """Per-frame crop transforms; frames without a face hold the nearest earlier one
        (the first found, before any)."""
        found = [a for a in self.affines if a is not None]
        if not found:
            raise TwincastError("no face found in a held-out clip")
        out, last = [], found[0]
        for a in self.affines:
            last = a if a is not None else last
            out.append(last)
        return np.stack(out)


def _openings(frames: Iterable[np.ndarray], cfg: FaceConfig) -> np.ndarray:
    with _Mouths(cfg) as m:
        for fr in frames:
            m.add(fr)
    return m.openings()


def load_held_out(paths: list[Path], fps: int, cfg: FaceConfig) -> list[HeldOut]:
    files = find_footage(paths)
    out = []
    for f, cid in zip(files, clip_ids(files), strict=True):
        info = probe(f, cid, fps, 1.0)
        with _Mouths(cfg, want_affines=True) as m:
            for _, rgb in iter_frames(info, fps, 0, info.n_frames):
                m.add(rgb)
        opening, affines = m.openings(), m.crop_affines()
        n = len(opening)
        audio = decode_audio(f, [SPEECH_RATE])[SPEECH_RATE]
        level = frame_levels_db(audio, n, fps)
        out.append(HeldOut(cid, info, fps, audio, opening, affines, level,
                           ~speech_per_frame(audio, n, fps), _sample_truth(f, n)))
    return out


def _drive(avatar: Avatar, audio: np.ndarray, n: int, batch: int = 16
           ) -> Iterator[np.ndarray]:
    """The avatar's frames for ``audio``, rendered in batches and yielded one by one."""
    from avatar.audio import log_mel

    windows = mel_windows(log_mel(audio), n, avatar.fps, avatar.mel_frames)
    for a in range(0, n, batch):
        yield from avatar.render([FrameRequest(i, windows[i])
                                  for i in range(a, min(n, a + batch))])


def reconstruct(own: Avatar, clip: HeldOut) -> tuple[Iterator[np.ndarray], Iterator[Area]]:
    """The clip re-rendered over its own frames (``own``: the avatar ``over`` them) with
    its own audio, and where each frame was painted: the reconstruction setting of the
    fidelity figures. Both stream."""
    return (_drive(own, clip.audio16, clip.n),
            (Area(*own.paint_area(i)) for i in range(clip.n)))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) < 1e-9 or np.std(b[ok]) < 1e-9:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _best_lag(envs: list[np.ndarray], opens: list[np.ndarray]) -> int:
    """Lag (frames, positive = mouth after sound) maximising the pooled correlation."""
    best, best_r = 0, -2.0
    for lag in range(-MAX_LAG, MAX_LAG + 1):
        xs, ys = [], []
        for e, o in zip(envs, opens, strict=True):
            e = (e - np.nanmean(e)) / (np.nanstd(e) + 1e-9)
            o = (o - np.nanmean(o)) / (np.nanstd(o) + 1e-9)
            if lag >= 0:
                xs.append(e[: len(e) - lag])
                ys.append(o[lag:])
            else:
                xs.append(e[-lag:])
                ys.append(o[: len(o) + lag])
        r = _corr(np.concatenate(xs), np.concatenate(ys))
        if r > best_r:
            best, best_r = lag, r
    return best


def leak_partners(clips: list[HeldOut]) -> list[tuple[int, float]]:
    """For each clip, the other clip whose *real* mouth moves least like its own, with that
    chance correlation.

    Scripted corpora share a rhythm (every GRID sentence is six words in the same slots),
    so any other clip's audio already correlates with this clip's mouth (about 0.4 on GRID
    for a neighbour) without a leak. Driving with the least-alike partner keeps the control
    about the frames, not the script."""
    out = []
    for k, c in enumerate(clips):
        best, best_r = (k + 1) % len(clips), 2.0
        for j, o in enumerate(clips):
            if j == k:
                continue
            n = min(len(c.opening), len(o.opening))
            r = _corr(c.opening[:n], o.opening[:n])
            if np.isfinite(r) and abs(r) < best_r:
                best, best_r = j, abs(r)
        n = min(len(c.opening), len(clips[best].opening))
        out.append((best, _corr(c.opening[:n], clips[best].opening[:n])))
    return out


def face_config(avatar: Avatar) -> FaceConfig:
    """Face tracking for held-out footage, with crops at the bundle's crop size so they
    line up with its mouth region."""
    return FaceConfig(crop_size=int(avatar.manifest.crop_size or FaceConfig.crop_size))


def evaluate_head(bundle: Path, footage: list[Path], out_dir: Path, device: str = "cpu",
                  precision: str = "auto", detail: str = "keep", texture: str = "keep",
                  cast: str = "keep", refine: str = "keep") -> dict:
    avatar = Avatar.load(bundle, device, precision=precision, refine=refine != "off")
    had_refiner = bool(avatar.manifest.head and avatar.manifest.head.refine)
    avatar.detail = detail
    if texture == "off":
        avatar.texture = None
    had_cast = avatar.cast is not None
    if cast == "off":
        avatar.cast = None
    cfg = face_config(avatar)
    clips = load_held_out(footage, avatar.fps, cfg)
    if len(clips) < 2:
        raise TwincastError("evaluation needs at least two held-out clips (the leakage "
                            "control drives each clip's frames with another clip's audio)")
    per_clip, gen_all, real_all, leak_all, envs = [], [], [], [], []
    silent_gen, silent_real = [], []
    out_dir.mkdir(parents=True, exist_ok=True)
    # The first two clips, real beside generated: a video and a sheet of evenly spaced
    # frames, written as the frames stream past.
    shown = clips[:2]
    picks = set(np.linspace(0, sum(c.n for c in shown) - 1, SHEET_COLUMNS).astype(int).tolist())
    sheet: list[tuple[np.ndarray, np.ndarray]] = []
    mouths: list[tuple[np.ndarray, np.ndarray]] = []
    fidelity = Tally()
    partners = leak_partners(clips)
    offset = 0
    with bar(len(clips), "evaluating", "clip") as pb, \
            _SideBySide(out_dir / "side_by_side.mp4", avatar.fps) as video:
        for k, c in enumerate(clips):
            n = c.n
            # One clip's frames in memory at a time (a 1080p half minute is ~4.7 GB).
            frames = list(c.frames())
            with _Mouths(cfg) as m:
                for i, gen in enumerate(_drive(avatar, c.audio16, n)):
                    m.add(gen)
                    if k < len(shown):
                        video.write(frames[i], gen)
                        if offset + i in picks:
                            sheet.append((frames[i], gen))
            g_open = m.openings()
            if k < len(shown):
                offset += n
            # Leakage control: this clip's own frames, another clip's audio.
            other = clips[partners[k][0]]
            own = avatar.over(frames, c.affines)
            # Reconstruction: the clip's own frames and its own audio, compared pixel for
            # pixel with the real frames (texture, colour, seam, stillness; not lip sync).
            rebuilt, areas = reconstruct(own, c)
            areas = list(areas)
            l_open = _openings(fidelity.add_other_audio(
                frames, _drive(own, other.audio16, n), areas), cfg)
            r = _corr(g_open, c.opening)
            rl = _corr(l_open, c.opening)
            widest = _widest_mouths(frames, areas, 2)

            def keep_mouths(gen: Iterable[np.ndarray], widest: set[int] = widest,
                            frames: list[np.ndarray] = frames, areas: list[Area] = areas
                            ) -> Iterator[np.ndarray]:
                for i, g in enumerate(gen):
                    if i in widest:
                        x0, y0, x1, y1 = areas[i].box
                        mouths.append((frames[i][y0:y1, x0:x1].copy(),
                                       g[y0:y1, x0:x1].copy()))
                    yield g

            fidelity.add_clip(frames, keep_mouths(rebuilt), areas, c.silent)
            del frames, own, areas
            per_clip.append({"clip": c.clip, "corr": round(r, 4), "leak_corr": round(rl, 4),
                             "leak_partner": other.clip,
                             "leak_chance_corr": round(partners[k][1], 4)})
            if c.truth is not None:
                per_clip[-1]["corr_truth"] = round(_corr(g_open, c.truth), 4)
            gen_all.append(g_open)
            real_all.append(c.opening)
            leak_all.append(l_open)
            envs.append(c.envelope)
            silent_gen.append(g_open[c.silent])
            silent_real.append(c.opening[c.silent])
            pb.update(1)
    g, rr, lk = (np.concatenate(x) for x in (gen_all, real_all, leak_all))
    # On synthetic samples: the generated mouth against the mouth the sample was drawn with.
    truths = [p["corr_truth"] for p in per_clip if "corr_truth" in p]
    ok = np.isfinite(g) & np.isfinite(rr)
    report = {
        "bundle": str(bundle),
        "precision": str(avatar.dtype).removeprefix("torch."),
        "detail": detail,
        "texture": "keep" if avatar.texture is not None else
        "off" if texture == "off" else "the refiner's instead" if avatar.refiner is not None
        else "none in the bundle",
        "colour_cast": "taken off" if avatar.cast is not None else
        "off" if had_cast else "none in the bundle",
        "refiner": "keep" if avatar.refiner is not None else
        "off" if had_refiner else "none in the bundle",
        "clips": len(clips),
        "frames": int(len(g)),
        "mouth_opening_corr": round(float(np.nanmean([p["corr"] for p in per_clip])), 4),
        "mouth_opening_corr_pooled": round(_corr(g, rr), 4),
        "std_ratio": round(float(np.std(g[ok]) / max(np.std(rr[ok]), 1e-9)), 4),
        "silent_opening_generated": round(float(np.nanmean(np.concatenate(silent_gen))), 4),
        "silent_opening_real": round(float(np.nanmean(np.concatenate(silent_real))), 4),
        "lag_frames_real": _best_lag(envs, real_all),
        "lag_frames_generated": _best_lag(envs, gen_all),
        "leakage_corr": round(float(np.nanmean([p["leak_corr"] for p in per_clip])), 4),
        "leakage_chance_corr": round(float(np.nanmean([p["leak_chance_corr"]
                                                       for p in per_clip])), 4),
        "face_found_generated": round(float(np.isfinite(g).mean()), 4),
        "fidelity": {"model_size": avatar.size, **fidelity.figures()},
        **({"mouth_opening_corr_truth": round(float(np.mean(truths)), 4)} if truths else {}),
        "per_clip": per_clip,
        "method": "audio of each held-out clip drives the bundle's idle footage; the face "
                  "mesh measures both mouths (13-14 over 33-263). Leakage control: the "
                  "clip's own frames driven by the audio of the other clip whose real "
                  "mouth correlates least with this one's (leakage_chance_corr). "
                  "fidelity: each clip's own frames re-rendered with its own audio, compared "
                  "with the real frames over the painted area at the footage's own scale "
                  "(training/head/fidelity.py).",
    }
    atomic.write_json(out_dir / "report.json", report)
    _write_contact_sheet(sheet, out_dir / "contact_sheet.png")
    _write_mouth_sheet(mouths, out_dir / "mouths.png")
    return report


def _widest_mouths(real: list[np.ndarray], areas: list[Area], count: int) -> set[int]:
    """The ``count`` frames of one clip whose painted area varies most in the real frame
    (the widest mouths, where detail shows): shown at 1:1 pixels in mouths.png."""
    scores = []
    for r, a in zip(real, areas, strict=True):
        x0, y0, x1, y1 = a.box
        inner = a.blend >= 0.9
        scores.append(float(r[y0:y1, x0:x1].mean(2)[inner].std()) if inner.any() else 0.0)
    return {int(k) for k in np.argsort(scores)[::-1][:count]}


def _write_mouth_sheet(pairs: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Columns of real (top) over generated (bottom) mouth areas, unscaled."""
    if not pairs:
        return
    h = max(p[0].shape[0] for p in pairs)
    w = max(p[0].shape[1] for p in pairs)

    def pad(img: np.ndarray) -> np.ndarray:
        tile = np.zeros((h, w, 3), np.uint8)
        tile[:img.shape[0], :img.shape[1]] = img
        return tile

    rows = [np.concatenate([pad(p[j]) for p in pairs], 1) for j in (0, 1)]
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    atomic.write_bytes(path, png.tobytes())


def _fit(img: np.ndarray, h: int) -> np.ndarray:
    """Letterbox into an h x h tile, so footage of any shape lines up."""
    s = h / max(img.shape[:2])
    w2, h2 = max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))
    tile = np.zeros((h, h, 3), np.uint8)
    y, x = (h - h2) // 2, (h - w2) // 2
    tile[y:y + h2, x:x + w2] = cv2.resize(img, (w2, h2), interpolation=cv2.INTER_AREA)
    return tile


class _SideBySide:
    """real | generated video, written frame by frame; nothing is written if no frame
    comes."""

    def __init__(self, path: Path, fps: int) -> None:
        self.path, self.fps = path, fps
        self.writer: VideoWriter | None = None
        self.h = 0

    def __enter__(self) -> _SideBySide:
        return self

    def write(self, real: np.ndarray, gen: np.ndarray) -> None:
        if self.writer is None:
            self.h = min(360, real.shape[0]) // 2 * 2
            self.writer = VideoWriter(self.path, self.fps, 2 * self.h, self.h).__enter__()
        self.writer.write(np.concatenate([_fit(real, self.h), _fit(gen, self.h)], 1))

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.__exit__(*exc)


def _write_contact_sheet(pairs: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Real (top) over generated (bottom) frames, letterboxed to 160 px tiles."""
    if not pairs:
        return
    h = 160
    rows = [np.concatenate([_fit(p[j], h) for p in pairs], 1) for j in (0, 1)]
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    atomic.write_bytes(path, png.tobytes())

