"""Writing the avatar bundle (DESIGN.md §2) from a trained head and the enrolment cache."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from safetensors.torch import save_file

from avatar import atomic
from avatar.audio import FACE_MEL
from avatar.bundle import sha256_file, write_manifest
from avatar.errors import path_error
from avatar.manifest import (
    HeadMel,
    HeadSection,
    IdleSection,
    Manifest,
    MotionSection,
    VoiceSection,
)
from avatar.models.head import HeadConfig, HeadGenerator
from avatar.models.refine import Refiner
from avatar.video_io import VideoWriter
from training.consent import bundle_consent
from training.face import mouth_opening
from training.head.data import candidate_regions, cut_region
from training.head.idle import choose_idle
from training.head.refine import RefineTrainConfig
from training.head.train import TrainedHead, head_preset
from training.ingest import iter_frames, probe
from training.motion.bank import MIN_SECONDS
from training.voice.train import TrainedVoice

log = logging.getLogger(__name__)



def export_bundle(features_dir: Path, head: TrainedHead, out: Path, name: str, preset: str,
                  idle_seconds: float = 6.0, voice: TrainedVoice | None = None) -> Path:
    """Write the bundle to ``out`` atomically (a failed export leaves no half bundle)."""
    model = head.gen.cfg
    manifest_in = json.loads((features_dir / "manifest.json").read_text())
    fps = int(manifest_in["fps"])
    idle = choose_idle(features_dir, idle_seconds, fps)
    clip_dir = features_dir / "clips" / idle.clip
    meta = json.loads((clip_dir / "meta.json").read_text())
    source = Path(meta["source"])
    if not source.exists():
        raise path_error(source, "the footage the idle loop comes from is gone; put it back "
                         "or re-run enrol")
    with np.load(clip_dir / "frames.npz") as z:
        affine = z["crop_affine"][idle.start: idle.stop].astype(np.float64)
        # The reference frame may come from anywhere in the clip: the idle stretch is
        # chosen for a closed mouth, the reference wants the teeth showing.
        raw = np.where((z["n_faces"] == 1)[:, None, None], z["landmarks_raw"], np.nan)
    info = probe(source, idle.clip, fps, 0.0)
    # The idle footage is stored at most this large: the stream is encoded at this size.
    max_side = head_preset(preset).output_max_side
    scale = min(1.0, max_side / max(info.width, info.height))
    width = int(round(info.width * scale)) // 2 * 2
    height = int(round(info.height * scale)) // 2 * 2
    # The crop transforms map source pixels; the idle video may be smaller.
    affine_idle = affine.copy()
    affine_idle[:, :, 0] /= width / info.width
    affine_idle[:, :, 1] /= height / info.height
    with atomic.atomic_dir(out) as tmp:
        with VideoWriter(tmp / "idle.mp4", fps, width, height, crf=16) as w:
            for _, rgb in iter_frames(info, fps, idle.start, idle.stop):
                if rgb.shape[1] != width or rgb.shape[0] != height:
                    rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
                w.write(rgb)
        atomic.save_npz(tmp / "idle.npz", crop_affine=affine_idle.astype(np.float32))
        _write_reference(clip_dir, meta, 0, raw, model, tmp / "reference.png")
        mask = cv2.imread(str(features_dir / "mask.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(tmp / "mask.png"), mask)
        gen = {k: v.detach().cpu().contiguous() for k, v in head.gen.state_dict().items()}
        save_file(gen, str(tmp / "head.safetensors"))
        names = ["head.safetensors", "idle.mp4", "idle.npz", "reference.png", "mask.png"]
        # The enrolment's frames as the renderer cuts them: the texture bank chooses from
        # them and the paint's colour cast is measured on them.
        regions, keys = candidate_regions(features_dir, model.size, model.region)
        texture = write_texture(features_dir, model, tmp, region_on_screen(
            affine_idle, int(meta["crop_size"]), model.region[2]), regions=(regions, keys))
        names.append(texture)
        trained = head_preset(preset)
        refine, refiner = refine_section(
            head.gen, head.mel_stats, features_dir, regions, keys, tmp / "reference.png",
            mask, int(meta["crop_size"]), trained.refine_config(), tmp)
        names += [refine["file"]] if refine else []
        colour = colour_section(head.gen, head.mel_stats, features_dir, regions, keys,
                                tmp / "reference.png", mask, int(meta["crop_size"]), refiner)
        del regions
        motion_section = _write_bank(features_dir, tmp, (width, height), fps)
        names += motion_section.files + [motion_section.index] + \
            ([motion_section.cues] if motion_section.cues else [])
        files = {f: sha256_file(tmp / f) for f in names}
        voice_section = None
        if voice is not None:
            from training.voice.export import write_voice

            voice_section, voice_files = write_voice(voice, tmp, preset)
            files.update(voice_files)
        else:
            voice_section = _keep_voice(out, tmp, files)
        from avatar.version import __version__

        manifest = Manifest(
            name=name, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            tool=f"twincast {__version__}", files=files, fps=fps, frame_size=(width, height),
            crop_size=int(meta["crop_size"]),
            source={"clips": [{"id": c["id"], "digest": c["digest"]}
                              for c in manifest_in["clips"]]},
            consent=bundle_consent(out),
            head=HeadSection(
                config=dataclasses.asdict(model), region=list(model.region),
                mask_top=model.mask_top,
                mel=HeadMel(mean=head.mel_stats[0], std=head.mel_stats[1], spec=FACE_MEL),
                preset=preset, train_seconds=round(head.seconds, 1),
                expert_steps=head.expert_steps, gen_steps=head.gen_steps, lips=head.lips,
                plan=head.plan, texture=texture, colour=colour, refine=refine),
            idle=IdleSection(frames=idle.stop - idle.start, clip=idle.clip, start=idle.start),
            voice=voice_section, motion=motion_section)
        write_manifest(tmp, manifest)
    log.info("avatar bundle written: %s", out)
    return out


def _keep_voice(old: Path, tmp: Path, files: dict[str, str]) -> VoiceSection | None:
    """The voice of the bundle ``old`` that a new face replaces (``train head`` again on an
    enrolment): its weights copied into ``tmp`` and their digests into ``files``, and its
    manifest section; None where there is no such bundle or it has no voice. Without this
    re-training the face dropped the person's voice."""
    import shutil

    from avatar.bundle import read_manifest
    from avatar.errors import TwincastError

    if not (old / "manifest.json").is_file():
        return None
    try:
        voice = read_manifest(old).voice
    except TwincastError as e:
        log.warning("the bundle being replaced cannot be read, so its voice is not kept "
                    "(%s); train it again with `twincast train voice`", e)
        return None
    if voice is None:
        return None
    names = [voice.file] + ([voice.vocoder.file] if voice.vocoder.kind != "griffin-lim"
                            else [])
    for n in names:
        shutil.copy2(old / n, tmp / n)
        files[n] = sha256_file(tmp / n)
    log.info("kept the voice of the bundle being replaced (%s)", ", ".join(names))
    return voice


