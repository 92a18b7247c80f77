"""``twincast bench consent``: how the consent check (``training.consent``) decides, on the
synthetic sample and on the real recordings in ../shared/data.

* **The synthetic sample**: the presenter (``twincast sample``) reads the statement with a
  fresh code, as ``twincast sample --consent`` does, and is checked against a sample of
  its own as footage: the right code (accept), the same recording against another code
  (one digit changed, and all four drawn anew), another enrolment's statement (another
  name and code), the statement in other espeak-ng voices with the same face, and the GRID
  speaker's recording against the sample.
* **GRID** (a real man on camera): no one in the data reads the statement, so each
  "recording" is four held-out GRID sentences joined (each has a digit: four digits, a
  code), checked with their own text in place of the statement against the other clips
  as footage: the right code (accept), a wrong code, another recording's text and code
  (another enrolment), LJ Speech's voice (a real woman) dubbed over the man's video
  (another speaker), and the synthetic presenter's reading (another person).
* **LJ Speech** (a real woman, audio only): the statement score of her own sentences
  against the statement's, and her voice against her other recordings and against GRID.

Nothing is tuned on eval splits: every clip is from ``train``.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from training import consent as C

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OTHER_VOICES = ("en-us+m3", "en-us+f3", "en-us+klatt")


def _code(rng: random.Random) -> str:
    return "-".join(str(rng.randrange(10)) for _ in range(4))


def _one_changed(code: str, rng: random.Random) -> str:
    d = code.split("-")
    i = rng.randrange(4)
    d[i] = str((int(d[i]) + rng.randrange(1, 10)) % 10)
    return "-".join(d)


def _rate(results: list[bool]) -> dict:
    return {"n": len(results), "rate": round(sum(results) / max(len(results), 1), 3)}


def _outcome(r: C.ConsentResult) -> dict:
    return {"accepted": r.accepted, "code_heard": r.code_heard, "words": r.words_score,
            "voice": r.voice_similarity, "face": r.face_distance}


def _write_clip(path: Path, frames: list[np.ndarray], audio16: np.ndarray) -> Path:
    from avatar.video_io import VideoWriter

    h, w = frames[0].shape[:2]
    with VideoWriter(path, 25, w, h, audio_rate=16000) as out:
        per = 16000 // 25
        n = max(len(frames), int(np.ceil(len(audio16) / per)))
        for i in range(n):
            out.write(frames[min(i, len(frames) - 1)])
            chunk = audio16[i * per:(i + 1) * per]
            if len(chunk):
                out.write_audio(chunk)
    return path


def _frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def synthetic(work: Path, codes: int, cfg: C.ConsentConfig, grid_clip: Path | None) -> dict:
    from training.sample.presenter import SampleConfig, write_sample

    rng = random.Random(7)
    base = SampleConfig(minutes=1.0, width=256, height=256, seed=0)
    footage_video = write_sample(work / "footage", base).video
    footage = C.Footage.read([footage_video], cfg)
    right, wrong1, wrong4, other_enrol = [], [], [], []
    voices: dict[str, list[bool]] = {v: [] for v in OTHER_VOICES}
    detail = []
    for i in range(codes):
        code = _code(rng)
        ch = C.Challenge("Eileen Collins", code, 0, 0)
        clip = write_sample(work / "reads", replace(base, read=(ch.spoken,),
                                                    name=f"read{i}")).video
        r = C.check_recording(clip, ch.text, code, footage, cfg)
        right.append(r.accepted)
        c1, c4 = _one_changed(code, rng), _code(rng)
        wrong1.append(not C.check_recording(clip, C.statement(ch.name, c1), c1, footage,
                                            cfg).accepted)
        wrong4.append(c4 == code or not C.check_recording(
            clip, C.statement(ch.name, c4), c4, footage, cfg).accepted)
        # Another enrolment: its statement (another name, another code) read on camera.
        other = C.Challenge("Ada Lovelace", _code(rng), 0, 0)
        other_clip = write_sample(work / "reads", replace(base, read=(other.spoken,),
                                                          name=f"other{i}")).video
        other_enrol.append(not C.check_recording(other_clip, ch.text, code, footage,
                                                 cfg).accepted)
        detail.append({"code": code, "right": _outcome(r)})
        if i < 4:  # other voices, same face: four codes each
            for v in OTHER_VOICES:
                vclip = write_sample(work / "reads", replace(
                    base, read=(ch.spoken,), voice=v, name=f"voice{i}-{v}")).video
                rv = C.check_recording(vclip, ch.text, code, footage, cfg)
                voices[v].append(not rv.accepted)
                detail[-1][v] = _outcome(rv)
    out = {"footage": "twincast sample, 1 minute, 256x256, seed 0",
           "accept_right_code": _rate(right),
           "reject_one_digit_wrong": _rate(wrong1),
           "reject_other_code": _rate(wrong4),
           "reject_other_enrolments_statement": _rate(other_enrol),
           "reject_other_espeak_voice_same_face": {v: _rate(x) for v, x in voices.items()},
           "detail": detail}
    if grid_clip is not None:
        ch = C.Challenge("Eileen Collins", "1-2-3-4", 0, 0)
        r = C.check_recording(grid_clip, ch.text, ch.code, footage, cfg)
        out["reject_grid_speaker"] = {"rejected": not r.accepted, **_outcome(r)}
    return out


def _grid_sets(n_sets: int) -> tuple[list[Path], list[list[Path]], dict[str, str]]:
    """Footage (the first 24 train clips) and ``n_sets`` held-out sets of four clips."""
    clips = sorted((DATA / "grid_s1" / "train").glob("*.mpg"))
    text = dict(line.rstrip("\n").split("\t", 1) for line in
                (DATA / "grid_s1" / "transcripts.tsv").read_text().splitlines()
                if "\t" in line)
    held = clips[24:]
    return clips[:24], [held[4 * i:4 * i + 4] for i in range(min(n_sets, len(held) // 4))], \
        text


def _grid_text(words: str) -> str:
    return " ".join(str(C.DIGITS.index(w)) if w in C.DIGITS else w for w in words.split())


def _grid_code(words: str) -> str:
    return "-".join(str(C.DIGITS.index(w)) for w in words.split() if w in C.DIGITS)


def real(work: Path, n_sets: int, cfg: C.ConsentConfig, sample_read: Path | None) -> dict:
    from avatar.audio import load_audio

    rng = random.Random(11)
    footage_clips, sets, text = _grid_sets(n_sets)
    footage = C.Footage.read(footage_clips, cfg)
    lj = sorted((DATA / "ljspeech" / "train").glob("*.flac"))
    recordings = []
    for i, group in enumerate(sets):
        frames = [f for clip in group for f in _frames(clip)]
        audio = np.concatenate([load_audio(clip, 16000) for clip in group])
        words = " ".join(text[c.stem] for c in group)
        recordings.append((_write_clip(work / f"grid{i}.mp4", frames, audio), words, frames,
                           len(audio)))
    right, wrong1, other_enrol, other_voice, detail = [], [], [], [], []
    for i, (clip, words, frames, n) in enumerate(recordings):
        t, code = _grid_text(words), _grid_code(words)
        r = C.check_recording(clip, t, code, footage, cfg)
        right.append(r.accepted)
        c1 = _one_changed(code, rng)
        r1 = C.check_recording(clip, _grid_text(words), c1, footage, cfg)
        wrong1.append(not r1.accepted)
        o_words = recordings[(i + 1) % len(recordings)][1]
        ro = C.check_recording(clip, _grid_text(o_words), _grid_code(o_words), footage, cfg)
        other_enrol.append(not ro.accepted)
        # Another speaker: a real woman's voice over the man's video.
        voice = np.concatenate([load_audio(f, 16000) for f in lj[2 * i:2 * i + 2]])[:n]
        dub = _write_clip(work / f"dub{i}.mp4", frames, voice)
        rv = C.check_recording(dub, t, code, footage, cfg)
        other_voice.append(not rv.accepted)
        detail.append({"code": code, "right": _outcome(r), "dubbed": _outcome(rv)})
    out = {"footage": "grid_s1/train, first 24 clips; recordings: the next 40, in fours",
           "accept_right_code": _rate(right),
           "reject_one_digit_wrong": _rate(wrong1),
           "reject_other_recordings_text_and_code": _rate(other_enrol),
           "reject_other_speaker_dubbed": _rate(other_voice),
           "detail": detail}
    if sample_read is not None:
        r = C.check_recording(sample_read, C.statement("Eileen Collins", "1-2-3-4"),
                              "1-2-3-4", footage, cfg)
        out["reject_synthetic_presenter"] = {"rejected": not r.accepted, **_outcome(r)}
    return out


def lj_speech(n: int) -> dict:
    """LJ Speech: statement scores and voice similarity, audio only."""
    from avatar.audio import load_audio

    meta = {}
    for line in (DATA / "ljspeech" / "metadata.csv").read_text().splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            meta[parts[0]] = parts[2]
    files = [f for f in sorted((DATA / "ljspeech" / "train").glob("*.flac"))
             if f.stem in meta]
    ref = C.voice_embedding(np.concatenate([load_audio(f, 16000) for f in files[:6]])
                            [:30 * 16000])
    grid = C.voice_embedding(np.concatenate([load_audio(f, 16000) for f in sorted(
        (DATA / "grid_s1" / "train").glob("*.mpg"))[:12]]))
    own, statement, same, cross = [], [], [], []
    for f in files[10:10 + n]:
        a = load_audio(f, 16000)
        own.append(C.hear(a, meta[f.stem]).score)
        statement.append(C.hear(a, C.statement("Linda Johnson", "4-7-2-9")).score)
        e = C.voice_embedding(a)
        if e is not None:
            same.append(float(e @ ref))
            cross.append(float(e @ grid))

    def stats(xs: list[float]) -> dict:
        finite = [x for x in xs if np.isfinite(x)]
        return {"n": len(xs), "no_path": len(xs) - len(finite),
                "min": round(min(finite), 3) if finite else None,
                "median": round(float(np.median(finite)), 3) if finite else None,
                "max": round(max(finite), 3) if finite else None}

    return {"words_score_own_text": stats(own),
            "words_score_statement_not_said": stats(statement),
            "voice_vs_her_other_recordings": stats(same),
            "voice_vs_grid_speaker": stats(cross)}


def run(codes: int = 12, grid_sets: int = 10, lj: int = 20) -> dict:
    cfg = C.ConsentConfig()
    t0 = time.time()
    out: dict = {"thresholds": {"words_min": cfg.words_min, "voice_min": cfg.voice_min,
                                "face_max": cfg.face_max}}
    have_grid = (DATA / "grid_s1" / "train").is_dir()
    with tempfile.TemporaryDirectory(prefix="twincast-consent-") as tmp:
        work = Path(tmp)
        grid_clip = None
        if have_grid:
            _, sets, _ = _grid_sets(1)
            from avatar.audio import load_audio

            grid_clip = _write_clip(work / "grid-person.mp4",
                                    [f for c in sets[0] for f in _frames(c)],
                                    np.concatenate([load_audio(c, 16000) for c in sets[0]]))
        log.info("synthetic sample: %d codes", codes)
        out["synthetic"] = synthetic(work / "synthetic", codes, cfg, grid_clip)
        if have_grid:
            log.info("GRID: %d recordings", grid_sets)
            sample_read = next((work / "synthetic" / "reads").glob("read0.mp4"), None)
            out["grid"] = real(work / "grid", grid_sets, cfg, sample_read)
        if (DATA / "ljspeech" / "train").is_dir():
            log.info("LJ Speech: %d recordings", lj)
            out["ljspeech"] = lj_speech(lj)
    out["seconds"] = round(time.time() - t0, 1)
    return out
