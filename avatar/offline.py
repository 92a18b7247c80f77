"""Offline rendering (``twincast render``) and the render benchmark (``twincast bench
render``), both through the same batched ``Avatar.render`` the server uses."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from avatar.audio import SPEECH_RATE, load_audio
from avatar.avatar import Avatar, FrameRequest
from avatar.credentials import Signer
from avatar.errors import TwincastError, path_error
from avatar.label import Label
from avatar.provenance import Provenance
from avatar.video_io import VideoWriter
from avatar.watermark import StreamMarks

log = logging.getLogger(__name__)


def _bars() -> bool:
    flag = os.environ.get("TWINCAST_PROGRESS")
    return flag not in ("0", "") if flag is not None else sys.stderr.isatty()


def render_file(bundle: Path, audio_path: Path, out: Path, device: str = "cpu",
                batch: int = 16, precision: str = "auto",
                provenance: Provenance | None = None) -> dict:
    """Speak ``audio_path`` over the avatar's idle loop; write ``out`` with the audio muxed."""
    if batch < 1:
        raise TwincastError(f"--batch {batch}: must be at least 1")
    avatar = Avatar.load(bundle, device, precision=precision)
    audio = load_audio(audio_path, SPEECH_RATE)
    if np.abs(audio).max(initial=0.0) == 0.0:
        log.info("%s is silent: the mouth stays closed", audio_path)
    return render_audio(avatar, audio, out, batch, provenance=provenance)


def render_text(bundle: Path, text: str, out: Path, device: str = "cpu", batch: int = 16,
                pace: float = 1.0, precision: str = "auto",
                provenance: Provenance | None = None) -> dict:
    """The avatar's voice says ``text``, then its face speaks that audio (both muxed)."""
    from avatar.audio import resample
    from avatar.voice import Voice

    if batch < 1:
        raise TwincastError(f"--batch {batch}: must be at least 1")
    voice = Voice.load(bundle, device)
    avatar = Avatar.load(bundle, device, precision=precision)
    speech = voice.say(text, pace)
    return render_audio(avatar, resample(speech, voice.rate, SPEECH_RATE), out, batch,
                        provenance=provenance)


def render_show(bundle: Path, show_path: Path, out: Path, device: str = "cpu",
                batch: int = 16, precision: str = "auto",
                provenance: Provenance | None = None) -> dict:
    """``twincast render --show``: the whole show (speech, pauses, idle) to one video, in
    batches, as fast as the model allows."""
    from tqdm import tqdm

    from avatar.audio import resample
    from avatar.show import load_show
    from avatar.voice import Voice

    if batch < 1:
        raise TwincastError(f"--batch {batch}: must be at least 1")
    show = load_show(show_path)
    if show.repeat is None:
        raise TwincastError(f"{show_path}: repeat = \"forever\" cannot be rendered to a "
                            "file; give a number")
    voice = Voice.load(bundle, device) if any(s.kind == "say" for s in show.segments) \
        else None
    avatar = Avatar.load(bundle, device, precision=precision)
    parts: list[np.ndarray] = []
    said: dict[tuple[str, float], np.ndarray] = {}
    steps = [s for _ in show.passes() for s in show.segments for _ in range(s.repeat)]
    t0 = time.perf_counter()
    for seg in tqdm(steps, desc="speech", unit="segment", disable=not _bars()):
        if seg.kind == "say":
            assert voice is not None
            key = (seg.text, seg.rate)
            if key not in said:  # a repeated line is synthesised once
                said[key] = resample(voice.say(seg.text, seg.rate), voice.rate, SPEECH_RATE)
            parts.append(said[key])
        else:
            parts.append(np.zeros(int(seg.seconds * SPEECH_RATE), np.float32))
    speech_s = time.perf_counter() - t0
    res = render_audio(avatar, np.concatenate(parts), out, batch, provenance=provenance)
    res["speech_seconds"] = round(speech_s, 2)
    res["video_seconds"] = round(res["frames"] / avatar.fps, 2)
    res["realtime_x"] = round(res["video_seconds"] / (res["seconds"] + speech_s), 2)
    return res