def _reference_rgb(path: Path, size: int) -> np.ndarray:
    ref = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if ref.shape[:2] != (size, size):
        ref = cv2.resize(ref, (size, size), interpolation=cv2.INTER_AREA)
    return ref


def _evenly(n: int, most: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(most, n)).astype(int))


def refine_section(gen: HeadGenerator, mel_stats: tuple[float, float], features_dir: Path,
                   regions: np.ndarray, keys: list[tuple[int, int]], reference: Path,
                   crop_mask: np.ndarray, crop_size: int, cfg: RefineTrainConfig,
                   folder: Path, name: str = "refine.safetensors"
                   ) -> tuple[dict, Refiner | None]:
    """Train the refiner (``training.head.refine``) on up to ``cfg.max_frames`` of
    ``regions`` (``candidate_regions``' answer) and write its weights into ``folder``:
    the manifest's ``head.refine`` and the refiner, or ({}, None) where none is kept."""
    from avatar.avatar import region_geometry
    from training.head.colour_fit import mel_for, paint_regions
    from training.head.refine import train_refiner

    if cfg.steps <= 0 or not keys:
        return {}, None
    pick = _evenly(len(keys), cfg.max_frames)
    chosen = [keys[i] for i in pick]
    paint = paint_regions(gen, _reference_rgb(reference, gen.cfg.size), regions[pick],
                          mel_for(features_dir, chosen, gen.cfg.mel_frames), mel_stats,
                          "refiner frames")
    _, region_mask, _ = region_geometry(crop_mask, crop_size, gen.cfg)
    # The refiner trains where the generator is (a GPU enrolment's on its GPU).
    result = train_refiner(paint, regions[pick], np.array([k[0] for k in chosen]),
                           region_mask, gen.cfg.mask_top, cfg,
                           device=str(next(gen.parameters()).device))
    if result is None:
        return {}, None
    weights = {k: v.detach().cpu().contiguous() for k, v in result.refiner.state_dict().items()}
    save_file(weights, str(folder / name))
    return ({"file": name, "config": result.refiner.cfg.to_dict(), "sharpen": result.sharpen,
             "report": result.report}, result.refiner)


