"""``twincast eval motion``: does the double move like the person?

Held-out clips' audio, joined with silences of random length, drives the avatar through its
motion bank exactly as ``twincast render`` does; every output frame is rendered (mouth
painted) and measured with the same face mesh and smoothing as enrolment, and so is every
frame of the held-out clips themselves. Figures (see docs in README):

- seams: at each transition (cross-fade frames and the frame after), the frame-to-frame
  change of the face area (mean absolute grey difference) and the landmarks' speed, against
  the 99th percentile of the same measures over the bank footage's own consecutive frames;
  the share of seams over it (goal 0);
- repetition: the share of 2-second windows whose bank frames reappear (half or more at
  the same offsets) in another window starting within the previous 60 s; reversed steps;
- behaviour: the head's angular speed while speaking against the real speaking frames, and
  while silent against the real silent frames (two-sample Kolmogorov-Smirnov distance),
  and the speaking/silent motion-energy ratio against the real one, with the held-out
  clips as the real reference and with the enrolment footage (the bank) as a second one;
- lips: the correlation of the rendered mouth opening with the held-out clip's own.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar import atomic
from avatar.audio import SPEECH_RATE
from avatar.avatar import Avatar, FrameRequest
from avatar.cues import nod_peaks
from avatar.errors import TwincastError
from avatar.motion import Entry, MotionConfig, plan_walk, speech_activity
from avatar.video_io import VideoWriter
from training import face as F
from training.audio_features import speech_per_frame
from training.config import FaceConfig
from training.ingest import clip_ids, decode_audio, find_footage, iter_frames, probe
from training.motion.bank import LANDMARKS
from training.progress import bar
from training.smoothing import OneEuroFilter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MotionEvalConfig:
    passes: int = 3
    """Times the held-out clips are played (each pass in a new order)."""
    gap_s: tuple[float, float] = (1.0, 4.0)
    """Silence between clips, drawn uniformly."""
    window_s: float = 2.0
    horizon_s: float = 60.0
    seed: int = 0
    walk: MotionConfig | None = None
    """The walk's settings (``avatar.motion.MotionConfig``; None: the runtime's)."""


class _Measure:
    """Head pose, landmarks, mouth opening and the grey face area of frames streaming past,
    measured as enrolment measures them (face mesh, one-euro smoothed landmarks)."""

    def __init__(self, fps: int, face_box: np.ndarray):
        cfg = FaceConfig()
        self.cfg = cfg
        self.tracker: F.FaceTracker | None = None
        self.smoother = OneEuroFilter(fps, cfg.smooth_min_cutoff, cfg.smooth_beta)
        self.box = face_box.astype(int)
        self.euler: list[np.ndarray] = []
        self.lm: list[np.ndarray] = []
        self.opening: list[float] = []
        self.grey: list[np.ndarray] = []

    def add(self, rgb: np.ndarray) -> None:
        size = (rgb.shape[1], rgb.shape[0])
        if self.tracker is None:
            self.tracker = F.FaceTracker.quiet(self.cfg, rgb)
        obs = self.tracker(rgb, size)
        self.grey.append(_face_area(rgb, self.box))
        if obs.landmarks is None:
            self.smoother.reset()
            self.euler.append(np.full(3, np.nan))
            self.lm.append(np.full((8, 2), np.nan))
            self.opening.append(np.nan)
            return
        sm = self.smoother(obs.landmarks, F.interocular(obs.landmarks))
        rot, _ = F.head_pose(sm)
        self.euler.append(F.euler_degrees(rot))
        iod = max(F.interocular(obs.landmarks), 1.0)
        self.lm.append(obs.landmarks[list(LANDMARKS), :2] / iod)
        self.opening.append(F.mouth_opening(obs.landmarks))

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()

    def arrays(self) -> dict[str, np.ndarray]:
        return {"euler": np.array(self.euler, np.float64), "lm": np.array(self.lm),
                "opening": np.array(self.opening), "grey": np.array(self.grey, np.float32)}


def _face_area(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The fixed face box of a frame, grey, 64x64: what the seam figure compares."""
    x0, y0, x1, y1 = box
    return cv2.resize(cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), (64, 64),
                      interpolation=cv2.INTER_AREA).astype(np.float32)


