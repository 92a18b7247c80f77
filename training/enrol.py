"""``twincast enrol``: footage (and an optional transcript) in, enrolment cache out.

Every input is checked before any work starts, so bad footage fails in seconds with a line
that names the file, and leaves nothing behind that a later run could trip on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from avatar.errors import TwincastError, path_error
from training.config import FeaturesConfig
from training.features import ClipJob, FeaturesResult, run_features
from training.ingest import (
    clip_ids,
    file_digest,
    find_footage,
    probe,
    require_writable_dir,
)
from training.progress import bar
from training.transcript import read_transcript
from training.workdir import Workdir

log = logging.getLogger(__name__)


def plan(footage: Sequence[Path], workdir: Path, cfg: FeaturesConfig,
         transcript: Path | None = None) -> list[ClipJob]:
    files = find_footage(footage)
    ids = clip_ids(files)
    texts = read_transcript(transcript, ids) if transcript else {}
    if transcript:
        missing = [i for i in ids if i not in texts]
        if len(missing) == len(ids):
            raise path_error(transcript, "names none of the clips given (first clip: "
                             f"{ids[0]}); lines must be 'clip<TAB>text' with clip = file "
                             "name without extension")
        for i in missing:
            log.warning("%s: no transcript line; its utterances will have no text", i)
    infos = []
    with bar(len(files), "checking footage", "clip") as pb:
        for f, cid in zip(files, ids, strict=True):
            infos.append(probe(f, cid, cfg.fps, cfg.min_clip_seconds))
            pb.update(1)
    require_writable_dir(workdir)
    features_dir = Workdir(workdir).features
    jobs = []
    with bar(len(infos), "hashing footage", "clip") as pb:
        for info in infos:
            jobs.append(ClipJob(info=info, digest=file_digest(info.path),
                                text=texts.get(info.clip_id),
                                dir=features_dir / "clips" / info.clip_id))
            pb.update(1)
    return jobs


def enrol_features(footage: Sequence[Path], workdir: Path, cfg: FeaturesConfig,
                   transcript: Path | None = None, strict: bool = False,
                   ray_address: str | None = None) -> FeaturesResult:
    """``ray_address``: the units run on that Ray cluster (``training.ray_units``)."""
    if ray_address is not None:
        from avatar.raycluster import connect

        connect(ray_address)  # first: a wrong address fails before the footage is read
    jobs = plan(footage, workdir, cfg, transcript)
    if not transcript:
        log.warning("no transcript: utterances will have no text, so the voice cannot be "
                    "trained from this footage (pass --transcript FILE)")
    return run_features(jobs, Workdir(workdir).features, cfg, strict=strict,
                        ray=ray_address is not None)


def enrol(footage: Sequence[Path], workdir: Path, preset: str, workers: int = 2,
          transcript: Path | None = None, strict: bool = False, device: str = "cpu",
          name: str | None = None, features_only: bool = False,
          voice_dir: Path | None = None, voice_transcript: Path | None = None,
          consent_clip: Path | None = None, ray_address: str | None = None,
          voice_minutes: float | None = None) -> dict:
    """The whole enrolment: features, talking-head training, voice training, bundle export.
    ``voice_minutes`` caps the voice's acoustic model instead of the preset (a cap the user
    chose: too short only warns).
    ``voice_dir`` adds recordings (with ``voice_transcript``) that only the voice learns
    from; without footage the bundle has a voice and no face. ``consent_clip`` is checked
    first (``training.consent``): refused, nothing is trained."""
    from training.config import features_preset

    cfg = features_preset(preset, workers)
    if not footage and voice_dir is None:
        raise TwincastError("nothing to enrol: give footage, or --voice with a folder of "
                            "recordings")
    if voice_dir is not None and voice_transcript is None:
        raise TwincastError("--voice needs a transcript of the recordings: "
                            "--voice-transcript FILE ('ID|text' lines)")
    out: dict = {}
    if consent_clip is not None:
        if not footage:
            raise TwincastError("--consent is checked against the footage's face and voice: "
                                "give the footage too")
        out["consent"] = check_consent(consent_clip, find_footage(footage), workdir)
    elif not features_only:
        from training.consent import read_record

        record = read_record(workdir)
        if record is not None and record.get("status") == "verified":
            log.info("consent: verified on %s (%s)", record.get("checked"),
                     record.get("statement"))
        else:
            log.warning("no consent recording (--consent): the bundle is marked unconsented, "
                        "and serve and stream refuse it unless the operator passes "
                        "--allow-unconsented; see `twincast consent`")
    feats = None
    if footage:
        feats = enrol_features(footage, workdir, cfg, transcript=transcript, strict=strict,
                               ray_address=ray_address)
        out["features"] = feats.dir
    if voice_dir is not None:
        from training.voice.features import enrol_voice_features

        out["voice_features"] = enrol_voice_features(voice_dir, voice_transcript, workdir,
                                                     cfg)
    if features_only:
        return out
    from training.voice import plan as voice_plan
    from training.voice.features import voice_sources
    from training.voice.train import check_voice_fits, train_voice, voice_preset

    sources = [d for d in voice_sources(workdir) if _has_text(d)
               and (d.name != "features" or feats is not None)]
    name = name or _default_name(footage or [voice_dir])
    voice_cfg = voice_preset(preset)
    if voice_minutes is not None:
        voice_cfg = dataclasses.replace(voice_cfg, max_minutes=voice_minutes,
                                        refuse_short=False)
    result = fit = None
    if feats is not None and sources:
        # The voice is trained after the head: a host too slow for it is told now, not
        # after the head's half hour.
        fit = check_voice_fits(sources, Workdir(workdir).voice, voice_cfg, device,
                               voice_plan.RETRY_ENROL)
    if feats is not None:
        from training.head.train import head_preset, train_head

        result = train_head(feats.dir, Workdir(workdir).head, head_preset(preset), device=device)
        out["head_seconds"] = result.seconds
        out["head_plan"] = result.plan
    voice = None
    if sources:
        voice = train_voice(sources, Workdir(workdir).voice, voice_cfg, device=device,
                            retry=voice_plan.RETRY_ENROL, fit=fit)
        out["voice_seconds"] = voice.seconds
        out["voice_plan"] = voice.plan
    else:
        log.warning("no utterance has a transcript: the bundle gets no voice (it can still "
                    "be driven by audio); pass --transcript to train one")
    bundle = Workdir(workdir).bundle(name)
    if result is not None:
        from training.head.export import export_bundle

        out["bundle"] = export_bundle(feats.dir, result.trained(), bundle, name, preset,
                                      voice=voice)
    elif voice is not None:
        from training.voice.export import export_voice_bundle

        out["bundle"] = export_voice_bundle(voice, bundle, name, preset)
    return out


def check_consent(clip: Path, footage: list[Path], workdir: Path) -> dict:
    """Check the consent recording against the footage and keep the result in the work
    folder (the bundle's manifest takes it at export); a refusal is an error."""
    from training.consent import ConsentConfig, Footage, challenge_for, check, write_record

    cfg = ConsentConfig()
    require_writable_dir(workdir)
    challenge_for(clip, workdir)  # the quick faults first, before the footage is read
    with bar(2, "checking consent", "step") as pb:
        ref = Footage.read(footage, cfg)
        pb.update(1)
        result = check(clip, workdir, ref, cfg)
        pb.update(1)
    section = result.manifest(cfg)
    write_record(workdir, section)
    if not result.accepted:
        raise TwincastError(f"{clip}: consent refused: {'; '.join(result.reasons)}. Record "
                            "the statement again (`twincast consent` prints it), clearly, "
                            "facing the camera")
    log.info("consent verified: code %s heard, voice similarity %.2f, face distance %.3f",
             result.code_heard, result.voice_similarity, result.face_distance)
    return section


def _has_text(features_dir: Path) -> bool:
    path = features_dir / "utterances.jsonl"
    if not path.exists():
        return False
    return any(json.loads(line).get("text") for line in path.read_text().splitlines()
               if line.strip())


def train_voice_stage(workdir: Path, preset: str, device: str = "cpu",
                      name: str | None = None, max_minutes: float | None = None,
                      only: str | None = None, vocoder_minutes: float | None = None
                      ) -> dict:
    """``twincast train voice``: train (or resume) the voice on an existing enrolment cache
    and put it into the enrolment's avatar bundle, or into a new voice-only bundle
    (WORKDIR/avatars/NAME) where WORKDIR has none (a cache packed for another machine).
    ``only``: train that stage alone and export nothing (see ``train_voice``). Safe under
    ``torchrun`` (every process trains; the first exports)."""
    from training.voice.export import add_voice, export_voice_bundle
    from training.voice.train import train_voice, voice_preset

    cfg = voice_preset(preset)
    if max_minutes is not None:
        cfg = dataclasses.replace(cfg, max_minutes=max_minutes, refuse_short=False)
    if vocoder_minutes is not None and cfg.vocoder is not None:
        cfg = dataclasses.replace(cfg, vocoder=dataclasses.replace(
            cfg.vocoder, max_minutes=min(cfg.vocoder.max_minutes, vocoder_minutes),
            adapt_minutes=min(cfg.vocoder.adapt_minutes, vocoder_minutes),
            max_stretch=1.0))  # the user's cap holds: no lengthening to the step floor
    wd = Workdir(workdir)
    every = wd.bundles()
    bundles = [b for b in every if not name or b.name == name]
    if len(bundles) > 1:
        raise path_error(wd.avatars, "holds several bundles; say which with --name")
    if every and not bundles:
        raise path_error(wd.avatars, f"holds no bundle named {name!r} (it has "
                         f"{', '.join(b.name for b in every)})")
    from training.voice.features import voice_sources

    sources = [d for d in voice_sources(workdir) if _has_text(d)]
    if not sources:
        raise TwincastError(f"{workdir}: no utterance has a transcript, so there is "
                            "nothing to learn a voice from; enrol with --transcript")
    voice = train_voice(sources, wd.voice, cfg, device=device, only=only)
    if voice is None:
        return {"bundle": None, "voice_seconds": 0.0}
    if not voice.main:  # another process of a torchrun job: the first one exports
        return {"bundle": None, "voice_seconds": voice.seconds, "worker": True}
    if bundles:
        add_voice(bundles[0], voice, preset)
        return {"bundle": bundles[0], "voice_seconds": voice.seconds, "voice_plan": voice.plan}
    out = wd.bundle(name or _default_name([workdir]))
    log.info("%s holds no avatar bundle: writing a voice-only one", wd.avatars)
    export_voice_bundle(voice, out, out.name, preset)
    return {"bundle": out, "voice_seconds": voice.seconds, "voice_plan": voice.plan}


def _default_name(footage: Sequence[Path]) -> str:
    import re

    first = Path(footage[0])
    stem = first.name if first.is_dir() else first.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "avatar"
