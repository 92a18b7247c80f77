"""Consent at enrolment: the creator reads a one-time statement with a fresh code on camera,
and enrolment checks that recording against the footage before it makes a double.

``issue`` writes the challenge (the statement, a random four-digit code, when it expires)
into the work folder; ``check`` takes the recording and decides from three measures:

* **the words**: pocketsphinx decodes the recording with a grammar that is the statement
  itself with each code digit free (any of ten). The digits it takes must be the code, and
  the statement path must explain the audio nearly as well as an unconstrained phone loop
  does (the mean per-frame acoustic log-likelihood ratio, ``words_score``): speech that is
  not the statement forces the grammar through phones that are not there and scores low.
  Reading another enrolment's statement (another code) or the wrong code fails on the
  digits; reading anything else fails on the score;
* **the voice**: resemblyzer's speaker embedding of the recording against the footage's
  speech (cosine similarity);
* **the face**: a face-shape signature from MediaPipe's 3-D face mesh (distances between
  landmarks that do not move with speech or expression, over the distance between the
  eyes, median over frames) of the recording against the footage.

The thresholds and what they were measured on are in README ("Consent").
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from avatar import atomic
from avatar.errors import TwincastError

log = logging.getLogger(__name__)

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class ConsentConfig:
    words_min: float = -4.0
    """Lowest ``words_score`` (per-frame log-likelihood ratio of the statement's path over
    a free phone loop, in natural-log units) of a recording that says the statement."""
    voice_min: float = 0.80
    """Lowest resemblyzer cosine between the recording's voice and the footage's."""
    face_max: float = 0.03
    """Largest face-signature distance between the recording's face and the footage's."""
    frames: int = 24
    """Frames of the recording (spread over it) and of the footage whose faces are read."""


# Landmarks that keep their place while a person speaks: eye corners, brow ends, nose
# bridge, tip and wings, cheekbones, jaw corners, chin.
SHAPE_POINTS = (33, 133, 362, 263, 70, 300, 168, 1, 98, 327, 234, 454, 172, 397, 152)


def statement(name: str, code: str) -> str:
    return (f"I, {name}, agree that twincast may create a digital double of me. "
            f"Code {code}.")


@dataclass(frozen=True)
class Challenge:
    name: str
    code: str
    """Four digits joined by dashes, as printed: 4-7-2-9."""
    issued: float
    expires: float

    @property
    def text(self) -> str:
        return statement(self.name, self.code)

    @property
    def spoken(self) -> str:
        """The statement as a speech synthesiser should read it (digit by digit, where
        espeak-ng reads 4-7-2-9 as "four dash seven ...")."""
        return statement(self.name, self.code.replace("-", ", "))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def challenge_path(workdir: Path) -> Path:
    return Path(workdir) / "consent" / "challenge.json"


def issue(workdir: Path, name: str, valid_minutes: float = 30.0) -> Challenge:
    """A fresh challenge in ``workdir`` (replacing any earlier one: its code stops working)."""
    name = " ".join(name.split())
    if not name or len(name) > 60 or not re.fullmatch(r"[A-Za-z][A-Za-z .'-]*", name):
        raise TwincastError(f"--name {name!r}: give the person's name in letters (at most "
                            "60), as they will say it")
    if not 1 <= valid_minutes <= 7 * 24 * 60:
        raise TwincastError("--valid-minutes: between 1 and 10080 (a week)")
    code = "-".join(str(secrets.randbelow(10)) for _ in range(4))
    now = time.time()
    ch = Challenge(name=name, code=code, issued=now, expires=now + valid_minutes * 60)
    atomic.write_json(challenge_path(workdir), asdict(ch))
    return ch


def load_challenge(workdir: Path) -> Challenge:
    path = challenge_path(workdir)
    try:
        d = json.loads(path.read_text())
        return Challenge(name=str(d["name"]), code=str(d["code"]), issued=float(d["issued"]),
                         expires=float(d["expires"]))
    except FileNotFoundError:
        raise TwincastError(f"{workdir}: no consent statement was issued here; run "
                            f"`twincast consent --workdir {workdir} --name NAME` first, "
                            "then record it") from None
    except (ValueError, KeyError, TypeError):
        raise TwincastError(f"{path} is damaged; run `twincast consent` again") from None


# ------------------------------------------------------------------ the words
def template(text: str) -> list[str]:
    """The decoder's tokens for ``text``: its words, with ``#`` for each single digit (the
    code's digits are written as digits: 4-7-2-9)."""
    from training.align import normalise

    tokens: list[str] = []
    for part in re.split(r"(\d)", text):
        if part.isdigit():
            tokens.append("#")
        else:
            tokens += normalise(part)
    return tokens


