"""The avatar bundle's manifest as types: what both exporters write and both loaders read.

``manifest.json`` is the one contract between training and the runtime (DESIGN.md §2).
Each section is a frozen dataclass with ``from_dict``/``to_dict``; ``to_dict`` writes the
same schema-1 JSON object as before the types existed (key order aside), so every bundle
made since schema 1 still loads and re-exports unchanged. The model configs stay plain
dicts here: each model reads its own (``HeadConfig.from_dict``, ``VoiceConfig.from_dict``),
which keeps this module free of torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from avatar.audio import FACE_MEL, MelSpec
from avatar.errors import TwincastError

SCHEMA_VERSION = 1
"""The schema this twincast writes."""
READS = (1,)
"""The schemas this twincast reads."""
KIND = "twincast-avatar"


class ManifestError(TwincastError):
    """A manifest that lacks a key or holds a value of the wrong type."""


def _get(d: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...
         ) -> Any:
    """``d[key]`` checked against ``kind``; a missing key takes ``default`` if given."""
    if key not in d:
        if default is not ...:
            return default
        raise ManifestError(f"manifest.json lacks {where}{key}; the bundle is damaged or "
                            "from another tool")
    value = d[key]
    # JSON has one number type: an int is a valid float.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ManifestError(f"manifest.json: {where}{key} should be a {names}, not "
                            f"{type(value).__name__}")
    return value


def _section(d: dict, key: str, where: str = "") -> dict:
    return _get(d, key, dict, where)


@dataclass(frozen=True)
class HeadMel:
    """The face model's audio input: the 16 kHz log-mel and its training statistics."""

    mean: float
    std: float
    spec: MelSpec = FACE_MEL

    @classmethod
    def from_dict(cls, d: dict) -> HeadMel:
        w = "head.mel."
        spec = MelSpec(rate=_get(d, "rate", int, w), n_fft=_get(d, "n_fft", int, w),
                       hop=_get(d, "hop", int, w), n_mels=_get(d, "bins", int, w),
                       win=_get(d, "win", int, w), f_max=FACE_MEL.f_max)
        return cls(_get(d, "mean", float, w), _get(d, "std", float, w), spec)

    def to_dict(self) -> dict:
        s = self.spec
        return {"rate": s.rate, "hop": s.hop, "bins": s.n_mels, "n_fft": s.n_fft,
                "win": s.win, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class HeadSection:
    """The talking head: generator weights, its config and inputs, how it was trained."""

    config: dict
    """``HeadConfig`` as a dict (the model reads it)."""
    mel: HeadMel
    region: list[float]
    mask_top: float
    file: str = "head.safetensors"
    reference: str = "reference.png"
    mask: str = "mask.png"
    preset: str = ""
    train_seconds: float = 0.0
    expert_steps: int = 0
    gen_steps: int = 0
    lips: dict = field(default_factory=dict)
    """The lip predictor on its held-out frames (empty when too few were held out)."""
    plan: dict = field(default_factory=dict)
    """How much of the preset's training plan ran within its cap on the host that trained
    it (``training.head.plan``): nominal and run step counts, share, measured speeds. Empty
    for bundles made before planning."""
    texture: str = ""
    """The texture bank (``avatar.texture``): fine detail of the person's own mouths; empty
    for bundles made before it (they render without)."""
    colour: dict = field(default_factory=dict)
    """The paint's colour cast measured on the enrolment's frames
    (``training.head.colour_fit``): ``rgb_shift`` (three levels added to the paint's
    interior), ``lab_cast``, the frames and the mean delta E before and after; where it
    paid on unseen frames, ``linear``, the per-frame model rendering uses instead
    (``avatar.paint_cast``), and ``delta_e_held_out`` for both. Empty for bundles made
    before it (they render without the correction)."""
    refine: dict = field(default_factory=dict)
    """The refiner (``avatar.models.refine``), trained at export on the enrolment's frames:
    ``file`` (safetensors), ``config`` and ``report`` (its training and the held-out
    figures it was chosen by). Empty for bundles without one (they render the paint as the
    generator makes it)."""

    @classmethod
    def from_dict(cls, d: dict) -> HeadSection:
        w = "head."
        return cls(config=_section(d, "config", w), mel=HeadMel.from_dict(_section(d, "mel", w)),
                   region=list(_get(d, "region", list, w)),
                   mask_top=_get(d, "mask_top", float, w), file=_get(d, "file", str, w),
                   reference=_get(d, "reference", str, w), mask=_get(d, "mask", str, w),
                   preset=_get(d, "preset", str, w, ""),
                   train_seconds=_get(d, "train_seconds", float, w, 0.0),
                   expert_steps=_get(d, "expert_steps", int, w, 0),
                   gen_steps=_get(d, "gen_steps", int, w, 0),
                   lips=_get(d, "lips", dict, w, {}), plan=_get(d, "plan", dict, w, {}),
                   texture=_get(d, "texture", str, w, ""),
                   colour=_get(d, "colour", dict, w, {}),
                   refine=_get(d, "refine", dict, w, {}))

    def to_dict(self) -> dict:
        out = {"file": self.file, "config": self.config, "region": list(self.region),
               "mask_top": self.mask_top, "mel": self.mel.to_dict(),
               "reference": self.reference, "mask": self.mask, "preset": self.preset,
               "train_seconds": self.train_seconds, "expert_steps": self.expert_steps,
               "gen_steps": self.gen_steps, "lips": self.lips}
        if self.plan:  # an optional key: schema-1 bundles without it re-export unchanged
            out["plan"] = self.plan
        if self.texture:
            out["texture"] = self.texture
        if self.colour:
            out["colour"] = self.colour
        if self.refine:
            out["refine"] = self.refine
        return out


@dataclass(frozen=True)
class IdleSection:
    """The footage the avatar stands in while it is not speaking."""

    frames: int
    file: str = "idle.mp4"
    transforms: str = "idle.npz"
    """Per-frame crop transforms (``crop_affine``, frames x 2 x 3)."""
    loop: str = "pingpong"
    clip: str = ""
    start: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> IdleSection:
        w = "idle."
        return cls(frames=_get(d, "frames", int, w), file=_get(d, "file", str, w),
                   transforms=_get(d, "transforms", str, w),
                   loop=_get(d, "loop", str, w, "pingpong"), clip=_get(d, "clip", str, w, ""),
                   start=_get(d, "start", int, w, 0))

    def to_dict(self) -> dict:
        return {"file": self.file, "transforms": self.transforms, "frames": self.frames,
                "loop": self.loop, "clip": self.clip, "start": self.start}


@dataclass(frozen=True)
class MotionSection:
    """The motion bank (``training.motion.bank``): the footage's usable stretches the
    runtime walks through, as chunks of ``chunk`` frames, and their per-frame index."""

    frames: int
    chunk: int
    files: list[str]
    """The chunk videos, in order."""
    index: str = "motion.npz"
    seconds: dict = field(default_factory=dict)
    """Seconds of each state (speaking, listening, idle) in the bank."""
    short: list[str] = field(default_factory=list)
    """States with less footage than a lively walk needs."""
    bytes: int = 0
    cues: str | None = None
    """The speech-to-nod model (``avatar.cues``); None: the walk ignores nods."""
    cue_report: dict = field(default_factory=dict)
    """How many nods the footage holds and how well the model finds later ones."""

    @classmethod
    def from_dict(cls, d: dict) -> MotionSection:
        w = "motion."
        files = _get(d, "files", list, w)
        if not files or not all(isinstance(f, str) for f in files):
            raise ManifestError("manifest.json: motion.files should list the chunk videos")
        return cls(frames=_get(d, "frames", int, w), chunk=_get(d, "chunk", int, w),
                   files=files, index=_get(d, "index", str, w, "motion.npz"),
                   seconds=_get(d, "seconds", dict, w, {}),
                   short=list(_get(d, "short", list, w, [])), bytes=_get(d, "bytes", int, w, 0),
                   cues=_get(d, "cues", (str, type(None)), w, None),
                   cue_report=_get(d, "cue_report", dict, w, {}))

    def to_dict(self) -> dict:
        return {"frames": self.frames, "chunk": self.chunk, "files": list(self.files),
                "index": self.index, "seconds": dict(self.seconds), "short": list(self.short),
                "bytes": self.bytes, "cues": self.cues, "cue_report": dict(self.cue_report)}


@dataclass(frozen=True)
class VocoderSection:
    """How the voice's mels become audio: ``griffin-lim`` (no weights) or ``vocos``."""

    kind: str = "griffin-lim"
    n_iter: int = 32
    """Griffin-Lim's iterations."""
    file: str = "vocoder.safetensors"
    config: dict = field(default_factory=dict)
    """``VocoderConfig`` as a dict (vocos)."""
    train_seconds: float = 0.0
    steps: int = 0
    adapt_seconds: float = 0.0
    adapt_steps: int = 0

    KINDS = ("griffin-lim", "vocos")

    @classmethod
    def from_dict(cls, d: dict) -> VocoderSection:
        w = "voice.vocoder."
        kind = _get(d, "kind", str, w, "griffin-lim")
        if kind not in cls.KINDS:
            raise ManifestError(f"manifest.json: unknown vocoder {kind!r} (this twincast "
                                f"knows {', '.join(cls.KINDS)})")
        if kind == "griffin-lim":
            return cls(kind, n_iter=_get(d, "n_iter", int, w, 32))
        return cls(kind, file=_get(d, "file", str, w, "vocoder.safetensors"),
                   config=_section(d, "config", w),
                   train_seconds=_get(d, "train_seconds", float, w, 0.0),
                   steps=_get(d, "steps", int, w, 0),
                   adapt_seconds=_get(d, "adapt_seconds", float, w, 0.0),
                   adapt_steps=_get(d, "adapt_steps", int, w, 0))

    def to_dict(self) -> dict:
        if self.kind == "griffin-lim":
            return {"kind": self.kind, "n_iter": self.n_iter}
        return {"kind": self.kind, "file": self.file, "config": self.config,
                "train_seconds": self.train_seconds, "steps": self.steps,
                "adapt_seconds": self.adapt_seconds, "adapt_steps": self.adapt_steps}


@dataclass(frozen=True)
class VoiceMel:
    """The voice's mel settings and the per-bin statistics its model was trained with."""

    spec: MelSpec
    mean: list[float]
    std: list[float]

    @classmethod
    def from_dict(cls, d: dict) -> VoiceMel:
        w = "voice.mel."
        spec = MelSpec(rate=_get(d, "rate", int, w), n_fft=_get(d, "n_fft", int, w),
                       hop=_get(d, "hop", int, w), n_mels=_get(d, "n_mels", int, w),
                       f_max=_get(d, "f_max", float, w))
        mean, std = _get(d, "mean", list, w), _get(d, "std", list, w)
        if len(mean) != spec.n_mels or len(std) != spec.n_mels:
            raise ManifestError(f"manifest.json: voice.mel has {len(mean)} means and "
                                f"{len(std)} deviations for {spec.n_mels} bins")
        return cls(spec, mean, std)

    def to_dict(self) -> dict:
        return {**self.spec.to_dict(), "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class VoiceSection:
    """The voice: acoustic model weights and config, phoneme table, mels, vocoder, text."""

    config: dict
    """``VoiceConfig`` as a dict (the model reads it)."""
    symbols: list[str]
    mel: VoiceMel
    file: str = "voice.safetensors"
    vocoder: VocoderSection = field(default_factory=VocoderSection)
    text: dict = field(default_factory=lambda: {"english_voice": "en-us"})
    preset: str = ""
    train_seconds: float = 0.0
    steps: int = 0
    utterances: int = 0
    duration_scale: float = 1.0
    weights: str | None = None
    """``float16`` when the weights were halved for transport (``scripts/half_voice.py``);
    absent for float32."""
    plan: dict = field(default_factory=dict)
    """Per training stage (acoustic, vocoder, vocoder_adapt): nominal and run step counts,
    share, measured seconds per step and threads on the host that trained it
    (``training.voice.plan``). Empty for bundles made before."""

    @classmethod
    def from_dict(cls, d: dict) -> VoiceSection:
        w = "voice."
        return cls(config=_section(d, "config", w), symbols=list(_get(d, "symbols", list, w)),
                   mel=VoiceMel.from_dict(_section(d, "mel", w)), file=_get(d, "file", str, w),
                   vocoder=VocoderSection.from_dict(_get(d, "vocoder", dict, w, {})),
                   text=_get(d, "text", dict, w, {"english_voice": "en-us"}),
                   preset=_get(d, "preset", str, w, ""),
                   train_seconds=_get(d, "train_seconds", float, w, 0.0),
                   steps=_get(d, "steps", int, w, 0),
                   utterances=_get(d, "utterances", int, w, 0),
                   duration_scale=_get(d, "duration_scale", float, w, 1.0),
                   weights=_get(d, "weights", str, w, None),
                   plan=_get(d, "plan", dict, w, {}))

    def to_dict(self) -> dict:
        d = {"file": self.file, "config": self.config, "symbols": list(self.symbols),
             "mel": self.mel.to_dict(), "vocoder": self.vocoder.to_dict(), "text": self.text,
             "preset": self.preset, "train_seconds": self.train_seconds, "steps": self.steps,
             "utterances": self.utterances, "duration_scale": self.duration_scale}
        if self.weights is not None:
            d["weights"] = self.weights
        if self.plan:  # optional: bundles without it re-export unchanged
            d["plan"] = self.plan
        return d


def _inside(name: object) -> bool:
    """Whether ``name`` is a relative path that stays inside the bundle folder."""
    if not isinstance(name, str) or not name or "\\" in name or ":" in name or "\0" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what the bundle holds. A voice-only bundle has no head, idle or
    frame geometry; a face without a transcript has no voice."""

    name: str
    created: str
    tool: str
    files: dict[str, str]
    """Every file of the bundle with its sha256."""
    fps: int | None = None
    frame_size: tuple[int, int] | None = None
    """Width, height of the idle footage and of every rendered frame."""
    crop_size: int | None = None
    source: dict | None = None
    """The enrolment's clips and their digests (provenance)."""
    head: HeadSection | None = None
    idle: IdleSection | None = None
    voice: VoiceSection | None = None
    motion: MotionSection | None = None
    """Absent in bundles made before the motion bank: they stand in their idle loop."""
    consent: dict | None = None
    """The enrolment's consent check (``training.consent``): status ``verified``, the
    statement and code, the measures and the recording's digest. Absent: unconsented."""
    schema: int = SCHEMA_VERSION
    kind: str = KIND

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise ManifestError(f"manifest.json is not a {KIND} manifest")
        version = d.get("schema")
        if version not in READS:
            raise ManifestError(
                f"manifest.json has schema version {version!r}, but this twincast reads "
                f"version {', '.join(map(str, READS))}; re-export the avatar or upgrade "
                "twincast")
        files = _get(d, "files", dict, "")
        if not files:
            raise ManifestError("manifest.json lists no files")
        head = d.get("head")
        size = _get(d, "frame_size", list, "", None)
        if size is not None and (len(size) != 2 or not all(isinstance(v, int) for v in size)):
            raise ManifestError("manifest.json: frame_size should be [width, height]")
        m = cls(name=_get(d, "name", str, ""), created=_get(d, "created", str, "", ""),
                tool=_get(d, "tool", str, "", ""), files=files,
                fps=_get(d, "fps", int, "", None),
                frame_size=(size[0], size[1]) if size else None,
                crop_size=_get(d, "crop_size", int, "", None),
                source=_get(d, "source", dict, "", None),
                head=HeadSection.from_dict(head) if isinstance(head, dict) else None,
                idle=IdleSection.from_dict(_section(d, "idle")) if head is not None else None,
                voice=VoiceSection.from_dict(_section(d, "voice")) if "voice" in d else None,
                motion=MotionSection.from_dict(_section(d, "motion"))
                if head is not None and "motion" in d else None,
                consent=_get(d, "consent", dict, "", None),
                schema=version)
        if m.head is not None and (m.fps is None or m.frame_size is None or
                                   m.crop_size is None):
            raise ManifestError("manifest.json has a head but lacks fps, frame_size or "
                                "crop_size; the bundle is damaged")
        if head is not None and m.head is None:
            raise ManifestError("manifest.json: head should be an object")
        for name in list(m.files) + m.referenced_files():
            if not _inside(name):
                raise ManifestError(f"manifest.json names the file {name!r}, which is not a "
                                    "plain path inside the bundle; the bundle is damaged or "
                                    "tampered with")
        return m

    def referenced_files(self) -> list[str]:
        """Every file the runtime opens, as the sections name them (each must also be in
        ``files``, so its digest is checked before it is read)."""
        out: list[str] = []
        if self.head is not None:
            out += [self.head.file, self.head.reference, self.head.mask]
        if self.idle is not None:
            out += [self.idle.file, self.idle.transforms]
        if self.motion is not None:
            out += list(self.motion.files) + [self.motion.index] + \
                ([self.motion.cues] if self.motion.cues else [])
        if self.voice is not None:
            out.append(self.voice.file)
            if self.voice.vocoder.kind != "griffin-lim":
                out.append(self.voice.vocoder.file)
        return out

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"schema": self.schema, "kind": self.kind, "name": self.name,
                             "created": self.created, "tool": self.tool}
        if self.head is not None:
            d.update(fps=self.fps, frame_size=list(self.frame_size or ()),
                     crop_size=self.crop_size, source=self.source, head=self.head.to_dict(),
                     idle=self.idle.to_dict() if self.idle else None)
            if self.motion is not None:
                d["motion"] = self.motion.to_dict()
        if self.voice is not None:
            d["voice"] = self.voice.to_dict()
        if self.consent is not None:
            d["consent"] = dict(self.consent)
        d["files"] = dict(self.files)
        return d

    @property
    def consented(self) -> bool:
        """Whether enrolment verified the person's consent recording."""
        return bool(self.consent) and self.consent.get("status") == "verified"

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)