def _area_change(grey: np.ndarray) -> np.ndarray:
    """Mean absolute change of the face area from the frame before (NaN at 0)."""
    return np.concatenate([[np.nan], np.abs(np.diff(grey, axis=0)).mean((1, 2))])


def angular_speed(euler: np.ndarray, fps: int) -> np.ndarray:
    """Degrees per second of head rotation between consecutive frames (NaN across a lost
    face); element i is the step from frame i-1 to i (NaN at 0)."""
    d = np.linalg.norm(np.diff(euler, axis=0), axis=1) * fps
    return np.concatenate([[np.nan], d])


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if not a.size or not b.size:
        return float("nan")
    xs = np.concatenate([a, b])
    ca = np.searchsorted(a, xs, side="right") / a.size
    cb = np.searchsorted(b, xs, side="right") / b.size
    return float(np.max(np.abs(ca - cb)))


def _energy_ratio(speed: np.ndarray, speaking: np.ndarray) -> float:
    s, q = speed[speaking], speed[~speaking]
    s, q = s[np.isfinite(s)], q[np.isfinite(q)]
    if not s.size or not q.size or np.mean(q**2) == 0:
        return float("nan")
    return float(np.mean(s**2) / np.mean(q**2))


def repetition(entries: list[Entry], fps: int, window_s: float, horizon_s: float) -> dict:
    """Share of ``window_s`` windows (every 0.2 s) whose bank frames reappear, half or more
    at the same offsets, in a window starting within ``horizon_s`` before; and reversed
    steps (a frame followed by an earlier frame of the same stretch)."""
    a = np.array([e.a for e in entries])
    w, h, step = int(window_s * fps), int(horizon_s * fps), max(1, fps // 5)
    starts = list(range(0, len(a) - w + 1, step))
    repeated = 0
    for k in starts:
        cur = a[k: k + w]
        for k2 in range(max(0, k - h), k - w + 1):
            if np.mean(a[k2: k2 + w] == cur) >= 0.5:
                repeated += 1
                break
    reversed_steps = int(np.sum((np.diff(a) < 0) & (np.diff(a) > -3)))
    return {"windows": len(starts), "repeated_share": round(repeated / max(1, len(starts)), 4),
            "reversed_steps": reversed_steps}


def seams(entries: list[Entry]) -> list[int]:
    """Output frames that are not the footage's own next frame: each cross-fade's frames and
    the first frame after it, or a hard jump."""
    out = []
    for k in range(1, len(entries)):
        e, p = entries[k], entries[k - 1]
        natural = e.b < 0 and p.b < 0 and e.a == p.a + 1
        if not natural:
            out.append(k)
    return out


def nod_hits(lm: np.ndarray, stressed_s: list[float], fps: int) -> tuple[int, int]:
    """(stressed words followed by a nod peak within 0-0.4 s, stressed words) in footage
    ``lm`` whose stressed words start at ``stressed_s`` seconds."""
    peaks = nod_peaks(lm, fps) / fps
    inside = [t for t in stressed_s if t * fps < len(lm)]
    hits = sum(bool(np.any((peaks >= t) & (peaks <= t + 0.4))) for t in inside)
    return hits, len(inside)


def _chance_rate(lm: np.ndarray, fps: int) -> float:
    """The hit rate at random word times (what a walk that ignored the words would
    score): the share of 0.4 s windows holding a nod peak."""
    peaks = nod_peaks(lm, fps)
    n = len(lm)
    if n < fps:
        return float("nan")
    starts = np.arange(0, n - int(0.4 * fps), max(1, fps // 5))
    return float(np.mean([np.any((peaks >= s) & (peaks <= s + 0.4 * fps)) for s in starts]))


def _stressed_words(video: Path) -> list[float] | None:
    """Start times of the stressed words of a ``twincast sample`` clip (its words.json:
    the words its presenter nods on); None for other footage."""
    words = video.parent / "words.json"
    if video.name != "sample.mp4" or not words.exists():
        return None
    d = json.loads(words.read_text())
    letters = int(d.get("config", {}).get("nod_letters", 0))
    if not letters:
        return None
    return [float(w["start"]) for w in d["words"]
            if sum(ch.isalpha() for ch in w["word"]) >= letters]


def transitions(entries: list[Entry]) -> int:
    """Cross-fades begun and hard jumps."""
    count = 0
    for k in range(1, len(entries)):
        e, p = entries[k], entries[k - 1]
        if e.b >= 0 and (p.b < 0 or e.b != p.b + 1):
            count += 1
        elif e.b < 0 and p.b < 0 and e.a != p.a + 1:
            count += 1
    return count


def _bank_reference(avatar: Avatar) -> dict:
    """The bank footage's own consecutive-frame changes (face area, landmarks) and its
    head motion by state: the yardsticks."""
    bank = avatar.bank
    assert bank is not None
    idx = bank.index
    box = idx["face_box"].astype(int)
    cont = idx["cont"].astype(bool)
    mad = []
    prev = None
    with bar(bank.n, "bank footage", "frame") as pb:
        for i in range(bank.n):
            g = _face_area(bank.rgb(i), box)
            if prev is not None and cont[i - 1]:
                mad.append(float(np.abs(g - prev).mean()))
            prev = g
            pb.update(1)
    iod = np.maximum(idx["iod"].astype(np.float64), 1.0)
    lm = idx["landmarks"].astype(np.float64) / iod[:, None, None]
    pairs = np.flatnonzero(cont[:-1])
    lm_speed = np.linalg.norm(lm[pairs + 1] - lm[pairs], axis=2).mean(1)
    speed = np.full(bank.n, np.nan)
    eu = idx["euler"].astype(np.float64)
    speed[pairs + 1] = np.linalg.norm(eu[pairs + 1] - eu[pairs], axis=1) * avatar.fps
    return {"mad_p99": float(np.percentile(mad, 99)), "lm_p99": float(np.percentile(lm_speed, 99)),
            "speed": speed, "speaking": idx["state"] == 2}


def evaluate_motion(bundle: Path, footage: list[Path], out_dir: Path, device: str = "cpu",
                    cfg: MotionEvalConfig | None = None, video: bool = True) -> dict:
    cfg = cfg or MotionEvalConfig()
    avatar = Avatar.load(bundle, device)
    if avatar.bank is None:
        raise TwincastError(f"{bundle}: this bundle has no motion bank (made before banks "
                            "existed); add one with `twincast train motion WORKDIR`")
    fps = avatar.fps
    face_box = avatar.bank.index["face_box"]
    files = find_footage(footage)
    rng = np.random.default_rng(cfg.seed)
    # The real reference: each held-out clip measured, and its audio kept to drive.
    clips = []
    for f, cid in zip(files, clip_ids(files), strict=True):
        info = probe(f, cid, fps, 1.0)
        w, h = avatar.manifest.frame_size or (info.width, info.height)
        m = _Measure(fps, face_box * (info.width / w, info.height / h, info.width / w,
                                      info.height / h))
        for _, rgb in iter_frames(info, fps, 0, info.n_frames):
            m.add(rgb)
        m.close()
        real = m.arrays()
        audio = decode_audio(f, [SPEECH_RATE])[SPEECH_RATE]
        n = len(real["euler"])
        clips.append({"id": cid, "audio": audio, "real": real, "n": n,
                      "speaking": speech_per_frame(audio, n, fps),
                      "stressed": _stressed_words(f)})
    if not clips:
        raise TwincastError("no held-out footage to drive the avatar with")
    # The drive: every clip once per pass, in a new order each pass, silences between.
    parts, spans = [], []
    t = 0
    for _ in range(cfg.passes):
        for ci in rng.permutation(len(clips)):
            gap = np.zeros(int(rng.uniform(*cfg.gap_s) * SPEECH_RATE), np.float32)
            parts.append(gap)
            t += len(gap)
            spans.append((int(ci), t))
            parts.append(clips[ci]["audio"].astype(np.float32))
            t += len(clips[ci]["audio"])
    parts.append(np.zeros(int(cfg.gap_s[1] * SPEECH_RATE), np.float32))
    audio = np.concatenate(parts)
    windows = avatar.mel_windows(audio)
    n = len(windows)
    active, db = speech_activity(audio, n, fps, SPEECH_RATE)
    walker = avatar.walker(cfg.seed, cfg.walk)
    assert walker is not None
    entries = plan_walk(walker, active, db, nods=avatar.nods(windows))
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = _Measure(fps, face_box)
    # The walk's own frames (the footage it shows, before the mouth is painted), measured
    # the same way: head motion is the walk's doing; the painted jaw moves the face mesh's
    # chin, and so its head angles, a little on its own.
    base = _Measure(fps, face_box)
    writer = VideoWriter(out_dir / "motion.mp4", fps, *map(int, avatar.manifest.frame_size),
                         audio_rate=SPEECH_RATE) if video else None
    try:
        with bar(n, "render and measure", "frame") as pb:
            for a in range(0, n, 16):
                reqs = [FrameRequest(i, windows[i], base=entries[i])
                        for i in range(a, min(n, a + 16))]
                avatar.bank.prefetch(entries[a + 16: a + 32], entries[a + 16: a + 32])
                for i, frame in zip(range(a, a + len(reqs)), avatar.render(reqs), strict=True):
                    gen.add(frame)
                    base.add(avatar.base_frame(entries[i]))
                    if writer is not None:
                        writer.write(frame)
                        writer.write_audio(audio[int(i * SPEECH_RATE / fps):
                                                 int((i + 1) * SPEECH_RATE / fps)])
                pb.update(len(reqs))
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        gen.close()
        base.close()
    g = gen.arrays()
    walked = base.arrays()
    g["base_euler"], g["base_lm"] = walked["euler"], walked["lm"]
    ref = _bank_reference(avatar)
    report, worst = _figures(entries, g, active, clips, spans, ref, fps, cfg, n)
    atomic.save_npz(out_dir / "frames.npz", euler=g["euler"], base_euler=g["base_euler"],
                    opening=g["opening"],
                    landmarks=g["lm"], active=active,
                    mad=_area_change(g["grey"]),
                    a=np.array([e.a for e in entries]), b=np.array([e.b for e in entries]),
                    w=np.array([e.w for e in entries]))
    report["bundle"] = str(bundle)
    report["drive_seconds"] = round(n / fps, 1)
    report["bank"] = {"frames": avatar.bank.n, **avatar.manifest.motion.seconds,
                      "bytes": avatar.manifest.motion.bytes}
    _write_traces(g["base_euler"], active, clips, out_dir / "head_angles.png", fps)
    # The strip: the worst seams rendered again (the walk is fixed, so the same frames).
    strips = []
    for k in worst:
        idx = [i for i in range(k - 2, k + 4) if 0 <= i < n]
        strips.append(avatar.render([FrameRequest(i, windows[i], base=entries[i])
                                     for i in idx]))
    _write_strip(strips, out_dir / "worst_seams.png")
    atomic.write_json(out_dir / "report.json", report)
    return report


def _figures(entries: list[Entry], g: dict, active: np.ndarray, clips: list[dict],
             spans: list[tuple[int, int]], ref: dict, fps: int, cfg: MotionEvalConfig,
             n: int) -> tuple[dict, list[int]]:
    """The report's figures, and the output frames of the worst seams (for the strip)."""
    grey, lm = g["grey"], g["lm"]
    mad = _area_change(grey)
    lm_speed = np.concatenate([[np.nan], np.linalg.norm(np.diff(lm, axis=0), axis=2).mean(1)])
    seam_frames = seams(entries)
    over = [k for k in seam_frames if mad[k] > ref["mad_p99"] or lm_speed[k] > ref["lm_p99"]]
    plain = np.setdiff1d(np.arange(1, n), seam_frames)
    # The same rule over the output's own plain frames (the footage playing on, mouth
    # painted, measured the same way): the share a seam would have if it changed the picture
    # no more than the footage does; a p99 of the footage is passed by its own frames too.
    plain_over = (mad[plain] > ref["mad_p99"]) | (lm_speed[plain] > ref["lm_p99"])
    worst = sorted(seam_frames, key=lambda k: -np.nan_to_num(mad[k] / ref["mad_p99"]))[:4]
    painted_speed = angular_speed(g["euler"], fps)
    speed = angular_speed(g["base_euler"], fps)
    # The real held-out reference, clip by clip (no step across two clips).
    r_speed = np.concatenate([angular_speed(c["real"]["euler"], fps) for c in clips])
    r_speak = np.concatenate([c["speaking"] for c in clips])
    # Lips: the rendered opening over each driven clip against that clip's real one.
    gen_open, real_open = [], []
    for ci, start in spans:
        a = int(round(start / SPEECH_RATE * fps))
        m = min(clips[ci]["n"], n - a)
        gen_open.append(g["opening"][a: a + m])
        real_open.append(clips[ci]["real"]["opening"][:m])
    go, ro = np.concatenate(gen_open), np.concatenate(real_open)
    ok = np.isfinite(go) & np.isfinite(ro)
    lips = float(np.corrcoef(go[ok], ro[ok])[0, 1]) if ok.sum() > 2 else float("nan")
    b_speed, b_speak = ref["speed"], ref["speaking"]
    nods = None
    if all(c["stressed"] is not None for c in clips):
        real_hits = [nod_hits(c["real"]["lm"], c["stressed"], fps) for c in clips]
        gen_y = g["base_lm"]
        gen_hits = [nod_hits(gen_y, [start / SPEECH_RATE + t for t in clips[ci]["stressed"]],
                             fps) for ci, start in spans]
        r_h, r_n = sum(h for h, _ in real_hits), sum(m for _, m in real_hits)
        g_h, g_n = sum(h for h, _ in gen_hits), sum(m for _, m in gen_hits)
        nods = {"stressed_words": r_n, "real_hit_rate": round(r_h / max(1, r_n), 3),
                "generated_hit_rate": round(g_h / max(1, g_n), 3),
                "chance_rate": round(_chance_rate(gen_y, fps), 3),
                "rule": "a nod (head dipping by 0.04 inter-ocular distances or more against "
                        "its 1.2 s running mean) peaking 0-0.4 s after a stressed word's start"}

    def behaviour(real_speed: np.ndarray, real_speaking: np.ndarray,
                  speed: np.ndarray = speed) -> dict:
        gen_ratio = _energy_ratio(speed, active)
        real_ratio = _energy_ratio(real_speed, real_speaking)
        return {"ks_speaking": round(ks_distance(speed[active], real_speed[real_speaking]), 3),
                "ks_silent": round(ks_distance(speed[~active], real_speed[~real_speaking]), 3),
                "energy_ratio_generated": round(gen_ratio, 3),
                "energy_ratio_real": round(real_ratio, 3),
                "energy_ratio_error": round(abs(gen_ratio / real_ratio - 1), 3),
                "median_speed_speaking": [round(float(np.nanmedian(speed[active])), 2),
                                          round(float(np.nanmedian(real_speed[real_speaking])), 2)],
                "median_speed_silent": [round(float(np.nanmedian(speed[~active])), 2),
                                        round(float(np.nanmedian(real_speed[~real_speaking])), 2)]}

    return {
        "frames": n, "fps": fps,
        "seams": {"count": len(seam_frames),
                  "transitions": transitions(entries),
                  "fade_share": round(sum(e.b >= 0 for e in entries) / n, 3),
                  "per_minute": round(transitions(entries) / (n / fps / 60), 1),
                  "over_p99_share": round(len(over) / max(1, len(seam_frames)), 4),
                  "over_p99_share_plain": round(float(plain_over.mean()), 4)
                  if plain.size else None,
                  "mad_p99_footage": round(ref["mad_p99"], 3),
                  "landmark_p99_footage": round(ref["lm_p99"], 5),
                  "mad_seam_max": round(float(np.nanmax(mad[seam_frames])), 3)
                  if seam_frames else None,
                  "mad_seam_median": round(float(np.nanmedian(mad[seam_frames])), 3)
                  if seam_frames else None,
                  "mad_plain_median": round(float(np.nanmedian(mad[plain])), 3)},
        "repetition": repetition(entries, fps, cfg.window_s, cfg.horizon_s),
        "behaviour_vs_held_out": behaviour(r_speed, r_speak),
        "behaviour_vs_enrolment": behaviour(b_speed, b_speak),
        "behaviour_painted_vs_held_out": behaviour(r_speed, r_speak, painted_speed),
        "nods": nods,
        "lips_corr": round(lips, 3),
        "face_found": round(float(np.isfinite(g["euler"][:, 0]).mean()), 4),
        "speaking_share": round(float(active.mean()), 3),
        "method": "held-out clips' audio with random silences drives the bank walk; every "
                  "output frame rendered and measured with the enrolment's face mesh and "
                  "smoothing; seams against the bank footage's own 99th percentile "
                  "consecutive change (training/evaluate_motion.py)",
    }, worst


def _write_traces(euler: np.ndarray, active: np.ndarray, clips: list[dict], path: Path,
                  fps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(12, 6))
    t = np.arange(len(euler)) / fps
    for j, name in enumerate(("yaw", "pitch", "roll")):
        axes[0].plot(t, euler[:, j], lw=0.8, label=name)
    axes[0].fill_between(t, np.nanmin(euler), np.nanmax(euler), where=active, alpha=0.1,
                         color="k", label="speaking")
    axes[0].set_title("generated (head angles, degrees)")
    axes[0].legend(loc="upper right", fontsize=7)
    real = np.concatenate([c["real"]["euler"] for c in clips])
    speak = np.concatenate([c["speaking"] for c in clips])
    tr = np.arange(len(real)) / fps
    for j, name in enumerate(("yaw", "pitch", "roll")):
        axes[1].plot(tr, real[:, j], lw=0.8, label=name)
    axes[1].fill_between(tr, np.nanmin(real), np.nanmax(real), where=speak, alpha=0.1,
                         color="k")
    axes[1].set_title("real held-out clips, back to back")
    axes[1].set_xlabel("seconds")
    fig.tight_layout()
    with atomic.atomic_path(path, ".png") as tmp:
        fig.savefig(str(tmp), dpi=80, format="png")
    plt.close(fig)


def _write_strip(strips: list[list[np.ndarray]], path: Path) -> None:
    rows = []
    for frames in strips:
        if frames:
            h = 160
            frames = [cv2.resize(f, (int(f.shape[1] * h / f.shape[0]), h)) for f in frames]
            rows.append(np.concatenate(frames, 1))
    if not rows:
        return
    wmax = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, wmax - r.shape[1]), (0, 0))) for r in rows]
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    atomic.write_bytes(path, png.tobytes())