@dataclass(frozen=True)
class Heard:
    digits: str | None
    """The digits taken in the ``#`` slots, joined by dashes; None when no path fit."""
    score: float
    """Mean per-frame log-likelihood ratio of the grammar's path over a free phone loop
    (0: the statement explains the audio as well as any phones could; -inf: no path)."""


class _Recogniser:
    """One pocketsphinx decoder with the aligner's wide beams (a grammar this small stays
    fast, and the default beams prune the right path away in long statements)."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder, get_model_path

        self.decoder = Decoder(samprate=16000, bestpath=False, loglevel="FATAL",
                               beam=1e-100, wbeam=1e-80, pbeam=1e-100)
        phone_lm = Path(get_model_path()) / "en-us" / "en-us-phone.lm.bin"
        self.decoder.add_allphone_file("phones", str(phone_lm))
        self._added: set[str] = set()

    def words(self, words: list[str]) -> list[str]:
        from training.align import add_pronunciations

        return add_pronunciations(self.decoder, words, self._added)

    def _run(self, pcm: bytes, search: str) -> tuple[list, int]:
        d = self.decoder
        d.activate_search(search)
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        return (list(d.seg() or []) if d.hyp() is not None else []), d.n_frames()

    def hear(self, audio16: np.ndarray, tokens: list[str]) -> Heard:
        # Each digit slot free, all ten alike: a prior for the expected digit (tried from
        # 0.1 to 0.99999) changed no decision on the synthetic or the GRID speech.
        digits = self.words(list(DIGITS))
        arcs: list[tuple] = []
        state = 0
        for t in tokens:
            if t == "#":
                arcs += [(state, state + 1, 1.0 / len(digits), w) for w in digits]
                state += 1
            else:
                for w in self.words([t]):
                    arcs.append((state, state + 1, 1.0, w))
                    state += 1
        if state == 0:
            return Heard(None, float("-inf"))
        noise = _noise_floor(audio16)
        pcm = (np.clip(audio16 + noise, -1, 1) * 32767).astype(np.int16).tobytes()
        d = self.decoder
        d.add_fsg("consent", d.create_fsg("consent", 0, state, arcs))
        try:
            segs, frames = self._run(pcm, "consent")
        finally:
            d.remove_search("consent")
        if not segs or frames == 0:
            return Heard(None, float("-inf"))
        phones, _ = self._run(pcm, "phones")
        # The binding hands scores back exponentiated, and pocketsphinx keeps them shifted
        # down by 2**10 (so they sit near 1): their logs add up along a path, and * 1024
        # puts them back in natural-log units.
        path = sum(np.log(max(s.ascore, 1e-300)) for s in segs) * 1024
        free = sum(np.log(max(s.ascore, 1e-300)) for s in phones) * 1024
        said = [re.sub(r"\(\d+\)$", "", s.word) for s in segs]
        got = [str(DIGITS.index(w)) for w in said if w in DIGITS]
        return Heard("-".join(got[-tokens.count("#"):]) if "#" in tokens else "",
                     float((path - free) / frames))


NOISE_FLOOR = 3e-3
"""R.m.s. of the quietest tenth of a recording's 20 ms frames that the recogniser wants."""


def _noise_floor(audio16: np.ndarray) -> np.ndarray:
    """Noise to add so that the recording's quiet stretches are no quieter than a room's.
    Digital silence (a synthetic voice, an edited recording) breaks pocketsphinx's
    features outright, and near-silence between a synthetic voice's words made it mistake
    digits (eight for six, seven for two: 27 of 30 codes right with a -70 dBFS floor, 30
    of 30 with this one); real recordings have a floor of their own and get little."""
    n = len(audio16) // 320 * 320
    if n == 0:
        return np.zeros(len(audio16))
    rms = np.sqrt(np.mean(audio16[:n].astype(np.float64).reshape(-1, 320) ** 2, axis=1))
    floor = float(np.percentile(rms, 10))
    std = np.sqrt(max(NOISE_FLOOR ** 2 - floor ** 2, (NOISE_FLOOR / 10) ** 2))
    return np.random.default_rng(0).normal(0.0, std, len(audio16))


@functools.cache
def _recogniser() -> _Recogniser:
    return _Recogniser()


def hear(audio16: np.ndarray, text: str) -> Heard:
    """What the recording ``audio16`` (16 kHz) says of ``text`` (its digits free)."""
    return _recogniser().hear(audio16, template(text))


# ------------------------------------------------------------------ the voice
@functools.cache
def _voice_encoder():  # noqa: ANN202 - resemblyzer.VoiceEncoder
    from resemblyzer import VoiceEncoder

    return VoiceEncoder(device="cpu", verbose=False)


