"""``twincast sample``: a synthetic presenter a fresh machine can enrol from.

A real, public-domain portrait that ships inside scikit-image (NASA's photo of Eileen
Collins, ``skimage.data.astronaut()``) is animated: the jaw opens as the phonemes of
espeak-ng's speech call for, the eyes blink at random, and the head sways a little, more
while speaking than while silent, with a nod on every long word (the presenter's known
mannerism, for ``twincast eval motion`` to recover). The
per-frame ground truth (mouth opening on MediaPipe's 13-14 / 33-263 scale, blink closure,
word timings) is saved beside the video, so features and models can be checked against it.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar import atomic
from avatar.errors import TwincastError
from avatar.video_io import VideoWriter
from training.progress import bar
from training.sample.speech import make_script

log = logging.getLogger(__name__)

LOWER_INNER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
RIGHT_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)


@dataclass(frozen=True)
class SampleConfig:
    minutes: float = 2.0
    width: int = 512
    height: int = 512
    seed: int = 0
    fps: int = 25
    max_opening: float = 0.32
    """Widest jaw opening, in inter-ocular distances."""
    blink_every_s: tuple[float, float] = (2.0, 6.0)
    crf: int = 20
    nod_letters: int = 7
    """The presenter's mannerism: a nod on every word this long or longer (a stressed,
    content-heavy word), and a livelier sway while speaking than while silent."""
    nod_depth: float = 0.10
    """How far the head dips in a nod, in inter-ocular distances."""
    nod_s: float = 0.4
    speaking_sway: float = 1.8
    """Sway while speaking over sway while silent."""
    read: tuple[str, ...] = ()
    """Sentences to read, in order, instead of a random script of ``minutes`` (a consent
    statement: ``twincast sample --consent``)."""
    voice: str = "en-us"
    """espeak-ng voice (another one makes another speaker, for the consent figures)."""
    name: str = "sample"
    """Base name of the files written: NAME.mp4, and for a random script its transcript,
    words and ground truth."""


@dataclass
class SampleFiles:
    video: Path
    transcript: Path
    truth: Path
    words: Path


class _Portrait:
    """The portrait, cropped to the output's aspect, its landmarks, and static warp maps."""

    def __init__(self, width: int, height: int):
        import skimage.data

        img = skimage.data.astronaut()  # 512x512 RGB, public domain (NASA)
        lm = _detect(img)
        aspect = width / height
        ch = min(320.0, 512.0 / aspect)
        cw = ch * aspect
        cx = float(np.clip(lm[1, 0], cw / 2, 512 - cw / 2))
        x0, y0 = cx - cw / 2, 0.0
        # Render at up to 2x the portrait's pixels, then resize once to the output size.
        self.scale = min(2.0, height / ch)
        rw, rh = int(round(cw * self.scale)) // 2 * 2, int(round(ch * self.scale)) // 2 * 2
        m = np.array([[self.scale, 0, -x0 * self.scale], [0, self.scale, -y0 * self.scale]])
        self.image = cv2.warpAffine(img, m, (rw, rh), flags=cv2.INTER_CUBIC,
                                    borderMode=cv2.BORDER_REFLECT)
        self.lm = lm.copy()
        self.lm[:, 0] = (lm[:, 0] - x0) * self.scale
        self.lm[:, 1] = (lm[:, 1] - y0) * self.scale
        self.lm[:, 2] *= self.scale
        self.iod = float(np.linalg.norm(self.lm[33, :2] - self.lm[263, :2]))
        self.base_gap = float(np.linalg.norm(self.lm[13, :2] - self.lm[14, :2]))
        self._build_maps()

    def _build_maps(self) -> None:
        h, w = self.image.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        lm = self.lm
        face_w = float(np.linalg.norm(lm[234, :2] - lm[454, :2]))
        chin_y = lm[152, 1]
        # Jaw: pixels below the lower inner lip move down with the opening. The moving
        # region is narrow at the lips (the corners barely move) and widens towards the
        # chin, which drops with the whole jaw; below the chin it fades out.
        lip = lm[list(LOWER_INNER_LIP), :2]
        order = np.argsort(lip[:, 0])
        line = np.interp(xx[0], lip[order, 0], lip[order, 1]).astype(np.float32)[None, :]
        vert = np.clip((yy - line + 2.0) / 4.0, 0, 1)
        below = np.clip(1 - (yy - chin_y) / (0.35 * face_w), 0, 1)
        self.lip_y = float(lm[14, 1])
        self.chin_y = float(chin_y)
        self.face_w = face_w
        self.mouth_x = float(lm[14, 0])
        horiz = np.exp(-0.5 * ((xx - self.mouth_x) / self._sigma(yy)) ** 2)
        self.jaw = (vert * below * horiz).astype(np.float32)
        # Head: a soft ellipse around face and hair moves; the shoulders stay put.
        cx, cy = lm[168, 0], lm[168, 1] - 0.1 * face_w
        r = ((xx - cx) / (1.05 * face_w)) ** 2 + ((yy - cy) / (1.25 * face_w)) ** 2
        self.head = np.clip(1.6 - r, 0, 1).astype(np.float32)
        self.pivot = np.array([lm[152, 0], lm[152, 1] + 0.25 * face_w], np.float32)
        self.xx, self.yy = xx, yy
        # Eyelid colour: the skin between eye and brow.
        lids = []
        for eye, brow in ((RIGHT_EYE, 105), (LEFT_EYE, 334)):
            top = lm[list(eye), 1].min()
            ex = int(lm[list(eye), 0].mean())
            y = int((top + lm[brow, 1]) / 2)
            patch = self.image[max(0, y - 2): y + 3, max(0, ex - 4): ex + 5]
            lids.append(patch.reshape(-1, 3).mean(0) * 0.82)  # lids sit in shadow
        self.lid_colour = lids

    def _sigma(self, y: np.ndarray) -> np.ndarray:
        depth = np.clip((y - self.lip_y) / max(self.chin_y - self.lip_y, 1.0), 0, 1)
        return self.face_w * (0.17 + 0.25 * depth)

    def render(self, opening_px: float, angle: float, shift: tuple[float, float],
               blink: float) -> np.ndarray:
        a = math.radians(angle)
        c, s = math.cos(a) - 1.0, math.sin(a)
        dx0 = self.xx - self.pivot[0]
        dy0 = self.yy - self.pivot[1]
        # Backward map: out(p) = src(p - d(p)), with d = head motion + jaw opening.
        map_x = self.xx - self.head * (c * dx0 - s * dy0 + shift[0])
        map_y = self.yy - self.head * (s * dx0 + c * dy0 + shift[1]) - opening_px * self.jaw
        out = cv2.remap(self.image, map_x, map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT)

        def moved(idx: tuple[int, ...], extra_y: float = 0.0) -> np.ndarray:
            p = self.lm[list(idx), :2].astype(np.float32)
            if extra_y:  # follow the jaw field, so the cavity meets the moved lip exactly
                p = p + np.stack([np.zeros(len(p)), extra_y * np.exp(
                    -0.5 * ((p[:, 0] - self.mouth_x) / self._sigma(p[:, 1])) ** 2)], 1)
            q = p - self.pivot
            rot = np.stack([q[:, 0] * math.cos(a) - q[:, 1] * math.sin(a),
                            q[:, 0] * math.sin(a) + q[:, 1] * math.cos(a)], 1) + self.pivot
            return rot + np.array(shift)

        if opening_px > 0.5:
            top = moved(LOWER_INNER_LIP)
            bottom = moved(LOWER_INNER_LIP, opening_px)[::-1]
            _fill(out, np.concatenate([top, bottom]), (34, 12, 14))
        if blink > 0.05:
            for eye, colour in zip((RIGHT_EYE, LEFT_EYE), self.lid_colour, strict=True):
                _close_eye(out, moved(eye), blink, colour)
        return out