def say_file(bundle: Path, text: str, out: Path, device: str = "cpu", pace: float = 1.0,
             provenance: Provenance | None = None) -> dict:
    """``twincast say``: text to a .wav file in the avatar's voice."""
    import soundfile as sf

    from avatar import atomic
    from avatar.voice import Voice

    if out.suffix.lower() != ".wav":
        raise path_error(out, "must end in .wav")
    from avatar.bundle import read_manifest

    prov = provenance or Provenance()
    signer = _signer(prov)
    voice = Voice.load(bundle, device)
    manifest = read_manifest(bundle, verify=False)
    t0 = time.perf_counter()
    audio = voice.say(text, pace)
    seconds = time.perf_counter() - t0
    marks = StreamMarks(manifest.files, 25, voice.rate, prov.watermark) \
        if prov.watermark.enabled else None
    if marks is not None:
        audio = marks.audio.process(audio, 0)
    try:
        with atomic.atomic_path(out, ".wav") as tmp:
            sf.write(str(tmp), audio, voice.rate, subtype="PCM_16", format="WAV")
    except OSError as e:
        raise path_error(out, f"cannot be written ({e.strerror})") from None
    _seal(signer, out, manifest.name, marks)
    return {"audio_seconds": round(len(audio) / voice.rate, 2), "seconds": round(seconds, 3),
            "out": str(out), "mark_id": marks.id_text if marks is not None else None}


def _signer(prov: Provenance) -> Signer | None:
    """The operator's signer, made before any work so a bad key fails first."""
    return Signer(prov.signing) if prov.signing.enabled else None


def _seal(signer: Signer | None, out: Path, avatar: str, marks: StreamMarks | None) -> None:
    """Sign ``out``'s Content Credentials; a file that cannot be signed is not left."""
    if signer is None:
        return
    facts = {"avatar": avatar, "mark_id": marks.id_text if marks is not None else None,
             "marks_from": datetime.fromtimestamp(marks.t0, UTC).isoformat()
             if marks is not None else None}
    try:
        signer.sign(out, facts)
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def speaking_frames(avatar: Avatar, audio: np.ndarray, batch: int = 16, seed: int = 0
                    ) -> Iterator[list[np.ndarray]]:
    """The frames of the avatar speaking 16 kHz ``audio``, a batch at a time: over the
    person's own speaking and silent footage where the bundle has a motion bank, else over
    its idle loop."""
    from avatar.motion import plan_walk, speech_activity

    windows = avatar.mel_windows(audio)
    n = len(windows)
    walker = avatar.walker(seed)
    bases: list = [None] * n
    if walker is not None:
        bases = plan_walk(walker, *speech_activity(audio, n, avatar.fps, SPEECH_RATE),
                          nods=avatar.nods(windows))
    for a in range(0, n, batch):
        reqs = [FrameRequest(idle_index=i, mel=windows[i], base=bases[i])
                for i in range(a, min(n, a + batch))]
        if avatar.bank is not None:  # the next batch's frames made ready meanwhile
            following = bases[a + batch: a + 2 * batch]
            avatar.bank.prefetch(following, following)
        yield avatar.render(reqs)


def render_audio(avatar: Avatar, audio: np.ndarray, out: Path, batch: int = 16,
                 seed: int = 0, provenance: Provenance | None = None) -> dict:
    """Speak 16 kHz ``audio`` into ``out`` with the audio (``speaking_frames``). Unless
    ``provenance`` turns them off, every frame carries the disclosure label
    (``avatar.label``), frames and audio the invisible marks (``avatar.watermark``), and
    the file signed Content Credentials (``avatar.credentials``)."""
    from tqdm import tqdm

    prov = provenance or Provenance()
    signer = _signer(prov)
    n = int(np.ceil(len(audio) / SPEECH_RATE * avatar.fps))
    w, h = avatar.manifest.frame_size or (0, 0)
    marker = Label(prov.label)
    marks = StreamMarks(avatar.manifest.files, avatar.fps, SPEECH_RATE, prov.watermark) \
        if prov.watermark.enabled else None
    # The face follows the voice as said; the file carries it marked.
    track = marks.audio.process(audio, 0) if marks is not None else audio
    t0 = time.perf_counter()
    try:
        writer = VideoWriter(out, avatar.fps, int(w), int(h), audio_rate=SPEECH_RATE)
    except OSError as e:
        raise path_error(out, f"cannot be written ({e.strerror})") from None
    i = 0
    with writer, tqdm(total=n, desc="render", unit="frame", disable=not _bars()) as pb:
        for frames in speaking_frames(avatar, audio, batch, seed):
            for frame in frames:
                frame = marker.apply(frame)
                writer.write(marks.video.apply(frame, i) if marks is not None else frame)
                s0 = int(i * SPEECH_RATE / avatar.fps)
                s1 = int((i + 1) * SPEECH_RATE / avatar.fps)
                writer.write_audio(track[s0:s1])
                i += 1
            pb.update(len(frames))
    _seal(signer, out, avatar.manifest.name, marks)
    seconds = time.perf_counter() - t0
    return {"frames": i, "seconds": round(seconds, 2), "fps": round(i / seconds, 1),
            "out": str(out), "mark_id": marks.id_text if marks is not None else None}