def voice_embedding(audio16: np.ndarray) -> np.ndarray | None:
    """resemblyzer's speaker embedding (unit length) of ``audio16``; None under a second of
    speech."""
    from resemblyzer import preprocess_wav

    wav = preprocess_wav(np.asarray(audio16, np.float32), source_sr=16000)
    if len(wav) < 16000:
        return None
    return _voice_encoder().embed_utterance(wav)


# ------------------------------------------------------------------ the face
def face_signature(frames: list[np.ndarray]) -> np.ndarray | None:
    """Median shape vector over the frames with a face; None when none has one."""
    from training.face import FaceConfig, FaceTracker

    if not frames:
        return None
    shapes = []
    tracker = FaceTracker.quiet(FaceConfig(), frames[0])
    try:
        for rgb in frames:
            obs = tracker(rgb, (rgb.shape[1], rgb.shape[0]))
            if obs.landmarks is None:
                continue
            p = obs.landmarks[list(SHAPE_POINTS)].astype(np.float64)
            eyes = float(np.linalg.norm(p[0] - p[3]))
            if eyes <= 0:
                continue
            i, j = np.triu_indices(len(p), 1)
            shapes.append(np.linalg.norm(p[i] - p[j], axis=1) / eyes)
    finally:
        tracker.close()
    return np.median(np.array(shapes), axis=0) if shapes else None