def _fill(img: np.ndarray, poly: np.ndarray, colour: tuple[int, int, int]) -> None:
    cv2.fillPoly(img, [np.round(poly * 4).astype(np.int32)], colour, lineType=cv2.LINE_AA,
                 shift=2)


def _close_eye(img: np.ndarray, eye: np.ndarray, closure: float, colour: np.ndarray) -> None:
    """Draw the upper lid down over the eye, ``closure`` of the way."""
    x0, y0 = np.floor(eye.min(0)).astype(int) - 2
    x1, y1 = np.ceil(eye.max(0)).astype(int) + 3
    h, w = y1 - y0, x1 - x0
    if h <= 0 or w <= 0 or y0 < 0 or x0 < 0:
        return
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round((eye - [x0, y0]) * 4).astype(np.int32)], 255,
                 lineType=cv2.LINE_AA, shift=2)
    lid_y = (eye[:, 1].min() - y0) + closure * (np.ptp(eye[:, 1]) + 1.5)
    rows = np.arange(h, dtype=np.float32)[:, None]
    cover = np.clip(lid_y - rows + 0.5, 0, 1) * (mask / 255.0)
    roi = img[y0:y1, x0:x1].astype(np.float32)
    lash = np.clip(1 - np.abs(rows - lid_y) / 1.8, 0, 1) * (mask / 255.0) * min(1, closure * 2)
    roi = roi * (1 - cover[..., None]) + colour * cover[..., None]
    roi = roi * (1 - 0.75 * lash[..., None])
    img[y0:y1, x0:x1] = np.clip(roi, 0, 255).astype(np.uint8)