def colour_section(gen: HeadGenerator, mel_stats: tuple[float, float], features_dir: Path,
                   regions: np.ndarray, keys: list[tuple[int, int]], reference: Path,
                   crop_mask: np.ndarray, crop_size: int, refiner: Refiner | None = None
                   ) -> dict:
    """The paint's colour cast (``training.head.colour_fit``) for the manifest, measured on
    up to ``MAX_FRAMES`` of ``regions`` (``candidate_regions``' answer), on the paint as
    rendering makes it (refined where ``refiner`` is given); empty (the bundle renders
    without the correction) when too few frames measure it."""
    from training.head.colour_fit import MAX_FRAMES, fit_colour, mel_for, paint_regions
    from training.head.refine import refine_numpy

    pick = _evenly(len(keys), MAX_FRAMES)
    paint = paint_regions(gen, _reference_rgb(reference, gen.cfg.size), regions[pick],
                          mel_for(features_dir, [keys[i] for i in pick], gen.cfg.mel_frames),
                          mel_stats, "colour cast")
    if refiner is not None:
        paint = refine_numpy(refiner, paint)
    fit = fit_colour(paint, regions[pick], gen.cfg, crop_mask, crop_size)
    return fit.to_dict() if fit is not None else {}


def write_texture(features_dir: Path, model: HeadConfig, folder: Path, screen_px: float,
                  name: str = "texture.npz",
                  regions: tuple[np.ndarray, list[tuple[int, int]]] | None = None) -> str:
    """Build the texture bank (``avatar.texture``) from the enrolment cache's training
    frames into ``folder``; returns its file name. ``screen_px``: the mouth region's side in
    the bundle's frames: where it is enlarged there by more than ``FINE_FROM``, the bank
    also keeps its entries' fine bands at that size, cut from the source footage.
    ``regions``: ``candidate_regions``' answer where the caller has it already."""
    from avatar.texture import build

    regions, keys = regions or candidate_regions(features_dir, model.size, model.region)
    bank, chosen = build(regions, model.mask_top)
    if not np.isfinite(screen_px):  # no face measured: the working size is all there is
        bank.save(folder / name)
        return name
    side = int(screen_px) // 2 * 2
    if side >= FINE_FROM * model.size:
        fine, _ = candidate_regions(features_dir, side, model.region,
                                    keys=[keys[i] for i in chosen])
        bank = bank.with_fine(fine)
        log.info("texture bank: fine bands at %d px (the %d px region shows %.2fx larger)",
                 side, model.size, screen_px / model.size)
    bank.save(folder / name)
    return name