def face_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean relative difference of two face signatures."""
    return float(np.mean(np.abs(a - b) / ((a + b) / 2)))


# ------------------------------------------------------------------ media
def read_media(path: Path, frames: int = 24, audio: bool = True) \
        -> tuple[np.ndarray, list[np.ndarray]]:
    """A recording's 16 kHz speech and up to ``frames`` RGB frames spread over it."""
    import av

    from training.ingest import decode_audio

    speech = np.zeros(0, np.float32)
    pictures: list[np.ndarray] = []
    try:
        if audio:
            try:
                speech = decode_audio(path, [16000])[16000]
            except TwincastError:
                speech = np.zeros(0, np.float32)
        with av.open(str(path)) as c:
            if c.streams.video:
                stream = c.streams.video[0]
                total = stream.frames or 0
                step = max(1, total // frames) if total else 1
                for i, f in enumerate(c.decode(stream)):
                    if i % step == 0:
                        pictures.append(f.to_ndarray(format="rgb24"))
                if len(pictures) > frames:
                    pick = np.linspace(0, len(pictures) - 1, frames).round().astype(int)
                    pictures = [pictures[i] for i in pick]
    except (av.error.FFmpegError, OSError) as e:
        raise TwincastError(f"{path}: cannot be read as a recording ({e})") from None
    return speech, pictures


# ------------------------------------------------------------------ the whole check
@dataclass
class ConsentResult:
    accepted: bool
    reasons: list[str]
    name: str
    code: str
    code_heard: str | None
    words_score: float
    voice_similarity: float | None
    face_distance: float | None
    clip_sha256: str
    challenge_sha256: str
    checked: str = field(default_factory=lambda: datetime.now(UTC).isoformat(
        timespec="seconds"))

    def manifest(self, cfg: ConsentConfig) -> dict:
        """The bundle's ``consent`` section."""
        d = asdict(self)
        d.pop("accepted")
        d.pop("reasons")
        d["status"] = "verified" if self.accepted else "refused"
        d["statement"] = statement(self.name, self.code)
        d["thresholds"] = {"words_min": cfg.words_min, "voice_min": cfg.voice_min,
                           "face_max": cfg.face_max}
        return d


@dataclass
class Footage:
    """What the consent recording is compared with: the footage's speech and faces."""

    speech: np.ndarray
    voice: np.ndarray | None
    face: np.ndarray | None

    @classmethod
    def read(cls, clips: list[Path], cfg: ConsentConfig, seconds: float = 30.0) -> Footage:
        """Up to ``seconds`` of speech and ``cfg.frames`` frames from the clips."""
        speech: list[np.ndarray] = []
        frames: list[np.ndarray] = []
        per_clip = max(2, cfg.frames // max(len(clips), 1))
        have = 0.0
        for clip in clips:
            if have >= seconds and len(frames) >= cfg.frames:
                break
            a, f = read_media(clip, per_clip, audio=have < seconds)
            speech.append(a)
            have += len(a) / 16000
            frames += f
        audio = np.concatenate(speech)[:int(seconds * 16000)] if speech else \
            np.zeros(0, np.float32)
        return cls(audio, voice_embedding(audio) if len(audio) else None,
                   face_signature(frames[:cfg.frames * 2]))


def check(clip: Path, workdir: Path, footage: Footage, cfg: ConsentConfig = ConsentConfig(),
          now: float | None = None) -> ConsentResult:
    """Check ``clip`` against the challenge in ``workdir`` and the footage. Raises for what
    the creator must fix (no challenge, expired code, no speech, no face, unreadable);
    returns a refused result for a recording that does not match."""
    ch = challenge_for(clip, workdir, now)
    return check_recording(clip, ch.text, ch.code, footage, cfg, ch.name, ch.digest())


def challenge_for(clip: Path, workdir: Path, now: float | None = None) -> Challenge:
    """The challenge a recording answers, once the cheap faults are ruled out (no
    challenge, an expired code, no such file): before the footage is read."""
    ch = load_challenge(workdir)
    now = time.time() if now is None else now
    if now > ch.expires:
        when = datetime.fromtimestamp(ch.expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise TwincastError(f"the consent code {ch.code} expired at {when}; run `twincast "
                            f"consent --workdir {workdir} --name ...` again and record the "
                            "new statement")
    if not Path(clip).is_file():
        raise TwincastError(f"{clip}: no such consent recording")
    return ch


def check_recording(clip: Path, text: str, code: str, footage: Footage,
                    cfg: ConsentConfig = ConsentConfig(), name: str = "",
                    challenge_sha256: str = "") -> ConsentResult:
    """Whether ``clip`` says ``text`` with the dashed digits ``code`` in it, in the
    footage's voice, with its face (``bench consent`` also calls this with other texts)."""
    clip = Path(clip)
    if not clip.is_file():
        raise TwincastError(f"{clip}: no such consent recording")
    audio, frames = read_media(clip, cfg.frames)
    loud = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if len(audio) else 0.0
    if len(audio) < 16000 or loud < 1e-3:
        raise TwincastError(f"{clip}: no speech in the consent recording; record yourself "
                            "reading the statement aloud")
    if not frames:
        raise TwincastError(f"{clip}: the consent recording has no video; record it on "
                            "camera, in the same setting as the footage")
    mine = face_signature(frames)
    if mine is None:
        raise TwincastError(f"{clip}: no face in the consent recording; record it facing "
                            "the camera")
    heard = hear(audio, text)
    voice = voice_embedding(audio)
    sim = float(np.dot(voice, footage.voice)) \
        if voice is not None and footage.voice is not None else None
    dist = face_distance(mine, footage.face) if footage.face is not None else None
    reasons = []
    if heard.score < cfg.words_min:
        reasons.append("the statement was not heard")
    if heard.digits != code:
        reasons.append(f"the code heard ({heard.digits or 'none'}) is not {code} (read "
                       "it slowly, digit by digit)")
    if footage.voice is None:
        reasons.append("the footage has no speech to compare the voice with")
    elif sim is None or sim < cfg.voice_min:
        reasons.append("the voice is not the footage's" + (
            f" (similarity {sim:.2f} < {cfg.voice_min})" if sim is not None else
            " (under a second of speech in the recording)"))
    if footage.face is None:
        reasons.append("the footage has no face to compare with")
    elif dist is None or dist > cfg.face_max:
        reasons.append(f"the face is not the footage's (distance {dist:.3f} > "
                       f"{cfg.face_max})")
    return ConsentResult(
        accepted=not reasons, reasons=reasons, name=name, code=code,
        code_heard=heard.digits,
        words_score=round(heard.score, 3) if np.isfinite(heard.score) else -1e9,
        voice_similarity=round(sim, 3) if sim is not None else None,
        face_distance=round(dist, 4) if dist is not None else None,
        clip_sha256=hashlib.sha256(clip.read_bytes()).hexdigest(),
        challenge_sha256=challenge_sha256)


# ------------------------------------------------------------------ the record
def record_path(workdir: Path) -> Path:
    return Path(workdir) / "consent" / "record.json"


def write_record(workdir: Path, section: dict) -> None:
    atomic.write_json(record_path(workdir), section)


def read_record(workdir: Path) -> dict | None:
    """The last consent check's section in ``workdir``; None when there is none."""
    path = record_path(workdir)
    try:
        d = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None  # none yet (or no work folder: enrolment says what is wrong with it)
    except OSError as e:
        log.warning("%s cannot be read (%s): the bundle is marked unconsented", path,
                    e.strerror)
        return None
    except ValueError:
        log.warning("%s is damaged: the bundle is marked unconsented", path)
        return None
    return d if isinstance(d, dict) else None


def bundle_consent(bundle: Path) -> dict | None:
    """The consent record of the enrolment a bundle is exported from (the bundle lives in
    WORKDIR/avatars/NAME), for its manifest; None when its person's consent was not
    verified there."""
    d = read_record(Path(bundle).parent.parent)
    return d if d is not None and d.get("status") == "verified" else None