def _detect(img: np.ndarray) -> np.ndarray:
    os.environ.setdefault("GLOG_minloglevel", "2")
    import mediapipe as mp

    from avatar.quiet import native_stderr_silenced

    with native_stderr_silenced(), mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, refine_landmarks=True, max_num_faces=1) as mesh:
        res = mesh.process(img)
    if not res.multi_face_landmarks:
        raise TwincastError("the sample portrait's face was not found (broken scikit-image "
                            "or mediapipe install?)")
    h, w = img.shape[:2]
    return np.array([(p.x * w, p.y * h, p.z * w) for p in res.multi_face_landmarks[0].landmark],
                    np.float32)


def _smooth_noise(n: int, fps: int, rng: np.random.Generator, amp: float) -> np.ndarray:
    """Slow, natural-looking sway: a few low-frequency sinusoids with random phases."""
    t = np.arange(n) / fps
    out = np.zeros(n)
    for f, w in ((0.07, 1.0), (0.19, 0.5), (0.41, 0.25)):
        out += w * np.sin(2 * np.pi * f * rng.uniform(0.7, 1.3) * t + rng.uniform(0, 6.3))
    return (amp * out / 1.75).astype(np.float32)


def _liveliness(sentences: list[tuple[float, float, str]], n: int, cfg: SampleConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: whether a sentence is being spoken, and the sway's gain (1 in silence,
    ``speaking_sway`` in speech, eased over half a second)."""
    t = np.arange(n) / cfg.fps
    speaking = np.zeros(n, bool)
    for a, b, _ in sentences:
        speaking |= (t >= a) & (t < b)
    k = np.hanning(int(cfg.fps * 0.5) * 2 + 1)
    eased = np.convolve(speaking.astype(np.float32), k / k.sum(), mode="same")
    return speaking, (1.0 + (cfg.speaking_sway - 1.0) * eased).astype(np.float32)


def _nods(onsets: list[float], n: int, cfg: SampleConfig) -> np.ndarray:
    """Downward head offset (inter-ocular distances): a smooth dip and return of
    ``nod_s`` seconds from each onset."""
    out = np.zeros(n, np.float32)
    t = np.arange(n) / cfg.fps
    for t0 in onsets:
        u = (t - t0) / cfg.nod_s
        inside = (u > 0) & (u < 1)
        out[inside] = np.maximum(out[inside], cfg.nod_depth * np.sin(np.pi * u[inside]) ** 2)
    return out


def _blinks(n: int, fps: int, rng: random.Random, every: tuple[float, float]) -> np.ndarray:
    closure = np.zeros(n, np.float32)
    t = rng.uniform(*every)
    profile = np.array([0.35, 0.8, 1.0, 0.85, 0.5, 0.2], np.float32)
    while True:
        i = int(t * fps)
        if i + len(profile) >= n:
            break
        closure[i:i + len(profile)] = np.maximum(closure[i:i + len(profile)], profile)
        t += rng.uniform(*every)
    return closure


def write_sample(out_dir: Path, cfg: SampleConfig) -> SampleFiles:
    """Write sample.mp4, transcript.txt, words.json and truth.npz into ``out_dir``."""
    if cfg.width % 2 or cfg.height % 2 or min(cfg.width, cfg.height) < 64:
        raise TwincastError(f"--size {cfg.width}x{cfg.height}: sides must be even and >= 64")
    if cfg.minutes < 0.1 and not cfg.read:
        raise TwincastError(f"--minutes {cfg.minutes:g}: a sample must last at least 0.1 "
                            "minutes (6 s) to hold a spoken sentence")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TwincastError(f"{out_dir}: cannot create ({e.strerror})") from None
    rng = random.Random(cfg.seed)
    nrng = np.random.default_rng(cfg.seed)
    script = make_script(cfg.minutes * 60, rng, lines=cfg.read, voice=cfg.voice)
    seconds = len(script.audio) / script.rate
    n = int(round(seconds * cfg.fps))
    # Coarticulation: the jaw cannot jump between phoneme targets.
    k = np.exp(-0.5 * (np.arange(-8, 9) / 3.5) ** 2)
    smooth = np.convolve(script.opening_100hz, k / k.sum(), mode="same")
    frame_t = np.arange(n) / cfg.fps
    opening = np.interp(frame_t, np.arange(len(smooth)) / 100, smooth).astype(np.float32)
    blink = _blinks(n, cfg.fps, rng, cfg.blink_every_s)
    portrait = _Portrait(cfg.width, cfg.height)
    speaking, lively = _liveliness(script.sentences, n, cfg)
    angle = _smooth_noise(n, cfg.fps, nrng, 2.5) * lively
    sway = portrait.iod * 0.12
    shift_x = _smooth_noise(n, cfg.fps, nrng, sway) * lively
    nod_times = [t for t, w in script.words if sum(ch.isalpha() for ch in w) >= cfg.nod_letters]
    shift_y = _smooth_noise(n, cfg.fps, nrng, sway * 0.6) * lively + \
        _nods(nod_times, n, cfg) * portrait.iod
    opening_px = opening * cfg.max_opening * portrait.iod
    samples_per_frame = script.rate / cfg.fps
    files = SampleFiles(video=out_dir / f"{cfg.name}.mp4",
                        transcript=out_dir / ("transcript.txt" if cfg.name == "sample"
                                              else f"{cfg.name}.txt"),
                        truth=out_dir / ("truth.npz" if cfg.name == "sample"
                                         else f"{cfg.name}-truth.npz"),
                        words=out_dir / ("words.json" if cfg.name == "sample"
                                         else f"{cfg.name}-words.json"))
    log.info("rendering %d frames at %dx%d", n, cfg.width, cfg.height)
    with VideoWriter(files.video, cfg.fps, cfg.width, cfg.height, crf=cfg.crf,
                     audio_rate=script.rate) as writer, bar(n, "sample", "frame") as pb:
        for i in range(n):
            img = portrait.render(float(opening_px[i]), float(angle[i]),
                                  (float(shift_x[i]), float(shift_y[i])), float(blink[i]))
            if img.shape[1] != cfg.width or img.shape[0] != cfg.height:
                img = cv2.resize(img, (cfg.width, cfg.height), interpolation=cv2.INTER_LINEAR)
            writer.write(img)
            a, b = int(round(i * samples_per_frame)), int(round((i + 1) * samples_per_frame))
            writer.write_audio(script.audio[a:b])
            pb.update(1)
    if cfg.read:
        return files  # a recording to check, not footage: no ground truth wanted
    # Ground truth on MediaPipe's scale: inner-lip gap over the inter-ocular distance.
    truth_opening = (portrait.base_gap + opening_px) / portrait.iod
    atomic.save_npz(files.truth, mouth_opening=truth_opening.astype(np.float32),
                    blink_closure=blink, blink=(blink >= 0.5),
                    head_roll_deg=angle, head_shift_px=np.stack([shift_x, shift_y], 1),
                    speech_opening=opening, fps=np.array(cfg.fps), speaking=speaking,
                    nod_onsets_s=np.array(nod_times, np.float64),
                    nod_s=np.array(cfg.nod_s), iod_px=np.array(portrait.iod))
    atomic.write_text(files.transcript, script.text + "\n")
    atomic.write_json(files.words, {
        "config": asdict(cfg),
        "sentences": [{"start": round(a, 3), "end": round(b, 3), "text": s}
                      for a, b, s in script.sentences],
        "words": [{"start": round(t, 3), "word": w} for t, w in script.words],
    })
    return files