FINE_FROM = 1.25
"""Enlargement on screen from which the texture bank keeps fine bands at the screen's
size (below it, the working size holds what the screen shows)."""


def region_on_screen(affines: np.ndarray, crop_size: int, region_side: float) -> float:
    """Median side (frame pixels) of the mouth region over frames with these crop
    transforms (frame pixels -> crop pixels)."""
    m = np.asarray(affines, np.float64)
    scale = np.sqrt(np.abs(m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]))
    scale = scale[scale > 0]
    return float(np.median(region_side * crop_size / scale)) if len(scale) else float("nan")


def add_texture(bundle: Path, features_dir: Path) -> str:
    """Build the texture bank into an existing bundle (one made before banks, or to
    rebuild it): the bank under a new name, the manifest replaced last in one atomic write,
    then the old bank removed; a failure leaves the old bundle working."""
    import time

    from avatar.bundle import read_manifest

    manifest = read_manifest(bundle)
    if manifest.head is None:
        raise path_error(bundle, "has no face (a voice-only bundle): a texture bank needs "
                         "footage of the person; enrol video")
    model = HeadConfig.from_dict(manifest.head.config)
    assert manifest.idle is not None  # a bundle with a face has its idle footage
    with np.load(bundle / manifest.idle.transforms, allow_pickle=False) as z:
        screen = region_on_screen(z["crop_affine"], int(manifest.crop_size or 0),
                                  model.region[2])
    name = f"texture-{time.time_ns() // 1_000_000}.npz"  # never the name in use
    try:
        write_texture(features_dir, model, bundle, screen, name)
    except BaseException:
        (bundle / name).unlink(missing_ok=True)
        raise
    old = manifest.head.texture
    files = {k: v for k, v in manifest.files.items() if k != old}
    files[name] = sha256_file(bundle / name)
    write_manifest(bundle, manifest.replace(head=dataclasses.replace(manifest.head,
                                                                     texture=name),
                                            files=files))
    if old and old != name:
        (bundle / old).unlink(missing_ok=True)
    return name


def _bundle_head(bundle: Path, what: str) -> tuple[Manifest, HeadGenerator, np.ndarray]:
    """An existing bundle's manifest, generator and crop mask, or one error naming what
    is missing."""
    from avatar.bundle import load_weights, read_manifest

    manifest = read_manifest(bundle)
    if manifest.head is None:
        raise path_error(bundle, f"has no face (a voice-only bundle): there is no paint to "
                         f"{what}; enrol video")
    gen = HeadGenerator(HeadConfig.from_dict(manifest.head.config))
    load_weights(gen, bundle / manifest.head.file, "head")
    crop_mask = cv2.imread(str(bundle / manifest.head.mask), cv2.IMREAD_GRAYSCALE)
    if crop_mask is None:
        raise path_error(bundle / manifest.head.mask, "cannot be read; bundle damaged")
    return manifest, gen, crop_mask


def add_colour(bundle: Path, features_dir: Path) -> dict:
    """Measure the paint's colour cast of an existing bundle (one made before the
    measurement, or to measure it again) and write it into its manifest in one atomic
    write; returns the manifest's new ``head.colour``."""
    from avatar.avatar import load_refiner
    from training.head.colour_fit import MAX_FRAMES

    manifest, gen, crop_mask = _bundle_head(bundle, "measure")
    assert manifest.head is not None
    refiner = (load_refiner(bundle, manifest.head.refine, torch.device("cpu"))
               if manifest.head.refine else None)
    regions, keys = candidate_regions(features_dir, gen.cfg.size, gen.cfg.region,
                                      max_frames=MAX_FRAMES)
    colour = colour_section(gen, (manifest.head.mel.mean, manifest.head.mel.std),
                            features_dir, regions, keys, bundle / manifest.head.reference,
                            crop_mask, int(manifest.crop_size or 0), refiner)
    if not colour:
        return colour
    write_manifest(bundle, manifest.replace(head=dataclasses.replace(manifest.head,
                                                                     colour=colour)))
    return colour


def add_refine(bundle: Path, features_dir: Path, cfg: RefineTrainConfig,
               device: str = "cpu") -> dict:
    """Train the refiner of an existing bundle (one made before refiners, or to train it
    again) and measure the colour cast on its paint: both into the manifest in one atomic
    write, the new weights under a new name, the old ones removed last; a failure leaves
    the old bundle working. Returns the manifest's new ``head.refine``, or an empty dict
    where no refiner was kept: the bundle is then left as it was (a refiner it had stays).
    ``device``: where the generator paints and the refiner trains."""
    import time

    manifest, gen, crop_mask = _bundle_head(bundle, "refine")
    gen.to(device)
    assert manifest.head is not None
    regions, keys = candidate_regions(features_dir, gen.cfg.size, gen.cfg.region)
    mel_stats = (manifest.head.mel.mean, manifest.head.mel.std)
    crop_size = int(manifest.crop_size or 0)
    name = f"refine-{time.time_ns() // 1_000_000}.safetensors"  # never the name in use
    try:
        refine, refiner = refine_section(gen, mel_stats, features_dir, regions, keys,
                                         bundle / manifest.head.reference, crop_mask,
                                         crop_size, cfg, bundle, name)
        if not refine:
            return refine
        colour = colour_section(gen, mel_stats, features_dir, regions, keys,
                                bundle / manifest.head.reference, crop_mask, crop_size,
                                refiner)
    except BaseException:
        (bundle / name).unlink(missing_ok=True)
        raise
    old = manifest.head.refine.get("file") if manifest.head.refine else None
    files = {k: v for k, v in manifest.files.items() if k != old}
    files[name] = sha256_file(bundle / name)
    write_manifest(bundle, manifest.replace(
        head=dataclasses.replace(manifest.head, refine=refine, colour=colour), files=files))
    if old and old != name:
        (bundle / old).unlink(missing_ok=True)
    return refine


def add_motion(bundle: Path, features_dir: Path) -> MotionSection:
    """Build the motion bank into an existing bundle (one made before banks existed, or to
    rebuild it): new files under new names, the manifest replaced last in one atomic
    write, then the old bank removed; a failure leaves the old bundle working."""
    import shutil
    import time

    from avatar.bundle import read_manifest

    manifest = read_manifest(bundle)
    if manifest.head is None or manifest.frame_size is None:
        raise path_error(bundle, "has no face (a voice-only bundle): a motion bank needs "
                         "footage of the person; enrol video")
    tag = f"{int(time.time())}"
    folder, index = f"motion-{tag}", f"motion-{tag}.npz"
    try:
        section = _write_bank(features_dir, bundle, tuple(manifest.frame_size),
                              int(manifest.fps or 25), folder, index)
    except BaseException:
        shutil.rmtree(bundle / folder, ignore_errors=True)
        (bundle / index).unlink(missing_ok=True)
        (bundle / index.replace("motion", "nods", 1)).unlink(missing_ok=True)
        raise
    old = manifest.motion
    old_names = set(old.files + [old.index] + ([old.cues] if old.cues else [])) \
        if old is not None else set()
    kept = {k: v for k, v in manifest.files.items() if k not in old_names}
    new = {f: sha256_file(bundle / f) for f in section.files + [section.index] +
           ([section.cues] if section.cues else [])}
    write_manifest(bundle, manifest.replace(motion=section, files={**kept, **new}))
    if old is not None:
        for f in old_names:
            (bundle / f).unlink(missing_ok=True)
        for d in {str(Path(f).parent) for f in old.files}:
            if d not in (".", folder):
                shutil.rmtree(bundle / d, ignore_errors=True)
    return section


def _write_bank(features_dir: Path, tmp: Path, size: tuple[int, int], fps: int,
                folder: str = "motion", index: str = "motion.npz") -> MotionSection:
    """The motion bank (training/motion/bank.py) at the bundle's output size."""
    from training.motion.bank import BankConfig, build_bank
    from training.progress import bar

    manifest_in = json.loads((features_dir / "manifest.json").read_text())
    total = sum(int(c.get("frames", 0)) for c in manifest_in["clips"]) or None
    cfg = BankConfig()
    with bar(total, "motion bank", "frame") as pb:
        try:
            res = build_bank(features_dir, tmp, size, fps, cfg, progress=pb.update,
                             folder=folder, index=index)
        except ValueError as e:
            raise path_error(features_dir, f"cannot make a motion bank: {e}") from None
    log.info("motion bank: %d frames in %d chunks, %.1f MB (%s)", res.frames,
             len(res.chunk_files), res.bytes / 1e6,
             ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items()))
    have = res.behaviour
    for mode in res.short:
        other = "silent" if mode == "speaking" else "speaking"
        log.warning("the footage holds %.0f s of %s behaviour; a walk that does not repeat "
                    "itself within a minute wants %.0f s (%.0f s more)%s", have[mode], mode,
                    MIN_SECONDS[mode], MIN_SECONDS[mode] - have[mode],
                    f": the avatar will use {other} footage there" if not have[mode] else
                    ": the avatar repeats itself sooner there")
    cues, report = _write_cues(features_dir, tmp, res.index, fps)
    return MotionSection(frames=res.frames, chunk=cfg.chunk, files=res.chunk_files,
                         index=res.index, seconds=res.seconds, short=res.short,
                         bytes=res.bytes, cues=cues, cue_report=report)


def _write_cues(features_dir: Path, tmp: Path, index: str, fps: int) -> tuple[str | None, dict]:
    """The person's speech-to-nod model (training/motion/cues.py) beside the bank index;
    None where their footage does not support one (the report says why)."""
    from training.motion.cues import fit_nod_cues, speech_rows

    clips = json.loads((features_dir / "manifest.json").read_text())["clips"]
    with np.load(tmp / index) as z:
        bank = {k: z[k] for k in ("state", "iod", "landmarks", "cont", "clip", "source_frame")}
    frames = [max(int(c.get("frames", 0)), int(bank["source_frame"][bank["clip"] == i].max(
        initial=-1)) + 1) for i, c in enumerate(clips)]
    rows = speech_rows(features_dir, [c["dir"] for c in clips], frames, fps, width=20)
    cues, report = fit_nod_cues(rows, bank, fps)
    if cues is None:
        log.info("no nod cues: %s", report.get("why"))
        return None, report
    name = index.replace("motion", "nods", 1) if "motion" in index else f"nods-{index}"
    cues.save(tmp / name)
    return name, report


def _write_reference(clip_dir: Path, meta: dict, start: int, raw: np.ndarray,
                     model: HeadConfig, path: Path) -> None:
    """The generator's identity input at run time: an idle frame whose mouth is a little
    open (teeth visible), neither shut nor wide."""
    ok = np.isfinite(raw[:, 0, 0])
    opening = np.array([mouth_opening(lm) if k else np.nan for lm, k in zip(raw, ok,
                                                                                strict=True)])
    target = np.nanpercentile(opening, 70)
    idx = start + int(np.nanargmin(np.abs(opening - target)))
    seg = next(s for s in meta["crops"] if s["start"] <= idx < s["stop"])
    with av.open(str(clip_dir / seg["file"])) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if seg["start"] + i == idx:
                region = cut_region(frame.to_ndarray(format="rgb24"), model.size,
                                    model.region)
                break
    ok_png, png = cv2.imencode(".png", cv2.cvtColor(region, cv2.COLOR_RGB2BGR))
    atomic.write_bytes(path, png.tobytes())
